"""softprompt_ext.training.step_savings: the same loss from fewer logits, and a fused GELU with the same loss."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from helpers import prompt_grad, prompt_model

from softprompt_ext.training.step_savings import (
    TanhGELU,
    causal_lm_target_loss,
    fuse_gelu,
    target_positions,
)

IGNORE = -100



# ------------------------------------------------------------------------------------- target_positions
@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ([[IGNORE, IGNORE, 5, 6], [IGNORE, IGNORE, IGNORE, 7]], 3),  # first labelled column 2: logits 1..3
        ([[IGNORE, IGNORE, IGNORE, 7]], 2),  # one target token: logits at positions 2 and 3
        ([[4, 5, 6, 7]], 4),  # column 0 is never predicted: all 4 positions
        ([[IGNORE, 5, IGNORE, IGNORE]], 4),  # label in column 1 needs the logit at position 0
    ],
)
def test_target_positions_counts_the_logits_the_loss_reads(labels, expected):
    assert target_positions(torch.tensor(labels)) == expected


def test_target_positions_rejects_labels_without_a_target():
    with pytest.raises(ValueError, match="holds no labelled token"):
        target_positions(torch.full((2, 5), IGNORE))


def test_target_positions_rejects_a_flat_tensor():
    with pytest.raises(ValueError, match=r"labels must be \[batch, length\], got shape \(5,\)"):
        target_positions(torch.tensor([1, 2, 3, 4, 5]))


# ------------------------------------------------------------------------------------- causal_lm_target_loss
def _llama_batch(tokenizer_len: int):
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, tokenizer_len, (3, 10), generator=gen)  # [B, L]
    labels = ids.clone()
    labels[:, :7] = IGNORE  # input part
    labels[1, 7] = IGNORE  # a shorter target in one row
    mask = torch.ones_like(ids)
    mask[2, 0] = 0  # a left-padded row
    return ids, labels, mask


@pytest.mark.parametrize("wrapped", [False, True], ids=["plain-llama", "prompt-tuned-llama"])
def test_target_loss_equals_the_models_own_loss_and_gradient(make_model, tokenizer, wrapped):
    model = prompt_model(make_model, "llama") if wrapped else make_model("llama")
    ids, labels, mask = _llama_batch(len(tokenizer))
    reference = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    fast = causal_lm_target_loss(model, ids, labels, attention_mask=mask)
    torch.testing.assert_close(fast, reference, rtol=1e-6, atol=1e-6)
    if wrapped:
        torch.testing.assert_close(
            prompt_grad(model, fast), prompt_grad(model, reference), rtol=1e-5, atol=1e-7
        )


def test_target_loss_asks_the_model_for_the_target_positions_only(make_model, tokenizer):
    model = prompt_model(make_model, "llama", num_virtual_tokens=4)
    ids, labels, mask = _llama_batch(len(tokenizer))
    seen = {}

    def record(module, args, output):
        seen["logits"] = tuple(output.shape)

    # lm_head itself: PEFT's per-row forward and the shared prompt prefix both apply it to the kept positions only
    handle = model.get_base_model().get_output_embeddings().register_forward_hook(record)
    try:
        causal_lm_target_loss(model, ids, labels, attention_mask=mask)
    finally:
        handle.remove()
    assert seen["logits"] == (3, 4, len(tokenizer))  # first target column 7: logits 6..9, not all 4 + 10


def test_target_loss_rejects_labels_not_aligned_with_the_input(make_model):
    with pytest.raises(ValueError, match=r"labels has shape \(2, 3\) but input_ids has \(2, 5\)"):
        causal_lm_target_loss(
            make_model("llama"), torch.ones(2, 5, dtype=torch.long), torch.ones(2, 3, dtype=torch.long)
        )


def test_target_loss_refuses_a_model_that_ignores_logits_to_keep():
    def forward(input_ids, attention_mask=None, logits_to_keep=0):
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, 7))  # [B, L, V] whatever was asked

    labels = torch.tensor([[IGNORE, IGNORE, IGNORE, 2, 3]])
    with pytest.raises(ValueError, match="returned logits for 5 positions when asked for 3"):
        causal_lm_target_loss(forward, torch.ones(1, 5, dtype=torch.long), labels)


# ------------------------------------------------------------------------------------- fused GELU
def test_tanh_gelu_matches_transformers_new_gelu():
    from transformers.activations import FastGELUActivation, NewGELUActivation

    x = torch.linspace(-6, 6, 1001)
    torch.testing.assert_close(TanhGELU()(x), NewGELUActivation()(x), rtol=0, atol=1e-6)
    torch.testing.assert_close(TanhGELU()(x), FastGELUActivation()(x), rtol=0, atol=1e-6)


def test_fuse_gelu_swaps_every_gated_gelu_of_t5_and_keeps_loss_and_gradient(make_model, tokenizer):
    model = prompt_model(make_model, "t5").eval()
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(3, len(tokenizer), (2, 9), generator=gen)
    labels = torch.randint(3, len(tokenizer), (2, 3), generator=gen)
    before = model(input_ids=ids, labels=labels).loss
    grad_before = prompt_grad(model, before)

    assert fuse_gelu(model) == 4  # one per feed-forward block: 2 encoder + 2 decoder layers
    assert fuse_gelu(model) == 0  # idempotent
    after = model(input_ids=ids, labels=labels).loss
    torch.testing.assert_close(after, before, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(prompt_grad(model, after), grad_before, rtol=1e-5, atol=1e-7)
    assert isinstance(model.base_model.encoder.block[0].layer[1].DenseReluDense.act, TanhGELU)


def test_fuse_gelu_leaves_other_activations_alone(make_model):
    model = make_model("llama")  # SiLU
    assert fuse_gelu(model) == 0
    assert type(model.model.layers[0].mlp.act_fn).__name__ != "TanhGELU"
