"""Mixed-task batches: one frozen model, a different soft prompt for every example.

Lester, Al-Rfou, Constant (2021), "The Power of Scale for Parameter-Efficient Prompt Tuning",
https://arxiv.org/abs/2104.08691 -- sections 1 and 6: because only the prompt changes between tasks, one
frozen model can serve a batch whose examples belong to different tasks.

PEFT holds several prompt adapters in one `PeftModel` (`load_adapter`), but its forward and generate use
the single active adapter for the whole batch. This module reads each loaded prompt
(`peft_internals.prompt_weight`), places prompt i in front of example i itself and calls
the frozen base model with `inputs_embeds`. PEFT is neither patched nor called for the placement.

Design decisions
----------------
* The reference is "example i alone, without padding, with `model.set_adapter(adapter_names[i])`" -- what
  PEFT computes for that single example. A mixed batch reproduces it to float tolerance (greedy tokens
  identically), whatever the prompt lengths and however the input batch was padded: the real tokens of
  example i are the positions where `attention_mask` is 1, in order; pad positions are dropped first.
* Encoder-decoder (T5): the encoder input is `[prompt_i; tokens_i; pad...]` (right padding) with pad keys
  masked. T5's relative position bias depends only on the distance between two real positions, and masked
  keys get no attention weight, so every real position sees exactly what it sees alone. The decoder gets
  no virtual tokens (paper section 2).
* Decoder-only (Llama, GPT-2): the sequence is `[pad...; prompt_i; tokens_i]` (left padding, so that
  generation continues right after every example's last token) with `position_ids` counting real
  positions only: absolute (GPT-2) and rotary (Llama) positions are 0..L_i-1, as alone.
* Causal-LM logits come back aligned to `input_ids` (`[B, T, V]`, virtual positions removed), unlike
  PEFT's forward whose logits include the virtual positions. The loss follows PEFT: the label of the first
  input token is predicted from the last prompt position.
* Everything is differentiable in the prompts, so a mixed batch can also train several prompts at once.
"""

from __future__ import annotations

from typing import Any

import torch
from peft import PeftModel

# The placement and the forward live in the core (`placement.py`), so training shares them; re-exported here.
from ..placement import (  # noqa: F401
    MixedOutput,
    _is_encoder_decoder,
    _Placed,
    _with_loss,
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
