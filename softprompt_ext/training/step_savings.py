"""Training-step savings for a frozen model: less work per step for the same result, to float rounding.

Prompt tuning freezes the model (paper section 2), so a step needs input gradients only. Two kinds of work a
plain step pays for and the result does not need:

* `causal_lm_target_loss`: a causal LM's logits only at the positions that predict labelled tokens
  (transformers' `logits_to_keep`) instead of `[B, P + T, V]`; the same mean cross-entropy, so the same
  gradients. Encoder-decoder models (T5) already compute target logits only.
* `fuse_gelu`: transformers' Python-composed tanh GELU (T5 1.1, mT5, GPT-2) swapped for PyTorch's fused
  kernel of the same formula, which saves fewer tensors for backward.

The one decision: dropout is kept (the paper's recipe uses 0.1; its masks are part of the result). bf16
matrix products are `softprompt_ext.precision`'s job. What each saves, measured side by side:
`python -m benchmarks.run` (benchmarks/RESULTS.md); the reasoning: docs/reference/design-notes.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..special_tokens import IGNORE_INDEX


class TanhGELU(torch.nn.Module):
    """GELU, tanh approximation, as one fused PyTorch kernel: `F.gelu(x, approximate="tanh")`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate="tanh")


def fuse_gelu(model: torch.nn.Module) -> int:
    """Replace transformers' Python-composed tanh-GELU modules in `model` by `TanhGELU`; return how many.

    Covers `NewGELUActivation` (T5 1.1 / LM-adapted T5 `gated-gelu`, mT5, GPT-2's `gelu_new`) and
    `FastGELUActivation`, which are the same formula written as separate operations. The swap changes
    results by float rounding only, holds no parameters (saved adapters are unaffected) and is idempotent.
    Call it on the base model before or after `get_peft_model`.
    """
    from transformers.activations import FastGELUActivation, NewGELUActivation

    composed = (NewGELUActivation, FastGELUActivation)
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) in composed:  # exact types: a subclass may compute something else
                setattr(parent, name, TanhGELU())
                count += 1
    return count


def target_positions(labels: torch.Tensor) -> int:
    """How many trailing positions' logits the loss needs: the `k` to pass as `logits_to_keep`.

    Args:
        labels: `[B, L]` token ids, `IGNORE_INDEX` where no loss is taken (the input part).
    Returns:
        `k` such that the logits of the last `k` positions predict every labelled token (the logit at
        position t predicts token t + 1, so k = L - first labelled column + 1, and at most L).
    """
    if labels.dim() != 2:
        raise ValueError(f"labels must be [batch, length], got shape {tuple(labels.shape)}.")
    labelled = (labels != IGNORE_INDEX).any(dim=0)  # [L]
    if not bool(labelled.any()):
        raise ValueError("labels holds no labelled token (every value is -100): there is no loss to compute.")
    first = int(labelled.nonzero()[0])
    length = labels.shape[1]
    return min(length, length - max(first, 1) + 1)  # column 0 is never predicted


def causal_lm_target_loss(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    **kwargs,
) -> torch.Tensor:
    """The causal-LM loss computed from the logits of the labelled positions only.

    Equal, up to float rounding, to `model(input_ids, attention_mask=..., labels=labels).loss` (the mean
    token cross-entropy over labelled tokens, computed in float32) for a transformers causal LM, a PEFT
    model wrapping one (prompt tuning, LoRA, ...), or any model whose forward takes `logits_to_keep`.
    It pays for `lm_head` on the last `target_positions(labels)` positions instead of on all P + L.

    Args:
        model: the (PEFT-wrapped) causal LM.
        input_ids: `[B, L]`.
        labels: `[B, L]`, `IGNORE_INDEX` on the positions without a loss; labels aligned with
            `input_ids` as transformers expects (the model shifts them).
        attention_mask: `[B, L]` or None.
        kwargs: passed on to the model's forward.
    Returns:
        the scalar loss.
    """
    if labels.shape != input_ids.shape:
        raise ValueError(
            f"labels has shape {tuple(labels.shape)} but input_ids has {tuple(input_ids.shape)}; a causal LM "
            "takes labels aligned with its input (the model shifts them)."
        )
    keep = target_positions(labels)
    out = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep, **kwargs)
    logits = out.logits  # [B, keep, V]: the last `keep` positions of the (possibly prompt-extended) input
    if logits.shape[1] != keep:
        raise ValueError(
            f"the model returned logits for {logits.shape[1]} positions when asked for {keep}: its forward "
            "does not honour logits_to_keep; compute the loss from model(..., labels=labels).loss instead."
        )
    shifted = labels[:, labels.shape[1] - keep + 1 :]  # [B, keep - 1]: what positions -keep..-2 predict
    return F.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]),  # [B * (keep - 1), V]
        shifted.reshape(-1),
        ignore_index=IGNORE_INDEX,
    )
