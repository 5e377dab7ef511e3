"""benchmarks/quality_targets.py: the quality targets are decided from the benchmark's own summary, each one able
to come out met, not met, or not measured. Reports are built with `quality.summarise` from made-up runs."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import quality, quality_targets  # noqa: E402
from benchmarks.quality_runs import RunSpec  # noqa: E402

GOOD = {"cl": [0.41, 0.45, 0.43], "sv": [0.30, 0.35, 0.33], "ru": [0.13, 0.15, 0.12], "span": [0.38, 0.40, 0.39]}


def _report(accuracies: dict[RunSpec, list[float]], steps: int = 800, task: str = "supersense") -> dict:
    runs = {}
    for spec, values in accuracies.items():
        for seed, acc in enumerate(values):
            key = RunSpec(**{**spec.__dict__, "seed": seed}).key
            runs[key] = {"key": key, "seed": seed, "steps": steps, "test_accuracy": acc, "best_dev_accuracy": acc,
                         "valid_label_rate": 1.0, "trainable_parameters": 1, "train_seconds": 1.0,
                         "test_label_token_accuracy": acc,
                         "dev_curve": [{"step": 0, "seconds": 0.0, "dev_accuracy": 0.0, "train_loss": 1.0}]}
    seeds = sorted({r["seed"] for r in runs.values()})
    return {"settings": {"steps": steps, "seeds": seeds, "task": task}, "runs": list(runs.values()),
            "summary": quality.summarise(runs, seeds, task)}


def _noun(cl=GOOD["cl"], sv=GOOD["sv"], ru=GOOD["ru"], span=GOOD["span"], steps=800):
    return _report({RunSpec(): cl, RunSpec(init="SAMPLE_VOCAB"): sv, RunSpec(init="RANDOM_UNIFORM"): ru,
                    RunSpec(base="span"): span}, steps)


def _verbs(values=(0.30, 0.27, 0.33)):
    return _report({RunSpec(task="verb_supersense"): list(values)}, task="verb_supersense")


def _verdicts(noun, verbs):
    return [r["verdict"] for r in quality_targets.targets(noun, verbs)]


def test_every_target_met():
    rows = quality_targets.targets(_noun(), _verbs())
    assert [r["verdict"] for r in rows] == ["**met**"] * 4
    assert "0.430 +- 0.016 (0.410-0.450, 3 seeds) after 800 steps" in rows[0]["measured"]


M, N = "**met**", "**not met**"


@pytest.mark.parametrize("noun, verbs, expected", [
    (_noun(cl=[0.39, 0.40, 0.40]), _verbs(), [N, M, M, M]),  # mean 0.397 < 0.40
    (_noun(span=[0.45, 0.43, 0.44]), _verbs(), [M, N, M, M]),  # span corruption beats LM adaptation
    (_noun(cl=[0.125] * 3, sv=[0.1, 0.11, 0.12], ru=[0.0] * 3, span=[0.125] * 3), _verbs(), [N, N, M, M]),  # tie
    (_noun(ru=[0.13, 0.31, 0.12]), _verbs(), [M, M, N, M]),  # random uniform's range reaches sampled vocab's
    (_noun(), _verbs([0.30, 0.24, 0.33]), [M, M, M, N]),  # one held-out seed under twice chance
])
def test_each_target_fails_on_its_own(noun, verbs, expected):
    assert _verdicts(noun, verbs) == expected


def test_accuracy_reached_after_more_than_800_steps_is_not_met():
    assert _verdicts(_noun(steps=1600), _verbs())[0] == "**not met**"


def test_missing_runs_or_too_few_seeds_are_not_measured_rather_than_missed():
    assert _verdicts(None, None) == ["not measured"] * 4
    one_seed = _report({RunSpec(): [0.5], RunSpec(init="SAMPLE_VOCAB"): [0.3], RunSpec(init="RANDOM_UNIFORM"): [0.1],
                        RunSpec(base="span"): [0.2]})
    assert _verdicts(one_seed, _verbs([0.4])) == ["not measured"] * 4  # one seed shows no seed range
    table = quality_targets.render(quality_targets.targets(None, None))
    assert table.count("\n") == 6 and table.startswith("| target |")


def test_a_report_of_the_other_task_is_refused(capsys):
    with pytest.raises(ValueError, match=r"--noun: the report holds task 'verb_supersense' runs, not 'supersense'"):
        quality_targets.targets(_verbs(), None)
    with pytest.raises(ValueError, match=r"--verbs: the report holds task 'supersense' runs"):
        quality_targets.targets(None, _noun())
