"""Benchmark: K prompts trained in one multi-task run against K single-task runs, at equal steps per task.

K = 4 or 8 (`--tasks`) binary tasks cut from the bundled WordNet supersense data (each task's train and dev
rows are the rows with its two labels): K=4 animal/artifact, body/food, location/person, plant/substance; K=8
adds animal/plant, artifact/substance, body/person, food/location (the data has 8 supersenses, so every label
is in two of the 8 tasks; the tasks are still separate prompts and separate binary problems). On the
embedded LM-adapted T5. Each prompt: P=20, class-label init, seed = task index; the paper's
Adafactor (lr 0.3). Both sides see, for every task, the same `--steps` batches of `--per_task_batch` examples
in the same order:

* single: K ordinary PEFT runs, one after the other (`get_peft_model`, `paper_optimizer`, PEFT's forward);
* multi: one run of `--steps` steps, each step K x per_task_batch examples through the mixed-batch forward
  (`build_multitask_model`, `multitask_optimizer`, `multitask_step_loss`).

Each variant runs in its own fresh process (so its peak RSS is its own), one after the other, in one
invocation. Reported: wall time of the training steps, process peak RSS, per-task dev accuracy (rank
classification over the task's two labels) and the largest prompt difference between the two sides.

    python -m benchmarks.multitask                # K=4, 150 steps per task, batch 8 per task
    python -m benchmarks.multitask --tasks 8      # K=8 (writes results/multitask/multitask_k8.json)
    python -m benchmarks.multitask --quick        # 5 steps, batch 4 (smoke; writes nothing)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from benchmarks.common import RESULTS, ROOT, run_info, write_json

PAIRS = (("animal", "artifact"), ("body", "food"), ("location", "person"), ("plant", "substance"),
         ("animal", "plant"), ("artifact", "substance"), ("body", "person"), ("food", "location"))
TASK_COUNTS = (4, 8)  # --tasks: the first K pairs


def result_name(k: int) -> str:
    """benchmarks/results/multitask/ file of a K-task run (K=4 keeps the original name)."""
    return "multitask.json" if k == 4 else f"multitask_k{k}.json"
PROMPT_LENGTH = 20


def task_name(pair) -> str:
    return f"{pair[0]}_{pair[1]}"


def build_tasks(k: int):
    """name -> (ClassificationTask with the pair's labels, train rows, dev rows) for the first `k` pairs."""
    import dataclasses

    from softprompt_ext import get_task
    from softprompt_ext.tasks.supersense import read_supersense

    base = get_task("supersense")
    out = {}
    for pair in PAIRS[:k]:
        task = dataclasses.replace(base, name=task_name(pair), label_names=pair)
        train = [r for r in read_supersense("train") if r["label"] in pair]
        dev = [r for r in read_supersense("dev") if r["label"] in pair]
        out[task.name] = (task, train, dev)
    return out


def batches(tokenizer, rows, per_task_batch: int, steps: int):
    from softprompt_ext.tasks.supersense import supersense_batch

    for step in range(steps):
        start = (step * per_task_batch) % len(rows)
        chunk = (rows + rows)[start : start + per_task_batch]
        yield chunk, supersense_batch(tokenizer, chunk)


def accuracy(model, tokenizer, task, dev) -> float:
    from datasets import Dataset

    from softprompt_ext import rank_classify

    formatted = task.format(Dataset.from_list(dev)).to_list()
    ranked = rank_classify(model, tokenizer, [r["inputs"] for r in formatted], list(task.class_labels), batch_size=16)
    return task.compute_metrics(ranked.predicted_labels, formatted)["accuracy"]


def run_variant(variant: str, k: int, steps: int, per_task_batch: int, out_path: str) -> None:
    import torch
    from peft import get_peft_model

    from softprompt_ext import SoftPromptConfig, default_model_and_tokenizer, paper_optimizer
    from softprompt_ext.precision import autocast, resolve_precision
    from softprompt_ext.training.multitask import (
        build_multitask_model,
        multitask_optimizer,
        multitask_step_loss,
        task_prompt_parameters,
    )

    torch.set_num_threads(1)
    tasks = build_tasks(k)
    base, tokenizer = default_model_and_tokenizer()
    tok_dir = base.name_or_path

    def config(k, name):
        return SoftPromptConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=PROMPT_LENGTH, init_seed=k,
                                prompt_tuning_init="CLASS_LABELS", class_labels=list(tasks[name][0].class_labels),
                                tokenizer_name_or_path=tok_dir)

    precision = resolve_precision("auto", torch.device("cpu"))
    result = {"variant": variant, "precision": precision, "accuracy": {}, "train_seconds": 0.0}
    prompts = {}
    if variant == "single":
        for k, (name, (task, train, dev)) in enumerate(tasks.items()):
            base, _ = default_model_and_tokenizer()  # a fresh frozen model per run
            model = get_peft_model(base, config(k, name))
            optimizer, _ = paper_optimizer(model)
            start = time.perf_counter()
            for _, batch in batches(tokenizer, train, per_task_batch, steps):
                with autocast("cpu", "auto"):
                    loss = model(**batch).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
            result["train_seconds"] += time.perf_counter() - start
            model.eval()
            result["accuracy"][name] = accuracy(model, tokenizer, task, dev)
            prompts[name] = model.prompt_encoder["default"].embedding.weight.detach().tolist()
    else:
        names = list(tasks)
        model = build_multitask_model(base, {name: config(k, name) for k, name in enumerate(names)})
        optimizer, _ = multitask_optimizer(model, names)
        streams = [batches(tokenizer, tasks[n][1], per_task_batch, steps) for n in names]
        from softprompt_ext.tasks.supersense import supersense_batch

        start = time.perf_counter()
        for step_rows in zip(*streams, strict=True):
            rows = [r for chunk, _ in step_rows for r in chunk]
            batch = supersense_batch(tokenizer, rows)
            batch["task_names"] = [n for n, (chunk, _) in zip(names, step_rows, strict=True) for _ in chunk]
            with autocast("cpu", "auto"):
                loss, _ = multitask_step_loss(model, batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        result["train_seconds"] = time.perf_counter() - start
        model.eval()
        for name in names:
            model.set_adapter(name)
            result["accuracy"][name] = accuracy(model, tokenizer, tasks[name][0], tasks[name][2])
        prompts = {n: p.detach().tolist() for n, p in task_prompt_parameters(model, names).items()}
    with open("/proc/self/status") as f:
        result["peak_rss_mb"] = next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))
    result["prompts"] = prompts
    with open(out_path, "w") as f:
        json.dump(result, f)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--per_task_batch", type=int, default=8)
    parser.add_argument("--tasks", type=int, default=4, help=f"number of tasks K, one of {TASK_COUNTS}")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--variant", choices=("single", "multi"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    argv = list(argv if argv is not None else sys.argv[1:])
    args = parser.parse_args(argv)
    if args.tasks not in TASK_COUNTS:
        parser.error(f"--tasks must be one of {TASK_COUNTS}, got {args.tasks}: the bundled supersense data has "
                     f"{len(PAIRS)} label pairs defined here (benchmarks/multitask.py PAIRS)")
    for field in ("steps", "per_task_batch"):
        if getattr(args, field) < 1:
            parser.error(f"--{field} must be >= 1, got {getattr(args, field)}")
    if args.quick:
        args.steps, args.per_task_batch = 5, 4
    if args.variant:
        run_variant(args.variant, args.tasks, args.steps, args.per_task_batch, args.out)
        return

    import torch

    meta = run_info("multitask", "multitask", argv, mode="quick" if args.quick else "full")
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in ("single", "multi"):
            path = os.path.join(tmp, f"{variant}.json")
            subprocess.run([sys.executable, "-m", "benchmarks.multitask", "--variant", variant, "--tasks", str(args.tasks),
                            "--steps", str(args.steps),
                            "--per_task_batch", str(args.per_task_batch), "--out", path], check=True, cwd=ROOT)
            with open(path) as f:
                runs[variant] = json.load(f)
    diff = max(
        abs(a - b)
        for name in runs["single"]["prompts"]
        for row_a, row_b in zip(runs["single"]["prompts"][name], runs["multi"]["prompts"][name], strict=True)
        for a, b in zip(row_a, row_b, strict=True)
    )
    for run in runs.values():
        run.pop("prompts")
    meta["load_average_after"] = list(os.getloadavg())
    record = {
        "benchmark": "multitask",
        "meta": meta,
        "torch_threads": 1, "num_tasks": args.tasks, "tasks": [task_name(p) for p in PAIRS[: args.tasks]],
        "prompt_length": PROMPT_LENGTH,
        "steps_per_task": args.steps, "per_task_batch": args.per_task_batch,
        "runs": runs,
        "speedup_train_wall": runs["single"]["train_seconds"] / runs["multi"]["train_seconds"],
        "max_prompt_difference": diff,
    }
    del torch
    print(json.dumps(record, indent=2))
    if not args.quick:
        write_json(os.path.join(RESULTS, "multitask", result_name(args.tasks)), record)


if __name__ == "__main__":
    main()
