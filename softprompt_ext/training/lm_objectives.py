"""Training data for continuing an encoder-decoder model: the prefix-LM and span-corruption objectives.

Lester et al. (2021), section 3.3: prompt tuning works poorly on span-corruption T5, and continuing T5 1.1 for
100K steps on the prefix-LM objective ("LM adaptation") fixes it. This module turns natural text into
examples for either objective; `lm_adapt.py` trains on them. Everything here is pure: the random choices for a
document are a function of `(seed, document index)` only, so the same seed gives the same examples in every
run, process and resumed run (Trainer restores its own sampler state; this module has none).

Prefix LM (`objective="prefix_lm"`, the paper's LM adaptation)
    1. A text is tokenised without special tokens. Ids of special tokens that the text itself spells (a literal
       "<extra_id_0>" or "</s>") are dropped, so no sentinel, EOS or padding id comes from the text; the
       unknown token stays (it stands for real text).
    2. Documents are never packed together (a prefix of one document never predicts the next). Each is cut
       into consecutive chunks of at most `input_length - 1` tokens (T5's prefix_lm also cuts text to the
       inputs length). A chunk of fewer than 2 tokens cannot be split and is dropped.
    3. A chunk of n tokens is split at k drawn uniformly from 1..n-1, so both sides are non-empty (T5's
       `random_prefix_noise_mask` draws the same distribution):
       `input_ids = chunk[:k] + [EOS]`, `labels = chunk[k:][:target_length - 1] + [EOS]`.
       EOS is appended exactly once to each side, as T5 appends EOS to both features; the adapted model thus
       sees what prompt tuning later shows it, where the tokenizer appends EOS to input and target. A
       continuation longer than `target_length - 1` keeps its start (the tokens that follow the prefix).

Span corruption (`objective="span_corruption"`, T5's pre-training objective)
    For continuing a model on its original objective (domain text). `round(n * noise_density)` tokens (half to
    even, at least 1, at most n - 1) form `round(noise / mean_noise_span_length)` spans (at least 1, at most
    what both sides allow); noise and kept tokens are each split into that many non-empty runs, uniformly over
    all such splits, and interleaved starting with kept text and ending with noise (T5's
    `random_spans_noise_mask`, not rolled). The input replaces each noise span by the next sentinel
    `<extra_id_i>`; the target replaces each kept span by the next sentinel, so it reads
    `<extra_id_0> span_0 <extra_id_1> span_1 ...` and always starts with the first sentinel; both end with EOS.
    Sentinel ids come from the tokenizer's vocabulary (`<extra_id_N>` tokens).

Span corruption + sentinel (the paper's middle option, section 3.3)
    For prompt tuning a model that was *not* LM-adapted: prefix every downstream target with the first sentinel
    (`add_sentinel_prefix`) so targets resemble pre-training ones. The paper finds it helps little; prefer an
    LM-adapted checkpoint. Decoding with `skip_special_tokens=True` removes the sentinel again.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import torch

from ..special_tokens import ids_to_drop, sentinel_ids

OBJECTIVES = ("prefix_lm", "span_corruption")
MIN_CHUNK_TOKENS = 2  # one token for each side of the split


# ---------------------------------------------------------------------------------------------- prefix LM
def chunk_token_ids(ids: list[int], chunk_length: int) -> list[list[int]]:
    """Consecutive chunks of at most `chunk_length` tokens; chunks shorter than `MIN_CHUNK_TOKENS` are dropped."""
    if chunk_length < MIN_CHUNK_TOKENS:
        raise ValueError(f"chunk_length must be >= {MIN_CHUNK_TOKENS}, got {chunk_length}.")
    chunks = [ids[start : start + chunk_length] for start in range(0, len(ids), chunk_length)]
    return [chunk for chunk in chunks if len(chunk) >= MIN_CHUNK_TOKENS]


def prefix_lm_split(
    chunk: list[int], *, input_length: int, target_length: int, eos_token_id: int, rng: random.Random
) -> dict[str, list[int]]:
    """Split one chunk of natural text into `{"input_ids": prefix + [EOS], "labels": continuation + [EOS]}`.

    The split point is uniform over 1..len(chunk)-1; the continuation keeps its first `target_length - 1`
    tokens. Raises `ValueError` when the chunk cannot be split or its prefix could exceed `input_length`.
    """
    n = len(chunk)
    if n < MIN_CHUNK_TOKENS:
        raise ValueError(f"a chunk needs at least {MIN_CHUNK_TOKENS} tokens to be split, got {n}.")
    if n > input_length - 1:
        raise ValueError(
            f"chunk of {n} tokens is longer than input_length - 1 = {input_length - 1}; cut the text with "
            "chunk_token_ids(ids, input_length - 1) first."
        )
    k = rng.randint(1, n - 1)
    return {
        "input_ids": [*chunk[:k], eos_token_id],
        "labels": [*chunk[k:][: target_length - 1], eos_token_id],
    }


# ---------------------------------------------------------------------------------------------- span corruption
def _span_counts(length: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
    """(number of noise tokens, number of noise spans) for a chunk of `length` >= 2 tokens."""
    num_noise = min(max(round(length * noise_density), 1), length - 1)
    num_spans = max(round(num_noise / mean_noise_span_length), 1)
    return num_noise, min(num_spans, num_noise, length - num_noise)


def _random_segmentation(num_items: int, num_segments: int, rng: random.Random) -> list[int]:
    """Lengths of `num_segments` non-empty runs summing to `num_items`, uniform over all such splits."""
    cuts = sorted(rng.sample(range(1, num_items), num_segments - 1))
    bounds = [0, *cuts, num_items]
    return [b - a for a, b in zip(bounds, bounds[1:], strict=False)]


def random_spans_noise_mask(
    length: int, noise_density: float, mean_noise_span_length: float, rng: random.Random
) -> list[bool]:
    """Noise mask of a chunk (True = corrupted): kept and noise runs alternate, starting with kept text."""
    if length < MIN_CHUNK_TOKENS:
        raise ValueError(f"span corruption needs at least {MIN_CHUNK_TOKENS} tokens, got {length}.")
    num_noise, num_spans = _span_counts(length, noise_density, mean_noise_span_length)
    noise_runs = _random_segmentation(num_noise, num_spans, rng)
    kept_runs = _random_segmentation(length - num_noise, num_spans, rng)
    mask: list[bool] = []
    for kept, noise in zip(kept_runs, noise_runs, strict=True):
        mask += [False] * kept + [True] * noise
    return mask


def _replace_spans(chunk: list[int], mask: list[bool], sentinel_ids: list[int]) -> list[int]:
    """`chunk` with each run of masked tokens replaced by the next sentinel."""
    out: list[int] = []
    span = 0
    for position, (token, masked) in enumerate(zip(chunk, mask, strict=True)):
        if not masked:
            out.append(token)
        elif position == 0 or not mask[position - 1]:
            if span >= len(sentinel_ids):
                raise ValueError(
                    f"span corruption needs more than the {len(sentinel_ids)} sentinel tokens of the tokenizer; "
                    "use a shorter input_length or a larger mean_noise_span_length."
                )
            out.append(sentinel_ids[span])
            span += 1
    return out


def apply_span_corruption(
    chunk: list[int], mask: list[bool], *, sentinel_ids: list[int], eos_token_id: int
) -> dict[str, list[int]]:
    """T5's span corruption of one chunk under a given noise mask (True = corrupted).

    `input_ids`: the chunk with every noise span replaced by the next sentinel; `labels`: the chunk with every
    kept span replaced by the next sentinel; both end with EOS. For "Thank you [for inviting] me to your party
    [last] week" this gives "Thank you <X0> me to your party <X1> week" and "<X0> for inviting <X1> last <X2>"
    (T5 paper, Figure 2).
    """
    if len(mask) != len(chunk):
        raise ValueError(f"mask has {len(mask)} entries for a chunk of {len(chunk)} tokens.")
    inverse = [not masked for masked in mask]
    return {
        "input_ids": [*_replace_spans(chunk, mask, sentinel_ids), eos_token_id],
        "labels": [*_replace_spans(chunk, inverse, sentinel_ids), eos_token_id],
    }


def span_corruption_chunk_length(
    input_length: int, target_length: int, noise_density: float, mean_noise_span_length: float
) -> int:
    """The longest chunk whose corrupted input and target (with EOS) fit `input_length` and `target_length`."""
    best = 0  # both lengths grow with n, so stop at the first chunk length that does not fit
    for n in range(MIN_CHUNK_TOKENS, 2 * (input_length + target_length)):
        num_noise, num_spans = _span_counts(n, noise_density, mean_noise_span_length)
        if n - num_noise + num_spans + 1 > input_length or num_noise + num_spans + 1 > target_length:
            break
        best = n
    if best == 0:
        raise ValueError(
            f"input_length={input_length} and target_length={target_length} leave no room for span corruption; "
            "use at least 4 and 3."
        )
    return best


# ---------------------------------------------------------------------------------------------- dataset map
@dataclass
class LMObjective:
    """Turns texts into training examples; use with `datasets.map(objective, batched=True, with_indices=True)`.

    Args:
        tokenizer: the model's tokenizer (must have an EOS token; span corruption also needs sentinels).
        objective: "prefix_lm" (LM adaptation, section 3.3) or "span_corruption" (T5's pre-training objective).
        input_length: most encoder tokens per example, EOS included. Prefix LM chunks text into
            `input_length - 1` tokens.
        target_length: most decoder tokens per example, EOS included.
        seed: with the document index, seeds every random choice (split point, noise spans).
        noise_density, mean_noise_span_length: span corruption only; T5's 0.15 and 3.0.
        text_column: the column holding the text.

    Returns per batch `{"input_ids": [[...]], "labels": [[...]]}`, one row per chunk (ragged, unpadded).
    """

    tokenizer: Any
    objective: str = "prefix_lm"
    input_length: int = 512
    target_length: int = 512
    seed: int = 0
    noise_density: float = 0.15
    mean_noise_span_length: float = 3.0
    text_column: str = "text"
    chunk_length: int = field(init=False)  # most tokens of text per example
    eos_token_id: int = field(init=False)
    drop: frozenset[int] = field(init=False, repr=False)  # ids never taken from text
    sentinels: list[int] = field(init=False, repr=False)

    @staticmethod
    def validate_lengths(
        objective: str, input_length: int, target_length: int, noise_density: float, mean_noise_span_length: float
    ) -> None:
        """Raise `ValueError` naming the field for settings no example can satisfy."""
        if objective not in OBJECTIVES:
            raise ValueError(f"objective={objective!r} is not known; use one of {list(OBJECTIVES)}.")
        for name, value, low in (("input_length", input_length, 3), ("target_length", target_length, 2)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(
                    f"{name} must be an int >= {low}, got {value!r}; it counts tokens including EOS "
                    "(T5 uses 512)."
                )
        if not 0 < noise_density < 1:
            raise ValueError(f"noise_density must be in (0, 1), got {noise_density!r}; T5 uses 0.15.")
        if mean_noise_span_length < 1:
            raise ValueError(f"mean_noise_span_length must be >= 1, got {mean_noise_span_length!r}; T5 uses 3.0.")
        if objective == "span_corruption":
            span_corruption_chunk_length(input_length, target_length, noise_density, mean_noise_span_length)

    def __post_init__(self) -> None:
        self.validate_lengths(
            self.objective, self.input_length, self.target_length, self.noise_density, self.mean_noise_span_length
        )
        if self.tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token; every example ends with EOS, set tokenizer.eos_token.")
        self.eos_token_id = self.tokenizer.eos_token_id
        self.drop = ids_to_drop(self.tokenizer)
        self.sentinels = sentinel_ids(self.tokenizer)
        if self.objective == "prefix_lm":
            self.chunk_length = self.input_length - 1
        else:
            if not self.sentinels:
                raise ValueError(
                    "objective='span_corruption' needs <extra_id_N> sentinel tokens, and this tokenizer has none; "
                    "use objective='prefix_lm'."
                )
            self.chunk_length = span_corruption_chunk_length(
                self.input_length, self.target_length, self.noise_density, self.mean_noise_span_length
            )

    def token_ids(self, text: str) -> list[int]:
        """Token ids of a text: no special tokens added, none taken from the text (see module docstring)."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return [i for i in ids if i not in self.drop]

    def examples(self, text: str, index: int) -> list[dict[str, list[int]]]:
        """All examples of one document (`index` is its position in the dataset)."""
        rng = random.Random(f"{self.seed}:{index}")  # str seeds hash the same in every process
        out = []
        for chunk in chunk_token_ids(self.token_ids(text), self.chunk_length):
            if self.objective == "prefix_lm":
                out.append(
                    prefix_lm_split(
                        chunk,
                        input_length=self.input_length,
                        target_length=self.target_length,
                        eos_token_id=self.eos_token_id,
                        rng=rng,
                    )
                )
            else:
                mask = random_spans_noise_mask(len(chunk), self.noise_density, self.mean_noise_span_length, rng)
                out.append(
                    apply_span_corruption(chunk, mask, sentinel_ids=self.sentinels, eos_token_id=self.eos_token_id)
                )
        return out

    def __call__(self, batch: dict[str, list[Any]], indices: list[int]) -> dict[str, list[list[int]]]:
        if self.text_column not in batch:
            raise ValueError(
                f"text_column={self.text_column!r} is not a column of the dataset (columns: {sorted(batch)}); "
                "pass the column that holds the text."
            )
        rows: dict[str, list[list[int]]] = {"input_ids": [], "labels": []}
        for text, index in zip(batch[self.text_column], indices, strict=True):
            for example in self.examples(text or "", index):
                rows["input_ids"].append(example["input_ids"])
                rows["labels"].append(example["labels"])
        return rows


@dataclass
class Seq2SeqCollator:
    """Pads `input_ids` (with `pad_token_id`) and `labels` (with -100, ignored by the loss) to the batch maximum.

    Returns `input_ids [B, S]`, `attention_mask [B, S]` (1 on real tokens) and `labels [B, T]`; the model builds
    its decoder inputs from `labels`.
    """

    pad_token_id: int
    label_pad_token_id: int = -100
    pad_to_multiple_of: int | None = None

    def _width(self, rows: list[list[int]]) -> int:
        width = max(len(row) for row in rows)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        return width

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        inputs = [list(f["input_ids"]) for f in features]
        labels = [list(f["labels"]) for f in features]
        s, t = self._width(inputs), self._width(labels)
        input_ids = torch.tensor([row + [self.pad_token_id] * (s - len(row)) for row in inputs])  # [B, S]
        attention_mask = torch.tensor([[1] * len(row) + [0] * (s - len(row)) for row in inputs])  # [B, S]
        label_ids = torch.tensor([row + [self.label_pad_token_id] * (t - len(row)) for row in labels])  # [B, T]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": label_ids}
