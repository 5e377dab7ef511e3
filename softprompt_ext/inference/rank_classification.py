"""Rank classification: pick the label string the prompted model finds most likely.

The paper scores classification by generating and comparing strings (section 3); a model that has not yet
learned to emit exactly "entailment" then scores nothing. Rank classification (T5's `rank_classification`
metric, used in zero-shot work) instead scores each candidate label by its log-likelihood given the input and
picks the best one, so every output is a valid label. It is the natural read-out for zero-shot transfer
(paper section 5: QQP <-> MRPC) and for comparing prompts early in training.

Design decisions
----------------
* The scoring itself is `scoring.score_label_ids`, the library's one label scorer: each input is
  encoded once (T5: the encoder on B rows, the decoder on the B x C candidate rows; causal LMs: the (prompt +)
  input once with a key/value cache, then the candidates on the cache), with the active prompt adapter for
  every row, or no prompt for a plain model (or a non-prompt adapter such as LoRA). This module only turns
  strings into token ids and scores into a ranking.
* The tokenizer's padding side does not matter: the scorer counts positions over real tokens only, so
  batched scores equal one-example-at-a-time scores.
* Candidates are tokenised on their own without special tokens, plus EOS when `append_eos` (the default for
  encoder-decoders, whose text-to-text targets end in EOS; off for causal LMs). For causal LMs a trailing EOS
  that the tokenizer appends to the input is removed, so that the candidate continues the input.
* Scores are summed token log-probabilities (computed in float32); `length_normalize=True` ranks by the mean
  per token instead, which removes the bias towards short labels. The model is put in eval mode for the pass
  (dropout would make scores random) and its previous mode is restored. Results come back on the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .scoring import score_label_ids


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
    """Summed log-likelihood `[B, C]` and token counts `[B, C]` of the candidates (on the CPU).

    Arguments as in `rank_classify`. Missing candidates (an input with fewer than C) score `-inf`, 0 tokens.
    """
    if isinstance(inputs, str) or not inputs:
        raise ValueError(f"inputs must be a non-empty list of strings, got {inputs!r}.")
    candidates = _per_example_candidates(candidates, len(inputs))
    config = getattr(model, "config", None)
    if config is None:
        raise TypeError(f"{type(model).__name__} has no .config; pass a transformers model or a PeftModel.")
    if append_eos is None:
        append_eos = bool(getattr(config, "is_encoder_decoder", False))
    eos = tokenizer.eos_token_id
    if append_eos and eos is None:
        raise ValueError("append_eos=True but the tokenizer has no eos_token_id; pass append_eos=False.")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos if eos is not None else 0)

    truncate = {"truncation": True, "max_length": max_input_length} if max_input_length else {}
    contexts = [list(ids) for ids in tokenizer(list(inputs), **truncate)["input_ids"]]
    label_ids: list[list[list[int]]] = []
    for cands in candidates:
        encoded = [list(ids) for ids in tokenizer(list(cands), add_special_tokens=False)["input_ids"]]
        encoded = [ids + [eos] if append_eos else ids for ids in encoded]
        for text, ids in zip(cands, encoded, strict=True):
            if not ids:
                raise ValueError(
                    f"candidate {text!r} has no tokens; pass non-empty label strings or append_eos=True."
                )
        label_ids.append(encoded)
    input_ids, attention_mask = _right_pad(contexts, pad)  # [B, T] each
    # causal LMs: the candidate continues the input, so the tokenizer's EOS at its end is dropped
    out = score_label_ids(
        model, input_ids, attention_mask, label_ids, strip_context_eos=eos is not None, eos_token_id=eos
    )
    return out.scores.cpu(), out.num_tokens.cpu()


def _right_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids `[N, T]` padded on the right with `pad`, and the attention mask `[N, T]`."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)  # [N, T]
    mask = torch.zeros(len(rows), width, dtype=torch.long)  # [N, T]
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


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
