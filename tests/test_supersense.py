"""The bundled WordNet supersense task (`tasks/supersense.py`) and the embedded checkpoints' default path.

Rows come from the files shipped in `softprompt_ext/data/wordnet_supersense/` (read offline); batches are built
with the tiny tokenizer of tests/conftest.py, so every id is known: '▁cat' 75, 'plant' = '▁' 'pla' 'nt'
(3, 78, 131), `</s>` 1, `<pad>` 0, `<extra_id_0>` 168.
"""

from __future__ import annotations

import os

import pytest
import torch

from softprompt_ext.embedded import default_model_path, embedded_model_path
from softprompt_ext.special_tokens import IGNORE_INDEX
from softprompt_ext.tasks.registry import get_task, list_tasks
from softprompt_ext.tasks.supersense import (
    SUPERSENSE,
    SUPERSENSE_LABELS,
    VERB_DIR,
    VERB_SUPERSENSE,
    VERB_SUPERSENSE_LABELS,
    read_supersense,
    supersense_batch,
)

LABELS = ["animal", "artifact", "body", "food", "location", "person", "plant", "substance"]
FIRST_DEV_ROW = {"id": "07860548-n", "text": "corn syrup: syrup prepared from corn", "label": "food", "lexname": "noun.food"}
ROWS = [{"text": "the cat sat", "label": "cat"}, {"text": "a ship", "label": "plant"}]


# ---------------------------------------------------------------------------------------------- the task
def test_get_task_finds_the_bundled_task_with_its_eight_labels():
    assert get_task("supersense") is SUPERSENSE
    assert get_task(" SuperSense ") is SUPERSENSE  # names are case-insensitive
    assert "supersense" in list_tasks()
    assert SUPERSENSE_LABELS == tuple(LABELS)
    assert SUPERSENSE.class_labels == LABELS
    assert SUPERSENSE.eval_split == "dev"


def test_get_task_finds_the_held_out_verb_task_and_reads_its_own_files():
    assert get_task("verb_supersense") is VERB_SUPERSENSE
    assert VERB_SUPERSENSE.class_labels == list(VERB_SUPERSENSE_LABELS) and len(VERB_SUPERSENSE_LABELS) == 8
    dev = VERB_SUPERSENSE.load("dev")
    assert len(dev) == 320 and all(row["lexname"].startswith("verb.") for row in dev)
    assert {row["label"] for row in dev} == set(VERB_SUPERSENSE_LABELS)
    assert read_supersense("test", VERB_DIR)[0]["id"] == VERB_SUPERSENSE.load("test")[0]["id"]
    with pytest.raises(ValueError, match=r"directory='wordnet_adjectives' is not a bundled supersense task"):
        read_supersense("dev", "wordnet_adjectives")


def test_load_reads_the_bundled_dev_split():
    dev = SUPERSENSE.load("dev")
    assert len(dev) == 320
    assert dev.column_names == ["id", "text", "label", "lexname"]
    assert dev[0] == read_supersense("dev")[0] == FIRST_DEV_ROW
    assert len(SUPERSENSE.load()) == 320  # the split defaults to eval_split


def test_format_gives_the_text_as_input_and_the_label_word_as_target():
    dev = SUPERSENSE.load("dev")
    formatted = SUPERSENSE.format(dev)
    assert formatted.column_names == ["inputs", "targets", "answers", "group", "label_id"]
    assert formatted["inputs"] == dev["text"]
    assert formatted["targets"] == dev["label"]
    assert formatted[0] == {
        "inputs": "corn syrup: syrup prepared from corn",
        "targets": "food",
        "answers": ["food"],
        "group": "07860548-n",
        "label_id": 3,
    }


def test_format_refuses_a_row_without_text():
    with pytest.raises(ValueError, match=r"the supersense example has no 'text' column; expected rows of read_supersense\(\)"):
        SUPERSENSE.format_example({"label": "food"})


def test_compute_metrics_scores_accuracy_of_the_label_words():
    formatted = SUPERSENSE.format(SUPERSENSE.load("dev"))
    rows = list(formatted)
    gold = formatted["targets"]
    assert SUPERSENSE.compute_metrics(gold, rows) == {"accuracy": 100.0}
    wrong_first_eight = ["body" if t != "body" else "food" for t in gold[:8]] + gold[8:]
    assert SUPERSENSE.compute_metrics(wrong_first_eight, rows) == {"accuracy": 97.5}  # 312 / 320


# ---------------------------------------------------------------------------------------------- supersense_batch
def test_supersense_batch_pads_inputs_and_labels_exactly(tokenizer):
    batch = supersense_batch(tokenizer, ROWS)
    assert sorted(batch) == ["attention_mask", "input_ids", "labels"]
    assert batch["input_ids"].tolist() == [[3, 6, 75, 3, 4, 41, 1], [10, 88, 11, 21, 1, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0]]
    assert IGNORE_INDEX == -100
    assert batch["labels"].tolist() == [[75, 1, -100, -100], [3, 78, 131, 1]]  # label word + EOS, then -100
    assert batch["labels"].dtype == torch.long


def test_supersense_batch_sentinel_option_prefixes_extra_id_0(tokenizer):
    batch = supersense_batch(tokenizer, ROWS, sentinel=True)
    assert batch["labels"].tolist() == [[168, 75, 1, -100, -100], [168, 3, 78, 131, 1]]
    assert torch.equal(batch["input_ids"], supersense_batch(tokenizer, ROWS)["input_ids"])  # inputs unchanged


def test_supersense_batch_truncates_inputs_to_max_length(tokenizer):
    batch = supersense_batch(tokenizer, ROWS, max_length=4)
    assert batch["input_ids"].tolist() == [[3, 6, 75, 1], [10, 88, 11, 1]]  # cut at the end, EOS kept (as T5)
    assert batch["labels"].tolist() == [[75, 1, -100, -100], [3, 78, 131, 1]]  # targets are not truncated


# ---------------------------------------------------------------------------------------------- embedded paths
def test_default_model_path_is_the_lm_adapted_checkpoint():
    assert default_model_path() == embedded_model_path("lm_adapt")
    assert os.path.isfile(os.path.join(default_model_path(), "config.json"))
