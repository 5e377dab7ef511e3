"""Mixed-task batches on a decoder-only base with each adapter's prompt computed once per batch.

The mixed-batch counterpart of `shared_prefix.py`: example i uses prompt `adapter_names[i]` (`[P_i, H]`), and
every distinct prompt is run once (`[1, P_a, H]`). Each row then attends to its own adapter's keys/values,
left-padded to the longest prompt (`[B, heads, Pmax, d]`, masked where the row's prompt is shorter), with the
position ids the per-row placement gives its tokens (`P_i` + their rank among the row's real tokens). The
results equal `placement.mixed_forward`'s per-row computation (tests/test_mixed_prefix.py); the same
architectures and conditions apply (`shared_prefix.per_row_reason`).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from .shared_prefix import _cache_argument
from .special_tokens import IGNORE_INDEX


def shared_mixed_forward(
    base: Any,
    embed: torch.nn.Module,
    prompts: dict[str, torch.Tensor],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    adapter_names: list[str],
    labels: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Logits and per-example token losses of a mixed batch, each prompt computed once.

    Args:
        base: the transformers causal LM; `embed`: its input embedding module.
        prompts: adapter name -> prompt `[P_a, H]` (`placement.loaded_prompts`).
        input_ids, attention_mask: `[B, T]`, left- or right-padded; labels `[B, T]` aligned to them or None.

    Returns:
        `(logits [B, T, V], summed_nll [B], counts [B])`: `logits[b, t]` predicts the token after input
        position t (0 on padding); the last two are None without labels. The first real token of example b is
        predicted by the last position of its prompt, as in the per-row placement.
    """
    stack, lm_head = base.base_model, base.get_output_embeddings()
    inputs_embeds = embed(input_ids)  # [B, T, H]
    batch, device, dtype = input_ids.shape[0], inputs_embeds.device, inputs_embeds.dtype
    names = list(prompts)
    lengths = torch.tensor([prompts[n].shape[0] for n in names], device=device)  # [A]
    longest = int(lengths.max())
    which = torch.tensor([names.index(n) for n in adapter_names], device=device)  # [B]

    caches, last_hidden = [], []
    for name in names:  # each distinct prompt once: [1, P_a, H]
        prompt = prompts[name].to(device=device, dtype=dtype)[None]
        out = stack(inputs_embeds=prompt, attention_mask=torch.ones(1, prompt.shape[1], device=device,
                                                                     dtype=attention_mask.dtype), use_cache=True)
        caches.append(out.get("cache", None) or out.get("past_key_values", None))
        last_hidden.append(out.last_hidden_state[0, -1])  # [H]
    cache = caches[0]
    for index, layer in enumerate(cache.layers):  # row b: its adapter's keys/values, left-padded to Pmax
        keys = [_left_pad(c.layers[index].keys, longest) for c in caches]  # A x [1, heads, Pmax, d]
        values = [_left_pad(c.layers[index].values, longest) for c in caches]
        layer.keys = torch.cat(keys)[which]  # [B, heads, Pmax, d]
        layer.values = torch.cat(values)[which]
    columns = torch.arange(longest, device=device)[None, :]  # [1, Pmax]
    prefix_mask = (columns >= longest - lengths[which][:, None]).to(attention_mask.dtype)  # [B, Pmax]
    full_mask = torch.cat([prefix_mask, attention_mask], dim=1)  # [B, Pmax + T]
    real = attention_mask.bool()  # [B, T]
    rank = real.long().cumsum(1) - 1  # [B, T] index among the row's real tokens
    kwargs: dict[str, Any] = {_cache_argument(stack) or "cache": cache}
    if "position_ids" in inspect.signature(stack.forward).parameters:
        kwargs["position_ids"] = lengths[which][:, None] + rank.clamp(min=0)  # [B, T] as in the placement
    rows = stack(inputs_embeds=inputs_embeds, attention_mask=full_mask, use_cache=True, **kwargs)
    hidden = rows.last_hidden_state  # [B, T, H]
    logits = torch.where(real[..., None], lm_head(hidden), 0)  # [B, T, V]
    if labels is None:
        return logits, None, None

    # for every real token: the hidden state that predicts it (the row's previous real token, or its prompt's last)
    b, t = real.nonzero(as_tuple=True)  # row-major: a row's tokens in order
    previous = torch.roll(hidden[b, t], 1, dims=0)  # [N, H] the previous real token (same row unless rank 0)
    first = (rank[b, t] == 0)[:, None]
    predictor = torch.where(first, torch.stack(last_hidden)[which[b]], previous)  # [N, H]
    targets = labels.to(device)[b, t]  # [N]
    keep = targets != IGNORE_INDEX
    nll = torch.nn.functional.cross_entropy(lm_head(predictor[keep]).float(), targets[keep], reduction="none")
    summed = torch.zeros(batch, dtype=nll.dtype, device=device).index_add(0, b[keep], nll)  # [B]
    counts = torch.zeros(batch, dtype=torch.long, device=device).index_add(0, b[keep], torch.ones_like(b[keep]))
    return logits, summed, counts


def _left_pad(states: torch.Tensor, length: int) -> torch.Tensor:
    """`[1, heads, P, d]` -> `[1, heads, length, d]` with zeros in front (masked positions)."""
    missing = length - states.shape[-2]
    if missing == 0:
        return states
    return torch.cat([states.new_zeros(*states.shape[:-2], missing, states.shape[-1]), states], dim=-2)
