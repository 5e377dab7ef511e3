"""Task mixing for multi-task prompt tuning (`training/mixing.py`): T5's rates, per-task order, equal steps."""

from __future__ import annotations

import pytest
from datasets import Dataset

from softprompt_ext.training.mixing import equal_steps, mix_tasks, mixing_rates

SIZES = {"a": 100, "b": 400, "c": 1600}


def test_rates_follow_t5():
    assert mixing_rates(SIZES, "proportional") == pytest.approx({"a": 100 / 2100, "b": 400 / 2100, "c": 1600 / 2100})
    assert mixing_rates(SIZES, "uniform") == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})
    # temperature 2: rates ~ sqrt(n) = 10, 20, 40
    assert mixing_rates(SIZES, "temperature", temperature=2.0) == pytest.approx({"a": 1 / 7, "b": 2 / 7, "c": 4 / 7})
    assert mixing_rates(SIZES, "temperature", temperature=1.0) == pytest.approx(mixing_rates(SIZES))
    # T5's artificial limit K caps the big task
    assert mixing_rates(SIZES, "proportional", limit=400) == pytest.approx({"a": 1 / 9, "b": 4 / 9, "c": 4 / 9})


@pytest.mark.parametrize("kwargs, match", [({"strategy": "mean"}, "not one of"),
                                           ({"strategy": "temperature", "temperature": 0}, "temperature must be"),
                                           ({"limit": 0}, "limit must be")])
def test_bad_rates_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mixing_rates(SIZES, **kwargs)
    with pytest.raises(ValueError, match="at least one example"):
        mixing_rates({"a": 0})


def datasets():
    return {t: Dataset.from_dict({"x": [f"{t}{i}" for i in range(n // 100)]}) for t, n in SIZES.items()}


def test_mix_tasks_draws_at_the_rates_and_keeps_each_tasks_order():
    mixed = mix_tasks(datasets(), 4000, "temperature", temperature=2.0, seed=3)
    counts = {t: mixed["task"].count(t) for t in SIZES}
    assert sum(counts.values()) == 4000
    for t, rate in {"a": 1 / 7, "b": 2 / 7, "c": 4 / 7}.items():
        assert abs(counts[t] / 4000 - rate) < 0.03, counts  # binomial sd at n=4000 is < 0.008
    assert all(x.startswith(t) for x, t in zip(mixed["x"], mixed["task"], strict=True))
    # each epoch of a task is a permutation of it, and the task's order does not depend on the mixture
    a_rows = [x for x, t in zip(mixed["x"], mixed["task"], strict=True) if t == "a"]
    assert sorted(a_rows[: len(datasets()["a"])]) == sorted(datasets()["a"]["x"])
    other = mix_tasks(datasets(), 4000, "uniform", seed=3)
    a_other = [x for x, t in zip(other["x"], other["task"], strict=True) if t == "a"]
    n = min(len(a_rows), len(a_other))
    assert a_rows[:n] == a_other[:n]
    assert mix_tasks(datasets(), 50, seed=1)["x"] == mix_tasks(datasets(), 50, seed=1)["x"]


def test_equal_steps_puts_every_task_in_every_step():
    data = {"a": Dataset.from_dict({"x": ["a0", "a1", "a2"]}), "b": Dataset.from_dict({"x": ["b0", "b1"]})}
    layout = equal_steps(data, 2, 3)
    assert layout["x"] == ["a0", "a1", "b0", "b1", "a2", "a0", "b0", "b1", "a1", "a2", "b0", "b1"]
    assert layout["task"] == ["a", "a", "b", "b"] * 3
    with pytest.raises(ValueError, match="must be > 0"):
        equal_steps(data, 0, 3)
