"""The paper's zero-shot transfer evaluations as ready configurations (Lester et al. 2021, section 5).

Train a prompt on a *source* task, then evaluate it, unchanged, on a *target* task:

* Paraphrase detection (Table 3): QQP -> MRPC and MRPC -> QQP. The datasets name their labels differently
  (QQP `duplicate` / `not_duplicate`, MRPC `equivalent` / `not_equivalent`), so the model's outputs, which are
  in the source's label words, are mapped to the target's before scoring. The target keeps its own input
  format (MRPC: `sentence1: ... sentence2: ...`; QQP: `question1: ... question2: ...`), as in the paper's
  code. With rank classification, score the *source* labels (`transfer.candidates`) and map the winner.
* Domain transfer (Table 2): SQuAD -> the six out-of-domain MRQA dev sets, scored by token F1.

Reference values from the paper (T5-XXL; model tuning vs prompt tuning):

| transfer             | metric   | model tuning | prompt tuning |
|----------------------|----------|--------------|---------------|
| SQuAD (in-domain)    | F1       | 94.9         | 94.8          |
| SQuAD -> TextbookQA  | F1       | 54.3         | 66.8          |
| SQuAD -> BioASQ      | F1       | 77.9         | 79.1          |
| SQuAD -> RACE        | F1       | 59.8         | 60.7          |
| SQuAD -> RE          | F1       | 88.4         | 88.8          |
| SQuAD -> DuoRC       | F1       | 68.9         | 67.7          |
| SQuAD -> DROP        | F1       | 68.9         | 67.1          |
| QQP -> MRPC          | accuracy | 73.1         | 76.3          |
| QQP -> MRPC          | F1       | 81.2         | 84.3          |
| MRPC -> QQP          | accuracy | 74.9         | 75.4          |
| MRPC -> QQP          | F1       | 70.9         | 69.7          |
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .base import Task
from .registry import get_task

# MRQA out-of-domain sets in the paper's Table 2 order (registry names)
MRQA_OUT_OF_DOMAIN = ("textbookqa", "bioasq", "race", "relation_extraction", "duorc", "drop")


@dataclass(frozen=True)
class TransferEval:
    """Evaluate a prompt trained on `source` on `target`, zero-shot.

    Args:
        name: registry name, e.g. "qqp->mrpc".
        source, target: task names (`tasks.get_task`).
        label_map: source label string -> target label string; outputs not in it pass through unchanged
            (an invented label then counts as wrong). Empty for same-format transfer (SQuAD -> MRQA).
        paper: the paper's reference values, {metric: (model tuning, prompt tuning)}.
    """

    name: str
    source: str
    target: str
    label_map: Mapping[str, str] = field(default_factory=dict)
    paper: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def source_task(self) -> Task:
        return get_task(self.source)

    @property
    def target_task(self) -> Task:
        return get_task(self.target)

    @property
    def candidates(self) -> list[str] | None:
        """The labels the source-trained prompt speaks (for rank classification), or None for open answers."""
        return self.source_task.class_labels

    def map_predictions(self, predictions: Sequence[str]) -> list[str]:
        """Source-label outputs in the target's label words (whitespace stripped)."""
        return [self.label_map.get(p.strip(), p.strip()) for p in predictions]

    def compute_metrics(
        self, predictions: Sequence[str], target_rows: Sequence[Mapping[str, Any]]
    ) -> dict[str, float]:
        """Scores of source-label outputs on formatted target rows (`self.target_task.format(raw)`)."""
        return self.target_task.compute_metrics(self.map_predictions(predictions), target_rows)


_PARAPHRASE = {"duplicate": "equivalent", "not_duplicate": "not_equivalent"}

TRANSFERS: dict[str, TransferEval] = {
    "qqp->mrpc": TransferEval(
        "qqp->mrpc",
        "qqp",
        "mrpc",
        label_map=_PARAPHRASE,
        paper={"accuracy": (73.1, 76.3), "f1": (81.2, 84.3)},
    ),
    "mrpc->qqp": TransferEval(
        "mrpc->qqp",
        "mrpc",
        "qqp",
        label_map={v: k for k, v in _PARAPHRASE.items()},
        paper={"accuracy": (74.9, 75.4), "f1": (70.9, 69.7)},
    ),
    "squad->squad": TransferEval("squad->squad", "squad", "squad", paper={"f1": (94.9, 94.8)}),
}
_MRQA_F1 = {
    "textbookqa": (54.3, 66.8),
    "bioasq": (77.9, 79.1),
    "race": (59.8, 60.7),
    "relation_extraction": (88.4, 88.8),
    "duorc": (68.9, 67.7),
    "drop": (68.9, 67.1),
}
for _name in MRQA_OUT_OF_DOMAIN:
    TRANSFERS[f"squad->{_name}"] = TransferEval(
        f"squad->{_name}", "squad", _name, paper={"f1": _MRQA_F1[_name]}
    )


def get_transfer(name: str) -> TransferEval:
    """The transfer evaluation registered under `name`, e.g. "qqp->mrpc" or "squad->textbookqa"."""
    if not isinstance(name, str):
        raise TypeError(f"transfer name must be a string, got {name!r}; e.g. 'qqp->mrpc'.")
    key = name.strip().lower().replace(" ", "")
    if key == "squad->re":
        key = "squad->relation_extraction"
    if key not in TRANSFERS:
        raise ValueError(f"unknown transfer {name!r}; known: {', '.join(sorted(TRANSFERS))}.")
    return TRANSFERS[key]
