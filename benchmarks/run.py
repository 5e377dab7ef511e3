"""Speed, memory and adapter size of SoftPromptConfig beside PEFT prompt tuning, LoRA and full fine-tuning.

    python -m benchmarks.run            # full run: T5 1.1-small and Llama-small shapes, < 10 min on 2 CPU cores
    python -m benchmarks.run --quick    # about a minute: T5 only, one round
    python -m benchmarks.run --smoke    # seconds, tiny models: checks that every code path runs
    python -m benchmarks.run --device cuda

Writes `benchmarks/results/run/<name>.json` (every sample, machine, versions, date, command), PNG plots of
the scaling curves beside it, and a Markdown report (`benchmarks/RESULTS.md` for a full run).

How it stays honest on a shared machine: methods are timed interleaved within each round and summarised
by medians and per-round paired ratios (`timing.py`); memory is the peak of a fresh child process per
configuration (`memory.py`); load average before and after is recorded. See RESULTS.md "Method".
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here downloads
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # torch.profiler: no start/stop lines in the log

import torch  # noqa: E402

from benchmarks import machine, plans, report  # noqa: E402
from benchmarks import memory as mem  # noqa: E402
from benchmarks import workloads as wl  # noqa: E402
from benchmarks.common import result_dir  # noqa: E402
from benchmarks.profiling import profile  # noqa: E402
from benchmarks.timing import paired_ratio, run_interleaved  # noqa: E402
from softprompt_ext.training.step_savings import fuse_gelu  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

# (ratio name, numerator case, denominator case): computed wherever both cases ran
RATIOS = (
    ("softprompt_vs_peft_prompt_tuning", "softprompt", "peft_prompt_tuning"),
    ("softprompt_vs_lora", "softprompt", "lora"),
    ("softprompt_vs_full_finetune", "softprompt", "full_finetune"),
    ("step_vs_forward", "softprompt", "forward"),
    ("bf16_autocast_vs_fp32", "softprompt_bf16_autocast", "softprompt"),
    ("bf16_autocast_step_vs_forward", "softprompt_bf16_autocast", "forward_bf16_autocast"),
    ("bf16_weights_vs_fp32", "softprompt_bf16_weights", "softprompt"),
    ("dropout0_vs_dropout", "softprompt_dropout0", "softprompt"),
    ("grad_ckpt_vs_plain", "softprompt_grad_ckpt", "softprompt"),
    ("fused_gelu_vs_plain", "softprompt_fused_gelu", "softprompt"),
    ("fused_gelu_bf16_vs_fp32", "softprompt_fused_gelu_bf16_autocast", "softprompt"),
    ("fused_gelu_bf16_step_vs_forward", "softprompt_fused_gelu_bf16_autocast", "forward_bf16_autocast"),
    ("target_loss_vs_full_logits", "softprompt_target_loss", "softprompt"),
    ("target_loss_step_vs_forward", "softprompt_target_loss", "forward_target_loss"),
    ("target_loss_bf16_vs_fp32", "softprompt_target_loss_bf16_autocast", "softprompt"),
)


def log(message: str) -> None:
    print(time.strftime("%H:%M:%S"), message, flush=True)


def comparison_block(plan: plans.Plan, shape: wl.Shape, device: torch.device, workdir: str) -> dict:
    """Time the four methods and the fast-path variants side by side on one shape; save each adapter."""
    P, extras = plan.num_virtual_tokens, plan.extra_cases
    batch = wl.make_batch(shape, plan.inputs, device)
    base = wl.build_base(shape).to(device)
    models = {
        "softprompt": wl.wrap(base, shape, "softprompt", P),
        "peft_prompt_tuning": wl.wrap(base, shape, "peft_prompt_tuning", P),  # shares the frozen base
        "lora": wl.wrap(wl.fresh_copy(base), shape, "lora"),
        "full_finetune": wl.wrap(wl.fresh_copy(base), shape, "full_finetune"),
    }
    ours = models["softprompt"]
    steps = {m: wl.Step(models[m], batch, device) for m in wl.METHODS}
    if "bf16_autocast" in extras:
        steps["softprompt_bf16_autocast"] = wl.Step(ours, batch, device, precision="bf16_autocast")
    if "bf16_weights" in extras:
        half = wl.wrap(wl.fresh_copy(base, torch.bfloat16), shape, "softprompt", P)
        steps["softprompt_bf16_weights"] = wl.Step(half, batch, device, precision="bf16_weights")
    if "dropout0" in extras and shape.dropout > 0:
        no_dropout = wl.fresh_copy(base)
        wl.set_dropout(no_dropout, 0.0)
        steps["softprompt_dropout0"] = wl.Step(wl.wrap(no_dropout, shape, "softprompt", P), batch, device)
    if "fused_gelu" in extras and shape.family == "t5":
        fused = wl.fresh_copy(base)
        fuse_gelu(fused)
        fused = wl.wrap(fused, shape, "softprompt", P)
        steps["softprompt_fused_gelu"] = wl.Step(fused, batch, device)
        steps["softprompt_fused_gelu_bf16_autocast"] = wl.Step(
            fused, batch, device, precision="bf16_autocast"
        )
    if "grad_ckpt" in extras and shape.family == "t5":
        checkpointed = wl.enable_checkpointing(wl.fresh_copy(base))
        steps["softprompt_grad_ckpt"] = wl.Step(wl.wrap(checkpointed, shape, "softprompt", P), batch, device)
    if "target_loss" in extras and shape.family == "llama":
        steps["softprompt_target_loss"] = wl.Step(ours, batch, device, target_loss=True)
        steps["softprompt_target_loss_bf16_autocast"] = wl.Step(
            ours, batch, device, precision="bf16_autocast", target_loss=True
        )
        steps["forward_target_loss"] = wl.Step(ours, batch, device, train=False, target_loss=True)
    steps["forward"] = wl.Step(ours, batch, device, train=False)
    if "bf16_autocast" in extras:
        steps["forward_bf16_autocast"] = wl.Step(ours, batch, device, train=False, precision="bf16_autocast")

    log(f"{shape.name}: {len(steps)} cases interleaved, {plan.warmup} warm-up + up to {plan.repeats} rounds")
    timing = run_interleaved(
        steps,
        plan.repeats,
        plan.warmup,
        plan.min_repeats,
        plan.block_budget_s or None,
        log,
        between=machine.release_freed_memory,
    )
    for name, step in steps.items():
        timing["cases"][name]["trainable_params"] = step.trainable
        if step.train:  # what autograd keeps for backward: the activation part of training memory, exactly
            timing["cases"][name]["saved_activations_mb"] = wl.saved_activation_mb(step)
    ratios = {key: paired_ratio(timing, a, b) for key, a, b in RATIOS if a in steps and b in steps}
    block = {
        "shape": shape.to_dict(),
        "inputs": vars(plan.inputs),
        "num_virtual_tokens": P,
        "timing": timing,
        "ratios": ratios,
    }
    if plan.profile:
        log(f"{shape.name}: profiling one prompt-tuning step and one forward")
        block["profile"] = {
            "step": profile(steps["softprompt"], device),
            "forward": profile(steps["forward"], device),
        }
    block["adapter_size"], block["saved_model_dir"] = save_adapters(models, shape, workdir)
    return block


def save_adapters(models: dict, shape: wl.Shape, workdir: str) -> tuple[dict, str]:
    """`save_pretrained` each method's result and measure it on disk (full fine-tuning: the whole model)."""
    sizes = {}
    for method, model in models.items():
        path = os.path.join(workdir, shape.name, method)
        model.save_pretrained(path)
        files = {}
        for root, _, names in os.walk(path):
            for name in names:
                files[os.path.relpath(os.path.join(root, name), path)] = os.path.getsize(
                    os.path.join(root, name)
                )
        weights = sum(size for name, size in files.items() if name.endswith((".safetensors", ".bin")))
        sizes[method] = {"total_bytes": sum(files.values()), "weights_bytes": weights, "files": files}
    return sizes, os.path.join(workdir, shape.name, "full_finetune")


def scaling_block(plan: plans.Plan, device: torch.device) -> dict:
    """Step time against prompt length P (at the comparison's input length) and input length (at its P)."""
    shape, P0, L0 = plan.scaling_shape, plan.num_virtual_tokens, plan.inputs.input_len
    base = wl.build_base(shape).to(device)
    lengths = sorted(set(plan.scaling_len) | {L0})
    batches = {
        L: wl.make_batch(shape, wl.Inputs(plan.inputs.batch_size, L, plan.inputs.target_len), device)
        for L in lengths
    }
    methods = ("softprompt", "peft_prompt_tuning") if plan.scaling_peft else ("softprompt",)
    prompt_models = {
        (m, P): wl.wrap(base, shape, m, P) for m in methods for P in sorted(set(plan.scaling_p) | {P0})
    }
    cases = {}
    for P in plan.scaling_p:
        for m in methods:
            cases[f"{m}|P={P}|L={L0}"] = wl.Step(prompt_models[(m, P)], batches[L0], device)
    for L in plan.scaling_len:
        cases.setdefault(
            f"softprompt|P={P0}|L={L}", wl.Step(prompt_models[("softprompt", P0)], batches[L], device)
        )
        cases[f"forward|P={P0}|L={L}"] = wl.Step(
            prompt_models[("softprompt", P0)], batches[L], device, train=False
        )
    log(f"scaling on {shape.name}: {len(cases)} cases interleaved")
    timing = run_interleaved(
        cases,
        plan.scaling_repeats,
        plan.warmup,
        1,
        plan.scaling_budget_s or None,
        log,
        between=machine.release_freed_memory,
    )
    c = timing["cases"]
    by_p = []
    for P in plan.scaling_p:
        ours = c[f"softprompt|P={P}|L={L0}"]
        row = {"P": P, "L": L0, "softprompt_s": ours["median_s"], "softprompt_cpu_s": ours["cpu_median_s"]}
        if plan.scaling_peft:
            peft = c[f"peft_prompt_tuning|P={P}|L={L0}"]
            row.update(peft_prompt_tuning_s=peft["median_s"], peft_prompt_tuning_cpu_s=peft["cpu_median_s"])
            row["ratio_vs_peft"] = paired_ratio(
                timing, f"softprompt|P={P}|L={L0}", f"peft_prompt_tuning|P={P}|L={L0}"
            )
        by_p.append(row)
    by_len = []
    for L in plan.scaling_len:
        step, fwd = f"softprompt|P={P0}|L={L}", f"forward|P={P0}|L={L}"
        tokens = plan.inputs.batch_size * (L + P0)
        by_len.append(
            {
                "P": P0,
                "L": L,
                "softprompt_s": c[step]["median_s"],
                "forward_s": c[fwd]["median_s"],
                "softprompt_cpu_s": c[step]["cpu_median_s"],
                "forward_cpu_s": c[fwd]["cpu_median_s"],
                "step_vs_forward": paired_ratio(timing, step, fwd),
                "train_tokens_per_s": tokens / c[step]["median_s"],
            }
        )
    return {
        "shape": shape.to_dict(),
        "inputs": vars(plan.inputs),
        "prompt_length": by_p,
        "input_length": by_len,
        "timing": timing,
    }


def memory_specs(plan: plans.Plan, blocks: dict, device: torch.device, threads: int) -> list[dict]:
    """Turn the plan's memory names ("t5:softprompt:int8_disk", ...) into child-process specs."""
    by_family = {s.family: s for s in plan.shapes}
    specs = []
    for name in plan.memory:
        family, case, *variant = name.split(":")
        if family not in by_family:
            continue
        shape = by_family[family]
        variant = variant[0] if variant else ""
        load = variant if variant in ("fp32_disk", "int8_disk") else "random"
        specs.append(
            {
                "name": name,
                "shape": shape.name,
                "method": "softprompt" if case == "forward" else case,
                "num_virtual_tokens": plan.num_virtual_tokens,
                "inputs": vars(plan.inputs),
                "precision": variant if variant in wl.PRECISIONS else "fp32",
                "train": case != "forward",
                "target_loss": variant == "target_loss",
                "gradient_checkpointing": variant == "grad_ckpt",
                "fused_gelu": variant == "fused_gelu",
                "load": load,
                "path": blocks[shape.name]["saved_model_dir"] if load != "random" else None,
                "device": str(device),
                "threads": threads,
                "steps": plan.memory_steps,
            }
        )
    return specs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="about a minute: T5 only, one round")
    size.add_argument("--smoke", action="store_true", help="tiny models, every code path, seconds")
    parser.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--name", default=None, help="result name (default: <mode>-<device type>)")
    parser.add_argument(
        "--out", default=HERE, help="directory for results/run/ and the report (default: benchmarks/)"
    )
    parser.add_argument(
        "--markdown",
        default=None,
        help="report path (default: <out>/RESULTS.md for a full run, else results/run/<name>.md)",
    )
    parser.add_argument("--memory-workers", type=int, default=None, help="memory children run at once")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="which time the headline ratios use: wall (default) or process CPU time, the robust "
        "choice on a shared machine together with --threads 1",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    plan = plans.SMOKE if args.smoke else plans.QUICK if args.quick else plans.FULL
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else "cpu"
        if args.device == "auto"
        else args.device
    )
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available here; use --device cpu.")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    name = args.name or f"{plan.mode}-{device.type}"
    results_dir = result_dir("run", os.path.join(args.out, "results"))
    markdown = args.markdown or (
        os.path.join(args.out, "RESULTS.md")
        if plan.mode == "full"
        else os.path.join(results_dir, f"{name}.md")
    )
    machine.quiet_libraries()
    start, load_before, pressure_before = time.perf_counter(), machine.load_average(), machine.cpu_pressure()
    log(f"mode {plan.mode} on {device}, {torch.get_num_threads()} threads, load average {load_before}")

    results = {
        "meta": machine.describe(device, argv if argv is not None else sys.argv[1:], plan.mode, name),
        "main": {},
    }
    results["meta"]["clock"] = args.clock
    with tempfile.TemporaryDirectory(prefix="softprompt-bench-") as workdir:
        for shape in plan.shapes:
            results["main"][shape.name] = comparison_block(plan, shape, device, workdir)
            machine.release_freed_memory()
        results["scaling"] = scaling_block(plan, device)
        machine.release_freed_memory()
        threads = torch.get_num_threads()
        workers = args.memory_workers or (1 if device.type == "cuda" else 2)
        specs = memory_specs(plan, results["main"], device, max(1, threads // workers))
        log(f"memory: {len(specs)} configurations, each in a fresh process, {workers} at a time")
        results["memory"] = {r["name"]: r for r in mem.measure_all(specs, workers)}
        for r in results["memory"].values():
            if not r["ok"]:
                log(f"  memory {r['name']} failed: {r['error']}")
    for block in results["main"].values():
        block.pop("saved_model_dir")
    results["meta"].update(
        wall_s=time.perf_counter() - start,
        load_average_before=load_before,
        load_average_after=machine.load_average(),
        memory_workers=workers,
        cpu_pressure_before=pressure_before,
        cpu_pressure_after=machine.cpu_pressure(),
        driver_peak_rss_mb=machine.own_peak_rss_mb(),
    )
    results["headline"] = report.headline(results)
    paths = report.write_all(results, results_dir, name, markdown)
    log(f"done in {results['meta']['wall_s']:.0f} s; wrote " + ", ".join(os.path.relpath(p) for p in paths))
    return results


if __name__ == "__main__":
    main()
