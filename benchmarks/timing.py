"""Interleaved timing that stays honest on a noisy, shared machine.

Design decisions
----------------
* **Interleave, don't batch.** Each repeat ("round") runs every case once, so all cases see the same
  stretch of machine load; a burst of someone else's work slows one round of everything rather than all
  repeats of one case. The order is shuffled each round (seeded), so no case always follows the same one.
* **Time the steady state.** Right before its timed call, each case runs `settle` untimed calls. A
  training loop repeats the same shapes step after step, and a step that follows a step of other shapes
  pays extra: the allocator cannot reuse the freed blocks and faults in fresh pages (measured here: the
  case that came right after a shape change was up to 1.7x slower than the same work repeated). Without
  settling, whichever case follows another shape in the order would carry that cost.
* **Medians, and paired ratios.** A case's time is the median over rounds. A ratio between two cases is
  the median of the per-round ratios: both numbers of a pair come from the same round, so a load level
  that changes from round to round cancels in the ratio. The spread (min and max) is kept to show noise.
* **Wall and CPU time.** Wall time is what a user waits; process CPU time (all threads) is recorded
  beside it because it grows less when other processes take the cores (it still includes OpenMP
  spin-waiting). A large gap between the two says the machine was busy.
* **A time budget.** After `min_repeats` rounds, no new round starts once the budget is spent, so the
  run ends in bounded time on a loaded machine; the number of rounds done is recorded.
* Warm-up rounds are run and discarded (first calls at a new shape build oneDNN kernels and allocator
  pools).
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable


def run_interleaved(
    cases: dict[str, Callable[[], None]],
    repeats: int,
    warmup: int = 0,
    min_repeats: int = 1,
    budget_s: float | None = None,
    log: Callable[[str], None] | None = None,
    settle: int = 1,
    seed: int = 0,
    between: Callable[[], None] | None = None,
) -> dict:
    """Time every case once per round (after `settle` untimed calls) for up to `repeats` rounds.

    `warmup` whole rounds are run first and discarded. `between` runs before each case's untimed calls
    (the benchmark returns freed memory to the OS there, so cases don't inherit each other's heap). Returns
    {"rounds": n, "warmup": w, "settle": s, "orders": [[...], ...], "cases": {name: {"wall_s": [...],
    "cpu_s": [...], "median_s": m, "min_s": a, "max_s": b, "cpu_median_s": c}}}, one sample per round.
    """
    if repeats < 1 or min_repeats < 1:
        raise ValueError(f"repeats and min_repeats must be >= 1, got {repeats} and {min_repeats}.")
    names = list(cases)
    shuffler = random.Random(seed)
    orders = []
    start = time.perf_counter()
    for _ in range(warmup):
        for name in names:
            cases[name]()
    samples = {name: {"wall_s": [], "cpu_s": []} for name in names}
    done = 0
    for _ in range(repeats):
        spent = time.perf_counter() - start
        if budget_s is not None and done >= min_repeats and spent > budget_s:
            break
        order = shuffler.sample(names, len(names))
        orders.append(order)
        for name in order:
            if between is not None:
                between()
            for _ in range(settle):
                cases[name]()
            wall0, cpu0 = time.perf_counter(), time.process_time()
            cases[name]()
            samples[name]["wall_s"].append(time.perf_counter() - wall0)
            samples[name]["cpu_s"].append(time.process_time() - cpu0)
        done += 1
        if log is not None:
            log(f"  round {done}: " + ", ".join(f"{n} {samples[n]['wall_s'][-1]:.2f}s" for n in names))
    return {
        "rounds": done,
        "warmup": warmup,
        "settle": settle,
        "orders": orders,
        "elapsed_s": time.perf_counter() - start,
        "cases": summarise(samples),
    }


def summarise(samples: dict[str, dict[str, list[float]]]) -> dict:
    out = {}
    for name, s in samples.items():
        wall = s["wall_s"]
        out[name] = {
            **s,
            "median_s": statistics.median(wall),
            "min_s": min(wall),
            "max_s": max(wall),
            "cpu_median_s": statistics.median(s["cpu_s"]),
        }
    return out


def paired_ratio(result: dict, numerator: str, denominator: str) -> dict:
    """Median over rounds of `numerator / denominator` measured in the same round, with its spread.

    `ratio`, `min`, `max` are wall-time ratios; `cpu_ratio` is the same median for process CPU time, a
    cross-check that is less sensitive to time spent waiting for a core on a busy machine.
    """
    cases = result["cases"]
    wall = [x / y for x, y in zip(cases[numerator]["wall_s"], cases[denominator]["wall_s"], strict=True)]
    cpu = [
        x / y for x, y in zip(cases[numerator]["cpu_s"], cases[denominator]["cpu_s"], strict=True) if y > 0
    ]
    return {
        "numerator": numerator,
        "denominator": denominator,
        "ratio": statistics.median(wall),
        "min": min(wall),
        "max": max(wall),
        "n": len(wall),
        "cpu_ratio": statistics.median(cpu) if cpu else None,
        "cpu_min": min(cpu) if cpu else None,
        "cpu_max": max(cpu) if cpu else None,
    }
