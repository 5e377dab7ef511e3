"""`softprompt_ext.tasks.metrics` against hand-computed values (the arithmetic is in the comments)."""

from __future__ import annotations

import numpy as np
import pytest

from softprompt_ext.tasks.metrics import (
    accuracy,
    binary_f1,
    exact_match_score,
    macro_f1,
    multirc_metrics,
    normalize_answer,
    squad_metrics,
    token_f1_score,
    wsc_referent_match,
)
from softprompt_ext.tasks.registry import get_task, make_compute_metrics


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The  Quick, brown-fox!", "quick brownfox"),  # punctuation dropped, not replaced by a space
        ("An apple a day", "apple day"),
        ("theater and Anthem", "theater and anthem"),  # articles only as whole words
        ("  U.S.A.  ", "usa"),
        ("the", ""),
        ("", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_exact_match_and_token_f1_edge_cases():
    assert exact_match_score("The Eiffel Tower!", "eiffel tower") == 1.0
    # pred [cat, sat] vs gold [cat, sat, down]: P = 1, R = 2/3, F1 = 2 * (2/3) / (5/3) = 0.8
    assert token_f1_score("the cat sat", "a cat sat down") == pytest.approx(0.8)
    # a repeated token matches at most as often as the gold has it: [b, b] vs [b]: overlap 1, P = 1/2, R = 1
    assert token_f1_score("b b", "b") == pytest.approx(2 / 3)
    # [x, b, b] vs [b]: overlap 1, P = 1/3, R = 1 -> 2 * (1/3) / (4/3) = 1/2
    assert token_f1_score("x b b", "b") == pytest.approx(0.5)
    assert token_f1_score("dog", "cat") == 0.0
    # empty after normalisation: right only against empty (SQuAD 2.0 convention)
    assert token_f1_score("the", "a") == 1.0 and exact_match_score("the", "a") == 1.0
    assert token_f1_score("", "Paris") == 0.0
    assert token_f1_score("Paris", "") == 0.0


def test_squad_metrics_max_over_golds():
    scores = squad_metrics(
        ["Paris", "blue whale", ""],
        [["paris", "Paris, France"], ["the whale", "a blue-whale"], []],
    )
    # 1: EM 1, F1 1. 2: vs "whale" EM 0, F1 2/3 (P 1/2, R 1); vs "bluewhale" 0 -> max 2/3.
    # 3: no golds -> scored against "" -> EM 1, F1 1
    assert scores["exact_match"] == pytest.approx(100 * 2 / 3)
    assert scores["f1"] == pytest.approx(100 * (1 + 2 / 3 + 1) / 3)
    with pytest.raises(TypeError, match="wrap it: \\['Paris'\\]"):
        squad_metrics(["Paris"], ["Paris"])
    with pytest.raises(ValueError, match="got 1 predictions but 2 golds"):
        squad_metrics(["a"], [["a"], ["b"]])


def test_accuracy_and_binary_f1_with_invalid_outputs():
    refs = ["equivalent", "equivalent", "not_equivalent", "not_equivalent", "equivalent"]
    preds = ["equivalent", "not_equivalent", "equivalent", "not_equivalent", "maybe"]
    assert accuracy(preds, refs) == pytest.approx(40.0)  # 2 of 5
    # tp 1 (#1), fn 1 (#2), fp 1 (#3), tn (#4), invalid with positive gold -> fn (#5): 2*1 / (2 + 1 + 2) = 0.4
    assert binary_f1(preds, refs, positive="equivalent", negative="not_equivalent") == pytest.approx(40.0)
    # invalid output with a negative gold counts as a false positive: tp 0 -> F1 0
    assert binary_f1(["maybe"], ["not_equivalent"], "equivalent", "not_equivalent") == 0.0
    assert accuracy([" True "], ["True"]) == 100.0
    assert accuracy(["true"], ["True"]) == 0.0  # label strings are case-sensitive
    with pytest.raises(ValueError, match="got 1 predictions but 2 references"):
        accuracy(["a"], ["a", "b"])


def test_macro_f1_as_cb():
    labels = ["entailment", "contradiction", "neutral"]
    refs = ["entailment", "entailment", "contradiction", "neutral", "neutral", "neutral"]
    preds = ["entailment", "contradiction", "contradiction", "neutral", "entailment", "oops"]
    # entailment tp1 fp1 fn1 -> 1/2; contradiction tp1 fp1 fn0 -> 2/3; neutral tp1 fp0 fn2 -> 1/2
    assert macro_f1(preds, refs, labels) == pytest.approx(100 * (0.5 + 2 / 3 + 0.5) / 3)
    # a class never seen nor predicted scores 0 (scikit-learn's default), dragging the mean down
    assert macro_f1(["entailment"], ["entailment"], labels) == pytest.approx(100 / 3)
    with pytest.raises(ValueError, match="needs the label strings"):
        macro_f1(["a"], ["a"], [])


def test_multirc_f1a_and_exact_match():
    refs = ["True", "False", "True", "True", "False"]
    preds = ["True", "False", "True", "False", "False"]
    groups = ["q1", "q1", "q2", "q2", "q2"]
    scores = multirc_metrics(preds, refs, groups)
    # F1a over all options: tp 2, fn 1, fp 0 -> 4/5; EM: q1 all right, q2 not -> 1/2
    assert scores == {"f1a": pytest.approx(80.0), "exact_match": pytest.approx(50.0)}


@pytest.mark.parametrize(
    "prediction, referent, expected",
    [
        ("the cat", "The cat", True),
        ("cat", "the black cat", True),  # one word set inside the other
        ("her aunt", "aunt", True),  # determiners ignored
        ("dog", "the cat", False),
        ("Bob", "Bob's hat", False),  # possessive on one side only
        ("", "cat", False),
        ("the", "the cat", False),  # nothing left after determiners
    ],
)
def test_wsc_referent_match(prediction, referent, expected):
    assert wsc_referent_match(prediction, referent) is expected


def _ids(tokenizer, texts, width):
    rows = [tokenizer(t)["input_ids"] for t in texts]
    out = np.full((len(rows), width), -100)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def test_compute_metrics_decodes_generations_and_handles_minus_100(tokenizer):
    compute = make_compute_metrics(tokenizer, "boolq")
    predictions = _ids(
        tokenizer, ["True", "False", "False"], 6
    )  # -100 where the Trainer padded across batches
    labels = _ids(tokenizer, ["True", "True", "False"], 5)
    assert compute((predictions, labels)) == {"accuracy": pytest.approx(100 * 2 / 3)}
    # a (predictions, ...) tuple as some models return
    assert compute(((predictions, None), labels)) == {"accuracy": pytest.approx(100 * 2 / 3)}
    with pytest.raises(ValueError, match="predict_with_generate=True"):
        compute((np.zeros((3, 4, 10)), labels))


def test_compute_metrics_uses_eval_rows_for_multiple_golds(tokenizer):
    task = get_task("squad", pad_punctuation=False)
    rows = task.format(
        [
            {
                "id": "a",
                "question": "q?",
                "context": "c",
                "answers": {"text": ["the cat", "cat"], "answer_start": [0, 4]},
            },
            {"id": "b", "question": "q?", "context": "c", "answers": {"text": ["dog"], "answer_start": [0]}},
        ]
    )
    compute = make_compute_metrics(tokenizer, task, eval_dataset=rows)
    predictions = _ids(tokenizer, ["cat", "a dog barks"], 16)
    labels = _ids(tokenizer, ["the cat", "dog"], 8)
    # a: EM 1 F1 1. b: "dog barks" vs "dog": EM 0, F1 2 * (1/2 * 1) / (3/2) = 2/3
    scores = compute((predictions, labels))
    assert scores["exact_match"] == pytest.approx(50.0)
    assert scores["f1"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    with pytest.raises(ValueError, match="eval_dataset has 2 rows but the Trainer produced 1 predictions"):
        compute((predictions[:1], labels[:1]))


def test_record_scores_one_prediction_per_query():
    record = get_task("record")
    example = {
        "passage": "p",
        "query": "@placeholder q",
        "entities": ["Bo", "Ann"],
        "answers": ["Bo", "Bo Smith"],
        "idx": {"passage": 0, "query": 0},
    }
    rows = record.format_example(example, train=True)  # two rows for the same query
    # only the first prediction counts: EM 100 (not the mean of 100 and 0)
    assert record.compute_metrics(["Bo", "Ann"], rows) == {"exact_match": 100.0, "f1": 100.0}
