"""Rank classification: pick the label string the prompted model finds most likely.

The paper scores classification by generating and comparing strings (section 3); a model that has not yet
learned to emit exactly "entailment" then scores nothing. Rank classification (T5's `rank_classification`
metric, used in zero-shot work) instead scores each candidate label by its log-likelihood given the input and
picks the best one, so every output is a valid label. It is the natural read-out for zero-shot transfer
(paper section 5: QQP <-> MRPC) and for comparing prompts early in training.

Design decisions
----------------
* One forward pass per batch: B inputs x C candidates become B*C rows. Encoder-decoders (T5) repeat each
  input C times on the encoder side and put the candidates on the decoder side; causal LMs score the
  concatenation `input + candidate`.
* Causal LMs under PEFT prompt tuning return logits for the P virtual positions too (`[N, P + T, V]`):
  the offset is read from the logits' length and must equal the active prompt's P (or 0 without one).
  The token at sequence position j is predicted by logit row `offset + j - 1`; with a prompt, the prompt's
  last position predicts the first token even when the input is empty.
* Rows are always padded on the *right*, whatever `tokenizer.padding_side` says: the models compute
  position ids from the sequence index (PEFT drops any `position_ids` passed with a prompt), so left padding
  would shift the real tokens' positions and change their scores. Right padding after a causal sequence
  changes nothing before it, so batched scores equal one-example-at-a-time scores.
* Candidates are tokenised on their own without special tokens, plus EOS when `append_eos` (the default for
  encoder-decoders, whose text-to-text targets end in EOS; off for causal LMs). For causal LMs a trailing EOS
  that the tokenizer appends to the input is removed, so that the candidate continues the input.
* Scores are summed token log-probabilities (computed in float32); `length_normalize=True` ranks by the mean
  per token instead, which removes the bias towards short labels. The model is put in eval mode for the pass
  (dropout would make scores random) and its previous mode is restored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class RankClassificationOutput:
    """Scores of B examples against up to C candidates each.

    Attributes:
        predictions: `[B]` index of the best candidate (by `normalized_scores` if length-normalised).
        scores: `[B, C]` summed log-likelihood; `-inf` where an example has fewer than C candidates.
        normalized_scores: `[B, C]` `scores / num_tokens`.
        num_tokens: `[B, C]` scored tokens per candidate (0 where there is none).
        candidates: the candidate strings of each example.
    """

    predictions: torch.Tensor
    scores: torch.Tensor
    normalized_scores: torch.Tensor
    num_tokens: torch.Tensor
    candidates: list[list[str]]

    @property
    def predicted_labels(self) -> list[str]:
        """The winning candidate string of each example."""
        return [cands[i] for cands, i in zip(self.candidates, self.predictions.tolist(), strict=True)]


def rank_classify(
    model,
    tokenizer,
    inputs: Sequence[str],
    candidates: Sequence[str] | Sequence[Sequence[str]],
    *,
    batch_size: int = 8,
    length_normalize: bool = False,
    append_eos: bool | None = None,
    max_input_length: int | None = None,
) -> RankClassificationOutput:
    """Score every candidate of every input; batches of `batch_size` inputs go through in one pass each.

    Args:
        model: a `PeftModelForSeq2SeqLM` / `PeftModelForCausalLM` (prompt tuning) or a plain HF model.
        tokenizer: the model's tokenizer.
        inputs: B input strings (e.g. a formatted dataset's `inputs` column).
        candidates: one list of label strings shared by all inputs (e.g. `task.class_labels`), or one list
            per input (lists may differ in length).
        length_normalize: rank by mean log-probability per token instead of the sum.
        append_eos: score an EOS after each candidate; default True for encoder-decoders, False for
            causal LMs.
        max_input_length: cut inputs to this many tokens (at the end).

    Returns:
        `RankClassificationOutput` with `[B]` predictions and `[B, C]` scores.
    """
    if isinstance(inputs, str):
        raise TypeError(
            f"inputs must be a list of strings, got the string {inputs!r}; wrap it: [{inputs!r}]."
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}.")
    per_example = _per_example_candidates(candidates, len(inputs))
    width = max(len(c) for c in per_example) if per_example else 0
    scores, counts = [], []
    for start in range(0, len(inputs), batch_size):
        stop = start + batch_size
        batch_scores, batch_counts = score_candidates(
            model,
            tokenizer,
            list(inputs[start:stop]),
            per_example[start:stop],
            append_eos=append_eos,
            max_input_length=max_input_length,
        )
        pad = width - batch_scores.shape[1]
        scores.append(torch.nn.functional.pad(batch_scores, (0, pad), value=float("-inf")))  # [b, C]
        counts.append(torch.nn.functional.pad(batch_counts, (0, pad), value=0))  # [b, C]
    scores_t = torch.cat(scores) if scores else torch.empty(0, width)  # [B, C]
    counts_t = torch.cat(counts) if counts else torch.empty(0, width, dtype=torch.long)  # [B, C]
    normalized = scores_t / counts_t.clamp(min=1)  # [B, C]; -inf stays -inf
    ranking = normalized if length_normalize else scores_t
    return RankClassificationOutput(
        predictions=ranking.argmax(dim=1) if len(inputs) else torch.empty(0, dtype=torch.long),
        scores=scores_t,
        normalized_scores=normalized,
        num_tokens=counts_t,
        candidates=per_example,
    )


@torch.no_grad()
def score_candidates(
    model,
    tokenizer,
    inputs: Sequence[str],
    candidates: Sequence[str] | Sequence[Sequence[str]],
    *,
    append_eos: bool | None = None,
    max_input_length: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-likelihood `[B, C]` and token counts `[B, C]` of the candidates, in one forward pass.

    Arguments as in `rank_classify`. Missing candidates (an input with fewer than C) score `-inf`, 0 tokens.
    """
    if isinstance(inputs, str) or not inputs:
        raise ValueError(f"inputs must be a non-empty list of strings, got {inputs!r}.")
    candidates = _per_example_candidates(candidates, len(inputs))
    config = _model_config(model)
    encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
    if append_eos is None:
        append_eos = encoder_decoder
    eos = tokenizer.eos_token_id
    if append_eos and eos is None:
        raise ValueError("append_eos=True but the tokenizer has no eos_token_id; pass append_eos=False.")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos if eos is not None else 0)

    truncate = {"truncation": True, "max_length": max_input_length} if max_input_length else {}
    contexts = [list(ids) for ids in tokenizer(list(inputs), **truncate)["input_ids"]]
    if not encoder_decoder:
        contexts = [ids[:-1] if eos is not None and ids and ids[-1] == eos else ids for ids in contexts]
    width = max(len(c) for c in candidates)
    cand_ids: list[list[list[int]]] = []
    for cands in candidates:
        encoded = [list(ids) for ids in tokenizer(list(cands), add_special_tokens=False)["input_ids"]]
        encoded = [ids + [eos] if append_eos else ids for ids in encoded]
        for text, ids in zip(cands, encoded, strict=True):
            if not ids:
                raise ValueError(
                    f"candidate {text!r} has no tokens; pass non-empty label strings or append_eos=True."
                )
        cand_ids.append(encoded + [encoded[0]] * (width - len(encoded)))  # fillers, masked to -inf below

    device = _device(model)
    was_training = model.training
    model.eval()
    try:
        if encoder_decoder:
            token_scores, mask = _score_seq2seq(model, config, contexts, cand_ids, pad, device)
        else:
            token_scores, mask = _score_causal(model, contexts, cand_ids, pad, device)
    finally:
        model.train(was_training)

    batch = len(inputs)
    scores = torch.where(mask.bool(), token_scores, 0.0).sum(dim=1).view(batch, width).cpu()  # [B, C]
    counts = mask.sum(dim=1).view(batch, width).long().cpu()  # [B, C]
    present = torch.tensor([[j < len(c) for j in range(width)] for c in candidates])  # [B, C]
    scores = scores.masked_fill(~present, float("-inf"))
    counts = counts.masked_fill(~present, 0)
    return scores, counts


def _score_seq2seq(model, config, contexts, cand_ids, pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs `[B*C, L]` and mask `[B*C, L]`; encoder inputs repeated per candidate."""
    rows_in = [ctx for ctx, cands in zip(contexts, cand_ids, strict=True) for _ in cands]
    rows_out = [ids for cands in cand_ids for ids in cands]
    input_ids, attention_mask = _right_pad(rows_in, pad, device)  # [B*C, T]
    labels, label_mask = _right_pad(rows_out, pad, device)  # [B*C, L]
    start = config.decoder_start_token_id if config.decoder_start_token_id is not None else pad
    decoder_input_ids = torch.cat(
        [torch.full_like(labels[:, :1], start), labels[:, :-1]], dim=1
    )  # [B*C, L] teacher forcing: shift right
    logits = model(
        input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids
    ).logits  # [B*C, L, V]
    log_probs = torch.log_softmax(logits.float(), dim=-1)  # [B*C, L, V]
    token_scores = log_probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1)  # [B*C, L]
    return token_scores, label_mask.float()


def _score_causal(model, contexts, cand_ids, pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs `[B*C, L]` and mask `[B*C, L]` of the candidate part of `input + candidate`."""
    rows, spans = [], []
    for ctx, cands in zip(contexts, cand_ids, strict=True):
        for ids in cands:
            rows.append(ctx + ids)
            spans.append((len(ctx), len(ids)))
    input_ids, attention_mask = _right_pad(rows, pad, device)  # [B*C, T]
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # [B*C, offset + T, V]
    offset = logits.shape[1] - input_ids.shape[1]
    expected = _num_virtual_tokens(model)
    if offset != expected:
        raise RuntimeError(
            f"the causal LM returned {logits.shape[1]} logit positions for {input_ids.shape[1]} tokens: "
            f"{offset} extra, but the active prompt has {expected} virtual tokens."
        )
    width = max(n for _, n in spans)
    # the token at sequence position j is predicted by logit row offset + j - 1
    positions = torch.zeros(len(rows), width, dtype=torch.long)  # [B*C, L]
    targets = torch.full((len(rows), width), pad, dtype=torch.long)  # [B*C, L]
    mask = torch.zeros(len(rows), width)  # [B*C, L]
    for r, (ctx_len, n) in enumerate(spans):
        first = offset + ctx_len - 1
        if first < 0:
            raise ValueError(
                "an input is empty and the model has no soft prompt: nothing predicts the candidate's first "
                "token; give the input at least one token (e.g. a BOS)."
            )
        positions[r, :n] = torch.arange(first, first + n)
        targets[r, :n] = input_ids[r, ctx_len : ctx_len + n].cpu()
        mask[r, :n] = 1.0
    positions, targets, mask = positions.to(device), targets.to(device), mask.to(device)
    picked = logits.gather(1, positions.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))  # [B*C, L, V]
    log_probs = torch.log_softmax(picked.float(), dim=-1)  # [B*C, L, V]
    token_scores = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [B*C, L]
    return token_scores, mask


def _right_pad(rows: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids `[N, T]` padded on the right with `pad`, and the attention mask `[N, T]`."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)  # [N, T]
    mask = torch.zeros(len(rows), width, dtype=torch.long)  # [N, T]
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids.to(device), mask.to(device)


def _per_example_candidates(candidates, batch: int) -> list[list[str]]:
    if isinstance(candidates, str) or not isinstance(candidates, Sequence) or len(candidates) == 0:
        raise ValueError(
            "candidates must be a non-empty list of label strings or one list per input, "
            f"got {candidates!r}; "
            "e.g. candidates=task.class_labels."
        )
    if all(isinstance(c, str) for c in candidates):
        return [list(candidates) for _ in range(batch)]
    if len(candidates) != batch:
        raise ValueError(
            f"got {len(candidates)} candidate lists for {batch} inputs; pass one list per input."
        )
    out = []
    for i, cands in enumerate(candidates):
        if isinstance(cands, str) or not cands or not all(isinstance(c, str) for c in cands):
            raise ValueError(f"candidates[{i}]={cands!r} must be a non-empty list of strings.")
        out.append(list(cands))
    return out


def _model_config(model):
    config = getattr(model, "config", None)
    if config is None:
        raise TypeError(f"{type(model).__name__} has no .config; pass a transformers model or a PeftModel.")
    return config


def _num_virtual_tokens(model) -> int:
    """P of the active prompt-learning adapter; 0 for a plain model or a non-prompt adapter."""
    config = getattr(model, "active_peft_config", None)
    peft_type = getattr(getattr(config, "peft_type", None), "value", getattr(config, "peft_type", None))
    # prompt and p-tuning prepend embeddings (they appear in the logits); prefix tuning uses the KV cache
    if peft_type in ("PROMPT_TUNING", "P_TUNING", "MULTITASK_PROMPT_TUNING"):
        return int(config.num_virtual_tokens)
    return 0


def _device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")
