"""The one label scorer (`scoring.score_label_ids`) equals scoring every (input, label) pair alone.

The reference runs each pair alone, unpadded, through PEFT's own forward after `model.set_adapter(name)` (or
through the plain model), and sums the label tokens' log-probabilities from the model's loss. Causal-LM
inputs drop the EOS the tokenizer appends: the label continues the input.
"""

from __future__ import annotations

import pytest
import torch
from helpers import padded_batch, random_prompt_config
from peft import LoraConfig, PrefixTuningConfig, get_peft_model

from softprompt_ext.inference.ensembles import ensemble_classify, score_labels
from softprompt_ext.inference.scoring import LabelScores, score_label_ids

TASK = {"t5": "SEQ_2_SEQ_LM", "llama": "CAUSAL_LM", "gpt2": "CAUSAL_LM"}
KINDS = ["t5", "llama", "gpt2"]
NAMES = ["p3", "p7", "p5", "p3"]  # mixed adapters of different prompt lengths
EOS = 1
# per-example candidates: 3, 1, 4 and 2 labels of 1 to 4 tokens (EOS included as a token for T5-style targets)
PER_EXAMPLE = [
    [[5, EOS], [7, 8, 9, EOS], [11]],
    [[12, 13]],
    [[5], [9, 9], [14, 15, 16, 17], [20, EOS]],
    [[30, 31, EOS], [6]],
]
SHARED = [[5, EOS], [7, 8, 9, EOS], [11]]
TOL = {"rtol": 1e-4, "atol": 1e-4}



@pytest.fixture
def build(make_model):
    """`build(kind)`: a tiny base model (weights x3 so scores vary) with prompts p3 (P=3), p7 (P=7), p5 (P=5)."""

    def make(kind: str):
        base = make_model(kind)
        with torch.no_grad():
            for p in base.parameters():
                if p.dim() > 1:
                    p.mul_(3.0)
        model = get_peft_model(base, random_prompt_config(kind, 3, 1), adapter_name="p3")
        model.add_adapter("p7", random_prompt_config(kind, 7, 2))
        model.add_adapter("p5", random_prompt_config(kind, 5, 3))
        return model.eval()

    return make



def _alone(model, ids: list[int], label: list[int], causal: bool, keep_eos: bool = False) -> torch.Tensor:
    """log p(label | ids) of one unpadded pair from the model's own loss (PEFT's forward for a PeftModel)."""
    y = torch.tensor([label])
    if not causal:
        x = torch.tensor([ids])
        return -model(input_ids=x, attention_mask=torch.ones_like(x), labels=y).loss * len(label)
    context = ids if keep_eos or ids[-1] != EOS else ids[:-1]
    x = torch.tensor([context + label])
    labels = torch.tensor([[-100] * len(context) + label])
    return -model(input_ids=x, attention_mask=torch.ones_like(x), labels=labels).loss * len(label)


def _reference(model, ids, mask, per_example, names, causal: bool, keep_eos: bool = False) -> torch.Tensor:
    """`[B, C]` reference scores, `-inf` where an example has fewer labels."""
    out = torch.full((len(per_example), max(map(len, per_example))), float("-inf"))
    with torch.no_grad():
        for b, labels in enumerate(per_example):
            if names is not None:
                model.set_adapter(names[b])
            real = ids[b][mask[b].bool()].tolist()
            for c, label in enumerate(labels):
                out[b, c] = _alone(model, real, label, causal, keep_eos)
    return out


# ---------------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("kind", KINDS)
def test_mixed_adapters_per_example_labels_equal_alone(build, tokenizer, kind, side):
    model = build(kind)
    ids, mask = padded_batch(tokenizer, side)
    out = score_label_ids(model, ids, mask, PER_EXAMPLE, NAMES)
    assert isinstance(out, LabelScores) and out.scores.dtype == torch.float32
    expected = _reference(model, ids, mask, PER_EXAMPLE, NAMES, causal=kind != "t5")
    torch.testing.assert_close(out.scores, expected, **TOL)
    assert out.num_tokens.tolist() == [
        [len(label) for label in labels] + [0] * (4 - len(labels)) for labels in PER_EXAMPLE
    ]
    assert out.token_log_probs.shape == (4, 4, 4)
    finite = torch.isfinite(out.scores)
    torch.testing.assert_close(out.token_log_probs.sum(-1)[finite], out.scores[finite])
    torch.testing.assert_close(out.normalized_scores[finite], (out.scores / out.num_tokens)[finite])


@pytest.mark.parametrize("kind", KINDS)
def test_active_adapter_for_every_row(build, tokenizer, kind):
    model = build(kind)
    model.set_adapter("p7")
    ids, mask = padded_batch(tokenizer, "right")
    out = score_label_ids(model, ids, mask, SHARED)  # adapter_names=None: the active adapter
    expected = _reference(model, ids, mask, [SHARED] * 4, ["p7"] * 4, causal=kind != "t5")
    torch.testing.assert_close(out.scores, expected, **TOL)
    torch.testing.assert_close(score_label_ids(model, ids, mask, SHARED, ["p7"] * 4).scores, out.scores)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("kind", KINDS)
def test_plain_model_without_prompt(make_model, tokenizer, kind, side):
    model = make_model(kind)
    ids, mask = padded_batch(tokenizer, side)
    out = score_label_ids(model, ids, mask, PER_EXAMPLE)
    expected = _reference(model, ids, mask, PER_EXAMPLE, None, causal=kind != "t5")
    torch.testing.assert_close(out.scores, expected, **TOL)


def test_lora_adapter_is_scored_through_the_base_model(make_model, tokenizer):
    model = get_peft_model(
        make_model("llama"), LoraConfig(task_type="CAUSAL_LM", r=2, target_modules=["q_proj"])
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(
                    0, 1.0, generator=torch.Generator().manual_seed(0)
                )  # LoRA B starts at 0: make it count
    ids, mask = padded_batch(tokenizer, "right")
    out = score_label_ids(model, ids, mask, SHARED)
    torch.testing.assert_close(
        out.scores, _reference(model, ids, mask, [SHARED] * 4, None, causal=True), **TOL
    )


@pytest.mark.parametrize("kind", ["t5", "llama"])
def test_single_token_labels(build, tokenizer, kind):
    """Decoder-only labels of one token are scored from the context pass alone."""
    model = build(kind)
    ids, mask = padded_batch(tokenizer, "left")
    labels = [[5], [11], [EOS]]
    out = score_label_ids(model, ids, mask, labels, NAMES)
    torch.testing.assert_close(
        out.scores, _reference(model, ids, mask, [labels] * 4, NAMES, kind != "t5"), **TOL
    )


@pytest.mark.parametrize("kind", ["t5", "llama"])
def test_each_input_is_encoded_once(build, tokenizer, kind):
    """The input pass sees B rows; only the label pass sees one row per (input, label)."""
    model = build(kind)
    ids, mask = padded_batch(tokenizer, "right")
    base = model.get_base_model()
    first_block = base.get_encoder().block[0] if kind == "t5" else base.model.layers[0]
    seen = []
    hook = first_block.register_forward_hook(lambda module, args, output: seen.append(args[0].shape[0]))
    try:
        score_label_ids(model, ids, mask, PER_EXAMPLE, NAMES)
    finally:
        hook.remove()
    rows = sum(map(len, PER_EXAMPLE))  # 10 label rows, not 4 x 4
    assert seen == ([4] if kind == "t5" else [4, rows])


# ---------------------------------------------------------------------------------------------- EOS
def test_score_labels_drops_the_eos_a_causal_tokenizer_appends(build, tokenizer):
    """Regression: `score_labels` / `ensemble_classify` scored causal labels after the input's EOS (0.2-0.47
    nats off); the label continues the input, as `rank_classify` always had it."""
    model = build("llama")
    ids, mask = padded_batch(tokenizer, "right")
    assert all(ids[b][mask[b].bool()][-1] == EOS for b in range(4))  # the tokenizer appends EOS
    with_eos = _reference(model, ids, mask, [SHARED] * 4, NAMES, causal=True, keep_eos=True)
    expected = _reference(model, ids, mask, [SHARED] * 4, NAMES, causal=True)
    assert (with_eos - expected).abs().max() > 0.05  # the defect is visible at this tolerance
    torch.testing.assert_close(score_labels(model, ids, mask, NAMES, SHARED), expected, **TOL)
    ensemble = ensemble_classify(model, ids, mask, ["p3", "p7"], SHARED)
    torch.testing.assert_close(
        ensemble.scores[1], _reference(model, ids, mask, [SHARED] * 4, ["p7"] * 4, True), **TOL
    )


def test_eos_handling_can_be_configured(build, tokenizer):
    model = build("gpt2")
    ids, mask = padded_batch(tokenizer, "left")
    kept = _reference(model, ids, mask, [SHARED] * 4, NAMES, causal=True, keep_eos=True)
    off = score_label_ids(model, ids, mask, SHARED, NAMES, strip_context_eos=False)
    torch.testing.assert_close(off.scores, kept, **TOL)
    other = score_label_ids(model, ids, mask, SHARED, NAMES, eos_token_id=[99, 98])  # 1 is not an EOS here
    torch.testing.assert_close(other.scores, kept, **TOL)
    listed = score_label_ids(model, ids, mask, SHARED, NAMES, eos_token_id=[99, EOS])
    torch.testing.assert_close(listed.scores, score_label_ids(model, ids, mask, SHARED, NAMES).scores)


# ---------------------------------------------------------------------------------------------- mode, errors
def test_model_mode_is_restored(build, tokenizer):
    model = build("t5").train()
    ids, mask = padded_batch(tokenizer, "right")
    score_label_ids(model, ids, mask, SHARED, NAMES)
    assert model.training


def test_bad_inputs(build, make_model, tokenizer):
    model = build("llama")
    ids, mask = padded_batch(tokenizer, "right")
    with pytest.raises(
        ValueError, match=r"input_ids must be a \[B, T\] tensor of token ids, got \(27,\)"
    ):
        score_label_ids(model, ids[0], None, SHARED, NAMES[:1])
    with pytest.raises(ValueError, match=r"attention_mask has shape \(4, 3\) but input_ids has shape"):
        score_label_ids(model, ids, mask[:, :3], SHARED, NAMES)
    with pytest.raises(
        ValueError, match=r"label_ids must be a non-empty list of non-empty token-id lists, got \[\]"
    ):
        score_label_ids(model, ids, mask, [], NAMES)
    with pytest.raises(ValueError, match=r"label_ids must be a non-empty list .* got \[\[5\], \[\]\]"):
        score_label_ids(model, ids, mask, [[5], []], NAMES)
    with pytest.raises(ValueError, match="got 2 per-example label lists for 4 examples"):
        score_label_ids(model, ids, mask, PER_EXAMPLE[:2], NAMES)
    with pytest.raises(ValueError, match=r"label_ids\[1\]=\[\[12, 'a'\]\] must be a non-empty list"):
        score_label_ids(model, ids, mask, [PER_EXAMPLE[0], [[12, "a"]], *PER_EXAMPLE[2:]], NAMES)
    with pytest.raises(ValueError, match=r"adapter_names\[0\]='nope' is not loaded"):
        score_label_ids(model, ids, mask, SHARED, ["nope"] * 4)
    with pytest.raises(ValueError, match=r"len\(adapter_names\)=2 but the batch holds 4 examples"):
        score_label_ids(model, ids, mask, SHARED, NAMES[:2])
    with pytest.raises(TypeError, match="adapter_names=.* was given but model is a LlamaForCausalLM"):
        score_label_ids(make_model("llama"), ids, mask, SHARED, NAMES)
    with pytest.raises(
        ValueError, match=r"an input is empty and the model has no soft prompt \(rows \[1\]\)"
    ):
        score_label_ids(make_model("llama"), ids, mask * torch.tensor([[1], [0], [1], [1]]), SHARED)
    prefix = get_peft_model(
        make_model("llama"), PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2)
    )
    with pytest.raises(
        ValueError, match="is a PREFIX_TUNING adapter; label scoring places prompt-tuning prompts"
    ):
        score_label_ids(prefix, ids, mask, SHARED)
