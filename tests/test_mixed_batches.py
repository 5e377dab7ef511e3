"""Mixed-task batches (`inference/mixed_batches.py`): every example with its own prompt in one batch.

The reference for every mixed batch is each example run alone, unpadded, after `model.set_adapter(name)`
through PEFT's own forward. For greedy generation the reference is PEFT's `generate` on T5 and, for
decoder-only models, a cache-free greedy loop over PEFT's forward: with transformers 5.x PEFT 0.21's
causal-LM `generate` re-inserts the prompt at every decoding step (it looks for `past_key_values`, which
generate now calls `cache`), so its tokens differ from the model's after the first one.

The `build` fixture (three prompts loaded through PEFT) is in tests/conftest.py.
"""

from __future__ import annotations

import pytest
import torch
from helpers import TEXTS, padded_batch
from peft import LoraConfig, PromptTuningConfig, get_peft_model

from softprompt_ext import SoftPromptConfig
from softprompt_ext.inference.mixed_batches import mixed_forward, mixed_generate

NAMES = ["p3", "p7", "p7", "p3"]
EOS, PAD = 1, 0
TOL = {"rtol": 1e-4, "atol": 1e-4}


def _feature_config() -> SoftPromptConfig:
    return SoftPromptConfig(
        task_type="FEATURE_EXTRACTION", num_virtual_tokens=2, prompt_tuning_init="RANDOM_UNIFORM"
    )



def _alone_ids(ids: torch.Tensor, mask: torch.Tensor, i: int) -> torch.Tensor:
    return ids[i][mask[i].bool()][None]  # [1, T_i]


def _greedy_alone(model, ids: torch.Tensor, steps: int) -> list[int]:
    """Greedy decoding of a decoder-only PEFT model without a cache: PEFT's forward on the whole sequence."""
    with torch.no_grad():
        for _ in range(steps):
            next_id = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, -1].argmax(-1)
            ids = torch.cat([ids, next_id[:, None]], 1)
    return ids[0].tolist()


def _until_eos(tokens: list[int]) -> list[int]:
    return tokens[: tokens.index(EOS) + 1] if EOS in tokens else tokens


# ---------------------------------------------------------------------------------------------- forward
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("kind", ["t5", "llama", "gpt2"])
def test_forward_equals_each_example_alone(build, tokenizer, kind, side):
    model = build(kind)
    ids, mask = padded_batch(tokenizer, side)
    if kind == "t5":
        labels = tokenizer(
            ["true", "false and more", "x", "a b c"], return_tensors="pt", padding=True
        ).input_ids
        labels = labels.masked_fill(labels == PAD, -100)
    else:
        labels = ids.masked_fill(mask == 0, -100)
    with torch.no_grad():
        out = mixed_forward(model, ids, mask, NAMES, labels=labels)
        alone_losses, counts = [], []
        for i, name in enumerate(NAMES):
            model.set_adapter(name)
            x = _alone_ids(ids, mask, i)
            if kind == "t5":
                y = labels[i : i + 1, : int((labels[i] != -100).sum())]
                ref = model(input_ids=x, attention_mask=torch.ones_like(x), labels=y)
                torch.testing.assert_close(out.logits[i, : y.shape[1]], ref.logits[0], **TOL)
                counts.append(y.shape[1])
            else:
                ref = model(input_ids=x, attention_mask=torch.ones_like(x), labels=x)
                num_virtual = model.peft_config[name].num_virtual_tokens
                # logits come back aligned to input_ids: real positions hold the alone-run logits, pads hold 0
                torch.testing.assert_close(out.logits[i][mask[i].bool()], ref.logits[0, num_virtual:], **TOL)
                assert out.logits[i][~mask[i].bool()].abs().sum() == 0
                counts.append(x.shape[1])  # PEFT scores the first input token from the last prompt position
            alone_losses.append(ref.loss)
    torch.testing.assert_close(out.loss_per_example, torch.stack(alone_losses), **TOL)
    assert out.num_label_tokens.tolist() == counts
    expected_mean = (out.loss_per_example * out.num_label_tokens).sum() / sum(counts)
    torch.testing.assert_close(out.loss, expected_mean)


def test_plain_peft_prompt_with_decoder_rows_uses_encoder_rows(make_model, tokenizer):
    """PEFT's own PromptTuningConfig on T5 allocates 2P rows; like PEFT, only the first P are placed."""
    model = get_peft_model(
        make_model("t5"), PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=4)
    )
    model.add_adapter("short", PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=2))
    model.eval()
    assert model.prompt_encoder["default"].embedding.weight.shape[0] == 8
    ids, mask = padded_batch(tokenizer, "right")
    names = ["default", "short", "default", "short"]
    labels = ids[:, :3]
    with torch.no_grad():
        out = mixed_forward(model, ids, mask, names, labels=labels)
        for i, name in enumerate(names):
            model.set_adapter(name)
            x = _alone_ids(ids, mask, i)
            ref = model(input_ids=x, attention_mask=torch.ones_like(x), labels=labels[i : i + 1])
            torch.testing.assert_close(out.logits[i], ref.logits[0], **TOL)


def test_mixed_batch_trains_every_prompt(build, tokenizer):
    model = build("llama")
    ids, mask = padded_batch(tokenizer, "left")
    for param in model.prompt_encoder.parameters():
        param.requires_grad_(True)
    mixed_forward(model, ids, mask, NAMES, labels=ids.masked_fill(mask == 0, -100)).loss.backward()
    assert model.prompt_encoder["p3"].embedding.weight.grad.abs().sum() > 0
    assert model.prompt_encoder["p7"].embedding.weight.grad.abs().sum() > 0
    assert model.prompt_encoder["p5"].embedding.weight.grad is None  # not in the batch


# ---------------------------------------------------------------------------------------------- generate
@pytest.mark.parametrize(
    ("kind", "side"), [("t5", "right"), ("t5", "left"), ("llama", "left"), ("gpt2", "right")]
)
def test_greedy_generate_equals_each_example_alone(build, tokenizer, kind, side):
    model = build(kind)
    ids, mask = padded_batch(tokenizer, side)
    steps = 6
    out = mixed_generate(model, ids, mask, NAMES, max_new_tokens=steps, do_sample=False)
    assert out.shape[0] == len(TEXTS)
    for i, name in enumerate(NAMES):
        model.set_adapter(name)
        x = _alone_ids(ids, mask, i)
        if kind == "t5":
            ref = model.generate(
                input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=steps, do_sample=False
            )
            ref_tokens = ref[0].tolist()
        else:
            ref_tokens = _greedy_alone(model, x, steps)[x.shape[1] :]
        assert _until_eos(out[i].tolist()) == _until_eos(ref_tokens), (kind, i, name)
    # the outputs are not all alike, so the test can tell adapters apart
    assert len({tuple(row) for row in out.tolist()}) > 1


# ---------------------------------------------------------------------------------------------- bad input
def test_model_must_be_a_peft_model(make_model, tokenizer):
    ids, mask = padded_batch(tokenizer, "right")
    with pytest.raises(TypeError, match=r"model must be a peft\.PeftModel .* got T5ForConditionalGeneration"):
        mixed_forward(make_model("t5"), ids, mask, NAMES, labels=ids)


def test_model_of_another_task_type(make_model, tokenizer):
    model = get_peft_model(make_model("t5"), _feature_config())
    ids, mask = padded_batch(tokenizer, "right")
    with pytest.raises(
        TypeError, match=r"model is a PeftModelForFeatureExtraction; .*'SEQ_2_SEQ_LM' or 'CAUSAL_LM'"
    ):
        mixed_generate(model, ids, mask, ["default"] * 4)


def test_unknown_adapter_lists_the_loaded_ones(build, tokenizer):
    ids, mask = padded_batch(tokenizer, "right")
    with pytest.raises(
        ValueError,
        match=r"adapter_names\[1\]='sst2' is not loaded in this model; loaded adapters: \['p3', 'p5', 'p7'\]\. "
        r"Load it first with model\.load_adapter\(path, adapter_name='sst2'\)",
    ):
        mixed_forward(build("t5"), ids, mask, ["p3", "sst2", "p3", "p3"], labels=ids)


def test_adapter_that_is_not_a_prompt(make_model, tokenizer):
    model = get_peft_model(make_model("t5"), LoraConfig(task_type="SEQ_2_SEQ_LM", target_modules=["q", "v"]))
    ids, mask = padded_batch(tokenizer, "right")
    with pytest.raises(
        ValueError, match=r"adapter_names\[0\]='default' is a LORA adapter, not a prompt-tuning"
    ):
        mixed_forward(model, ids, mask, ["default"] * 4, labels=ids)


def test_adapter_count_must_equal_batch_size(build, tokenizer):
    ids, mask = padded_batch(tokenizer, "right")
    with pytest.raises(ValueError, match=r"len\(adapter_names\)=3 but the batch holds 4 examples; pass one"):
        mixed_generate(build("t5"), ids, mask, ["p3", "p7", "p3"], max_new_tokens=2)


def test_adapter_names_must_be_a_list(build, tokenizer):
    ids, mask = padded_batch(tokenizer, "right")
    with pytest.raises(
        TypeError, match=r"adapter_names must be a list of adapter names, one per example, got 'p3'"
    ):
        mixed_forward(build("t5"), ids, mask, "p3", labels=ids)


def test_prompts_of_different_d_model(build, tokenizer):
    model = build("llama")
    model.prompt_encoder["p7"].embedding = torch.nn.Embedding(7, 8)  # a prompt made for a narrower model
    ids, mask = padded_batch(tokenizer, "left")
    with pytest.raises(
        ValueError,
        match=r"adapter 'p7' has a prompt of shape \(7, 8\) \(P, d_model\) but this model's d_model is 16 "
        r"\(prompts so far: \{'p3': \(3, 16\)\}\); prompts of different d_model",
    ):
        mixed_forward(model, ids, mask, NAMES)


def test_other_bad_calls(build, tokenizer):
    t5, llama = build("t5"), build("llama")
    ids, mask = padded_batch(tokenizer, "right")
    t = ids.shape[1]
    with pytest.raises(
        ValueError, match=rf"attention_mask has shape \(4, 3\) but input_ids has shape \(4, {t}\)"
    ):
        mixed_forward(t5, ids, mask[:, :3], NAMES, labels=ids)
    with pytest.raises(ValueError, match=rf"input_ids must be a \[B, T\] tensor of token ids, got \({t},\)"):
        mixed_forward(t5, ids[0], mask[0], NAMES[:1], labels=ids)
    with pytest.raises(ValueError, match=r"input_ids holds no examples \(batch size 0\)"):
        mixed_forward(t5, ids[:0], mask[:0], [], labels=ids[:0])
    with pytest.raises(ValueError, match=r"a seq2seq forward needs labels or decoder_input_ids"):
        mixed_forward(t5, ids, mask, NAMES)
    with pytest.raises(ValueError, match=rf"labels has shape \(4, 2\) but input_ids has \(4, {t}\)"):
        mixed_forward(llama, ids, mask, NAMES, labels=ids[:, :2])
    with pytest.raises(
        ValueError, match=r"max_length=20 would count virtual tokens and padding.*max_new_tokens"
    ):
        mixed_generate(llama, ids, mask, NAMES, max_length=20)
    with pytest.raises(ValueError, match=r"inputs_embeds is built by mixed_generate"):
        mixed_generate(t5, ids, mask, NAMES, inputs_embeds=torch.zeros(4, t, 16))
