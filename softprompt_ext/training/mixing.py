"""Mixing several tasks into one training stream for multi-task prompt tuning (`training/multitask.py`).

The mixing strategies are T5's (Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a
Unified Text-to-Text Transformer", section 3.5.2): with n_t training examples in task t,

* `"proportional"` (examples-proportional): rate r_t = min(n_t, limit) (limit: T5's artificial size K;
  None = no limit);
* `"temperature"`: r_t = min(n_t, limit) ** (1 / temperature), renormalised (temperature 1 = proportional,
  large temperatures approach uniform);
* `"uniform"`: r_t = 1.

`mix_tasks` draws each example's task from the rates and takes the task's next example in its own order
(each task reshuffled every epoch of its own, from its own seed), so the per-task order does not depend on
the mixture. `equal_steps` lays out every step with `per_task_batch_size` examples of every task -- the
layout in which one multi-task run equals K separate runs step for step (`tests/test_multitask.py`).
Both return a `datasets.Dataset` with a `task` column, read in order by `MultiTaskTrainer`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from datasets import Dataset, concatenate_datasets

from .multitask import TASK_COLUMN

STRATEGIES = ("proportional", "temperature", "uniform")


def mixing_rates(
    sizes: Mapping[str, int], strategy: str = "proportional", *, temperature: float = 1.0, limit: int | None = None
) -> dict[str, float]:
    """Task -> sampling probability (sums to 1) from the task sizes, as in T5 section 3.5.2."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r} is not one of {STRATEGIES}.")
    if not sizes or any(int(n) <= 0 for n in sizes.values()):
        raise ValueError(f"every task needs at least one example, got sizes {dict(sizes)}.")
    if not isinstance(temperature, int | float) or temperature <= 0:
        raise ValueError(f"temperature must be a number > 0, got {temperature!r}; 1 is examples-proportional.")
    if limit is not None and (not isinstance(limit, int) or limit <= 0):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}.")
    capped = {t: float(min(n, limit) if limit is not None else n) for t, n in sizes.items()}
    if strategy == "uniform":
        raw = {t: 1.0 for t in sizes}
    elif strategy == "temperature":
        raw = {t: n ** (1.0 / temperature) for t, n in capped.items()}
    else:
        raw = capped
    total = sum(raw.values())
    return {t: r / total for t, r in raw.items()}


def _with_task(dataset: Dataset, task: str) -> Dataset:
    if TASK_COLUMN in dataset.column_names:
        dataset = dataset.remove_columns(TASK_COLUMN)
    return dataset.add_column(TASK_COLUMN, [task] * len(dataset))


def _task_order(size: int, count: int, generator: torch.Generator | None) -> list[int]:
    """The first `count` indices of a task read epoch after epoch (each epoch a fresh permutation, or in
    order when `generator` is None)."""
    order: list[int] = []
    while len(order) < count:
        order.extend((torch.randperm(size, generator=generator) if generator is not None else torch.arange(size)).tolist())
    return order[:count]


def _generator(seed: int | None) -> torch.Generator | None:
    return None if seed is None else torch.Generator().manual_seed(seed)


def mix_tasks(
    datasets: Mapping[str, Dataset],
    num_examples: int,
    strategy: str = "proportional",
    *,
    temperature: float = 1.0,
    limit: int | None = None,
    seed: int = 0,
) -> Dataset:
    """`num_examples` examples drawn from the tasks at `mixing_rates(...)`, each with its `task` column.

    Task t's examples come in its own order (reshuffled each of its epochs, seed `seed + 1 + t`), whatever
    the mixture; the task sequence uses `seed`.
    """
    if not isinstance(num_examples, int) or num_examples <= 0:
        raise ValueError(f"num_examples must be a positive int, got {num_examples!r}.")
    names = list(datasets)
    rates = mixing_rates({t: len(d) for t, d in datasets.items()}, strategy, temperature=temperature, limit=limit)
    probs = torch.tensor([rates[t] for t in names], dtype=torch.float64)
    picks = torch.multinomial(probs, num_examples, replacement=True, generator=_generator(seed)).tolist()
    counts = [picks.count(k) for k in range(len(names))]
    orders = [_task_order(len(datasets[t]), counts[k], _generator(seed + 1 + k)) for k, t in enumerate(names)]
    offsets = [0]
    for t in names[:-1]:
        offsets.append(offsets[-1] + len(datasets[t]))
    taken = [0] * len(names)
    rows = []
    for k in picks:
        rows.append(offsets[k] + orders[k][taken[k]])
        taken[k] += 1
    stacked = concatenate_datasets([_with_task(datasets[t], t) for t in names])
    return stacked.select(rows)


def equal_steps(
    datasets: Mapping[str, Dataset], per_task_batch_size: int, num_steps: int, *, seed: int | None = None
) -> Dataset:
    """Step s holds `per_task_batch_size` examples of every task (tasks in mapping order), each task read in
    its own order (in order when `seed` is None, else reshuffled each epoch); train it with
    `per_device_train_batch_size = K * per_task_batch_size`. Task t's examples are exactly those a separate
    run with batch `per_task_batch_size` sees, step for step."""
    if per_task_batch_size <= 0 or num_steps <= 0:
        raise ValueError(f"per_task_batch_size and num_steps must be > 0, got {per_task_batch_size}, {num_steps}.")
    names = list(datasets)
    count = per_task_batch_size * num_steps
    orders = [
        _task_order(len(datasets[t]), count, _generator(None if seed is None else seed + k)) for k, t in enumerate(names)
    ]
    offsets = [0]
    for t in names[:-1]:
        offsets.append(offsets[-1] + len(datasets[t]))
    rows: list[int] = []
    for step in range(num_steps):
        for k in range(len(names)):
            block = orders[k][step * per_task_batch_size : (step + 1) * per_task_batch_size]
            rows.extend(offsets[k] + i for i in block)
    stacked = concatenate_datasets([_with_task(datasets[t], t) for t in names])
    return stacked.select(rows)
