"""Text-to-text formatting, verbalizers, registry and loading of `softprompt_ext.tasks.base` (+ SuperGLUE / QA).

Every expected string below is written out by hand from T5's conventions (field order, separators, markup
handling), not computed with the code under test.
"""

from __future__ import annotations

import json
import os

import datasets
import pytest
import torch

from softprompt_ext import SoftPromptConfig
from softprompt_ext.tasks.base import (
    COLUMNS,
    ClassificationTask,
    label_id,
    tokenize_for_seq2seq,
)
from softprompt_ext.tasks.qa import pad_punctuation
from softprompt_ext.tasks.registry import get_task, list_tasks
from softprompt_ext.tasks.superglue import mark_pronoun

datasets.disable_progress_bars()
SAMPLES = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "data", "superglue")

# (task, raw example, taskless input, target, T5 prefix)
CASES = [
    (
        "boolq",
        {"question": "is water wet", "passage": "Water makes things wet.", "idx": 0, "label": 1},
        "passage: Water makes things wet. question: is water wet",
        "True",
        "boolq",
    ),
    (
        "cb",
        {"premise": "I think it rained.", "hypothesis": "it rained", "idx": 1, "label": 2},
        "hypothesis: it rained premise: I think it rained.",
        "neutral",
        "cb",
    ),
    (
        "copa",
        {
            "premise": "The glass fell.",
            "choice1": "It broke.",
            "choice2": "It sang.",
            "question": "effect",
            "idx": 2,
            "label": 0,
        },
        "choice1: It broke. choice2: It sang. premise: The glass fell. question: effect",
        "choice1",
        "copa",
    ),
    (
        "multirc",
        {
            "paragraph": "<b>Sent 1: </b>Cats purr.<br><b>Sent 2: </b>Dogs bark.<br>",
            "question": "Who barks?",
            "answer": "Dogs",
            "idx": {"paragraph": 4, "question": 7, "answer": 9},
            "label": 1,
        },
        "question: Who barks? answer: Dogs paragraph: Sent 1: Cats purr. Sent 2: Dogs bark. ",
        "True",
        "multirc",
    ),
    (
        "record",
        {
            "passage": "Ann met Bo.\n@highlight\nBo is tall\n@highlight\nAnn smiled.",
            "query": "@placeholder is tall.",
            "entities": ["Ann", "Bo"],
            "answers": ["Bo"],
            "idx": {"passage": 3, "query": 5},
        },
        "query: @placeholder is tall. entities: Ann, Bo passage: Ann met Bo. Bo is tall. Ann smiled.",
        "Bo",
        "record",
    ),
    (
        "rte",
        {"premise": "A man is sleeping.", "hypothesis": "A man is awake.", "idx": 3, "label": 1},
        "hypothesis: A man is awake. premise: A man is sleeping.",
        "not_entailment",
        "rte",
    ),
    (
        "wic",
        {
            "word": "bat",
            "sentence1": "A bat flew.",
            "sentence2": "He swung the bat.",
            "start1": 2,
            "start2": 13,
            "end1": 5,
            "end2": 16,
            "idx": 4,
            "label": 0,
        },
        "sentence1: A bat flew. sentence2: He swung the bat. word: bat",
        "False",
        "wic",
    ),
    (
        "wsc",
        {
            "text": "Sam hugged Kim because she was sad.",
            "span1_index": 2,
            "span2_index": 4,
            "span1_text": "Kim",
            "span2_text": "she",
            "idx": 5,
            "label": 1,
        },
        "Sam hugged Kim because *she* was sad.",
        "Kim",
        "wsc:",
    ),
    (
        "mrpc",
        {"sentence1": "He left early.", "sentence2": "He went home soon.", "idx": 6, "label": 1},
        "sentence1: He left early. sentence2: He went home soon.",
        "equivalent",
        "mrpc",
    ),
    (
        "qqp",
        {"question1": "How do I cook rice?", "question2": "What is rice?", "idx": 7, "label": 0},
        "question1: How do I cook rice? question2: What is rice?",
        "not_duplicate",
        "qqp",
    ),
    ("sst2", {"sentence": "a fine film", "idx": 8, "label": 1}, "sentence: a fine film", "positive", "sst2"),
    (
        "squad",
        {
            "id": "q1",
            "title": "T",
            "question": "Where's Bo?",
            "context": "Bo is in the U.K. now.",
            "answers": {"text": ["the U.K.", "U.K."], "answer_start": [9, 13]},
        },
        "question: Where ' s Bo ? context: Bo is in the U . K . now .",
        "the U . K .",
        None,
    ),
    (
        "bioasq",
        {
            "subset": "BioASQ",
            "qid": "m1",
            "question": "What grows?",
            "context": "Corn grows.",
            "answers": ["Corn"],
        },
        "question: What grows ? context: Corn grows .",
        "Corn",
        None,
    ),
]


@pytest.mark.parametrize("name, example, expected, target, prefix", CASES, ids=[c[0] for c in CASES])
def test_taskless_and_prefixed_formats(name, example, expected, target, prefix):
    task = get_task(name)
    (row,) = task.format_example(example)
    assert row["inputs"] == expected
    assert row["targets"] == target
    assert set(row) == set(COLUMNS)
    (prefixed,) = task.format_example(example, task_prefix=True)
    # the QA format has no task name in T5, so the prefix option leaves it alone
    assert prefixed["inputs"] == (f"{prefix} {expected}" if prefix else expected)


def test_format_dataset_has_fixed_columns_and_eval_metadata():
    multirc = get_task("multirc")
    raw = datasets.Dataset.from_list(
        [
            CASES[3][1],
            {
                **CASES[3][1],
                "answer": "Cats",
                "label": 0,
                "idx": {"paragraph": 4, "question": 7, "answer": 10},
            },
        ]
    )
    out = multirc.format(raw)
    assert out.column_names == list(COLUMNS)
    assert out["group"] == ["4-7", "4-7"]  # answer options of one question share a group
    assert out["targets"] == ["True", "False"]
    assert out["label_id"] == [1, 0]


def test_qa_answers_keep_every_gold_and_punctuation_can_stay():
    squad = get_task("squad")
    (row,) = squad.format_example(CASES[11][1])
    assert row["answers"] == ["the U . K .", "U . K ."]
    plain = get_task("squad", pad_punctuation=False)
    (row,) = plain.format_example(CASES[11][1])
    assert row["inputs"] == "question: Where's Bo? context: Bo is in the U.K. now."
    assert row["targets"] == "the U.K."
    assert pad_punctuation("  a,b  (c) ") == "a , b ( c )"


@pytest.mark.parametrize("text, padded", [
    ("Beyoncé's tour", "Beyoncé ' s tour"),  # was "Beyonc é ' s tour" with ASCII \W
    ("café façade", "café façade"),  # was "caf é fa ç ade"
    ("Zürich, 1848.", "Zürich , 1848 ."),
    ("naïve_x—y", "naïve_x — y"),  # underscore kept, dash padded
    ("e\u0301tude", "e\u0301tude"),  # a combining mark stays on its letter
    ("東京は¥100", "東京は ¥ 100"),  # CJK letters kept, the currency sign padded
    ("١٢٣ كتاب؟", "١٢٣ كتاب ؟"),  # Arabic digits and letters kept, its question mark padded
])
def test_pad_punctuation_keeps_letters_marks_and_numbers_of_every_script(text, padded):
    assert pad_punctuation(text) == padded


def test_record_trains_on_one_row_per_answer():
    record = get_task("record")
    example = {**CASES[4][1], "answers": ["Bo", "Bo Smith"]}
    rows = record.format_example(example, train=True)
    assert [r["targets"] for r in rows] == ["Bo", "Bo Smith"]
    assert all(r["answers"] == ["Bo", "Bo Smith"] and r["group"] == "3-5" for r in rows)
    assert len(record.format_example(example)) == 1  # evaluation: one row per query


def test_record_passage_keeps_existing_punctuation_before_highlights():
    record = get_task("record")
    example = {**CASES[4][1], "passage": 'He said "go."\n@highlight\nThey went'}
    (row,) = record.format_example(example)
    assert row["inputs"].endswith('passage: He said "go." They went')


def test_wsc_trains_only_on_right_referents_and_marks_punctuated_pronouns():
    wsc = get_task("wsc")
    wrong = {**CASES[7][1], "label": 0}
    assert wsc.format_example(wrong, train=True) == []
    assert len(wsc.format_example(wrong)) == 1
    assert mark_pronoun("Kim said it was for him.", 5, "him") == "Kim said it was for *him*."
    # an off-by-one index still finds the nearest occurrence of the pronoun
    assert mark_pronoun("Bo saw it and it fell.", 3, "it") == "Bo saw *it* and it fell."
    with pytest.raises(ValueError, match="span2_text='she' does not occur"):
        mark_pronoun("Sam hugged Kim.", 1, "she")


def test_unlabelled_rows_are_kept_for_eval_and_refused_for_training():
    boolq = get_task("boolq")
    unlabelled = {**CASES[0][1], "label": -1}
    (row,) = boolq.format_example(unlabelled)
    assert row["targets"] == "" and row["label_id"] == -1
    with pytest.raises(ValueError, match=r"boolq: an example has no label \(label=-1"):
        boolq.format_example(unlabelled, train=True)
    with pytest.raises(ValueError, match="record: an example has no answers"):
        get_task("record").format_example({**CASES[4][1], "answers": []}, train=True)


def test_label_id_accepts_ids_bools_and_label_strings():
    names = ("entailment", "not_entailment")
    assert label_id({"label": 1}, names) == 1
    assert label_id({"label": True}, names) == 1
    assert label_id({"label": "entailment"}, names) == 0
    assert label_id({}, names) == -1
    with pytest.raises(ValueError, match=r"label='maybe' is not one of \['entailment', 'not_entailment'\]"):
        label_id({"label": "maybe"}, names)
    with pytest.raises(ValueError, match=r"label=5 is not a label id in \[-1, 1\]"):
        label_id({"label": 5}, names)


def test_missing_column_names_the_hub_columns():
    with pytest.raises(ValueError, match=r"no column\(s\) \['hypothesis'\]"):
        get_task("rte").format_example({"premise": "x", "label": 0})


def test_verbalizers_and_class_labels():
    expected = {
        "boolq": ["False", "True"],
        "cb": ["entailment", "contradiction", "neutral"],
        "copa": ["choice1", "choice2"],
        "multirc": ["False", "True"],
        "rte": ["entailment", "not_entailment"],
        "wic": ["False", "True"],
        "mrpc": ["not_equivalent", "equivalent"],
        "qqp": ["not_duplicate", "duplicate"],
        "sst2": ["negative", "positive"],
    }
    for name, labels in expected.items():
        assert get_task(name).class_labels == labels, name
    assert get_task("record").class_labels is None
    assert get_task("wsc").class_labels is None
    assert get_task("mrpc").verbalize(1) == "equivalent"
    with pytest.raises(ValueError, match="label=2 is not in"):
        get_task("mrpc").verbalize(2)


def test_class_labels_initialise_the_prompt(make_model, tokenizer, tokenizer_dir):
    from peft import get_peft_model

    task = get_task("cb")
    config = SoftPromptConfig(
        task_type="SEQ_2_SEQ_LM",
        num_virtual_tokens=4,
        prompt_tuning_init="CLASS_LABELS",
        class_labels=task.class_labels,
        tokenizer_name_or_path=tokenizer_dir,
        sample_vocab_size=50,
        init_seed=0,
    )
    model = get_peft_model(make_model("t5", indexed=True), config)
    prompt = model.prompt_encoder["default"].embedding.weight  # [P, H]
    for row, label in enumerate(task.class_labels):
        ids = tokenizer(label, add_special_tokens=False)["input_ids"]
        torch.testing.assert_close(prompt[row], torch.full_like(prompt[row], sum(ids) / len(ids)))


def test_registry_names_aliases_and_errors():
    assert {
        "supersense",
        "verb_supersense",
        "boolq",
        "cb",
        "copa",
        "multirc",
        "record",
        "rte",
        "wic",
        "wsc",
        "mrpc",
        "qqp",
        "sst2",
        "squad",
        "textbookqa",
        "bioasq",
        "race",
        "relation_extraction",
        "duorc",
        "drop",
    } == set(list_tasks())
    assert get_task("BoolQ").name == "boolq"
    assert get_task("wsc.fixed").hub_config == "wsc.fixed"
    assert get_task("RE").subset == "RelationExtraction"
    assert get_task("boolq", hub_path="super_glue").hub_path == "super_glue"
    assert get_task("boolq").hub_path == "aps/super_glue"  # overrides don't leak into the registry
    with pytest.raises(ValueError, match="unknown task 'boolqq'; known tasks: bioasq, boolq"):
        get_task("boolqq")
    with pytest.raises(TypeError, match="task name must be a string"):
        get_task(3)
    with pytest.raises(TypeError, match=r"got unknown field\(s\) \['hub'\]"):
        get_task("rte", hub="x")


def test_custom_classification_task_is_validated():
    task = ClassificationTask("mine", "me/data", label_names=("bad", "good"), fields=("text",), f1="binary")
    (row,) = task.format_example({"text": "nice", "label": 1})
    assert (row["inputs"], row["targets"]) == ("text: nice", "good")
    with pytest.raises(ValueError, match=r"label_names=\('good',\) must hold at least two"):
        ClassificationTask("mine", "me/data", label_names=("good",), fields=("text",))
    with pytest.raises(ValueError, match="fields is empty"):
        ClassificationTask("mine", "me/data", label_names=("a", "b"))
    with pytest.raises(ValueError, match="f1='micro' is not known"):
        ClassificationTask("mine", "me/data", label_names=("a", "b"), fields=("text",), f1="micro")
    with pytest.raises(ValueError, match="f1='binary' needs exactly two labels"):
        ClassificationTask("mine", "me/data", label_names=("a", "b", "c"), fields=("text",), f1="binary")


def test_load_local_files_and_mrqa_subset_filter(tmp_path):
    path = tmp_path / "mrqa.jsonl"
    rows = [CASES[12][1], {**CASES[12][1], "qid": "m2", "subset": "DROP"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    bioasq = get_task("bioasq").load(data_files=str(path))
    assert bioasq["qid"] == ["m1"]
    assert get_task("drop").load(data_files={"test": str(path)})["qid"] == ["m2"]
    with pytest.raises(ValueError, match=r"extension '\.txt'"):
        get_task("boolq").load(data_files=str(tmp_path / "x.txt"))
    with pytest.raises(TypeError, match="pick a split"):
        get_task("boolq").format(datasets.DatasetDict({"train": datasets.Dataset.from_list([CASES[0][1]])}))


# columns of the Hub datasets (aps/super_glue) that the bundled samples must reproduce
HUB_COLUMNS = {
    "boolq": {"question", "passage", "idx", "label"},
    "cb": {"premise", "hypothesis", "idx", "label"},
    "copa": {"premise", "choice1", "choice2", "question", "idx", "label"},
    "multirc": {"paragraph", "question", "answer", "idx", "label"},
    "record": {"passage", "query", "entities", "entity_spans", "answers", "idx"},
    "rte": {"premise", "hypothesis", "idx", "label"},
    "wic": {"word", "sentence1", "sentence2", "start1", "start2", "end1", "end2", "idx", "label"},
    "wsc": {"text", "span1_index", "span2_index", "span1_text", "span2_text", "idx", "label"},
}


@pytest.mark.parametrize("name", sorted(HUB_COLUMNS))
def test_bundled_samples_have_hub_columns_and_format(name):
    task = get_task(name)
    raw = task.load("train", data_files=os.path.join(SAMPLES, f"{name}.jsonl"))
    assert set(raw.column_names) == HUB_COLUMNS[name]
    train, evaluation = task.format(raw, train=True), task.format(raw)
    assert len(evaluation) == len(raw) and len(train) >= 1
    if task.class_labels:
        assert set(evaluation["targets"]) <= set(task.class_labels)
        assert len(set(evaluation["targets"])) >= 2  # both/all classes appear
    # scoring the gold outputs is perfect; for WSC a wrong candidate's gold output is "anything else"
    golds = [
        t if name != "wsc" or r == 1 else "someone else"
        for t, r in zip(evaluation["targets"], evaluation["label_id"], strict=True)
    ]
    metrics = task.compute_metrics(golds, evaluation.to_list())
    assert all(value == 100.0 for value in metrics.values()), metrics


def test_tokenize_for_seq2seq(tokenizer):
    rows = get_task("rte").format([CASES[5][1]])
    ids = tokenize_for_seq2seq(rows, tokenizer, max_input_length=6, max_target_length=32)
    assert ids.column_names == ["input_ids", "attention_mask", "labels"]
    assert len(ids[0]["input_ids"]) == 6 and ids[0]["input_ids"][-1] == tokenizer.eos_token_id
    assert ids[0]["labels"] == tokenizer("not_entailment")["input_ids"]
