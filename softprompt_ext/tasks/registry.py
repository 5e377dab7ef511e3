"""Every task by name (`get_task`, `list_tasks`) and the `Seq2SeqTrainer` metrics hook built on it.

The registry is the one module that imports every task module, so the task modules import only `base.py`
and `metrics.py` and never each other (no cycles). Same file name, other job: `inference/serving/registry.py`
is the server's store of loaded adapters; each is named for what it registers inside its own package.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .base import Task
from .glue import MRPC, QQP, SST2
from .qa import QA_TASKS
from .superglue import SUPERGLUE_TASKS
from .supersense import SUPERSENSE, VERB_SUPERSENSE

_ALIASES = {
    "sst-2": "sst2",
    "wsc.fixed": "wsc",
    "re": "relation_extraction",
    "relationextraction": "relation_extraction",
    "duorc.paraphraserc": "duorc",
    "squad_v1": "squad",
}


def _registry() -> dict[str, Task]:
    tasks: list[Task] = [*SUPERGLUE_TASKS, MRPC, QQP, SST2, *QA_TASKS, SUPERSENSE, VERB_SUPERSENSE]
    return {task.name: task for task in tasks}


def list_tasks() -> list[str]:
    """Names `get_task` accepts (aliases aside)."""
    return sorted(_registry())


def get_task(name: str, **overrides: Any) -> Task:
    """The task registered under `name` (case-insensitive), with fields replaced by `overrides`.

    `overrides` change e.g. where the data lives: `get_task("boolq", hub_path="super_glue")`.
    """
    if not isinstance(name, str):
        raise TypeError(f"task name must be a string, got {name!r}; see softprompt_ext.tasks.list_tasks().")
    registry = _registry()
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in registry:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(registry))}.")
    task = registry[key]
    if not overrides:
        return task
    known = {f.name for f in dataclasses.fields(task)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(
            f"get_task({name!r}) got unknown field(s) {unknown}; {type(task).__name__} has {sorted(known)}."
        )
    return dataclasses.replace(task, **overrides)


def make_compute_metrics(
    tokenizer, task: Task | str, eval_dataset: Any | None = None
) -> Callable[[Any], dict[str, float]]:
    """A `compute_metrics` for `Seq2SeqTrainer` with `Seq2SeqTrainingArguments(predict_with_generate=True)`.

    Args:
        tokenizer: decodes the generated ids and the label ids.
        task: a `Task` (or its registry name) whose `compute_metrics` scores the decoded strings.
        eval_dataset: the *formatted* eval set (`task.format(raw)`, columns `inputs`, `targets`, `answers`,
            `group`, `label_id`), in the order the Trainer evaluates it (its eval sampler is sequential).
            Needed by tasks that score against more than the single target string (MultiRC groups, ReCoRD /
            SQuAD / MRQA answer lists, WSC labels); without it the decoded labels are the references.

    The Trainer pads generated ids across batches with -100 and labels carry -100 on ignored positions: both
    are replaced by the pad id before decoding, and special tokens are skipped.
    """
    task = get_task(task) if isinstance(task, str) else task
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def compute_metrics(eval_pred: Any) -> dict[str, float]:
        predictions, label_ids = _unpack(eval_pred)
        if predictions.ndim == 3:
            raise ValueError(
                f"compute_metrics got logits of shape {predictions.shape}; generate predictions instead: "
                "Seq2SeqTrainingArguments(predict_with_generate=True)."
            )
        predictions = np.where(predictions < 0, pad_id, predictions)  # [N, L] -100 from cross-batch padding
        label_ids = np.where(label_ids < 0, pad_id, label_ids)  # [N, L']
        pred_text = [t.strip() for t in tokenizer.batch_decode(predictions, skip_special_tokens=True)]
        gold_text = [t.strip() for t in tokenizer.batch_decode(label_ids, skip_special_tokens=True)]
        if eval_dataset is not None:
            rows = [dict(row) for row in eval_dataset]
            if len(rows) != len(pred_text):
                raise ValueError(
                    f"eval_dataset has {len(rows)} rows but the Trainer produced "
                    f"{len(pred_text)} predictions; "
                    "pass the formatted dataset the Trainer evaluates (same rows, same order)."
                )
        else:
            rows = [
                {"targets": t, "answers": [t], "group": str(i), "label_id": -1}
                for i, t in enumerate(gold_text)
            ]
        return task.compute_metrics(pred_text, rows)

    return compute_metrics


def _unpack(eval_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(eval_pred, Mapping):
        predictions, label_ids = eval_pred["predictions"], eval_pred["label_ids"]
    elif hasattr(eval_pred, "predictions"):
        predictions, label_ids = eval_pred.predictions, eval_pred.label_ids
    else:
        predictions, label_ids = eval_pred
    if isinstance(predictions, tuple):
        predictions = predictions[0]
    return np.asarray(predictions), np.asarray(label_ids)
