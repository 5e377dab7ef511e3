"""SQuAD and the MRQA out-of-domain sets as text-to-text QA (paper section 5, Table 2).

The paper prompt-tunes on SQuAD and evaluates zero-shot on the six out-of-domain dev sets of the MRQA 2019
shared task, with T5's SQuAD format: input `question: Q context: C`, target the first gold answer, scored by
exact match and token F1 against every gold answer (`metrics.squad_metrics`).

Design decisions
----------------
* T5's SQuAD preprocessor puts spaces around every ASCII non-word character of the question, context and
  answers ("U.S." -> "U . S ."), and the paper's MRQA tasks do the same; `pad_punctuation=True` reproduces it
  so that training targets and gold answers match. Set it to False for plain text.
* The format has no task-name token, so `task_prefix=True` changes nothing here.
* Hub data: SQuAD is `rajpurkar/squad` (answers `{"text": [...], "answer_start": [...]}`); the MRQA sets are
  the `test` split of `mrqa-workshop/mrqa` (the shared task's out-of-domain *dev* sets; answers a list of
  strings), selected by its `subset` column. Local files may use either answer layout.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .base import Task

_KEPT_CATEGORIES = ("L", "M", "N")  # letters, combining marks, numbers -- of every script


def pad_punctuation(text: str) -> str:
    """Spaces around every character that is not a letter, mark, number, `_` or space; whitespace collapsed.

    T5's SQuAD preprocessing (`t5.data.preprocessors._pad_punctuation`): `([^_\\s\\p{N}\\p{L}\\p{M}])` -> ` \\1 `.
    Unicode classes, not ASCII ones: "Beyoncé's" -> "Beyoncé ' s", "café façade" stays as it is.
    """
    padded = "".join(
        ch if ch == "_" or ch.isspace() or unicodedata.category(ch)[0] in _KEPT_CATEGORIES else f" {ch} "
        for ch in text
    )
    return " ".join(padded.split())


def answer_texts(example: Mapping[str, Any]) -> list[str]:
    """Gold answers of SQuAD (`{"text": [...]}`) or MRQA (`[...]`) rows."""
    answers = example.get("answers")
    if answers is None:
        raise ValueError("the QA example has no 'answers' column; expected SQuAD or MRQA columns.")
    if isinstance(answers, Mapping):
        answers = answers.get("text", [])
    if isinstance(answers, str):
        return [answers]
    return [str(a) for a in answers]


@dataclass(frozen=True)
class QATask(Task):
    """Extractive QA as generation: `question: Q context: C` -> answer.

    Args:
        subset: for MRQA, the value of the `subset` column that selects this set (None for SQuAD).
        pad_punctuation: T5's punctuation spacing on question, context and answers (default True).
    """

    subset: str | None = None
    pad_punctuation: bool = True

    def _text(self, text: str) -> str:
        return pad_punctuation(text) if self.pad_punctuation else " ".join(text.split())

    def _rows(self, example: Mapping[str, Any], train: bool) -> list[dict[str, Any]]:
        for column in ("question", "context"):
            if column not in example:
                raise ValueError(
                    f"{self.name}: the example has no {column!r} column; expected SQuAD/MRQA columns."
                )
        answers = [self._text(a) for a in answer_texts(example)]
        if train and not answers:
            raise ValueError(f"{self.name}: an example has no gold answer; train on a labelled split.")
        group = str(example.get("id", example.get("qid", "")))
        question, context = self._text(example["question"]), self._text(example["context"])
        return [
            {
                "inputs": f"question: {question} context: {context}",
                "targets": answers[0] if answers else "",
                "answers": answers,
                "group": group,
                "label_id": -1,
            }
        ]

    def load(self, split: str | None = None, *, data_files: Any = None, **kwargs: Any):
        """Like `Task.load`; for an MRQA set the rows are filtered to its `subset`."""
        dataset = super().load(split, data_files=data_files, **kwargs)
        if self.subset is not None and "subset" in dataset.column_names:
            dataset = dataset.filter(lambda row: row["subset"] == self.subset)
        return dataset

    def compute_metrics(
        self, predictions: Sequence[str], rows: Sequence[Mapping[str, Any]]
    ) -> dict[str, float]:
        from .metrics import squad_metrics

        return squad_metrics(predictions, [row["answers"] for row in rows])


SQUAD = QATask("squad", "rajpurkar/squad")

_MRQA_HUB = "mrqa-workshop/mrqa"
# registry name -> value of MRQA's `subset` column (the shared task's file names)
MRQA_SUBSETS = {
    "textbookqa": "TextbookQA",
    "bioasq": "BioASQ",
    "race": "RACE",
    "relation_extraction": "RelationExtraction",
    "duorc": "DuoRC.ParaphraseRC",
    "drop": "DROP",
}
MRQA_TASKS = tuple(
    QATask(name, _MRQA_HUB, eval_split="test", subset=subset) for name, subset in MRQA_SUBSETS.items()
)

QA_TASKS: tuple[Task, ...] = (SQUAD, *MRQA_TASKS)
