"""benchmarks/quality_targets.py: issue 21's targets are decided from the benchmark's own summary, each one able
to come out met, not met, or not measured. Reports are built with `quality.summarise` from made-up runs."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import quality, quality_targets  # noqa: E402
from benchmarks.quality_runs import RunSpec  # noqa: E402


def _report(accuracies: dict[RunSpec, list[float]], steps: int = 800, task: str = "supersense") -> dict:
    runs = {}
    for spec, values in accuracies.items():
        for seed, acc in enumerate(values):
            key = RunSpec(**{**spec.__dict__, "seed": seed}).key
            runs[key] = {"key": key, "seed": seed, "test_accuracy": acc, "best_dev_accuracy": acc,
                         "valid_label_rate": 1.0, "trainable_parameters": 1, "train_seconds": 1.0,
                         "test_label_token_accuracy": acc,
                         "dev_curve": [{"step": 0, "seconds": 0.0, "dev_accuracy": 0.0, "train_loss": 1.0}]}
    seeds = sorted({r["seed"] for r in runs.values()})
    return {"settings": {"steps": steps}, "summary": quality.summarise(runs, seeds, task)}


def _noun(class_labels, sample_vocab, uniform, span, steps=800):
    return _report({RunSpec(): class_labels, RunSpec(init="SAMPLE_VOCAB"): sample_vocab,
                    RunSpec(init="RANDOM_UNIFORM"): uniform, RunSpec(base="span"): span}, steps)


def _verbs(values):
    return _report({RunSpec(task="verb_supersense"): values}, task="verb_supersense")


def test_every_target_met():
    rows = quality_targets.targets(_noun([0.41, 0.45, 0.43], [0.30, 0.35, 0.33], [0.13, 0.15, 0.12],
                                         [0.38, 0.40, 0.39]), _verbs([0.30, 0.27, 0.33]))
    assert [r["verdict"] for r in rows] == ["**met**"] * 4
    assert "0.430 +- 0.016 (0.410-0.450, 3 seeds) after 800 steps" in rows[0]["measured"]


def test_each_target_can_fail_on_its_own():
    rows = quality_targets.targets(
        _noun([0.39, 0.40, 0.40], [0.30, 0.36, 0.33], [0.13, 0.31, 0.12], [0.45, 0.40, 0.50]),
        _verbs([0.30, 0.24, 0.33]))
    assert [r["verdict"] for r in rows] == ["**not met**"] * 4  # mean 0.397; span wins; ranges overlap; 0.24
    over_budget = quality_targets.targets(_noun([0.5] * 3, [0.3] * 3, [0.1] * 3, [0.2] * 3, steps=1600), None)
    assert over_budget[0]["verdict"] == "**not met**"  # accuracy reached, but not within 800 steps


def test_missing_runs_are_not_measured_rather_than_missed():
    rows = quality_targets.targets(None, None)
    assert [r["verdict"] for r in rows] == ["not measured"] * 4
    table = quality_targets.render(rows)
    assert table.count("\n") == 6 and table.startswith("| target |")
