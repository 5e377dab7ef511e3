"""Zero-shot transfer configurations of `softprompt_ext.tasks.transfer` (paper section 5, Tables 2 and 3)."""

from __future__ import annotations

import pytest

from softprompt_ext.tasks.transfer import MRQA_OUT_OF_DOMAIN, TRANSFERS, get_transfer


def test_qqp_to_mrpc_maps_labels_before_scoring():
    transfer = get_transfer("qqp->mrpc")
    assert transfer.candidates == ["not_duplicate", "duplicate"]  # what the QQP prompt speaks
    assert transfer.map_predictions(["duplicate", " not_duplicate ", "maybe"]) == [
        "equivalent",
        "not_equivalent",
        "maybe",
    ]
    rows = transfer.target_task.format(
        [
            {"sentence1": "a", "sentence2": "b", "label": 1},
            {"sentence1": "c", "sentence2": "d", "label": 1},
            {"sentence1": "e", "sentence2": "f", "label": 0},
            {"sentence1": "g", "sentence2": "h", "label": 0},
        ]
    )
    assert rows["inputs"][0] == "sentence1: a sentence2: b"  # the target keeps its own format
    scores = transfer.compute_metrics(["duplicate", "not_duplicate", "duplicate", "not_duplicate"], rows)
    # acc 2/4; F1 of "equivalent": tp 1, fn 1, fp 1 -> 2 / 4
    assert scores == {"accuracy": pytest.approx(50.0), "f1": pytest.approx(50.0)}
    # unmapped MRPC words would be invalid QQP-prompt outputs: scored as wrong
    assert transfer.compute_metrics(["equivalent"] * 4, rows)["accuracy"] == 50.0


def test_mrpc_to_qqp_is_the_inverse_mapping():
    transfer = get_transfer("MRPC -> QQP")
    assert dict(transfer.label_map) == {"equivalent": "duplicate", "not_equivalent": "not_duplicate"}
    assert transfer.target_task.name == "qqp" and transfer.source_task.name == "mrpc"


def test_paper_reference_values():
    assert get_transfer("qqp->mrpc").paper == {"accuracy": (73.1, 76.3), "f1": (81.2, 84.3)}
    assert get_transfer("mrpc->qqp").paper == {"accuracy": (74.9, 75.4), "f1": (70.9, 69.7)}
    expected_f1 = {
        "textbookqa": (54.3, 66.8),
        "bioasq": (77.9, 79.1),
        "race": (59.8, 60.7),
        "relation_extraction": (88.4, 88.8),
        "duorc": (68.9, 67.7),
        "drop": (68.9, 67.1),
    }
    assert MRQA_OUT_OF_DOMAIN == tuple(expected_f1)
    for name, f1 in expected_f1.items():
        transfer = get_transfer(f"squad->{name}")
        assert transfer.paper == {"f1": f1}
        assert transfer.target_task.subset is not None and transfer.target_task.eval_split == "test"
        assert transfer.candidates is None and transfer.label_map == {}
    assert get_transfer("squad->re") is TRANSFERS["squad->relation_extraction"]


def test_squad_to_mrqa_scores_f1_against_all_golds():
    transfer = get_transfer("squad->textbookqa")
    rows = transfer.target_task.format(
        [
            {
                "subset": "TextbookQA",
                "qid": "t1",
                "question": "What gas?",
                "context": "Plants use carbon dioxide.",
                "answers": ["carbon dioxide", "CO2"],
            }
        ]
    )
    assert transfer.compute_metrics(["co2"], rows) == {"exact_match": 100.0, "f1": 100.0}


def test_unknown_transfer():
    with pytest.raises(ValueError, match="unknown transfer 'qqp->sst2'; known: mrpc->qqp, qqp->mrpc"):
        get_transfer("qqp->sst2")
    with pytest.raises(TypeError, match="transfer name must be a string"):
        get_transfer(None)
