"""Label scoring: log p(label | input) of C candidate labels per input, each input encoded once.

Rank classification (`rank_classification.rank_classify`) and prompt ensembles
(`ensembles.ensemble_classify`) both need the summed log-likelihood of every candidate label given an
input, possibly with a different soft prompt per example (Lester et al. 2021, sections 5 and 6). This module
is the one scorer behind them, at the token level: `score_label_ids(model, input_ids [B, T],
attention_mask [B, T], label_ids, adapter_names)`.

Design decisions
----------------
* The input is encoded once, not once per candidate. B inputs x C candidates become R = sum_b C_b candidate
  rows only where the candidates are: after the input pass, its states are gathered to the R rows with one
  index (`expand [R]`, example b repeated C_b times), so an input with fewer candidates costs fewer rows.
* Encoder-decoder (T5): the encoder runs on the B inputs (`[prompt_i; tokens_i; pad]` when a prompt is
  placed); the decoder runs on the R rows with teacher forcing (`decoder_start_token_id`, then the label
  shifted right), cross-attending to the gathered encoder states.
* Decoder-only (Llama, GPT-2): the (prompt +) context runs once with a key/value cache, left-padded
  `[pad; prompt_i; tokens_i]` with position ids counting real positions (the placement of
  `mixed_batches.place_prompts`; a model without a prompt is left-packed the same way). Its last position
  predicts every candidate's first token, so only that logit row is kept (`logits_to_keep=1`). The cache is
  gathered to the R rows (`Cache.batch_select_indices`) and the candidates' tokens but the last run on top
  of it, positions continuing from each row's length. Labels of one token need no second pass at all.
* A causal LM's candidate continues its input, so a trailing EOS of each input (what T5-style tokenizers
  append) is dropped before scoring; T5 inputs keep their EOS, the text-to-text input format.
* Prompts: `adapter_names` gives each example its own prompt-tuning adapter (mixed batches,
  `multi_prompt`); without it a `PeftModel` uses its active adapter for every row; a plain transformers
  model, or a `PeftModel` whose active adapter is not a prompt (e.g. LoRA, which lives in the base model's
  layers), is run without one.
* Log-probabilities are computed in float32 whatever the model's dtype; the model is put in eval mode for
  the call (dropout would make scores random) and its mode is restored; no gradients are kept.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from peft import PeftModel
from transformers.modeling_outputs import BaseModelOutput

from ..peft_internals import is_prompt_tuning
from .mixed_batches import check_batch, place_prompts


@dataclass
class LabelScores:
    """Log-likelihoods of B examples' candidate labels (C = the most candidates of any example).

    Attributes:
        scores: `[B, C]` float32 summed log p(label | input); `-inf` where example b has fewer than C labels.
        num_tokens: `[B, C]` long, tokens in each label (0 where there is none).
        token_log_probs: `[B, C, W]` float32 log-probability of each label token (W = the longest label);
            0 past a label's end.
    """

    scores: torch.Tensor
    num_tokens: torch.Tensor
    token_log_probs: torch.Tensor

    @property
    def normalized_scores(self) -> torch.Tensor:
        """`[B, C]` mean log-probability per token (`scores / num_tokens`; `-inf` stays `-inf`)."""
        return self.scores / self.num_tokens.clamp(min=1)


@torch.no_grad()
def score_label_ids(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    label_ids: Sequence[Sequence[int]] | Sequence[Sequence[Sequence[int]]],
    adapter_names: list[str] | None = None,
    *,
    strip_context_eos: bool = True,
    eos_token_id: int | Sequence[int] | None = None,
) -> LabelScores:
    """Score every candidate label of every example; each input is encoded once.

    Args:
        model: a `PeftModelForSeq2SeqLM` / `PeftModelForCausalLM` holding prompt-tuning adapters, another
            `PeftModel` (e.g. LoRA), or a plain transformers seq2seq or causal LM.
        input_ids: `[B, T]` token ids, left- or right-padded; only positions with `attention_mask == 1` count.
        attention_mask: `[B, T]` (None: all ones).
        label_ids: the candidates as token-id lists: C lists shared by all examples (e.g.
            `tokenizer(labels, add_special_tokens=False).input_ids`, plus EOS for T5 targets), or B lists of
            such lists, one per example (they may differ in length). Seq2seq: the decoder targets;
            decoder-only: the tokens that continue the input.
        adapter_names: B prompt-adapter names, one per example (names may repeat, prompt lengths may differ);
            None: the active adapter of a prompt-tuning `PeftModel` for every example, or no prompt.
        strip_context_eos: decoder-only: drop an EOS that ends an example's input (the label continues the
            input). Ignored for encoder-decoders.
        eos_token_id: the EOS id or ids for `strip_context_eos` (default: the model config's `eos_token_id`).

    Returns:
        `LabelScores`: `scores [B, C]`, `num_tokens [B, C]`, `token_log_probs [B, C, W]`, on the model's
        device, each example's scores equal (to float round-off) to scoring its (input, label) pairs alone.
    """
    attention_mask = check_batch(input_ids, attention_mask, None)  # [B, T]
    base, names = _base_and_prompts(model, adapter_names, input_ids.shape[0])
    device = _device(base)
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    per_example = _per_example_label_ids(label_ids, input_ids.shape[0])
    config = base.config
    encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
    if not encoder_decoder and strip_context_eos:
        eos = eos_token_id if eos_token_id is not None else _config_eos(base)
        attention_mask = _drop_trailing_eos(input_ids, attention_mask, eos)

    counts = [len(labels) for labels in per_example]
    expand = torch.repeat_interleave(
        torch.arange(len(counts), device=device), torch.tensor(counts, device=device)
    )
    rows = [ids for labels in per_example for ids in labels]  # R = sum_b C_b label rows, example-major
    width = max(len(ids) for ids in rows)
    pad = config.pad_token_id if config.pad_token_id is not None else 0
    labels = torch.full((len(rows), width), pad, dtype=torch.long)  # [R, W]
    label_mask = torch.zeros(len(rows), width, dtype=torch.long)  # [R, W]
    for r, ids in enumerate(rows):
        labels[r, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        label_mask[r, : len(ids)] = 1
    labels, label_mask = labels.to(device), label_mask.to(device)

    was_training = model.training
    model.eval()
    try:
        if encoder_decoder:
            token_lp = _score_encoder_decoder(model, base, names, input_ids, attention_mask, labels, expand)
        else:
            token_lp = _score_decoder_only(
                model, base, names, input_ids, attention_mask, labels, label_mask, expand
            )
    finally:
        model.train(was_training)
    token_lp = token_lp * label_mask  # [R, W]; 0 past each label's end

    batch, num_labels = len(counts), max(counts)
    slot = torch.cat([torch.arange(c, device=device) for c in counts])  # [R] label index within its example
    scores = torch.full((batch, num_labels), float("-inf"), device=device)  # [B, C]
    scores[expand, slot] = token_lp.sum(1)
    num_tokens = torch.zeros(batch, num_labels, dtype=torch.long, device=device)  # [B, C]
    num_tokens[expand, slot] = label_mask.sum(1)
    token_log_probs = torch.zeros(batch, num_labels, width, device=device)  # [B, C, W]
    token_log_probs[expand, slot] = token_lp
    return LabelScores(scores=scores, num_tokens=num_tokens, token_log_probs=token_log_probs)


# ---------------------------------------------------------------------------------------------- passes
def _score_encoder_decoder(model, base, names, input_ids, attention_mask, labels, expand) -> torch.Tensor:
    """Per-token log-probs `[R, W]`: the encoder on the B inputs, the decoder on the R label rows."""
    if names is not None:
        placed = place_prompts(model, input_ids, attention_mask, names)
        encoder_kwargs = {"inputs_embeds": placed.embeds}  # [B, S, H]
        attention_mask = placed.mask  # [B, S]
    else:
        encoder_kwargs = {"input_ids": input_ids}
    _check_not_empty(attention_mask)
    encoder = base.get_encoder()
    hidden = encoder(**encoder_kwargs, attention_mask=attention_mask).last_hidden_state  # [B, S, H]
    start = base.config.decoder_start_token_id
    start = start if start is not None else (base.config.pad_token_id or 0)
    # teacher forcing: the decoder start token, then the label shifted right
    decoder_input_ids = torch.cat([torch.full_like(labels[:, :1], start), labels[:, :-1]], 1)  # [R, W]
    logits = base(
        encoder_outputs=BaseModelOutput(last_hidden_state=hidden[expand]),  # [R, S, H], no encoder rerun
        attention_mask=attention_mask[expand],  # [R, S]
        decoder_input_ids=decoder_input_ids,
        use_cache=False,
    ).logits  # [R, W, V]
    return _log_probs(logits, labels)


def _score_decoder_only(
    model, base, names, input_ids, attention_mask, labels, label_mask, expand
) -> torch.Tensor:
    """Per-token log-probs `[R, W]`: the context once with a cache, then the labels on the gathered cache."""
    if names is not None:
        placed = place_prompts(model, input_ids, attention_mask, names)
        context = {"inputs_embeds": placed.embeds}  # [B, L, H] left-padded [pad; prompt_i; tokens_i]
        mask, positions = placed.mask, placed.positions  # [B, L], [B, L]
    else:
        ids, mask, positions = _left_pack(input_ids, attention_mask, base.config.pad_token_id or 0)
        context = {"input_ids": ids}  # [B, L]
    lengths = _check_not_empty(mask)  # [B] real positions P_i + T_i
    keep = {"logits_to_keep": 1} if _accepts(base, "logits_to_keep") else {}
    cache_key = "cache" if _accepts(base, "cache") else "past_key_values"  # transformers >= 5.2x: `cache`
    out = base(**context, attention_mask=mask, position_ids=positions, use_cache=True, **keep)
    last = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # [B, V] the last position predicts token 0
    first = last[expand, labels[:, 0]][:, None]  # [R, 1]
    if labels.shape[1] == 1:
        return first
    cache = getattr(out, "cache", None)
    if cache is None:
        cache = getattr(out, "past_key_values", None)
    if cache is None or not hasattr(cache, "batch_select_indices"):
        raise TypeError(
            f"{type(base).__name__} returned no transformers Cache object with use_cache=True (got "
            f"{type(cache).__name__}); label scoring of decoder-only models needs one (transformers >= 5)."
        )
    # [B, ...] -> [R, ...]: the context's keys and values, one row per label (no context recomputed)
    cache.batch_select_indices(expand)
    steps = labels.shape[1] - 1  # the last label token predicts nothing that is scored
    rest = base(
        input_ids=labels[:, :-1],  # [R, W - 1]
        attention_mask=torch.cat([mask[expand], label_mask[:, :-1].to(mask.dtype)], 1),  # [R, L + W - 1]
        position_ids=lengths[expand, None] + torch.arange(steps, device=labels.device),  # [R, W - 1]
        use_cache=True,
        **{cache_key: cache},
    ).logits  # [R, W - 1, V]
    return torch.cat([first, _log_probs(rest, labels[:, 1:])], 1)  # [R, W]


def _log_probs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax of `logits [N, W, V]` at `targets [N, W]`, in float32 -> `[N, W]`."""
    logits = logits.float()
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [N, W]
    return picked - torch.logsumexp(logits, dim=-1)


def _left_pack(input_ids: torch.Tensor, attention_mask: torch.Tensor, pad: int):
    """The real tokens of `input_ids [B, T]` moved to the right end: ids, mask and position ids `[B, L]`."""
    real = attention_mask.bool()  # [B, T]
    count = real.sum(1)  # [B]
    length = int(count.max())
    rows, cols = real.nonzero(as_tuple=True)
    dest = (length - count)[rows] + (real.long().cumsum(1) - 1)[rows, cols]
    ids = input_ids.new_full((input_ids.shape[0], length), pad)  # [B, L]
    ids[rows, dest] = input_ids[rows, cols]
    columns = torch.arange(length, device=input_ids.device)[None]  # [1, L]
    mask = (columns >= (length - count)[:, None]).long()  # [B, L]
    positions = (mask.cumsum(1) - 1).clamp(min=0)  # [B, L]
    return ids, mask, positions


def _drop_trailing_eos(input_ids: torch.Tensor, attention_mask: torch.Tensor, eos) -> torch.Tensor:
    """`attention_mask [B, T]` with the last real token masked out where it is an EOS."""
    eos_ids = [] if eos is None else [int(eos)] if isinstance(eos, int) else [int(e) for e in eos]
    if not eos_ids:
        return attention_mask
    real = attention_mask.bool()  # [B, T]
    columns = torch.arange(input_ids.shape[1], device=input_ids.device)
    last = torch.where(real, columns, -1).max(1).values  # [B] column of the last real token (-1: none)
    token = input_ids.gather(1, last.clamp(min=0)[:, None]).squeeze(1)  # [B]
    is_eos = (last >= 0) & torch.isin(token, torch.tensor(eos_ids, device=input_ids.device))  # [B]
    mask = attention_mask.clone()
    mask[is_eos.nonzero(as_tuple=True)[0], last[is_eos]] = 0
    return mask


# ---------------------------------------------------------------------------------------------- checks
def _base_and_prompts(model, adapter_names, batch: int):
    """The transformers model to call and the B adapter names to place (None: no prompt)."""
    if getattr(model, "config", None) is None:
        raise TypeError(f"{type(model).__name__} has no .config; pass a transformers model or a PeftModel.")
    if not isinstance(model, PeftModel):
        if adapter_names is not None:
            raise TypeError(
                f"adapter_names={adapter_names!r} was given but model is a {type(model).__name__}, not a "
                "peft.PeftModel holding prompt adapters; drop adapter_names or wrap the model with get_peft_model."
            )
        return model, None
    if adapter_names is not None:
        return model.get_base_model(), adapter_names
    config = model.peft_config[model.active_adapter]
    if is_prompt_tuning(config):
        return model.get_base_model(), [model.active_adapter] * batch
    if config.is_prompt_learning:
        kind = getattr(config.peft_type, "value", config.peft_type)
        raise ValueError(
            f"the active adapter {model.active_adapter!r} is a {kind} adapter; label scoring places "
            "prompt-tuning prompts only (peft_type PROMPT_TUNING). Use SoftPromptConfig or PromptTuningConfig."
        )
    return model.get_base_model(), None  # e.g. LoRA: its layers are inside the base model


def _check_not_empty(mask: torch.Tensor) -> torch.Tensor:
    """Real positions per row `[B]` of the (placed) input; errors when a row has none."""
    lengths = mask.sum(1)  # [B]
    if mask.shape[1] == 0 or bool((lengths == 0).any()):
        empty = (lengths == 0).nonzero().flatten().tolist() if mask.shape[1] else list(range(mask.shape[0]))
        raise ValueError(
            f"an input is empty and the model has no soft prompt (rows {empty}): nothing predicts the label's "
            "first token; give the input at least one token (e.g. a BOS)."
        )
    return lengths


def _is_id_list(value) -> bool:
    return (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) > 0
        and all(isinstance(t, int) and not isinstance(t, bool) for t in value)
    )


def _per_example_label_ids(label_ids, batch: int) -> list[list[list[int]]]:
    """B lists of label token-id lists, from shared (C lists) or per-example (B lists of lists) `label_ids`."""
    if isinstance(label_ids, torch.Tensor) or not isinstance(label_ids, Sequence) or not label_ids:
        raise ValueError(
            f"label_ids must be a non-empty list of non-empty token-id lists, got {label_ids!r}; "
            "e.g. tokenizer(['positive', 'negative'], add_special_tokens=False).input_ids."
        )
    if all(_is_id_list(ids) for ids in label_ids):
        shared = [list(ids) for ids in label_ids]
        return [shared] * batch
    nested = all(
        isinstance(x, Sequence) and not isinstance(x, str) and x and not _is_id_list(x) for x in label_ids
    )
    if not nested:
        raise ValueError(
            f"label_ids must be a non-empty list of non-empty token-id lists (shared by all examples) or one "
            f"such list per example, got {label_ids!r}."
        )
    if len(label_ids) != batch:
        raise ValueError(
            f"got {len(label_ids)} per-example label lists for {batch} examples; pass one list per example, or "
            "one flat list of token-id lists shared by all."
        )
    for i, labels in enumerate(label_ids):
        if not all(_is_id_list(ids) for ids in labels):
            raise ValueError(
                f"label_ids[{i}]={labels!r} must be a non-empty list of non-empty token-id lists (ints)."
            )
    return [[list(ids) for ids in labels] for labels in label_ids]


def _config_eos(base):
    eos = getattr(base.config, "eos_token_id", None)
    if eos is None and getattr(base, "generation_config", None) is not None:
        eos = base.generation_config.eos_token_id
    return eos


def _accepts(base, name: str) -> bool:
    return name in inspect.signature(base.forward).parameters


def _device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")
