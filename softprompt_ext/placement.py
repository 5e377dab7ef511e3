"""Mixed-task batches, the placement and the forward: one frozen model, a different soft prompt per example.

Lester, Al-Rfou, Constant (2021), "The Power of Scale for Parameter-Efficient Prompt Tuning",
https://arxiv.org/abs/2104.08691 -- sections 1 and 6: because only the prompt changes between tasks, one
frozen model can serve a batch whose examples belong to different tasks. Inference (`inference/`, which adds
`mixed_generate` in `inference/mixed_batches.py`) and training (`training/multitask.py`, K prompts trained in
one run) place prompts here -- one placement.

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

from dataclasses import dataclass
from typing import Any, cast

import torch
from peft import PeftModel, PeftModelForCausalLM, PeftModelForSeq2SeqLM

from .mixed_prefix import shared_mixed_forward
from .peft_internals import encoder_prompt, input_embeddings, is_prompt_tuning, prompt_weight
from .shared_prefix import explain_once, per_row_reason
from .special_tokens import IGNORE_INDEX


@dataclass
class MixedOutput:
    """What `mixed_forward` returns.

    Attributes:
        logits: seq2seq: the decoder logits `[B, L, V]` (aligned to `labels` / `decoder_input_ids`);
            decoder-only: `[B, T, V]` aligned to `input_ids`, `logits[b, t]` predicting the token after
            input position t; the virtual positions are removed and pad positions (`attention_mask == 0`)
            hold 0.
        loss: mean token loss over the whole batch (what a one-adapter forward reports), or None.
        loss_per_example: `[B]` mean token loss of each example, equal to the loss of the example run
            alone with its adapter; NaN for an example without label tokens. None without labels.
        num_label_tokens: `[B]` number of tokens each loss averages over, or None without labels
            (`loss_per_example * num_label_tokens` is the summed negative log-likelihood).
    """

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    loss_per_example: torch.Tensor | None = None
    num_label_tokens: torch.Tensor | None = None


@dataclass
class _Placed:
    """A batch with every prompt in place: `embeds [B, L, H]`, `mask [B, L]`, `positions [B, L]`, and for
    every real input token (`rows`, `cols` index `input_ids`) its column `dest` in the placed sequence."""

    embeds: torch.Tensor
    mask: torch.Tensor
    positions: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    dest: torch.Tensor


# ---------------------------------------------------------------------------------------------- checks
def _is_encoder_decoder(model: PeftModel) -> bool:
    """True for a seq2seq `PeftModel` (prompt on the encoder), False for a causal LM; errors otherwise."""
    if not isinstance(model, PeftModel):
        raise TypeError(
            f"model must be a peft.PeftModel holding prompt adapters, got {type(model).__name__}; wrap the base "
            "model with peft.get_peft_model(base, SoftPromptConfig(...)) or PeftModel.from_pretrained(base, path), "
            "then add prompts with model.load_adapter(path, adapter_name=...)."
        )
    if isinstance(model, PeftModelForSeq2SeqLM):
        return True
    if isinstance(model, PeftModelForCausalLM):
        return False
    raise TypeError(
        f"model is a {type(model).__name__}; mixed-task batches need task_type='SEQ_2_SEQ_LM' or 'CAUSAL_LM' "
        "(a PeftModelForSeq2SeqLM or PeftModelForCausalLM)."
    )


def loaded_prompts(model: PeftModel, adapter_names: list[str] | tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The encoder-side prompt `[P, H]` of every distinct adapter in `adapter_names`, after validation.

    Raises `TypeError` when `adapter_names` is not a list of strings and `ValueError` for a name that is not
    loaded, an adapter that is not a prompt-tuning adapter, or a prompt whose width is not the model's
    d_model.
    """
    _is_encoder_decoder(model)
    if isinstance(adapter_names, str) or not isinstance(adapter_names, list | tuple):
        raise TypeError(
            f"adapter_names must be a list of adapter names, one per example, got {adapter_names!r}; "
            "e.g. adapter_names=['sst2', 'boolq', 'sst2']."
        )
    prompts: dict[str, torch.Tensor] = {}
    for i, name in enumerate(adapter_names):
        if name in prompts:
            continue
        if not isinstance(name, str):
            raise TypeError(f"adapter_names[{i}]={name!r} is not a string; pass adapter names as str.")
        if name not in model.peft_config:
            raise ValueError(
                f"adapter_names[{i}]={name!r} is not loaded in this model; loaded adapters: "
                f"{sorted(model.peft_config)}. Load it first with model.load_adapter(path, adapter_name={name!r})."
            )
        config = model.peft_config[name]
        if not is_prompt_tuning(config):
            kind = getattr(config.peft_type, "value", config.peft_type)
            raise ValueError(
                f"adapter_names[{i}]={name!r} is a {kind} adapter, not a prompt-tuning adapter (peft_type "
                "PROMPT_TUNING); mixed-task batches place soft prompts only. Use SoftPromptConfig or "
                "peft.PromptTuningConfig adapters."
            )
        weight = prompt_weight(model, name)  # [P or 2P, H]
        d_model = input_embeddings(model).embedding_dim  # exists once the model holds a prompt adapter
        if weight.shape[-1] != d_model:
            widths = {other: tuple(p.shape) for other, p in prompts.items()}
            raise ValueError(
                f"adapter {name!r} has a prompt of shape {tuple(weight.shape)} (P, d_model) but this model's "
                f"d_model is {d_model} (prompts so far: {widths}); prompts of different d_model cannot share a "
                "model: load a prompt trained for this base model."
            )
        # PEFT's own seq2seq default allocates 2P rows; only the first P (the encoder's) are used, as PEFT does.
        prompts[name] = encoder_prompt(weight, cast(Any, config))  # [P, H]
    return prompts


def check_batch(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, adapter_names) -> torch.Tensor:
    """The attention mask `[B, T]` (ones when None) after checking ids, mask and names: one check for every
    inference entry point (mixed batches, ensembles, the label scorer)."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(
            f"input_ids must be a [B, T] tensor of token ids, got {shape}; add a batch dimension."
        )
    if input_ids.shape[0] == 0:
        raise ValueError("input_ids holds no examples (batch size 0); pass at least one example.")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
        shape = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else attention_mask
        raise ValueError(
            f"attention_mask has shape {shape} but input_ids has shape {tuple(input_ids.shape)}; pass the mask "
            "the tokenizer returned with the ids."
        )
    if isinstance(adapter_names, list | tuple) and len(adapter_names) != input_ids.shape[0]:
        raise ValueError(
            f"len(adapter_names)={len(adapter_names)} but the batch holds {input_ids.shape[0]} examples; pass "
            "one adapter name per example (repeat a name for examples of the same task)."
        )
    return attention_mask


# ---------------------------------------------------------------------------------------------- placement
def place_prompts(
    model: PeftModel, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, adapter_names: list[str]
) -> _Placed:
    """Embed `input_ids [B, T]` and put prompt `adapter_names[i]` in front of the real tokens of example i.

    Returns the placed batch: embeddings `[B, L, H]` with `L = max_i(P_i + T_i)`, its mask and position ids
    `[B, L]` (right padding for seq2seq, left padding for decoder-only; see the module docstring).
    """
    encoder_decoder = _is_encoder_decoder(model)
    attention_mask = check_batch(input_ids, attention_mask, adapter_names)
    prompts = loaded_prompts(model, adapter_names)
    real = attention_mask.bool()  # [B, T]
    inputs_embeds = input_embeddings(model)(input_ids)  # [B, T, H]
    batch, device = input_ids.shape[0], inputs_embeds.device

    # All distinct prompts in one zero-padded table, so placing them is one indexing operation.
    names = list(prompts)
    width = max(p.shape[0] for p in prompts.values())
    table = inputs_embeds.new_zeros(len(names), width, inputs_embeds.shape[-1])  # [A, Pmax, H]
    for a, name in enumerate(names):
        table[a, : prompts[name].shape[0]] = prompts[name].to(device=device, dtype=inputs_embeds.dtype)
    which = torch.tensor([names.index(n) for n in adapter_names], device=device)  # [B]
    prompt_len = torch.tensor([prompts[n].shape[0] for n in names], device=device)[which]  # [B]

    total = prompt_len + real.sum(1)  # [B] real length P_i + T_i
    length = int(total.max())
    start = (length - total) if not encoder_decoder else torch.zeros_like(total)  # [B] first real column

    embeds = inputs_embeds.new_zeros(batch, length, inputs_embeds.shape[-1])  # [B, L, H]
    p_rows, p_cols = (torch.arange(width, device=device) < prompt_len[:, None]).nonzero(as_tuple=True)
    embeds[p_rows, start[p_rows] + p_cols] = table[which[p_rows], p_cols]
    rows, cols = real.nonzero(as_tuple=True)  # every real input token, in order
    rank = real.long().cumsum(1) - 1  # [B, T] index of a real token among its example's real tokens
    dest = start[rows] + prompt_len[rows] + rank[rows, cols]
    embeds[rows, dest] = inputs_embeds[rows, cols]

    columns = torch.arange(length, device=device)[None, :]  # [1, L]
    inside = (columns >= start[:, None]) & (columns < (start + total)[:, None])  # [B, L]
    mask = inside.to(attention_mask.dtype)  # [B, L]
    positions = (mask.long().cumsum(1) - 1).clamp(min=0)  # [B, L] 0..L_i-1 on the real positions
    return _Placed(embeds, mask, positions, rows, cols, dest)


# ---------------------------------------------------------------------------------------------- forward
def mixed_forward(
    model: PeftModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    adapter_names: list[str],
    labels: torch.Tensor | None = None,
    *,
    decoder_input_ids: torch.Tensor | None = None,
) -> MixedOutput:
    """One forward pass in which example i uses the prompt adapter `adapter_names[i]`.

    Args:
        model: a `PeftModelForSeq2SeqLM` or `PeftModelForCausalLM` holding the prompt adapters (added with
            `load_adapter` / `add_adapter`); the active adapter does not matter.
        input_ids: `[B, T]`; left- or right-padded, only positions with `attention_mask == 1` are used.
        attention_mask: `[B, T]` (None: all ones).
        adapter_names: B names, one per example; names may repeat and prompt lengths may differ.
        labels: seq2seq: decoder targets `[B, L]` (as for the base model); decoder-only: `[B, T]` aligned to
            `input_ids` as in PEFT (labels at pad positions are ignored). `-100` positions are ignored.
        decoder_input_ids: seq2seq only, `[B, L]`, when there are no labels.

    Returns:
        `MixedOutput`: logits (see its docstring for the alignment) and, with labels, the batch loss and the
        loss of every example -- each equal, to float tolerance, to running that example alone after
        `model.set_adapter(adapter_names[i])`.

    Raises:
        ValueError: for a malformed batch, and when `labels` leave no token to compute a loss on (an
            all-padding batch, or every label -100) -- instead of a NaN loss.
    """
    encoder_decoder = _is_encoder_decoder(model)
    placed = place_prompts(model, input_ids, attention_mask, adapter_names)
    base: Any = model.get_base_model()
    if encoder_decoder:
        if labels is None and decoder_input_ids is None:
            raise ValueError(
                "a seq2seq forward needs labels or decoder_input_ids; pass labels=[B, L] target ids (the decoder "
                "input is derived from them) or decoder_input_ids=[B, L]."
            )
        if decoder_input_ids is None:  # the base model's own right shift of the targets (teacher forcing)
            assert labels is not None
            decoder_input_ids = base.prepare_decoder_input_ids_from_labels(labels=labels.contiguous())
        out = base(
            inputs_embeds=placed.embeds, attention_mask=placed.mask, decoder_input_ids=decoder_input_ids
        )
        logits = out.logits  # [B, L, V]
        if labels is None:
            return MixedOutput(logits=logits)
        return _with_loss(logits, logits, labels)

    if decoder_input_ids is not None:
        raise ValueError(
            "decoder_input_ids is for seq2seq models; this is a decoder-only model, leave it unset."
        )
    if labels is not None and labels.shape != input_ids.shape:
        raise ValueError(
            f"labels has shape {tuple(labels.shape)} but input_ids has {tuple(input_ids.shape)}; a decoder-only "
            "model takes labels aligned to input_ids (use -100 where no loss is wanted)."
        )
    reason = per_row_reason(base, {})
    if reason is None:  # each adapter's prompt computed once (mixed_prefix.py); equal to the placement below
        mask = check_batch(input_ids, attention_mask, adapter_names)
        logits, summed, counts = shared_mixed_forward(
            base, input_embeddings(model), loaded_prompts(model, adapter_names), input_ids, mask, adapter_names,
            labels,
        )
        if summed is None or counts is None:
            return MixedOutput(logits=logits)
        _check_counts(counts)
        return MixedOutput(logits=logits, loss=summed.sum() / counts.sum(), loss_per_example=summed / counts,
                           num_label_tokens=counts)
    explain_once(reason)
    out = base(inputs_embeds=placed.embeds, attention_mask=placed.mask, position_ids=placed.positions)
    full = out.logits  # [B, L, V], virtual and pad positions included
    logits = full.new_zeros(*input_ids.shape, full.shape[-1])  # [B, T, V]
    logits[placed.rows, placed.cols] = full[placed.rows, placed.dest]
    if labels is None:
        return MixedOutput(logits=logits)
    labels = labels.to(placed.mask.device)
    placed_labels = torch.full_like(placed.mask, IGNORE_INDEX, dtype=labels.dtype)  # [B, L]
    placed_labels[placed.rows, placed.dest] = labels[placed.rows, placed.cols]
    # next-token objective: the logits at column c predict the label at column c + 1
    return _with_loss(logits, full[:, :-1], placed_labels[:, 1:])


def _with_loss(logits: torch.Tensor, scores: torch.Tensor, targets: torch.Tensor) -> MixedOutput:
    """Loss of `scores [B, L, V]` against `targets [B, L]`, per example and over the batch."""
    nll = torch.nn.functional.cross_entropy(
        scores.to(torch.promote_types(scores.dtype, torch.float32)).flatten(0, 1),  # at least float32
        targets.flatten().to(scores.device),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(targets.shape)  # [B, L]
    counts = (targets != IGNORE_INDEX).sum(1).to(scores.device)  # [B]
    _check_counts(counts)
    summed = nll.sum(1)  # [B]
    return MixedOutput(
        logits=logits,
        loss=summed.sum() / counts.sum(),
        loss_per_example=summed / counts,
        num_label_tokens=counts,
    )


def _check_counts(counts: torch.Tensor) -> None:
    """Refuse a batch whose `[B]` label-token counts are all 0."""
    if not bool(counts.any()):  # the mean over no tokens would be a silent NaN loss
        raise ValueError(
            "the batch has no label tokens to compute a loss on: every label is -100 or sits on padding "
            "(attention_mask 0; a decoder-only model also never predicts an example's first token). Pass real "
            "labels, or labels=None for logits only."
        )
