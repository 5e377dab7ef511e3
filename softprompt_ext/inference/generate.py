"""Generation with the active prompt, correct on every PEFT + transformers the library supports.

For encoder-decoders (T5) PEFT's own `model.generate` is right: the prompt goes in front of the encoder
input once (paper section 2). For decoder-only models PEFT 0.21 under transformers 5.x re-inserts the prompt
at every decoding step (`peft_internals.causal_generate_reinserts_prompt`), so every token after the first
is wrong. `generate(model, ...)` takes the correct path for whichever is installed: PEFT's `generate` where it
is right, otherwise the mixed-batch path (`mixed_generate` with the active adapter for every row), which
places the prompt once and lets the base model's own `generate` cache it. It detects the bug rather than
assuming it, so the workaround switches itself off once an installed PEFT is fixed.

`generate_texts` is the generate-and-decode loop the examples and benchmarks share.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from peft import PeftModelForCausalLM

from ..peft_internals import causal_generate_reinserts_prompt, is_prompt_tuning
from ..precision import autocast
from .mixed_batches import mixed_generate


def generate(model: Any, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
             **generate_kwargs: Any) -> torch.Tensor:
    """`model.generate(...)` with the active prompt adapter, correct for T5 and decoder-only models.

    Args:
        model: a `PeftModel` (prompt tuning or any other method) or a plain transformers model.
        input_ids: `[B, T]`; attention_mask: `[B, T]` (ones when None).
        **generate_kwargs: as for `generate` (`max_new_tokens`, `do_sample`, `num_beams`, ...).
    Returns:
        What PEFT's `generate` returns: seq2seq `[B, 1 + N]` decoder ids; decoder-only `[B, T + N]`, the input
        followed by the new tokens (left-padded inputs keep their padding).
    """
    if (
        isinstance(model, PeftModelForCausalLM)
        and is_prompt_tuning(model.peft_config[model.active_adapter])
        and causal_generate_reinserts_prompt()
    ):
        if input_ids is None:
            raise ValueError("input_ids is required to generate with a decoder-only soft-prompt model.")
        if generate_kwargs.get("return_dict_in_generate"):
            raise ValueError(
                "return_dict_in_generate=True is not supported on the corrected causal path; call "
                "softprompt_ext.mixed_generate(model, ids, mask, [name] * B, ...) for the generate output object."
            )
        names = [model.active_adapter] * input_ids.shape[0]
        new = mixed_generate(model, input_ids, attention_mask, names, **generate_kwargs)  # [B, N]
        return torch.cat([input_ids, new.to(input_ids.device)], dim=1)  # [B, T + N], as PEFT returns
    if input_ids is not None:
        generate_kwargs["input_ids"] = input_ids
    if attention_mask is not None:
        generate_kwargs["attention_mask"] = attention_mask
    return model.generate(**generate_kwargs)


@torch.no_grad()
def generate_texts(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    batch_size: int = 64,
    max_new_tokens: int = 5,
    max_input_length: int = 512,
    precision: str = "auto",
) -> list[str]:
    """Greedy generations for `texts`, decoded without special tokens and stripped, in batches.

    The model is put in eval mode for the loop and its mode restored. `precision` as in
    `softprompt_ext.precision.autocast` ("auto" uses bf16 only where the hardware has bf16 units).
    """
    if isinstance(texts, str):
        raise TypeError(f"texts must be a list of strings, got the string {texts!r}; wrap it: [{texts!r}].")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: list[str] = []
    try:
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(list(texts[start : start + batch_size]), padding=True, truncation=True,
                            max_length=max_input_length, return_tensors="pt").to(device)
            with autocast(device, precision):
                ids = generate(model, enc["input_ids"], enc["attention_mask"], max_new_tokens=max_new_tokens,
                               do_sample=False)  # [b, <= N] (seq2seq) or [b, T + N] (decoder-only)
            if not getattr(model.config, "is_encoder_decoder", False):
                ids = ids[:, enc["input_ids"].shape[1] :]  # [b, N]: the new tokens only
            out += [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]
    finally:
        model.train(was_training)
    return out

