"""`softprompt_ext.generate`: the active prompt's generation, correct on T5 and on decoder-only models.

PEFT 0.21 under transformers 5 re-inserts the prompt at every decoding step of a causal LM's `generate`
(pinned as a strict xfail in tests/test_peft_contract.py); `generate` must give greedy decoding's tokens anyway.
"""

from __future__ import annotations

import pytest
import torch
from helpers import blind_to_the_cache
from peft import get_peft_model

from softprompt_ext import SoftPromptConfig, generate, generate_texts
from softprompt_ext.inference import generate as generate_module
from softprompt_ext.peft_internals import causal_generate_reinserts_prompt, prompt_weight

STEPS = 6


def prompted(make_model, arch: str, task_type: str):
    torch.manual_seed(0)
    config = SoftPromptConfig(task_type=task_type, num_virtual_tokens=4, sample_vocab_size=50, init_seed=0)
    model = get_peft_model(make_model(arch), config).eval()
    with torch.no_grad():
        prompt_weight(model, "default").normal_(0, 1.0)  # a prompt that changes the output
    return model


def greedy_by_full_forwards(model, ids: torch.Tensor, steps: int) -> torch.Tensor:
    """Greedy decoding with a full forward per token: no cache, so no chance to re-insert the prompt."""
    loop = ids
    with torch.no_grad():
        for _ in range(steps):
            next_id = model(input_ids=loop, attention_mask=torch.ones_like(loop)).logits[:, -1].argmax(-1)  # [B]
            loop = torch.cat([loop, next_id[:, None]], 1)
    return loop  # [B, T + steps]


@pytest.fixture(params=["installed", "corrected"])
def path(request, monkeypatch):
    """Which causal path `generate` takes: the one the probe picks on this install, or the corrected one (the
    mixed-batch path it takes where PEFT's generate re-inserts the prompt), so both run on every install."""
    if request.param == "corrected":
        monkeypatch.setattr(generate_module, "causal_generate_reinserts_prompt", lambda: True)
    return request.param


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_causal_generate_equals_greedy_decoding(make_model, arch, path):
    model = prompted(make_model, arch, "CAUSAL_LM")
    ids = torch.tensor([[5, 17, 23, 42, 8, 11], [7, 9, 30, 31, 12, 13]])
    expected = greedy_by_full_forwards(model, ids, STEPS)  # [2, 12]
    with torch.no_grad():
        out = generate(model, ids, torch.ones_like(ids), max_new_tokens=STEPS, min_new_tokens=STEPS, do_sample=False)
    assert out.shape == expected.shape
    assert out.tolist() == expected.tolist()
    assert out[:, : ids.shape[1]].tolist() == ids.tolist()  # input then new tokens, as PEFT returns


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_the_upstream_bug_is_what_generate_corrects(make_model, arch, monkeypatch):
    """PEFT 0.21 under transformers >= 5.24 re-inserts the prompt at every step; where the installed PEFT is right,
    the same bug is given to the model (`blind_to_the_cache`), so the corrected path is checked on every install."""
    model = prompted(make_model, arch, "CAUSAL_LM")
    if not causal_generate_reinserts_prompt():
        blind_to_the_cache(model)
        monkeypatch.setattr(generate_module, "causal_generate_reinserts_prompt", lambda: True)
    ids = torch.tensor([[5, 17, 23, 42, 8, 11]])
    expected = greedy_by_full_forwards(model, ids, STEPS)
    with torch.no_grad():
        theirs = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=STEPS,
                                min_new_tokens=STEPS, do_sample=False)
        ours = generate(model, ids, torch.ones_like(ids), max_new_tokens=STEPS, min_new_tokens=STEPS, do_sample=False)
    assert theirs.tolist() != expected.tolist()
    assert ours.tolist() == expected.tolist()


def test_seq2seq_generate_is_peft_generate(make_model):
    model = prompted(make_model, "t5", "SEQ_2_SEQ_LM")
    ids = torch.tensor([[5, 17, 23, 42, 1], [7, 9, 30, 1, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        ours = generate(model, ids, mask, max_new_tokens=STEPS, do_sample=False)
        theirs = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=STEPS, do_sample=False)
    assert torch.equal(ours, theirs)


def test_corrected_causal_generate_refuses_a_dict_output(make_model, monkeypatch):
    monkeypatch.setattr(generate_module, "causal_generate_reinserts_prompt", lambda: True)
    model = prompted(make_model, "llama", "CAUSAL_LM")
    ids = torch.tensor([[5, 17, 23]])
    with pytest.raises(ValueError, match=r"return_dict_in_generate=True is not supported on the corrected causal"):
        generate(model, ids, None, max_new_tokens=2, return_dict_in_generate=True)


@pytest.mark.parametrize("arch, task_type", [("t5", "SEQ_2_SEQ_LM"), ("gpt2", "CAUSAL_LM")])
def test_generate_texts_decodes_the_new_tokens_and_restores_the_mode(make_model, tokenizer, arch, task_type):
    model = prompted(make_model, arch, task_type)
    model.train()
    texts = ["a dog", "the sea is blue"]
    out = generate_texts(model, tokenizer, texts, batch_size=1, max_new_tokens=3, precision="fp32")
    assert len(out) == 2 and all(isinstance(t, str) for t in out)
    assert model.training  # mode restored
    previous, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        one = generate_texts(model, tokenizer, texts[1:], max_new_tokens=3, precision="fp32")
    finally:
        tokenizer.padding_side = previous
    assert one == out[1:]  # batched one at a time or alone: the same text


def test_generate_texts_refuses_a_bare_string(make_model, tokenizer):
    model = prompted(make_model, "t5", "SEQ_2_SEQ_LM")
    with pytest.raises(TypeError, match=r"texts must be a list of strings, got the string 'a dog'"):
        generate_texts(model, tokenizer, "a dog")
