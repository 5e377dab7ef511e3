"""The shared prompt prefix beside PEFT's per-row prompt tuning, and T5's step against its forward.

    python -m benchmarks.shared_prefix              # Llama-small-shaped P=100 and P=20, T5-small-shaped; minutes
    python -m benchmarks.shared_prefix --smoke      # tiny models, seconds (numbers meaningless)

Decoder-only: `SoftPromptConfig` computes the prompt once per batch (`softprompt_ext/shared_prefix.py`); PEFT's
`PromptTuningConfig` carries it in every row. Both wrap the same frozen base, are timed interleaved round by
round (`timing.py`: medians, paired per-round ratios), and their saved activations are counted exactly
(`workloads.saved_activation_mb`). T5: the prompt-tuning step against an eval forward and against PEFT, in
the same run. Writes `benchmarks/results/shared_prefix/shared_prefix-<device>.json` and `.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from benchmarks import machine  # noqa: E402
from benchmarks import workloads as wl  # noqa: E402
from benchmarks.common import command_line, result_dir, run_info, write_text  # noqa: E402
from benchmarks.profiling import profile  # noqa: E402
from benchmarks.timing import paired_ratio, run_interleaved  # noqa: E402


def log(message: str) -> None:
    print(time.strftime("%H:%M:%S"), message, flush=True)


def llama_block(shape: wl.Shape, inputs: wl.Inputs, prompt_lengths: tuple[int, ...], repeats: int,
                device: torch.device) -> dict:
    """ours / PEFT step time at each P, interleaved in one timing run; saved activations at each P."""
    batch = wl.make_batch(shape, inputs, device)
    base = wl.build_base(shape).to(device)
    steps = {}
    for P in prompt_lengths:
        for method in ("softprompt", "peft_prompt_tuning"):
            steps[f"{method}|P={P}"] = wl.Step(wl.wrap(base, shape, method, P), batch, device)
    log(f"{shape.name}: {len(steps)} cases interleaved, {repeats} rounds")
    timing = run_interleaved(steps, repeats, 0, repeats, None, log, between=machine.release_freed_memory)
    rows = []
    for P in prompt_lengths:
        ours, peft = f"softprompt|P={P}", f"peft_prompt_tuning|P={P}"
        saved = {m: wl.saved_activation_mb(steps[f"{m}|P={P}"]) for m in ("softprompt", "peft_prompt_tuning")}
        rows.append({
            "P": P,
            "softprompt_s": timing["cases"][ours]["median_s"],
            "peft_prompt_tuning_s": timing["cases"][peft]["median_s"],
            "step_ratio": paired_ratio(timing, ours, peft),
            "saved_activations_mb": saved,
            "saved_activations_ratio": saved["softprompt"] / saved["peft_prompt_tuning"],
        })
    return {"shape": shape.to_dict(), "inputs": vars(inputs), "rows": rows, "timing": timing}


def t5_block(shape: wl.Shape, inputs: wl.Inputs, P: int, repeats: int, device: torch.device,
             profile_it: bool) -> dict:
    """T5 prompt-tuning step / eval forward and ours / PEFT, interleaved in one timing run."""
    batch = wl.make_batch(shape, inputs, device)
    base = wl.build_base(shape).to(device)
    ours = wl.wrap(base, shape, "softprompt", P)
    steps = {
        "softprompt": wl.Step(ours, batch, device),
        "peft_prompt_tuning": wl.Step(wl.wrap(base, shape, "peft_prompt_tuning", P), batch, device),
        "forward": wl.Step(ours, batch, device, train=False),
    }
    if shape.dropout > 0:  # the same step without dropout: how much of the gap the recipe's dropout makes
        no_dropout = wl.fresh_copy(base)
        wl.set_dropout(no_dropout, 0.0)
        no_dropout.config.dropout_rate = 0.0  # T5's attention reads the rate from its config at every call
        for module in no_dropout.modules():
            if hasattr(module, "dropout") and isinstance(module.dropout, float):
                module.dropout = 0.0
        steps["softprompt_dropout0"] = wl.Step(wl.wrap(no_dropout, shape, "softprompt", P), batch, device)
    # the same step with eager attention (the training step runs SDPA's unfused path while attention dropout is on)
    eager = wl.fresh_copy(base)
    eager.set_attn_implementation("eager")
    steps["softprompt_eager_attention"] = wl.Step(wl.wrap(eager, shape, "softprompt", P), batch, device)
    losses = []
    for name in ("softprompt", "softprompt_eager_attention"):  # one training-mode loss each, same dropout seed
        steps[name].model.train()
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(0)
            losses.append(float(steps[name].loss()))
    log(f"{shape.name}: {len(steps)} cases interleaved, {repeats} rounds")
    timing = run_interleaved(steps, repeats, 0, repeats, None, log, between=machine.release_freed_memory)
    block = {
        "shape": shape.to_dict(),
        "inputs": vars(inputs),
        "P": P,
        "eager_vs_sdpa_step": paired_ratio(timing, "softprompt_eager_attention", "softprompt"),
        "sdpa_and_eager_loss_same_seed": losses,
        "timing": timing,
        "step_vs_forward": paired_ratio(timing, "softprompt", "forward"),
        "softprompt_vs_peft": paired_ratio(timing, "softprompt", "peft_prompt_tuning"),
    }
    if "softprompt_dropout0" in steps:
        block["dropout0_step_vs_forward"] = paired_ratio(timing, "softprompt_dropout0", "forward")
    if profile_it:
        block["profile"] = {"step": profile(steps["softprompt"], device), "forward": profile(steps["forward"], device)}
    return block


def markdown(results: dict) -> str:
    meta = results["meta"]
    lines = [
        "# Shared prompt prefix: benchmark",
        "",
        f"Machine: {meta['cpu']} ({meta['precision_report']}, flags {', '.join(meta.get('cpu_flags', []))}), "
        f"{meta['cpu_count']} cores, {meta['threads']} torch threads; torch {torch.__version__}. The cores were shared "
        "with other engineers' jobs: every figure is a median over interleaved rounds (ratios: the median of "
        "per-round paired ratios, min-max beside it). Commands (UTC date, load average before / after):",
        "",
    ]
    for c in meta.get("commands", []):
        lines.append(f"- `{c['command'].strip()}` ({c['blocks']}): {c['date_utc']}, load {c['load_before']} / "
                     f"{c['load_after']}")
    lines.append("")
    llama = results.get("llama")
    if llama:
        i = llama["inputs"]
        lines += [
            f"## {llama['shape']['name']}: ours (shared prefix) / PEFT prompt tuning, training step",
            "",
            f"B={i['batch_size']}, input {i['input_len']} + target {i['target_len']} tokens, fp32, "
            f"{llama['timing']['rounds']} rounds.",
            "",
            "| P | ours s | PEFT s | ours / PEFT, wall (min-max) | ours / PEFT, process CPU time (min-max) "
            "| saved activations ours / PEFT MB | ratio |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in llama["rows"]:
            s, a = r["step_ratio"], r["saved_activations_mb"]
            lines.append(
                f"| {r['P']} | {r['softprompt_s']:.2f} | {r['peft_prompt_tuning_s']:.2f} | {s['ratio']:.2f} "
                f"({s['min']:.2f}-{s['max']:.2f}) | {s['cpu_ratio']:.2f} ({s['cpu_min']:.2f}-{s['cpu_max']:.2f}) | "
                f"{a['softprompt']:.0f} / {a['peft_prompt_tuning']:.0f} | {r['saved_activations_ratio']:.2f} |"
            )
        lines.append("")
    t5 = results.get("t5")
    if t5:
        sv, op = t5["step_vs_forward"], t5["softprompt_vs_peft"]
        c = t5["timing"]["cases"]
        lines += [
            f"## {t5['shape']['name']}: training step / eval forward, ours / PEFT",
            "",
            f"P={t5['P']}, B={t5['inputs']['batch_size']}, input {t5['inputs']['input_len']}, target "
            f"{t5['inputs']['target_len']}, fp32, {t5['timing']['rounds']} rounds. Step {c['softprompt']['median_s']:.2f} s, "
            f"forward {c['forward']['median_s']:.2f} s, PEFT step {c['peft_prompt_tuning']['median_s']:.2f} s.",
            "",
            f"- step / forward: **{sv['ratio']:.2f}** ({sv['min']:.2f}-{sv['max']:.2f}); process CPU time "
            f"{sv['cpu_ratio']:.2f} ({sv['cpu_min']:.2f}-{sv['cpu_max']:.2f})",
            f"- ours / PEFT: **{op['ratio']:.2f}** ({op['min']:.2f}-{op['max']:.2f}); process CPU time "
            f"{op['cpu_ratio']:.2f} ({op['cpu_min']:.2f}-{op['cpu_max']:.2f})",
        ]
        e = t5["eager_vs_sdpa_step"]
        lines.append(f"- the step with eager attention / with SDPA (the default): {e['ratio']:.2f} "
                     f"({e['min']:.2f}-{e['max']:.2f}); process CPU time {e['cpu_ratio']:.2f}; training-mode loss with the "
                     f"same dropout seed, SDPA / eager: {t5['sdpa_and_eager_loss_same_seed'][0]!r} / "
                     f"{t5['sdpa_and_eager_loss_same_seed'][1]!r}")
        if "dropout0_step_vs_forward" in t5:
            d = t5["dropout0_step_vs_forward"]
            lines.append(f"- the same step with dropout 0 (not the paper's recipe) / forward: {d['ratio']:.2f} "
                         f"({d['min']:.2f}-{d['max']:.2f})")
        lines.append("")
        if "profile" in t5:
            lines += ["Profile of one step and one forward (CPU self time by category, ms):", "",
                      "| category | step | forward |", "|---|---|---|"]
            step, fwd = t5["profile"]["step"]["categories"], t5["profile"]["forward"]["categories"]
            for k in step:
                lines.append(f"| {k} | {step[k]['ms']:.0f} | {fwd.get(k, {}).get('ms', 0.0):.0f} |")
            lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny models, seconds")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds per block")
    parser.add_argument("--only", choices=("llama", "t5"), default=None, help="run one block")
    parser.add_argument("--no-profile", action="store_true", help="skip the T5 profile")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", default=None, help="report folder (default: benchmarks/results/shared_prefix/)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    machine.quiet_libraries()
    from softprompt_ext.precision import bf16_is_fast

    llama_shape, t5_shape = (wl.LLAMA_TINY, wl.T5_TINY) if args.smoke else (wl.LLAMA_SMALL, wl.T5_SMALL)
    inputs = wl.Inputs(batch_size=2, input_len=8, target_len=2) if args.smoke else wl.Inputs(8, 128, 4)
    repeats = 1 if args.smoke else args.repeats
    load_before = machine.load_average()
    name = "shared_prefix-smoke" if args.smoke else "shared_prefix-cpu"
    out = args.out or result_dir("shared_prefix")
    path = os.path.join(out, f"{name}.json")
    results: dict = {}
    if args.only and os.path.exists(path):  # one block rerun: keep the other block and its own record
        with open(path, encoding="utf-8") as f:
            results = json.load(f)
    if args.only in (None, "llama"):
        results["llama"] = llama_block(llama_shape, inputs, (4,) if args.smoke else (100, 20), repeats, device)
    if args.only in (None, "t5"):
        results["t5"] = t5_block(t5_shape, inputs, 4 if args.smoke else 100, repeats, device, not args.no_profile)
    given = list(argv if argv is not None else sys.argv[1:])
    info = run_info("shared_prefix", "shared_prefix", given, device, "smoke" if args.smoke else "full")
    commands = results.get("meta", {}).get("commands", []) if args.only else []
    results["meta"] = {
        **info,
        "command": command_line("shared_prefix", given),
        "cpu": info.get("cpu") or info.get("processor") or "unknown CPU",
        "precision_report": f"bf16_is_fast={bf16_is_fast(device)}",
        "threads": torch.get_num_threads(),
        "load_before": load_before,
        "load_after": machine.load_average(),
    }
    results["meta"]["commands"] = commands + [
        {"command": results["meta"]["command"], "date_utc": info["date_utc"], "blocks": args.only or "llama, t5",
         "load_before": load_before, "load_after": results["meta"]["load_after"]}
    ]
    write_text(path, json.dumps(results, indent=1, default=str) + "\n")
    report = write_text(os.path.join(out, f"{name}.md"), markdown(results) + "\n")
    if args.out is None:  # a new file under results/: RESULTS.md's index links it
        from benchmarks.report import refresh_index

        refresh_index(os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md"))
    log(f"wrote {report}")
    return results


if __name__ == "__main__":
    main()
