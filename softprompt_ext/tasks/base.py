"""Text-to-text tasks of the paper: formatting, verbalizers, loading and scoring, behind `get_task(name)`.

Lester et al. (2021) cast every task as text-to-text with T5's formats (paper section 3): a classification
target is a label *string* ("True", "entailment", ...), QA targets are answer spans. Their inputs drop T5's
leading task-name token ("taskless" formatting), because the learned prompt is what tells the frozen model
the task. Both are reproduced here; the T5 name prefix is optional (`task_prefix=True`).

Design decisions
----------------
* One `Task` object per dataset knows four things: where the data lives on the Hub, how one raw example
  becomes `inputs`/`targets` strings, its verbalizer (label id -> label string, `class_labels`) and its
  metrics. Field order follows T5's preprocessors: `key: value` pairs in sorted key order unless T5 fixes
  an order (MultiRC: question, answer, paragraph; WiC: sentence1, sentence2, word).
* `Task.format(dataset)` works on any `datasets.Dataset` with the Hub dataset's columns, whether it came
  from `task.load()` (the Hub) or from local JSON lines / CSV / Parquet files (`task.load(data_files=...)`).
  Every formatted dataset has the same five columns: `inputs`, `targets`, `answers` (all gold strings),
  `group` (the question an answer option belongs to, or the example id) and `label_id` (-1 when unknown),
  so that metrics and `metrics.make_compute_metrics` need no per-task plumbing.
* Training and evaluation formats differ where T5's do: ReCoRD trains on one row per gold answer and WSC
  only on examples whose candidate is the right referent; evaluation keeps one row per example.
* Labels may be class ids (the Hub's `ClassLabel`), booleans or label strings (the original SuperGLUE JSON
  lines use `true`/`false` and `"entailment"`); -1 means "no label" (test splits) and is refused for training.

This module holds the base classes and the seq2seq tokenisation; the tasks themselves live in `glue.py`,
`superglue.py`, `qa.py` and `supersense.py`, and `registry.py` finds them by name (`get_task`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .metrics import accuracy, binary_f1, macro_f1

COLUMNS = ("inputs", "targets", "answers", "group", "label_id")


@dataclass(frozen=True)
class Task:
    """A dataset cast as text-to-text (paper section 3). Subclasses implement `_rows` and `compute_metrics`.

    Args:
        name: registry name, e.g. "boolq".
        hub_path, hub_config: `datasets.load_dataset(hub_path, hub_config)` loads it from the Hub.
        prefix: T5's task-name token, prepended only with `task_prefix=True` (the paper drops it).
        eval_split: the split the paper reports on (SuperGLUE / GLUE dev: "validation").
    """

    name: str
    hub_path: str
    hub_config: str | None = None
    prefix: str = ""
    eval_split: str = "validation"

    @property
    def class_labels(self) -> list[str] | None:
        """Label strings in label-id order for `SoftPromptConfig(class_labels=...)`; None for open answers."""
        return None

    # ------------------------------------------------------------------ formatting
    def format_example(
        self, example: Mapping[str, Any], *, train: bool = False, task_prefix: bool = False
    ) -> list[dict[str, Any]]:
        """Rows (dicts with `COLUMNS`) made from one raw example: usually one, more or none when training."""
        rows = self._rows(example, train)
        if task_prefix and self.prefix:
            rows = [{**row, "inputs": f"{self.prefix} {row['inputs']}"} for row in rows]
        return rows

    def format(self, dataset, *, train: bool = False, task_prefix: bool = False, num_proc: int | None = None):
        """A `datasets.Dataset` with exactly the columns `COLUMNS`, made from raw rows of this task.

        Args:
            dataset: a `datasets.Dataset` with this task's Hub columns (or a list of such dicts).
            train: training format (ReCoRD: a row per answer; WSC: right referents only; no unlabelled rows).
            task_prefix: prepend T5's task name (off by default: the paper's "taskless" input).
        """
        import datasets

        if isinstance(dataset, list):
            dataset = datasets.Dataset.from_list(dataset)
        if not isinstance(dataset, datasets.Dataset):
            raise TypeError(
                f"format expects a datasets.Dataset (or a list of dicts), got {type(dataset).__name__}; "
                "for a DatasetDict pick a split, e.g. task.format(ds['validation'])."
            )

        def batch_rows(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
            out: dict[str, list[Any]] = {column: [] for column in COLUMNS}
            size = len(next(iter(batch.values()))) if batch else 0
            for i in range(size):
                example = {key: values[i] for key, values in batch.items()}
                for row in self.format_example(example, train=train, task_prefix=task_prefix):
                    for column in COLUMNS:
                        out[column].append(row[column])
            return out

        features = datasets.Features(
            {
                "inputs": datasets.Value("string"),
                "targets": datasets.Value("string"),
                "answers": datasets.Sequence(datasets.Value("string")),  # List in datasets>=4
                "group": datasets.Value("string"),
                "label_id": datasets.Value("int64"),
            }
        )
        return dataset.map(
            batch_rows,
            batched=True,
            remove_columns=dataset.column_names,
            features=features,
            num_proc=num_proc,
        )

    def _rows(self, example: Mapping[str, Any], train: bool) -> list[dict[str, Any]]:
        raise NotImplementedError

    # ------------------------------------------------------------------ data
    def load(self, split: str | None = None, *, data_files: Any = None, **kwargs: Any):
        """Load a split from the Hub (`load_dataset(hub_path, hub_config, split=...)`) or from local files.

        Args:
            split: defaults to `eval_split`.
            data_files: local files with the Hub columns instead of the Hub: a path (".jsonl"/".json",
                ".csv" or ".parquet"), a list of paths, or a {split: path} dict.
            kwargs: passed to `datasets.load_dataset` (e.g. `revision`, `cache_dir`).
        """
        import datasets

        split = split or self.eval_split
        if data_files is None:
            return datasets.load_dataset(self.hub_path, self.hub_config, split=split, **kwargs)
        if isinstance(data_files, Mapping):
            first = next(iter(data_files.values()))
            if split not in data_files:
                # one file per task (the bundled samples): use it whatever the split is called
                data_files = {split: first}
        else:
            first = data_files
        probe = first[0] if isinstance(first, list | tuple) else first
        builder = _builder_for(str(probe))
        if not isinstance(data_files, Mapping):
            data_files = {split: data_files}
        return datasets.load_dataset(builder, data_files=data_files, split=split, **kwargs)

    # ------------------------------------------------------------------ scoring
    def compute_metrics(
        self, predictions: Sequence[str], rows: Sequence[Mapping[str, Any]]
    ) -> dict[str, float]:
        """Scores (percent) of generated strings against formatted rows (`format(...)` output, same order)."""
        raise NotImplementedError


def _builder_for(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    builders = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
    if ext not in builders:
        raise ValueError(
            f"data_files={path!r} has extension {ext!r}; use .jsonl, .json, .csv or .parquet files "
            "with the Hub columns."
        )
    return builders[ext]


def label_id(example: Mapping[str, Any], label_names: Sequence[str], column: str = "label") -> int:
    """The class id of an example: an int id, a bool (False -> 0, True -> 1), a label string, or -1 (none)."""
    value = example.get(column, -1)
    if value is None:
        return -1
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        if value in label_names:
            return label_names.index(value)
        raise ValueError(
            f"{column}={value!r} is not one of {list(label_names)}; use a label id or a label string."
        )
    if isinstance(value, int) and -1 <= value < len(label_names):
        return value
    raise ValueError(
        f"{column}={value!r} is not a label id in [-1, {len(label_names) - 1}] "
        f"for labels {list(label_names)}."
    )


def key_value_text(example: Mapping[str, Any], fields: Sequence[str]) -> str:
    """T5's GLUE input text: `field: value` pairs joined by single spaces, in the given field order."""
    missing = [f for f in fields if f not in example]
    if missing:
        raise ValueError(f"the example has no column(s) {missing}; expected the Hub columns {list(fields)}.")
    return " ".join(f"{field}: {example[field]}" for field in fields)


def group_key(example: Mapping[str, Any], *parts: str) -> str:
    """A stable id from the example's `idx` (a dict of ids or an int); empty when there is none."""
    idx = example.get("idx")
    if isinstance(idx, Mapping):
        return "-".join(str(idx[p]) for p in parts if p in idx)
    return "" if idx is None else str(idx)


@dataclass(frozen=True)
class ClassificationTask(Task):
    """A task whose target is one of a fixed set of label strings (the verbalizer).

    Args:
        label_names: label id -> string, e.g. ("False", "True") for BoolQ.
        fields: input columns in T5's order.
        f1: None, "binary" (F1 of `label_names[1]`, MRPC / QQP) or "macro" (mean per-class F1, CB).
    """

    label_names: tuple[str, ...] = ()
    fields: tuple[str, ...] = ()
    f1: str | None = None

    def __post_init__(self) -> None:
        if len(self.label_names) < 2 or not all(isinstance(n, str) and n.strip() for n in self.label_names):
            raise ValueError(
                f"{self.name}: label_names={self.label_names!r} must hold at least two non-empty strings, "
                "label id order, e.g. ('False', 'True')."
            )
        if not self.fields:
            raise ValueError(
                f"{self.name}: fields is empty; name the input columns, e.g. ('premise', 'hypothesis')."
            )
        if self.f1 not in (None, "binary", "macro"):
            raise ValueError(f"{self.name}: f1={self.f1!r} is not known; use None, 'binary' or 'macro'.")
        if self.f1 == "binary" and len(self.label_names) != 2:
            raise ValueError(
                f"{self.name}: f1='binary' needs exactly two labels (negative, positive), "
                f"got {self.label_names!r}."
            )

    @property
    def class_labels(self) -> list[str]:
        return list(self.label_names)

    def verbalize(self, label: int) -> str:
        """The target string of a label id."""
        if not 0 <= label < len(self.label_names):
            raise ValueError(
                f"label={label!r} is not in [0, {len(self.label_names) - 1}] for task {self.name!r}."
            )
        return self.label_names[label]

    def input_text(self, example: Mapping[str, Any]) -> str:
        return key_value_text(example, self.fields)

    def _rows(self, example: Mapping[str, Any], train: bool) -> list[dict[str, Any]]:
        label = label_id(example, self.label_names)
        if train and label < 0:
            raise ValueError(
                f"{self.name}: an example has no label (label=-1, a test split); train on a labelled split."
            )
        target = self.label_names[label] if label >= 0 else ""
        return [
            {
                "inputs": self.input_text(example),
                "targets": target,
                "answers": [target] if target else [],
                "group": self._group(example),
                "label_id": label,
            }
        ]

    def _group(self, example: Mapping[str, Any]) -> str:
        return group_key(example)

    def compute_metrics(
        self, predictions: Sequence[str], rows: Sequence[Mapping[str, Any]]
    ) -> dict[str, float]:
        references = [row["targets"] for row in rows]
        scores = {"accuracy": accuracy(predictions, references)}
        if self.f1 == "binary":
            scores["f1"] = binary_f1(
                predictions, references, positive=self.label_names[1], negative=self.label_names[0]
            )
        elif self.f1 == "macro":
            scores["f1_macro"] = macro_f1(predictions, references, self.label_names)
        return scores


# ---------------------------------------------------------------------------------------------- tokenising
def tokenize_for_seq2seq(formatted, tokenizer, *, max_input_length: int = 512, max_target_length: int = 64):
    """`input_ids`, `attention_mask` and `labels` for an encoder-decoder (T5) from a formatted dataset.

    Inputs and targets get the tokenizer's special tokens (T5: a closing EOS). Inputs longer than
    `max_input_length` are cut at the end, as T5's pipelines do. The other columns are dropped; keep the
    formatted dataset for `make_compute_metrics(..., eval_dataset=formatted)`.
    """

    def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
        enc = tokenizer(batch["inputs"], max_length=max_input_length, truncation=True)
        enc["labels"] = tokenizer(
            text_target=batch["targets"], max_length=max_target_length, truncation=True
        )["input_ids"]
        return enc

    return formatted.map(encode, batched=True, remove_columns=formatted.column_names)
