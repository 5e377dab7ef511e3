"""WordNet noun supersenses: the bundled task that the embedded model is prompt-tuned on (offline).

A noun's lemmas and definition ("corn syrup: syrup prepared from corn") -> its lexicographer category word
("food"), 8 classes, split by synset into 2,000 / 320 / 320 rows (`softprompt_ext/data/wordnet_supersense/`,
WordNet 3.0 licence bundled beside the files; built by `scripts/embedded_build/build.py`). As in the paper
(section 3) the target is the label *word*, so class-label initialisation (section 3.2) starts each prompt
row from a label's embedding.

`SUPERSENSE` is an ordinary `ClassificationTask` (`get_task("supersense")`): `SUPERSENSE.load("dev")` reads the
bundled split, `format` gives the common columns, `compute_metrics` scores accuracy. `supersense_batch` makes a
training batch directly from rows, for loops that do not go through `datasets`.

`VERB_SUPERSENSE` (`get_task("verb_supersense")`, files in `softprompt_ext/data/wordnet_verb_supersense/`) is
the same task on verb synsets ("parse: analyze syntactically ..." -> "cognition"), 8 classes, the same sizes.
It is the held-out evaluation task: no decision about the embedded model was taken on it, and its
dev/test synsets are left out of the model's pretraining text like the noun task's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..embedded import data_dir
from ..special_tokens import IGNORE_INDEX, add_sentinel_prefix
from .base import ClassificationTask

SUPERSENSE_LABELS = ("animal", "artifact", "body", "food", "location", "person", "plant", "substance")
VERB_SUPERSENSE_LABELS = ("change", "cognition", "communication", "contact", "creation", "motion", "possession",
                          "social")
SUPERSENSE_SPLITS = ("train", "dev", "test")
# the package directories under softprompt_ext/data/ of the two bundled tasks
NOUN_DIR, VERB_DIR = "wordnet_supersense", "wordnet_verb_supersense"


def read_supersense(split: str, directory: str = NOUN_DIR) -> list[dict[str, str]]:
    """Rows of a bundled split as dicts with `id`, `text`, `label` (the label word) and `lexname`.

    `directory`: `NOUN_DIR` (the bundled noun task) or `VERB_DIR` (the held-out verb task).
    """
    if split not in SUPERSENSE_SPLITS:
        raise ValueError(f"split={split!r} is not a supersense split; use one of {list(SUPERSENSE_SPLITS)}.")
    if directory not in (NOUN_DIR, VERB_DIR):
        raise ValueError(f"directory={directory!r} is not a bundled supersense task; use {NOUN_DIR!r} or "
                         f"{VERB_DIR!r}.")
    path = data_dir() / directory / f"{split}.jsonl"
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def load_supersense(split: str, directory: str = NOUN_DIR):
    """A bundled split as a `datasets.Dataset` (columns as `read_supersense`)."""
    from datasets import Dataset

    return Dataset.from_list(read_supersense(split, directory))


def supersense_batch(tokenizer, rows: list[dict], sentinel: bool = False, max_length: int = 64) -> dict:
    """Rows -> `input_ids [B, S]`, `attention_mask [B, S]`, `labels [B, T]` (label word + EOS, padding -100).

    `sentinel` prefixes every target with `<extra_id_0>` (the paper's "span corruption + sentinel", section 3.3).
    """
    enc = tokenizer([r["text"] for r in rows], padding=True, truncation=True, max_length=max_length,
                    return_tensors="pt")
    targets = [tokenizer(r["label"])["input_ids"] for r in rows]
    if sentinel:
        targets = [add_sentinel_prefix(t, tokenizer) for t in targets]
    width = max(map(len, targets))
    labels = torch.tensor([t + [IGNORE_INDEX] * (width - len(t)) for t in targets])  # [B, T]
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}


@dataclass(frozen=True)
class SupersenseTask(ClassificationTask):
    """A bundled task as a `ClassificationTask`: input = the gloss text, target = the label word.

    `load(split)` reads the files shipped in the package (no Hub dataset exists) from `directory`;
    `data_files=` still works.
    """

    directory: str = NOUN_DIR

    def load(self, split: str | None = None, *, data_files: Any = None, **kwargs: Any):
        if data_files is not None:
            return super().load(split, data_files=data_files, **kwargs)
        return load_supersense(split or self.eval_split, self.directory)

    def input_text(self, example: Mapping[str, Any]) -> str:
        if "text" not in example:
            raise ValueError("the supersense example has no 'text' column; expected rows of read_supersense().")
        return str(example["text"])

    def _group(self, example: Mapping[str, Any]) -> str:
        return str(example.get("id", ""))


SUPERSENSE = SupersenseTask(
    "supersense",
    hub_path="",  # bundled with the package: softprompt_ext/data/wordnet_supersense/
    eval_split="dev",
    label_names=SUPERSENSE_LABELS,
    fields=("text",),
)

VERB_SUPERSENSE = SupersenseTask(
    "verb_supersense",
    hub_path="",  # bundled with the package: softprompt_ext/data/wordnet_verb_supersense/
    eval_split="dev",
    label_names=VERB_SUPERSENSE_LABELS,
    fields=("text",),
    directory=VERB_DIR,
)
