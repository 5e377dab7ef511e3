"""Quality benchmark: the paper's Figure 3 ablations, one factor at a time, on the embedded tiny T5 (CPU scale).

    python -m benchmarks.quality            # all panels, 3 seeds, 2 worker processes; writes
                                            # benchmarks/results/quality/quality_v3.json, its table and plots
    python -m benchmarks.quality --task verb_supersense --panels init --only CLASS_LABELS   # held-out task:
                                            # results/quality/quality_v3_verbs.json; benchmarks/quality_targets.py
                                            # marks the quality targets met or not from both files

Lester et al. (2021), Figure 3, vary one factor from a default (P=100, class-label init, LM-adapted T5) and
find: (a) longer prompts help up to ~20 tokens (b) class-label init beats sampled vocabulary beats random
uniform (c/d) LM adaptation beats span corruption, with "span corruption + sentinel" in between. A full grid
does not fit 2 CPU cores, so the default here is P=20 and every panel varies one factor from it; runs shared
between panels are run once. Model tuning and LoRA are the reference points. Task: the bundled WordNet noun
supersense task (8 classes, chance 12.5%), or with `--task verb_supersense` the held-out verb task, on which
no decision about the model was taken (refused on a model whose build did not hold its dev/test out). Each
run trains a fixed number of steps, keeps the prompt best on dev and reports test accuracy (exact match of the
greedy generation, the paper's metric; first-label-token rank classification too) and time-to-accuracy
(training seconds and steps until dev accuracy first reaches a threshold).
Runs are independent processes' work (`--workers`), one torch thread each: on 2 shared cores one thread per
process was ~3x faster per step than two. `--resume` skips runs already in the JSON file, and refuses one whose
runs were made with other settings (steps, learning rates, precision as resolved on this machine, embedded build).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import time

from benchmarks import common
from benchmarks.common import run_info, write_text
from benchmarks.quality_runs import RunSpec, embedded_identity, run
from softprompt_ext.precision import resolve_precision

RESULTS = os.path.join(common.RESULTS, "quality")  # the JSON, its table and its plots
DEFAULT_OUT = {"supersense": "quality_v3.json", "verb_supersense": "quality_v3_verbs.json"}  # the committed build's
THRESHOLDS = (0.3, 0.5)  # dev accuracy for time-to-accuracy (chance is 0.125)


def panels(task: str = "supersense") -> dict[str, list[tuple[str, RunSpec]]]:
    """Panel name -> [(label on the plot, spec without seed)]; the CLASS_LABELS/P=20/LM-adapted run is shared.

    `task`: "supersense" (the bundled noun task) or "verb_supersense" (the held-out one).
    """
    default = RunSpec(task=task)
    return {
        "init": [(init, RunSpec(init=init, task=task))
                 for init in ("CLASS_LABELS", "SAMPLE_VOCAB", "RANDOM_UNIFORM", "RANDOM")],
        "length": [(f"P={p}", RunSpec(num_virtual_tokens=p, task=task)) for p in (1, 5, 20, 100)],
        "base": [("span corruption", RunSpec(base="span", task=task)),
                 ("span + sentinel", RunSpec(base="span", sentinel=True, task=task)),
                 ("LM adapted", default)],
        "reference": [("prompt tuning", default), ("LoRA r=8", RunSpec(method="lora", task=task)),
                      ("model tuning", RunSpec(method="model", task=task))],
    }


def _with_seed(spec: RunSpec, seed: int) -> RunSpec:
    return RunSpec(**{**spec.__dict__, "seed": seed})


def _work(job: tuple[RunSpec, dict]) -> dict:
    import torch

    torch.set_num_threads(1)
    spec, kwargs = job
    started = time.time()
    result = run(spec, **kwargs)
    result["wall_seconds"] = round(time.time() - started, 1)
    print(f"{spec.key}: test {result['test_accuracy']:.3f} label-token {result['test_label_token_accuracy']:.3f} "
          f"best dev {result['best_dev_accuracy']:.3f} ({result['wall_seconds']} s)", flush=True)
    return result


def time_to(curve: list[dict], threshold: float) -> dict | None:
    for point in curve:
        if point["dev_accuracy"] >= threshold:
            return {"step": point["step"], "seconds": point["seconds"]}
    return None


def _stats(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def summarise(runs: dict[str, dict], seeds: list[int], task: str = "supersense") -> dict:
    summary = {}
    for panel, entries in panels(task).items():
        rows = []
        for label, spec in entries:
            done = [runs[k] for k in (_with_seed(spec, s).key for s in seeds) if k in runs]
            if not done:
                continue
            row = {"label": label, "spec": spec.key.rsplit("/", 1)[0], "seeds": [r["seed"] for r in done],
                   "test_accuracy": _stats([r["test_accuracy"] for r in done]),
                   "best_dev_accuracy": _stats([r["best_dev_accuracy"] for r in done]),
                   "valid_label_rate": _stats([r["valid_label_rate"] for r in done]),
                   "trainable_parameters": done[0]["trainable_parameters"],
                   "train_seconds": _stats([r["train_seconds"] for r in done]),
                   # mean training loss of the last eval_every steps: a continuous signal when accuracy is flat
                   "final_train_loss": _stats([r["dev_curve"][-1]["train_loss"] for r in done])}
            row["test_label_token_accuracy"] = _stats([r["test_label_token_accuracy"] for r in done])
            for threshold in THRESHOLDS:
                reached = [time_to(r["dev_curve"], threshold) for r in done]
                row[f"time_to_dev_{threshold}"] = {
                    "reached": sum(x is not None for x in reached),
                    "median_seconds": statistics.median([x["seconds"] for x in reached]) if all(reached) else None,
                    "steps": [x["step"] if x else None for x in reached],
                }
            rows.append(row)
        summary[panel] = rows
    return summary


def table(summary: dict) -> str:
    """Markdown table: mean +- std (min-max) over seeds, and time to dev accuracy thresholds."""
    head = ("| panel | setting | trainable | test acc (exact) | test acc (label token) | best dev | final train loss | "
            + " | ".join(f"dev>={t}: seeds, median s" for t in THRESHOLDS) + " |")
    lines = [head, "|" + "---|" * (7 + len(THRESHOLDS))]
    for panel, rows in summary.items():
        for row in rows:
            acc, tok, dev = row["test_accuracy"], row["test_label_token_accuracy"], row["best_dev_accuracy"]
            cells = [panel, row["label"], f"{row['trainable_parameters']:,}",
                     f"{acc['mean']:.3f} +- {acc['std']:.3f} ({acc['min']:.3f}-{acc['max']:.3f})",
                     f"{tok['mean']:.3f} +- {tok['std']:.3f}", f"{dev['mean']:.3f}",
                     f"{row['final_train_loss']['mean']:.2f} +- {row['final_train_loss']['std']:.2f}"]
            for t in THRESHOLDS:
                info = row[f"time_to_dev_{t}"]
                median = "-" if info["median_seconds"] is None else f"{info['median_seconds']:.0f}"
                cells.append(f"{info['reached']}/{len(row['seeds'])}, {median}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(runs: dict[str, dict], summary: dict, seeds: list[int], stem: str = "quality",
         task: str = "supersense") -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    summary = {panel: rows for panel, rows in summary.items() if rows}
    fig, axes = plt.subplots(1, len(summary), figsize=(4.3 * len(summary), 4.2), sharey=True, squeeze=False)
    axes = axes[0]
    titles = {"init": "(a) prompt init, P=20", "length": "(b) prompt length, class-label init",
              "base": "(c) pre-training objective, P=20", "reference": "(d) reference points"}
    for ax, (panel, rows) in zip(axes, summary.items(), strict=True):
        for x, row in enumerate(rows):
            spec = next(s for label, s in panels(task)[panel] if label == row["label"])
            values = [runs[_with_seed(spec, s).key]["test_accuracy"] for s in seeds if _with_seed(spec, s).key in runs]
            ax.bar(x, row["test_accuracy"]["mean"], color="#9ecae1", edgecolor="#3182bd")
            ax.scatter([x] * len(values), values, color="#08519c", s=14, zorder=3)
        ax.axhline(0.125, color="grey", ls=":", lw=1, label="chance")
        ax.set_xticks(range(len(rows)), [r["label"] for r in rows], rotation=25, ha="right", fontsize=8)
        ax.set_title(titles[panel], fontsize=10)
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("test accuracy (exact match); dots = seeds")
    axes[0].legend(fontsize=8)
    name = "WordNet noun supersense" if task == "supersense" else "WordNet verb supersense (held out)"
    fig.suptitle(f"Prompt tuning ablations on the embedded tiny LM-adapted T5, {name} (8 classes)")
    fig.tight_layout()
    paths.append(os.path.join(RESULTS, f"{stem}_ablations.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    shown = [panel for panel in ("init", "reference") if panel in summary]
    fig, axes = plt.subplots(1, len(shown), figsize=(6 * len(shown), 4.2), sharey=True, squeeze=False)
    for ax, panel in zip(axes[0], shown, strict=True):
        for i, (label, spec) in enumerate(panels(task)[panel]):
            for s in seeds:
                r = runs.get(_with_seed(spec, s).key)
                if r:
                    ax.plot([p["seconds"] for p in r["dev_curve"]], [p["dev_accuracy"] for p in r["dev_curve"]],
                            color=f"C{i}", alpha=0.8, label=label if s == seeds[0] else None)
        ax.set_xlabel("training seconds (1 thread, shared CPU)")
        ax.set_title(f"dev accuracy over time: {panel}", fontsize=10)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("dev accuracy")
    fig.tight_layout()
    paths.append(os.path.join(RESULTS, f"{stem}_time_to_accuracy.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


# settings that change what a run measures: a --resume that differs in one of them would mix two experiments
RESUME_FIELDS = ("steps", "batch_size", "eval_every", "dev_size", "model_lr", "lora_lr")


def resume_conflicts(existing: dict, kwargs: dict, identity: dict) -> list[str]:
    """Why the runs in `existing` (a quality JSON) cannot be pooled with new runs made with `kwargs` on the
    embedded build `identity`; empty when they can. Precision is compared as resolved ("auto" is bf16 on a CPU
    with bf16 units and fp32 elsewhere), against the precision each stored run records."""
    stored = existing.get("settings", {})
    problems = [f"--{field} {kwargs[field]} (the file's runs used {stored[field]})"
                for field in RESUME_FIELDS if field in stored and stored[field] != kwargs[field]]
    resolved = resolve_precision(kwargs["precision"], "cpu")
    used = sorted({r["precision"] for r in existing.get("runs", []) if "precision" in r} - {resolved})
    if used:
        problems.append(f"--precision {kwargs['precision']} runs {resolved} on this machine (the file's runs "
                        f"used {', '.join(used)}; pass --precision {used[0]})")
    if stored.get("embedded_model") not in (None, identity):
        problems.append(f"the embedded model is {identity} (the file's runs used {stored['embedded_model']})")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="training steps per run")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--model_lr", type=float, default=3e-4, help="AdamW learning rate for model tuning")
    parser.add_argument("--lora_lr", type=float, default=1e-3, help="AdamW learning rate for LoRA")
    parser.add_argument("--eval_every", type=int, default=25)
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="auto: bf16 autocast only where the CPU/GPU has bf16 units (softprompt_ext.precision)")
    parser.add_argument("--dev_size", type=int, default=96, help="dev examples used for selection/curves")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--panels", nargs="+", default=list(panels()))
    parser.add_argument("--task", choices=("supersense", "verb_supersense"), default="supersense",
                        help="verb_supersense: the held-out task, on which no decision about the model was taken")
    parser.add_argument("--out", default=None, help="default: results/quality/quality_v3.json, or "
                        "results/quality/quality_v3_verbs.json for --task verb_supersense")
    parser.add_argument("--only", nargs="+", metavar="SETTING",
                        help="run only these settings of the chosen panels, named as in the table's 'setting' "
                        "column (e.g. CLASS_LABELS 'span corruption'); default: every setting")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--report_only", action="store_true", help="only rebuild table and plots from --out")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = os.path.join(RESULTS, DEFAULT_OUT[args.task])
    unknown = sorted(set(args.panels) - set(panels()))
    if unknown:
        parser.error(f"--panels: unknown {unknown}; choose from {sorted(panels())}")
    os.makedirs(RESULTS, exist_ok=True)
    kwargs = {"steps": args.steps, "batch_size": args.batch_size, "eval_every": args.eval_every,
              "dev_size": args.dev_size, "model_lr": args.model_lr, "lora_lr": args.lora_lr,
              "precision": args.precision}
    runs: dict[str, dict] = {}
    commands: list[str] = []  # every invocation that added runs to --out, oldest first
    identity = embedded_identity()  # read once: the resume check and every save record the same build
    if os.path.isfile(args.out):
        with open(args.out, encoding="utf-8") as handle:
            existing = json.load(handle)
        stored = existing.get("settings", {}).get("task", "supersense")  # files before --task: the noun task
        if stored != args.task:
            parser.error(f"--task {args.task}, but {args.out} holds task {stored!r} runs; pass --task {stored} "
                         "or another --out")
        if args.resume and (conflicts := resume_conflicts(existing, kwargs, identity)):
            parser.error(f"--resume: {args.out} holds runs made differently: {'; '.join(conflicts)}. Pass the "
                         "file's settings, or write to another --out")
        if args.resume or args.report_only:
            runs = {r["key"]: r for r in existing["runs"]}
            commands = existing.get("commands", [existing["command"]] if "command" in existing else [])
    elif args.report_only:
        parser.error(f"--report_only: {args.out} does not exist; run the benchmark first or pass --out")
    chosen = [(label, spec) for name in args.panels for label, spec in panels(args.task)[name]]
    if args.only:
        missing = sorted(set(args.only) - {label for label, _ in chosen})
        if missing:
            parser.error(f"--only: no setting {missing} in --panels {' '.join(args.panels)}; choose from "
                         f"{sorted({label for label, _ in chosen})}")
        chosen = [(label, spec) for label, spec in chosen if label in args.only]
    specs = {spec for _, spec in chosen}
    # the longest runs first, so the workers finish together
    cost = {"model": 3, "lora": 2}
    # seed by seed (a cut-short benchmark still has every configuration), longest runs first within a seed
    jobs = sorted({_with_seed(spec, s) for spec in specs for s in args.seeds}, key=lambda s: (
        s.seed, -cost.get(s.method, 1), -s.num_virtual_tokens, s.key))
    jobs = [] if args.report_only else [spec for spec in jobs if spec.key not in runs]
    started = time.time()

    argv = list(argv if argv is not None else sys.argv[1:])
    command = common.command_line("quality", argv)
    meta = run_info("quality", "quality", argv)  # machine and versions of this invocation
    if jobs:
        commands.append(command)

    def save() -> None:  # atomic: a run killed mid-write leaves the previous file, every finished run intact
        summary = summarise(runs, args.seeds, args.task)
        write_text(args.out, json.dumps(
            {"command": command, "commands": commands, "meta": meta,
             "settings": {**kwargs, "seeds": args.seeds, "workers": args.workers, "task": args.task,
                          "only": args.only, "embedded_model": identity},
             "wall_seconds": round(time.time() - started, 1), "summary": summary,
             "runs": list(runs.values())}, indent=1))

    if jobs:
        with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
            for result in pool.imap_unordered(_work, [(spec, kwargs) for spec in jobs]):
                runs[result["key"]] = result
                save()
        save()
    summary = summarise(runs, args.seeds, args.task)
    stem = os.path.splitext(os.path.basename(args.out))[0]  # quality.json -> quality_table.md, quality_*.png
    write_text(os.path.join(RESULTS, f"{stem}_table.md"), table(summary))
    for path in plot(runs, summary, args.seeds, stem, args.task):
        print("wrote", path)
    print(f"{len(jobs)} runs in {time.time() - started:.0f} s; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
