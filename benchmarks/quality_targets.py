"""The quality targets, marked met or not from the quality benchmark's JSON (never by hand).

    python -m benchmarks.quality_targets      # reads results/quality/quality_v3.json and quality_v3_verbs.json,
                                              # prints the Markdown table of the targets, met or not

The targets (the paper's direction at this scale; Lester et al. 2021, Figure 3) and how each is decided. They
were fixed before the v3 model's results existed:

1. Bundled noun task, class-label init, P=20, LM-adapted base: mean test exact match over the seeds
   >= 0.40, every one of those runs trained for at most 800 steps.
2. LM-adapted base >= span-corruption base (same recipe), mean test exact match, and the LM-adapted base above
   chance (two bases tied at chance show nothing).
3. Class labels > sampled vocab > random uniform, each with non-overlapping seed ranges: the lowest seed of the
   better init above the highest seed of the next.
4. Held-out verb task (`--task verb_supersense`, no decision taken on it), class-label P=20 prompt tuning "well
   above chance": every seed's test exact match at least twice chance (8 classes: 0.25).

Every target needs at least `MIN_SEEDS` seeds of each setting it reads, all the seeds its report was run
with; with fewer, or with its runs missing, it is "not measured", not missed. Each report must hold the task
its targets are about (the JSON's `settings.task`): a verb report passed as the noun one is refused.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

CHANCE = 1 / 8  # both tasks: 8 balanced classes
NOUN_TARGET, MAX_STEPS, HELD_OUT_FACTOR, MIN_SEEDS = 0.40, 800, 2.0, 3


def _check_task(report: dict | None, task: str, flag: str) -> None:
    if report is None:
        return
    stored = report.get("settings", {}).get("task", "supersense")  # reports before --task: the noun task
    if stored != task:
        raise ValueError(f"{flag}: the report holds task {stored!r} runs, not {task!r}; pass the JSON that "
                         f"benchmarks/quality.py --task {task} wrote.")


def _row(report: dict | None, panel: str, label: str) -> dict | None:
    """The summary row, only when every seed the report was run with (and at least MIN_SEEDS) finished."""
    if not report:
        return None
    row = next((r for r in report.get("summary", {}).get(panel, []) if r["label"] == label), None)
    seeds = report.get("settings", {}).get("seeds", [])
    if row is None or row["test_accuracy"]["n"] < max(MIN_SEEDS, len(seeds)):
        return None
    return row


def _steps(report: dict, row: dict) -> int:
    """The most steps any run of a summary row trained (runs of a --resume may differ from settings.steps)."""
    return max(r["steps"] for r in report["runs"] if r["key"].rsplit("/", 1)[0] == row["spec"])


def _acc(row: dict) -> str:
    a = row["test_accuracy"]
    return f"{a['mean']:.3f} +- {a['std']:.3f} ({a['min']:.3f}-{a['max']:.3f}, {a['n']} seeds)"


def _verdict(met: bool) -> str:
    return "**met**" if met else "**not met**"


def targets(noun: dict | None, verbs: dict | None) -> list[dict]:
    """One dict per target: `target`, `measured` (text), `verdict` ("**met**", "**not met**", "not measured")."""
    _check_task(noun, "supersense", "--noun")
    _check_task(verbs, "verb_supersense", "--verbs")
    rows = []
    class_labels = _row(noun, "init", "CLASS_LABELS")
    if class_labels:
        steps = _steps(noun, class_labels)  # type: ignore[arg-type]
        met = class_labels["test_accuracy"]["mean"] >= NOUN_TARGET and steps <= MAX_STEPS
        rows.append({"target": f"noun task, class-label P=20 prompt tuning >= {NOUN_TARGET:.2f} within "
                               f"{MAX_STEPS} steps", "measured": f"{_acc(class_labels)} after {steps} steps",
                     "verdict": _verdict(met)})
    else:
        rows.append({"target": f"noun task, class-label P=20 >= {NOUN_TARGET:.2f}", "measured": "-",
                     "verdict": "not measured"})
    lm, span = _row(noun, "base", "LM adapted"), _row(noun, "base", "span corruption")
    if lm and span:
        met = lm["test_accuracy"]["mean"] >= span["test_accuracy"]["mean"] and lm["test_accuracy"]["mean"] > CHANCE
        rows.append({"target": "LM-adapted >= span corruption (and above chance)",
                     "measured": f"LM-adapted {_acc(lm)}; span {_acc(span)}", "verdict": _verdict(met)})
    else:
        rows.append({"target": "LM-adapted >= span corruption", "measured": "-", "verdict": "not measured"})
    inits = [_row(noun, "init", name) for name in ("CLASS_LABELS", "SAMPLE_VOCAB", "RANDOM_UNIFORM")]
    if all(inits):
        a, b, c = (row["test_accuracy"] for row in inits)  # type: ignore[index]
        met = a["min"] > b["max"] and b["min"] > c["max"]
        rows.append({"target": "class labels > sampled vocab > random uniform, seed ranges apart",
                     "measured": "; ".join(f"{name} {lo:.3f}-{hi:.3f}" for name, lo, hi in (
                         ("class labels", a["min"], a["max"]), ("sampled vocab", b["min"], b["max"]),
                         ("random uniform", c["min"], c["max"]))),
                     "verdict": _verdict(met)})
    else:
        rows.append({"target": "class labels > sampled vocab > random uniform", "measured": "-",
                     "verdict": "not measured"})
    held = _row(verbs, "init", "CLASS_LABELS") or _row(verbs, "reference", "prompt tuning")
    floor = HELD_OUT_FACTOR * CHANCE
    if held:
        rows.append({"target": f"held-out verb task, prompt tuning well above chance (every seed >= {floor:.2f})",
                     "measured": _acc(held), "verdict": _verdict(held["test_accuracy"]["min"] >= floor)})
    else:
        rows.append({"target": "held-out verb task well above chance", "measured": "-", "verdict": "not measured"})
    return rows


def render(rows: list[dict]) -> str:
    lines = ["| target | measured (test exact match, mean +- std (min-max)) | verdict |", "|---|---|---|"]
    lines += [f"| {r['target']} | {r['measured']} | {r['verdict']} |" for r in rows]
    return "\n".join(lines) + "\n"


def _load(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    from benchmarks.quality import DEFAULT_OUT, RESULTS  # the quality benchmark's own default files

    parser.add_argument("--noun", default=os.path.join(RESULTS, DEFAULT_OUT["supersense"]))
    parser.add_argument("--verbs", default=os.path.join(RESULTS, DEFAULT_OUT["verb_supersense"]))
    args = parser.parse_args(argv)
    try:
        print(render(targets(_load(args.noun), _load(args.verbs))), end="")
    except ValueError as err:
        parser.error(str(err))
    return 0


if __name__ == "__main__":
    sys.exit(main())
