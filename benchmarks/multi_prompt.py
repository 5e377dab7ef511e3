"""Benchmark: mixed-task batches and one-batch prompt ensembles against PEFT's one-adapter-at-a-time path.

Paper sections 1 and 6 (Lester et al., 2021): one frozen model serves many tasks, and N prompts for one task
run as one N x B batch. Measured here on a T5-small-shaped model with random weights (d_model 512, d_ff 1024,
8 layers, 6 heads, vocabulary 32,128: the shape of google/t5-small-lm-adapt; nothing is downloaded):

* K=8 prompt adapters (P cycling 10/20/30), 64 requests in random task order. `mixed_*` runs them as mixed
  batches; the baseline groups the requests by task and runs each group after `model.set_adapter(task)`
  through PEFT's own forward / generate. Two arrival patterns: all 64 at once, and windows of 16.
* N=5 prompts for one task on B=8 examples: `ensemble_generate` (one batch of 40) against 5 sequential
  `set_adapter` + `generate` passes, both followed by the same majority vote.

Every variant runs once per repeat, the order rotating between repeats (interleaved, so machine load hits
all variants alike); the medians of wall time and of process CPU time are reported, with speedup =
baseline median / mixed median (CPU time is the steadier of the two on a shared machine). The script also
checks that both ways give the same outputs.

One torch thread by default: on a shared (oversubscribed) machine, two threads spend most of each small
operation waiting for each other (measured: 8 small PEFT forwards took 0.24 s with one thread and 20 s with
two), which inflates the cost of many small calls and would flatter the mixed batches.

    python -m benchmarks.multi_prompt            # T5-small shape, 3 repeats
    python -m benchmarks.multi_prompt --quick    # d_model 64, 2 layers, vocabulary 2048, 2 repeats
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable

import torch

from benchmarks.common import RESULTS, run_info, write_json, write_text

OUT = os.path.join(RESULTS, "multi_prompt")
NUM_TASKS, NUM_REQUESTS, WINDOW, ENSEMBLE_N, ENSEMBLE_B = 8, 64, 16, 5, 8
PROMPT_LENGTHS = (10, 20, 30)
NEW_TOKENS = 8


def build_model(quick: bool):
    from peft import get_peft_model

    from softprompt_ext import SoftPromptConfig
    from softprompt_ext.tiny_models import build_t5

    shape = (
        dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, vocab_size=2048)
        if quick
        else dict(d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_heads=6, vocab_size=32128)  # T5 1.1-small
    )
    base = build_t5(**shape, seed=0)

    def prompt(k: int) -> SoftPromptConfig:
        return SoftPromptConfig(
            task_type="SEQ_2_SEQ_LM",
            num_virtual_tokens=PROMPT_LENGTHS[k % len(PROMPT_LENGTHS)],
            prompt_tuning_init="RANDOM_UNIFORM",
            init_seed=k,
        )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(base, prompt(0), adapter_name="task0")
        for k in range(1, max(NUM_TASKS, ENSEMBLE_N)):
            model.add_adapter(f"task{k}", prompt(k))
    return model.eval(), shape


def make_requests(generator: torch.Generator, count: int, vocab: int):
    """Random right-padded inputs `[count, T]` (8-24 tokens) and decoder targets `[count, 8]` (4-8 tokens)."""
    lengths = torch.randint(8, 25, (count,), generator=generator)
    ids = torch.randint(2, vocab, (count, int(lengths.max())), generator=generator)
    mask = (torch.arange(ids.shape[1])[None] < lengths[:, None]).long()
    ids = ids * mask
    label_lengths = torch.randint(4, 9, (count,), generator=generator)
    labels = torch.randint(2, vocab, (count, 8), generator=generator)
    labels = labels.masked_fill(torch.arange(8)[None] >= label_lengths[:, None], -100)
    return ids, mask, labels


def trim(ids: torch.Tensor, mask: torch.Tensor):
    """Drop the columns that are padding for every row of a sub-batch (as a serving stack would)."""
    width = int(mask.sum(1).max())
    return ids[:, :width], mask[:, :width]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small model and 2 repeats")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed repeats per variant (default 3, quick 2)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1, see above)")
    parser.add_argument("--out", default=OUT, help="directory for multi_prompt.json / .md")
    argv = list(argv if argv is not None else sys.argv[1:])
    args = parser.parse_args(argv)
    repeats = args.repeats or (2 if args.quick else 3)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")

    from softprompt_ext.inference.ensembles import ensemble_generate, majority_vote
    from softprompt_ext.inference.mixed_batches import mixed_forward, mixed_generate

    started = time.perf_counter()
    model, shape = build_model(args.quick)
    generator = torch.Generator().manual_seed(0)
    ids, mask, labels = make_requests(generator, NUM_REQUESTS, shape["vocab_size"])
    tasks = torch.randint(0, NUM_TASKS, (NUM_REQUESTS,), generator=generator).tolist()
    names = [f"task{k}" for k in tasks]
    ens_ids, ens_mask, _ = make_requests(generator, ENSEMBLE_B, shape["vocab_size"])
    ens_names = [f"task{k}" for k in range(ENSEMBLE_N)]
    gen = dict(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)  # fixed work per row

    def windows(size: int) -> list[list[int]]:
        return [list(range(s, min(s + size, NUM_REQUESTS))) for s in range(0, NUM_REQUESTS, size)]

    def grouped(rows: list[int]) -> list[tuple[str, list[int]]]:
        return [(name, [r for r in rows if names[r] == name]) for name in sorted({names[r] for r in rows})]

    # ---- the variants; each returns something comparable between mixed and baseline
    def mixed_loss(size: int) -> Callable[[], torch.Tensor]:
        def run():
            out = torch.empty(NUM_REQUESTS)
            for rows in windows(size):
                i, m = trim(ids[rows], mask[rows])
                out[rows] = mixed_forward(
                    model, i, m, [names[r] for r in rows], labels=labels[rows]
                ).loss_per_example
            return out

        return run

    def grouped_loss(size: int) -> Callable[[], torch.Tensor]:
        def run():
            out = torch.empty(NUM_REQUESTS)
            for window in windows(size):
                for name, rows in grouped(window):
                    model.set_adapter(name)
                    i, m = trim(ids[rows], mask[rows])
                    logits = model(input_ids=i, attention_mask=m, labels=labels[rows]).logits  # [G, 8, V]
                    # PEFT reports one loss per batch; per-example losses come from its logits, as in mixed_forward
                    nll = torch.nn.functional.cross_entropy(
                        logits.flatten(0, 1), labels[rows].flatten(), ignore_index=-100, reduction="none"
                    ).view(len(rows), -1)  # [G, 8]
                    out[rows] = nll.sum(1) / (labels[rows] != -100).sum(1)
            return out

        return run

    def mixed_gen(size: int) -> Callable[[], list[list[int]]]:
        def run():
            out: list[list[int]] = [[] for _ in range(NUM_REQUESTS)]
            for rows in windows(size):
                i, m = trim(ids[rows], mask[rows])
                sequences = mixed_generate(model, i, m, [names[r] for r in rows], **gen)  # [W, 1 + new]
                for r, seq in zip(rows, sequences.tolist(), strict=True):
                    out[r] = seq
            return out

        return run

    def grouped_gen(size: int) -> Callable[[], list[list[int]]]:
        def run():
            out: list[list[int]] = [[] for _ in range(NUM_REQUESTS)]
            for window in windows(size):
                for name, rows in grouped(window):
                    model.set_adapter(name)
                    i, m = trim(ids[rows], mask[rows])
                    sequences = model.generate(input_ids=i, attention_mask=m, **gen)  # [G, 1 + new]
                    for r, seq in zip(rows, sequences.tolist(), strict=True):
                        out[r] = seq
            return out

        return run

    def ensemble_one_batch():
        out = ensemble_generate(model, ens_ids, ens_mask, ens_names, **gen)
        return out.sequences.tolist(), out.votes.tolist()

    def ensemble_sequential():
        candidates = []
        for name in ens_names:
            model.set_adapter(name)
            candidates.append(model.generate(input_ids=ens_ids, attention_mask=ens_mask, **gen))
        stacked = torch.stack(candidates)  # [N, B, L]
        winner, votes = majority_vote(stacked, eos_token_id=1)
        return stacked[winner, torch.arange(ENSEMBLE_B)].tolist(), votes.tolist()

    cases = [
        (
            "mixed-task forward (loss), 64 requests at once",
            mixed_loss(NUM_REQUESTS),
            grouped_loss(NUM_REQUESTS),
        ),
        ("mixed-task forward (loss), windows of 16", mixed_loss(WINDOW), grouped_loss(WINDOW)),
        (
            "mixed-task greedy generate, 64 requests at once",
            mixed_gen(NUM_REQUESTS),
            grouped_gen(NUM_REQUESTS),
        ),
        ("mixed-task greedy generate, windows of 16", mixed_gen(WINDOW), grouped_gen(WINDOW)),
        ("ensemble N=5 x B=8, greedy generate + vote", ensemble_one_batch, ensemble_sequential),
    ]
    variants = [
        (c, kind, fn)
        for c, (_, mixed, base) in enumerate(cases)
        for kind, fn in (("mixed", mixed), ("base", base))
    ]

    times: dict[tuple[int, str], list[float]] = {(c, k): [] for c, k, _ in variants}
    cpu: dict[tuple[int, str], list[float]] = {(c, k): [] for c, k, _ in variants}
    outputs: dict[tuple[int, str], object] = {}
    with torch.no_grad():
        # small untimed warm-up of both code paths (first-call costs), then the interleaved repeats
        mixed_forward(model, ids[:2], mask[:2], names[:2], labels=labels[:2])
        mixed_generate(model, ids[:2], mask[:2], names[:2], **gen)
        model.generate(input_ids=ids[:2], attention_mask=mask[:2], **gen)
        for r in range(repeats):
            shift = r % len(variants)
            for c, kind, fn in variants[shift:] + variants[:shift]:
                t0, c0 = time.perf_counter(), time.process_time()
                result = fn()
                times[(c, kind)].append(time.perf_counter() - t0)
                cpu[(c, kind)].append(time.process_time() - c0)
                outputs.setdefault((c, kind), result)  # kept for the equality check

    results = []
    for c, (label, _, _) in enumerate(cases):
        mixed_s, base_s = statistics.median(times[(c, "mixed")]), statistics.median(times[(c, "base")])
        mixed_cpu, base_cpu = statistics.median(cpu[(c, "mixed")]), statistics.median(cpu[(c, "base")])
        a, b = outputs[(c, "mixed")], outputs[(c, "base")]
        same = torch.allclose(a, b, rtol=1e-4, atol=1e-4) if isinstance(a, torch.Tensor) else a == b
        results.append(
            {
                "case": label,
                "mixed_s": round(mixed_s, 4),
                "baseline_s": round(base_s, 4),
                "speedup": round(base_s / mixed_s, 2),
                "mixed_cpu_s": round(mixed_cpu, 4),
                "baseline_cpu_s": round(base_cpu, 4),
                "speedup_cpu": round(base_cpu / mixed_cpu, 2),
                "outputs_identical": bool(same),
            }
        )

    report = {
        "benchmark": "multi_prompt",
        "meta": run_info("multi_prompt", "multi_prompt", argv, mode="quick" if args.quick else "full"),
        "model": {"kind": "T5 1.1 shape, random weights", **shape},
        "settings": {
            "tasks": NUM_TASKS,
            "requests": NUM_REQUESTS,
            "window": WINDOW,
            "prompt_lengths": PROMPT_LENGTHS,
            "new_tokens": NEW_TOKENS,
            "ensemble_prompts": ENSEMBLE_N,
            "ensemble_batch": ENSEMBLE_B,
            "repeats": repeats,
            "statistic": "median of interleaved repeats",
        },
        "baseline": "group requests by task; model.set_adapter(task); PEFT forward / generate per group",
        "results": results,
        "total_wall_s": round(time.perf_counter() - started, 1),
    }
    write_json(os.path.join(args.out, "multi_prompt.json"), report)
    write_text(os.path.join(args.out, "multi_prompt.md"), markdown(report))
    print(markdown(report))
    return 0 if all(r["outputs_identical"] for r in results) else 1


def markdown(report: dict) -> str:
    m, meta = report["model"], report["meta"]
    v = meta["versions"]
    lines = [
        "# Multi-prompt benchmark",
        "",
        f"`{meta['command']}` on {meta['date_utc']}: {meta['cpu']}, "
        f"{meta['torch_threads']} torch threads; torch {v['torch']}, transformers {v['transformers']}, "
        f"peft {v['peft']}. Model: {m['kind']} (d_model {m['d_model']}, {m['num_layers']} layers). "
        f"Median of {report['settings']['repeats']} interleaved repeats; whole run {report['total_wall_s']} s.",
        "",
        f"Baseline: {report['baseline']}.",
        "",
        "| case | mixed wall (s) | baseline wall (s) | speedup (wall) | speedup (CPU time) | same outputs |",
        "|---|---:|---:|---:|---:|:---:|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['case']} | {r['mixed_s']:.3f} | {r['baseline_s']:.3f} | {r['speedup']:.2f}x | {r['speedup_cpu']:.2f}x | "
            f"{'yes' if r['outputs_identical'] else 'NO'} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
