"""`mixed_generate`: generate with a different soft prompt for every example of one batch.

The placement (`[B, T]` ids -> `[B, P_i + T_i, H]` embeddings with prompt i in front of example i) and the
forward are `softprompt_ext.placement` (design notes there), shared with training; this module adds generation
and is the inference-side import point for `mixed_forward`, `MixedOutput` and the checks. Paper sections 1 and 6.
"""

from __future__ import annotations

from typing import Any

import torch
from peft import PeftModel

from ..placement import (
    MixedOutput,
    _is_encoder_decoder,
    check_batch,
    loaded_prompts,
    mixed_forward,
    place_prompts,
)

__all__ = ["MixedOutput", "check_batch", "loaded_prompts", "mixed_forward", "mixed_generate", "place_prompts"]


# ---------------------------------------------------------------------------------------------- generate
def mixed_generate(
    model: PeftModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    adapter_names: list[str],
    **generate_kwargs: Any,
) -> torch.Tensor:
    """`generate` in which example i uses the prompt adapter `adapter_names[i]`.

    Args:
        model, input_ids, attention_mask, adapter_names: as in `mixed_forward`.
        **generate_kwargs: passed to the base model's `generate` (e.g. `max_new_tokens=8, do_sample=False`).
            For decoder-only models use `max_new_tokens`: `max_length` would count every example's virtual
            tokens and padding.

    Returns:
        Token ids, right-padded with the pad token after EOS as `generate` does. Seq2seq: the decoder output
        `[B, 1 + N]`, starting with the decoder start token. Decoder-only: the new tokens only `[B, N]`
        (PEFT's generate returns input and new tokens). Under greedy decoding every row holds the tokens
        the example generates alone with `model.set_adapter(adapter_names[i])`. With
        `return_dict_in_generate=True` the `generate` output object is returned as it is.

    With one name repeated B times this is also a plain single-prompt generate. For decoder-only models
    that is worth knowing: with transformers >= 5.24, PEFT 0.21's own `generate` re-inserts the prompt at every
    decoding step (it looks for the cache under `past_key_values`, which `generate` now calls `cache`), so
    its tokens after the first differ from greedy decoding of the model.
    """
    encoder_decoder = _is_encoder_decoder(model)
    for key in ("inputs_embeds", "input_ids", "position_ids"):
        if key in generate_kwargs:
            raise ValueError(
                f"{key} is built by mixed_generate from input_ids and the prompts; do not pass it."
            )
    if not encoder_decoder and generate_kwargs.get("max_length") is not None:
        raise ValueError(
            f"max_length={generate_kwargs['max_length']} would count virtual tokens and padding, which differ "
            "between examples; pass max_new_tokens instead."
        )
    placed = place_prompts(model, input_ids, attention_mask, adapter_names)
    # The base model's generate derives the position ids of the left-padded decoder-only sequence from the
    # mask (cumsum - 1), the same positions `mixed_forward` passes explicitly.
    base: Any = model.get_base_model()
    return base.generate(
        inputs_embeds=placed.embeds, attention_mask=placed.mask, **generate_kwargs
    )
