"""Per-task evaluation of several prompts in one model, each with its task's own metric.

For a multi-task run (`training/multitask.py`): every task's prompt is scored on that task's rows by rank
classification (`rank_classification.rank_classify`, the library's one label scorer) against that task's
class labels, and the task's `compute_metrics` gives its scores. Tasks are duck-typed: anything with
`class_labels` and `compute_metrics(predictions, rows)` (`softprompt_ext.tasks.ClassificationTask`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from peft import PeftModel

from .rank_classification import rank_classify


def evaluate_per_task(
    model: PeftModel,
    tokenizer: Any,
    tasks: Mapping[str, tuple[Any, Sequence[Mapping[str, Any]]]],
    *,
    batch_size: int = 8,
) -> dict[str, dict[str, float]]:
    """Adapter name -> its task's metrics on its rows.

    Args:
        model: a `PeftModel` holding one prompt adapter per task (named as in `tasks`).
        tokenizer: the base model's tokenizer.
        tasks: adapter name -> `(task, rows)`; rows are `task.format(...)` rows (`inputs`, `targets`, ...).
        batch_size: inputs scored per pass.

    The model's active adapter is restored afterwards.
    """
    previous = model.active_adapter
    results: dict[str, dict[str, float]] = {}
    try:
        for name, (task, rows) in tasks.items():
            if name not in model.peft_config:
                raise ValueError(f"tasks has {name!r}, which is not an adapter of this model: {sorted(model.peft_config)}.")
            labels = getattr(task, "class_labels", None)
            if not labels:
                raise TypeError(f"task {name!r} has no class_labels; per-task evaluation ranks class labels.")
            rows = list(rows)
            model.set_adapter(name)
            ranked = rank_classify(model, tokenizer, [r["inputs"] for r in rows], list(labels), batch_size=batch_size)
            results[name] = dict(task.compute_metrics(ranked.predicted_labels, rows))
    finally:
        model.set_adapter(previous)
    return results
