"""GLUE tasks of the paper: MRPC and QQP (zero-shot transfer, section 5) and SST-2, in T5's text-to-text format."""

from __future__ import annotations

from .base import ClassificationTask

MRPC = ClassificationTask(
    "mrpc",
    "nyu-mll/glue",
    "mrpc",
    prefix="mrpc",
    label_names=("not_equivalent", "equivalent"),
    fields=("sentence1", "sentence2"),
    f1="binary",
)
QQP = ClassificationTask(
    "qqp",
    "nyu-mll/glue",
    "qqp",
    prefix="qqp",
    label_names=("not_duplicate", "duplicate"),
    fields=("question1", "question2"),
    f1="binary",
)
SST2 = ClassificationTask(
    "sst2", "nyu-mll/glue", "sst2", prefix="sst2", label_names=("negative", "positive"), fields=("sentence",)
)
