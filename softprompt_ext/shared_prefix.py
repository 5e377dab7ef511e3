"""The shared prompt prefix: a decoder-only model computes its P prompt positions once per batch.

In a causal LM the prompt sits at the front of every row (paper section 2: the prompt is prepended to the
embedded input), its positions attend only to each other, and they carry the same position ids 0..P-1 in
every row. Their hidden states, keys and values are therefore the same in every row, whatever the rows'
tokens and padding after them. PEFT's prompt-tuning forward carries B copies of them through every layer
(`[B, P + T, H]`); this module runs the prompt once (`[1, P, H]`), hands its keys/values to the rows as a KV
cache expanded over the batch without copying (`[B, heads, P, d]` views of `[1, heads, P, d]`), and runs the
rows' T tokens (`[B, T, H]`) with the full mask `[B, P + T]`. Autograd sums the rows' contributions to the
prompt's gradient through the expansion, so loss and gradient equal the per-row computation.

Where that equality is not established the forward runs per row (PEFT's own forward) and says why, once per
reason (`per_row_reason`):

* an architecture outside `POSITION_RULES` (ALiBi or learned positions computed some other way, sliding
  windows that could be shorter than P, anything not tested here);
* gradient checkpointing (transformers drops a KV cache inside checkpointed layers);
* dropout active in training mode (per-row, every row draws its own dropout mask on the prompt positions;
  one shared computation draws one);
* call options whose outputs have per-position shapes (`output_hidden_states`, `output_attentions`), task ids,
  position or token-type ids, or keyword arguments this forward does not know.

What the caller gets is what PEFT returns: logits `[B, P + T, V]` (the P virtual positions first, the same
values in every row) and the mean next-token loss over the label tokens (`num_items_in_batch` as in
transformers' loss when the Trainer passes it).
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any, cast

import torch
from transformers.modeling_outputs import CausalLMOutputWithPast

from .special_tokens import IGNORE_INDEX

# model_type -> config fields holding dropout probabilities. Each architecture here derives position ids (or
# ALiBi offsets) that make the prompt's positions 0..P-1 in every row and continue correctly after a KV cache of
# length P: Llama and GPT-2 count from the cache length, OPT from the attention mask's cumulative sum (sliced
# after the cache), Bloom's ALiBi bias from the mask's cumulative sum over keys. Pinned per architecture by
# tests/test_shared_prefix.py against the per-row computation.
POSITION_RULES: dict[str, tuple[str, ...]] = {
    "llama": ("attention_dropout",),
    "gpt2": ("resid_pdrop", "embd_pdrop", "attn_pdrop"),
    "opt": ("dropout", "attention_dropout", "activation_dropout"),
    "bloom": ("hidden_dropout", "attention_dropout"),
}

# keyword arguments the shared forward handles; anything else goes to PEFT's per-row forward
_HANDLED = {"use_cache", "num_items_in_batch", "logits_to_keep"}

_explained: set[str] = set()

# where a model output keeps the KV cache: `cache` from transformers 5.24 on, `past_key_values` before
_CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def explain_once(reason: str) -> None:
    """Warn, once per process and reason, that a forward ran per row instead of sharing the prompt."""
    if reason in _explained:
        return
    _explained.add(reason)
    warnings.warn(
        f"softprompt_ext computes the soft prompt per row here (as PEFT does) instead of once per batch: {reason}. "
        "Results are the same; only speed and memory differ.",
        UserWarning,
        stacklevel=3,
    )


def _cache_argument(base: torch.nn.Module) -> str | None:
    """The name the base model's forward takes a KV cache under (`cache` from transformers 5.24 on,
    `past_key_values` before), or None."""
    parameters = inspect.signature(base.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in parameters:
            return name
    return None


def _active_dropout(base: torch.nn.Module, fields: tuple[str, ...]) -> list[str]:
    """The dropout settings that draw random masks in this forward (training mode only)."""
    if not base.training:
        return []
    config = base.config
    active = [f"{name}={getattr(config, name)}" for name in fields if float(getattr(config, name, 0.0) or 0.0) > 0]
    active += [f"{name} (p={m.p})" for name, m in base.named_modules() if isinstance(m, torch.nn.Dropout) and m.p > 0]
    return active


def per_row_reason(base: torch.nn.Module, options: dict[str, Any]) -> str | None:
    """Why this forward must run per row, or None when the shared prefix gives the per-row result exactly.

    Args:
        base: the transformers causal LM under the PEFT model.
        options: the forward's keyword arguments other than `input_ids`, `attention_mask`, `inputs_embeds`
            and `labels` (None values count as absent).
    """
    model_type = getattr(getattr(base, "config", None), "model_type", None)
    if model_type not in POSITION_RULES:
        return (
            f"model_type {model_type!r} is not one whose position rule is tested with a shared prefix "
            f"({', '.join(sorted(POSITION_RULES))})"
        )
    stack = getattr(base, "base_model", None)
    if not isinstance(stack, torch.nn.Module) or stack is base or _cache_argument(stack) is None:
        return f"{type(base).__name__}'s layer stack takes no KV cache argument"
    if cast(Any, base).get_output_embeddings() is None:
        return f"{type(base).__name__} has no output embeddings (lm_head)"
    given = {name for name, value in options.items() if value is not None and value is not False}
    unknown = sorted(given - _HANDLED - {"return_dict", "labels"})
    if unknown:
        return f"the call passes {unknown}, which the shared forward does not handle"
    keep = options.get("logits_to_keep")
    if keep is not None and (not isinstance(keep, int) or isinstance(keep, bool) or keep < 0):
        return f"logits_to_keep={keep!r} is not a count of last positions"
    if keep and options.get("labels") is not None:
        return "logits_to_keep is combined with labels"
    if options.get("return_dict") is False:
        return "return_dict=False asks for a tuple"
    if base.training and torch.is_grad_enabled() and any(
        getattr(m, "gradient_checkpointing", False) for m in base.modules()
    ):
        return "gradient checkpointing is on, and transformers drops a KV cache inside checkpointed layers"
    dropout = _active_dropout(base, POSITION_RULES[model_type])
    if dropout:
        return (
            f"dropout is active in training mode ({', '.join(dropout[:4])}), so each row draws its own mask on the "
            "prompt positions; set these to 0 to share the prompt"
        )
    return None


def shared_prefix_forward(
    base: Any,
    prompt: torch.Tensor,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor | None,
    labels: torch.Tensor | None,
    *,
    use_cache: bool | None = None,
    num_items_in_batch: Any = None,
    logits_to_keep: int = 0,
) -> CausalLMOutputWithPast:
    """The prompt-tuning forward of a causal LM with the prompt computed once.

    Args:
        base: the transformers causal LM (an architecture of `POSITION_RULES`).
        prompt: `[1, P, H]` the active adapter's prompt, in the input embeddings' dtype.
        inputs_embeds: `[B, T, H]` the embedded input (left- or right-padded).
        attention_mask: `[B, T]` (None: all ones).
        labels: `[B, T]` aligned to the input as in PEFT (-100: no loss), or None.
        use_cache: returns the KV cache of all P + T positions when it resolves True (as the base model would).
        num_items_in_batch: the Trainer's token count across gradient-accumulation steps; the loss is then the
            summed token loss divided by it, as in transformers' causal-LM loss.
        logits_to_keep: k > 0 returns the logits of the last k of the P + T positions only (`lm_head` runs on
            those alone), as transformers' `logits_to_keep`; 0 keeps all. Not combined with `labels`.

    Returns:
        `CausalLMOutputWithPast` with `logits [B, P + T, V]` (virtual positions first, equal in every row) and
        `loss` (mean over label tokens; the first input token is predicted by the last prompt position).
    """
    batch, length = inputs_embeds.shape[:2]
    num_virtual = prompt.shape[1]
    stack, lm_head = base.base_model, base.get_output_embeddings()  # the layers (final norm included), lm_head
    cache_name = _cache_argument(stack)
    assert cache_name is not None  # per_row_reason checked it
    device = inputs_embeds.device
    if attention_mask is None:
        attention_mask = torch.ones(batch, length, dtype=torch.long, device=device)
    ones = torch.ones(1, num_virtual, dtype=attention_mask.dtype, device=attention_mask.device)
    full_mask = torch.cat([ones.expand(batch, -1), attention_mask], dim=1)  # [B, P + T]

    head = stack(inputs_embeds=prompt, attention_mask=ones, use_cache=True)
    prompt_hidden = head.last_hidden_state  # [1, P, H]
    cache = head.get("cache", None) or head.get("past_key_values", None)
    for layer in cache.layers:  # [1, heads, P, d] -> [B, heads, P, d] views (no copy)
        layer.keys = layer.keys.expand(batch, -1, -1, -1)
        layer.values = layer.values.expand(batch, -1, -1, -1)
    rows = stack(inputs_embeds=inputs_embeds, attention_mask=full_mask, use_cache=use_cache, **{cache_name: cache})
    row_hidden = rows.last_hidden_state  # [B, T, H]

    # The logits the caller gets. The loss below does not go through them: it applies lm_head again to the
    # labelled positions only, so the backward pass multiplies by lm_head's [V, H] weight for those alone.
    if logits_to_keep and logits_to_keep <= length:
        logits = lm_head(row_hidden[:, length - logits_to_keep:])  # [B, k, V]
    else:
        tail = num_virtual if not logits_to_keep else logits_to_keep - length
        prompt_logits = lm_head(prompt_hidden[:, num_virtual - tail:])  # [1, P, V] (or the last ones)
        logits = torch.cat([prompt_logits.expand(batch, -1, -1), lm_head(row_hidden)], dim=1)  # [B, P + T, V]

    loss = None
    if labels is not None:
        loss = _next_token_loss(lm_head, prompt_hidden[0, -1], row_hidden, labels.to(device), num_items_in_batch)
    returned_cache = rows.get("cache", None) or rows.get("past_key_values", None)
    return CausalLMOutputWithPast(loss=loss, logits=logits, **{_CACHE_FIELD: returned_cache})


def _next_token_loss(
    lm_head: torch.nn.Module,
    last_prompt: torch.Tensor,
    row_hidden: torch.Tensor,
    labels: torch.Tensor,
    num_items_in_batch: Any,
) -> torch.Tensor:
    """transformers' causal-LM loss over `[prompt; input]` with the prompt's labels -100, computed on the
    labelled positions only: `lm_head(last_prompt [H])` predicts `labels[:, 0]`, `lm_head(row_hidden[:, t])`
    predicts `labels[:, t + 1]` (`row_hidden [B, T, H]`). A position whose label is -100 adds nothing to the
    loss or its gradient, so its scores are never formed. Upcast to float32 as transformers does."""
    batch = labels.shape[0]
    first_scores = lm_head(last_prompt).float()  # [V]
    first = torch.nn.functional.cross_entropy(
        first_scores.expand(batch, -1), labels[:, 0], ignore_index=IGNORE_INDEX, reduction="sum"
    )
    shifted = labels[:, 1:]  # [B, T - 1]: what row positions 0..T-2 predict
    b, t = (shifted != IGNORE_INDEX).nonzero(as_tuple=True)
    scores = lm_head(row_hidden[b, t]).float()  # [N, V]
    rest = torch.nn.functional.cross_entropy(scores, shifted[b, t], reduction="sum")
    if num_items_in_batch is None:
        denominator: Any = (labels != IGNORE_INDEX).sum()
    elif isinstance(num_items_in_batch, torch.Tensor):
        denominator = num_items_in_batch.to(labels.device)
    else:
        denominator = num_items_in_batch
    return (first + rest) / denominator
