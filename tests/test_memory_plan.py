"""benchmarks/memory_plan.py: published T5 sizes, the expected orderings, the saved results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.memory_plan import DEVICES, T5_SHAPES, full_plan, parameter_counts, plan

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = {"T5-Small": 77e6, "T5-Base": 248e6, "T5-Large": 783e6, "T5-XL": 2.85e9, "T5-XXL": 11.1e9}


@pytest.mark.parametrize("shape", T5_SHAPES, ids=lambda s: s.name)
def test_parameter_counts_match_the_published_sizes(shape):
    assert parameter_counts(shape)["total"] == pytest.approx(PUBLISHED[shape.name], rel=0.01)


@pytest.mark.parametrize("shape", T5_SHAPES, ids=lambda s: s.name)
def test_sharding_orders_as_expected(shape):
    for n in DEVICES:
        ddp, fsdp = plan(shape, "ddp", n, 2, 2, True), plan(shape, "fsdp", n, 2, 2, True)
        assert fsdp["weights"] <= ddp["weights"]
        assert fsdp["activations"] == ddp["activations"]  # same per-device batch
    one, eight = plan(shape, "fsdp", 1, 2, 2, True), plan(shape, "fsdp", 8, 2, 2, True)
    assert eight["total"] < one["total"]
    assert plan(shape, "ddp", 1, 2, 2, True)["activations"] < plan(shape, "ddp", 1, 2, 2, False)["activations"]
    assert plan(shape, "ddp", 1, 4, 4, False)["weights"] == 2 * plan(shape, "ddp", 1, 2, 2, False)["weights"]


def test_saved_results_are_the_current_plan():
    saved = json.loads((ROOT / "benchmarks" / "results" / "memory_plan" / "memory_plan.json").read_text(encoding="utf-8"))
    fresh = full_plan()
    assert len(saved["rows"]) == len(fresh["rows"])
    for old, new in zip(saved["rows"], fresh["rows"], strict=True):
        assert old["model"] == new["model"] and old["total"] == pytest.approx(new["total"])
    assert {p["run"] for p in saved["measured"]["points"]} == {"single", "fsdp1_2proc"}
