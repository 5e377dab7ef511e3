"""The eight SuperGLUE tasks of the paper (section 3, Figure 1, Table 1) in T5's text-to-text formats.

Formats follow T5's SuperGLUE preprocessors (the ones the paper's "taskless" tasks start from, with the
leading task-name token removed):

| task    | input (taskless)                                    | target                               |
|---------|-----------------------------------------------------|--------------------------------------|
| BoolQ   | `passage: P question: Q`                            | False / True                         |
| CB      | `hypothesis: H premise: P`                          | entailment / contradiction / neutral |
| COPA    | `choice1: A choice2: B premise: P question: cause`  | choice1 / choice2                    |
| MultiRC | `question: Q answer: A paragraph: P` (1)            | False / True (per answer option)     |
| ReCoRD  | `query: Q entities: E1, E2 passage: P` (2)          | an entity (each gold when training)  |
| RTE     | `hypothesis: H premise: P`                          | entailment / not_entailment          |
| WiC     | `sentence1: S1 sentence2: S2 word: W`               | False / True                         |
| WSC     | the text with the pronoun marked `*it*`             | the candidate referent's text        |

(1) HTML `<br>` becomes a space, `<b>` / `</b>` are removed. (2) `@highlight` lines joined into sentences.

WSC follows T5's "simple" variant: the model *generates* a referent; training keeps only examples whose
candidate is the right one, and evaluation calls an example right when "the generation names the candidate"
(`metrics.wsc_referent_match`) agrees with its label. The paper initialised the ReCoRD and WSC prompts from
task words, since neither has a fixed label set (`class_labels` is None for both).

Data: `datasets.load_dataset("aps/super_glue", "boolq")` -- the Hub's current id of the dataset formerly
called `super_glue` -- or local files with the same columns (`Task.load(data_files=...)`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .base import ClassificationTask, Task, group_key, key_value_text, label_id

SUPERGLUE_HUB = "aps/super_glue"


@dataclass(frozen=True)
class MultiRCTask(ClassificationTask):
    """MultiRC: one True/False row per answer option; scored by F1a and per-question exact match."""

    def input_text(self, example: Mapping[str, Any]) -> str:
        text = key_value_text(example, self.fields)
        # T5 strips the paragraphs' HTML markup from the joined text: line breaks become spaces, bold tags go
        return re.sub(r"</?b>", "", text.replace("<br>", " "))

    def _group(self, example: Mapping[str, Any]) -> str:
        # answer options of one question share its (paragraph, question) ids; without ids, its text
        return group_key(example, "paragraph", "question") or f"{example['paragraph']}\n{example['question']}"

    def compute_metrics(
        self, predictions: Sequence[str], rows: Sequence[Mapping[str, Any]]
    ) -> dict[str, float]:
        from .metrics import multirc_metrics

        return multirc_metrics(
            predictions,
            [row["targets"] for row in rows],
            [row["group"] for row in rows],
            positive=self.label_names[1],
            negative=self.label_names[0],
        )


def _record_passage(passage: str) -> str:
    """Join ReCoRD's `@highlight` bullet lines into sentences, as T5 does."""
    passage = re.sub(r"([.?!\"'])\n@highlight\n", r"\1 ", passage)  # already punctuated: a space is enough
    return passage.replace("\n@highlight\n", ". ")


@dataclass(frozen=True)
class ReCoRDTask(Task):
    """ReCoRD: generate the entity that fills `@placeholder`; exact match / F1 against all gold entities."""

    def _rows(self, example: Mapping[str, Any], train: bool) -> list[dict[str, Any]]:
        for column in ("query", "entities", "passage"):
            if column not in example:
                raise ValueError(f"record: the example has no {column!r} column; expected the Hub columns.")
        inputs = (
            f"query: {example['query']} entities: {', '.join(example['entities'])} "
            f"passage: {_record_passage(example['passage'])}"
        )
        answers = list(example.get("answers") or [])
        group = group_key(example, "passage", "query") or example["query"]
        if train:
            if not answers:
                raise ValueError(
                    "record: an example has no answers (a test split); train on a labelled split."
                )
            # T5 trains on one row per gold entity
            return [
                {"inputs": inputs, "targets": a, "answers": answers, "group": group, "label_id": -1}
                for a in answers
            ]
        target = answers[0] if answers else ""
        return [{"inputs": inputs, "targets": target, "answers": answers, "group": group, "label_id": -1}]

    def compute_metrics(
        self, predictions: Sequence[str], rows: Sequence[Mapping[str, Any]]
    ) -> dict[str, float]:
        from .metrics import check_lengths, squad_metrics

        check_lengths(predictions, rows, "rows")
        # one prediction per query: rows formatted for training repeat a query once per answer
        seen: set[str] = set()
        kept_predictions, golds = [], []
        for prediction, row in zip(predictions, rows, strict=True):
            if row["group"] and row["group"] in seen:
                continue
            seen.add(row["group"])
            kept_predictions.append(prediction)
            golds.append(row["answers"])
        return squad_metrics(kept_predictions, golds)


def mark_pronoun(text: str, index: int, pronoun: str) -> str:
    """`text` with the word at `index` (space-separated) shown as `*pronoun*`, as T5's WSC "simple" input.

    Trailing punctuation glued to the word stays outside the marks ("him," -> "*him*,"). When the word at
    `index` is not the pronoun (a few dataset rows are off by one), the nearest occurrence is marked.
    """
    words = text.split(" ")

    def matches(word: str) -> bool:
        return word.rstrip(".,;:!?\"'").lower() == pronoun.lower()

    candidates = sorted((i for i, w in enumerate(words) if matches(w)), key=lambda i: abs(i - index))
    if not candidates:
        raise ValueError(
            f"wsc: span2_text={pronoun!r} does not occur as a word of text={text!r}; "
            "check span2_index/span2_text."
        )
    i = candidates[0]
    tail = words[i][len(words[i].rstrip(".,;:!?\"'")) :]
    words[i] = f"*{words[i][: len(words[i]) - len(tail)]}*{tail}"
    return " ".join(words)


@dataclass(frozen=True)
class WSCTask(Task):
    """WSC (T5's "simple" variant): generate the referent of the marked pronoun."""

    def _rows(self, example: Mapping[str, Any], train: bool) -> list[dict[str, Any]]:
        label = label_id(example, ("False", "True"))
        if train and label < 0:
            raise ValueError(
                "wsc: an example has no label (label=-1, a test split); train on a labelled split."
            )
        if train and label == 0:
            return []  # the candidate is not the referent: nothing to learn to generate
        inputs = mark_pronoun(example["text"], int(example["span2_index"]), example["span2_text"])
        referent = example["span1_text"]
        return [
            {
                "inputs": inputs,
                "targets": referent,
                "answers": [referent],
                "group": group_key(example),
                "label_id": label,
            }
        ]

    def compute_metrics(
        self, predictions: Sequence[str], rows: Sequence[Mapping[str, Any]]
    ) -> dict[str, float]:
        from .metrics import check_lengths, wsc_referent_match

        check_lengths(predictions, rows, "rows")
        if any(row["label_id"] < 0 for row in rows):
            raise ValueError(
                "wsc: rows without a label (label_id=-1) can't be scored; evaluate a labelled split."
            )
        hits = [
            wsc_referent_match(p, row["targets"]) == bool(row["label_id"])
            for p, row in zip(predictions, rows, strict=True)
        ]
        return {"accuracy": 100.0 * sum(hits) / len(hits)}


def _superglue(
    name: str, label_names: tuple[str, ...], fields: tuple[str, ...], **kwargs: Any
) -> ClassificationTask:
    return ClassificationTask(
        name, SUPERGLUE_HUB, name, prefix=name, label_names=label_names, fields=fields, **kwargs
    )


BOOLQ = _superglue("boolq", ("False", "True"), ("passage", "question"))
CB = _superglue("cb", ("entailment", "contradiction", "neutral"), ("hypothesis", "premise"), f1="macro")
COPA = _superglue("copa", ("choice1", "choice2"), ("choice1", "choice2", "premise", "question"))
MULTIRC = MultiRCTask(
    "multirc",
    SUPERGLUE_HUB,
    "multirc",
    prefix="multirc",
    label_names=("False", "True"),
    fields=("question", "answer", "paragraph"),
)
RECORD = ReCoRDTask("record", SUPERGLUE_HUB, "record", prefix="record")
RTE = _superglue("rte", ("entailment", "not_entailment"), ("hypothesis", "premise"))
WIC = _superglue("wic", ("False", "True"), ("sentence1", "sentence2", "word"))
WSC = WSCTask("wsc", SUPERGLUE_HUB, "wsc.fixed", prefix="wsc:")

SUPERGLUE_TASKS: tuple[Task, ...] = (BOOLQ, CB, COPA, MULTIRC, RECORD, RTE, WIC, WSC)
