"""Turn a benchmark result into its headline ratios, a Markdown report and PNG plots of the scaling curves.

Everything in the report is computed from the result dictionary (the JSON written beside it), so a
report can be regenerated from a saved JSON: `python -m benchmarks.report benchmarks/results/run/full-cpu.json`.
The report opens with the index of every benchmark report under `results/` (`index_section`).
"""

from __future__ import annotations

import json
import os
import sys

from .common import RESULTS, write_json, write_text
from .timing import paired_ratio
from .workloads import CASE_LABELS, METHOD_LABELS

TARGETS = {  # the speed and memory targets: (ratio <= limit)
    "step_vs_peft_prompt_tuning": 1.0,
    "memory_vs_full_finetune": 0.5,
    "step_vs_forward": 2.3,
}


def _verdict(ratio: dict, limit: float) -> str:
    if ratio["ratio"] <= limit:
        return "met" if ratio["max"] <= limit or ratio["n"] < 2 else "met (median; some rounds above)"
    return "within noise" if ratio["min"] <= limit else "not met"


def _mem(results: dict, family: str, case: str) -> float | None:
    row = results.get("memory", {}).get(f"{family}:{case}")
    return row["train_mb"] if row and row.get("ok") else None


def _by_clock(ratio: dict, clock: str, timing: dict) -> dict:
    """The paired ratio on the chosen clock: wall time (default) or process CPU time (`--clock cpu`)."""
    if clock != "cpu":
        return ratio
    r = paired_ratio(timing, ratio["numerator"], ratio["denominator"])  # recomputed from the samples
    return {
        **r,
        "ratio": r["cpu_ratio"],
        "min": r["cpu_min"],
        "max": r["cpu_max"],
        "cpu_ratio": r["ratio"],
    }  # the other clock goes in the cross-check slot


def headline(results: dict) -> dict:
    """The ratios a user picks a method by, per shape, with the targets they are held against."""
    clock = results["meta"].get("clock", "wall")
    out = {}
    for shape_name, block in results["main"].items():
        ratios, family = block["ratios"], block["shape"]["family"]
        rows = {}
        for key, ratio_key, target in (
            (
                "step: ours / PEFT prompt tuning",
                "softprompt_vs_peft_prompt_tuning",
                "step_vs_peft_prompt_tuning",
            ),
            ("step: ours / LoRA", "softprompt_vs_lora", None),
            ("step: ours / full fine-tuning", "softprompt_vs_full_finetune", None),
            ("step / eval forward (fp32)", "step_vs_forward", "step_vs_forward"),
            ("step / eval forward (bf16 autocast)", "bf16_autocast_step_vs_forward", "step_vs_forward"),
            ("step: bf16 autocast / fp32", "bf16_autocast_vs_fp32", None),
            ("step: gradient checkpointing / plain (ours)", "grad_ckpt_vs_plain", None),
            ("step: fused GELU / plain (ours)", "fused_gelu_vs_plain", None),
            ("step: fused GELU + bf16 autocast / plain fp32 (ours)", "fused_gelu_bf16_vs_fp32", None),
            (
                "step / eval forward (fused GELU + bf16 autocast)",
                "fused_gelu_bf16_step_vs_forward",
                "step_vs_forward",
            ),
            ("step: target-only logits / all logits", "target_loss_vs_full_logits", None),
            ("step / eval forward (target-only logits)", "target_loss_step_vs_forward", "step_vs_forward"),
        ):
            if ratio_key in ratios:
                r = _by_clock(ratios[ratio_key], clock, block["timing"])
                row = {
                    "value": r["ratio"],
                    "min": r["min"],
                    "max": r["max"],
                    "n": r["n"],
                    "cpu": r["cpu_ratio"],
                }
                if target:
                    row.update(target=f"<= {TARGETS[target]}", verdict=_verdict(r, TARGETS[target]))
                rows[key] = row
        for key, num, den, target in (
            ("memory: ours / full fine-tuning", "softprompt", "full_finetune", "memory_vs_full_finetune"),
            (
                "memory: ours, bf16 autocast / full fine-tuning",
                "softprompt:bf16_autocast",
                "full_finetune",
                "memory_vs_full_finetune",
            ),
            (
                "memory: ours, gradient checkpointing / full fine-tuning",
                "softprompt:grad_ckpt",
                "full_finetune",
                "memory_vs_full_finetune",
            ),
            (
                "memory: ours, target-only logits / full fine-tuning",
                "softprompt:target_loss",
                "full_finetune",
                "memory_vs_full_finetune",
            ),
            (
                "memory: ours, fused GELU / full fine-tuning",
                "softprompt:fused_gelu",
                "full_finetune",
                "memory_vs_full_finetune",
            ),
            ("memory: ours / PEFT prompt tuning", "softprompt", "peft_prompt_tuning", None),
            ("memory: ours / LoRA", "softprompt", "lora", None),
            ("memory: 8-bit base / fp32 base (ours)", "softprompt:int8_disk", "softprompt:fp32_disk", None),
        ):
            a, b = _mem(results, family, num), _mem(results, family, den)
            if a is not None and b:
                row = {"value": a / b}
                if target:
                    limit = TARGETS[target]
                    row.update(target=f"<= {limit}", verdict="met" if a / b <= limit else "not met")
                rows[key] = row
        cases = block["timing"]["cases"]
        if "saved_activations_mb" in cases.get("full_finetune", {}):
            rows["saved activations: ours / full fine-tuning"] = {
                "value": cases["softprompt"]["saved_activations_mb"]
                / cases["full_finetune"]["saved_activations_mb"]
            }
        sizes = block.get("adapter_size", {})
        if "softprompt" in sizes and "peft_prompt_tuning" in sizes:
            rows["adapter weights on disk: ours / PEFT prompt tuning"] = {
                "value": sizes["softprompt"]["weights_bytes"] / sizes["peft_prompt_tuning"]["weights_bytes"]
            }
        out[shape_name] = rows
    return out


# ------------------------------------------------------------------------------------------------ plots
def _clocked_scaling(scaling: dict, clock: str) -> dict:
    """The scaling rows with times and ratios on the chosen clock (see `_by_clock`)."""
    if clock != "cpu":
        return scaling

    def row(r: dict) -> dict:
        out = {
            k: _by_clock(v, clock, scaling["timing"]) if isinstance(v, dict) and "ratio" in v else v
            for k, v in r.items()
        }
        for key in ("softprompt_s", "peft_prompt_tuning_s", "forward_s"):
            if key.replace("_s", "_cpu_s") in r:
                out[key] = r[key.replace("_s", "_cpu_s")]
        return out

    return {
        **scaling,
        "prompt_length": [row(r) for r in scaling["prompt_length"]],
        "input_length": [row(r) for r in scaling["input_length"]],
    }


def plot_scaling(scaling: dict, results_dir: str, name: str, clock: str = "wall") -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    scaling = _clocked_scaling(scaling, clock)
    what = "CPU s" if clock == "cpu" else "s"
    shape = scaling["shape"]["name"]
    rows = scaling["prompt_length"]
    fig, axes = plt.subplots(1, 2 if "peft_prompt_tuning_s" in rows[0] else 1, figsize=(10, 4), squeeze=False)
    ps = [r["P"] for r in rows]
    axes[0][0].plot(ps, [r["softprompt_s"] for r in rows], "o-", label="SoftPromptConfig")
    if "peft_prompt_tuning_s" in rows[0]:
        axes[0][0].plot(ps, [r["peft_prompt_tuning_s"] for r in rows], "s--", label="PEFT PromptTuningConfig")
        ax = axes[0][1]
        ax.plot(ps, [r["ratio_vs_peft"]["ratio"] for r in rows], "o-", color="C2")
        ax.fill_between(
            ps,
            [r["ratio_vs_peft"]["min"] for r in rows],
            [r["ratio_vs_peft"]["max"] for r in rows],
            alpha=0.2,
            color="C2",
            label="min-max over rounds",
        )
        ax.axhline(1.0, color="grey", lw=1, ls=":")
        ax.set(xlabel="prompt length P", ylabel="step time ratio", title="ours / PEFT (paired, median)")
        ax.legend()
    for ax in axes[0]:
        ax.set_xscale("log")
        ax.set_xticks(ps, [str(p) for p in ps])
        ax.minorticks_off()
    axes[0][0].set(
        xlabel="prompt length P",
        ylabel=f"training step ({what}, median)",
        title=f"{shape}, input length {rows[0]['L']}",
    )
    axes[0][0].set_ylim(bottom=0)
    axes[0][0].legend()
    fig.tight_layout()
    paths.append(os.path.join(results_dir, f"{name}-scaling-prompt-length.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    rows = scaling["input_length"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    ls = [r["L"] for r in rows]
    axes[0].plot(ls, [r["softprompt_s"] for r in rows], "o-", label="training step (SoftPromptConfig)")
    axes[0].plot(ls, [r["forward_s"] for r in rows], "s--", label="eval forward, same length")
    axes[0].set(
        xlabel="input length (tokens, before the prompt)",
        ylabel=f"{what} (median)",
        title=f"{shape}, P = {rows[0]['P']}",
    )
    axes[0].set_ylim(bottom=0)
    axes[0].legend()
    axes[1].plot(ls, [r["step_vs_forward"]["ratio"] for r in rows], "o-", color="C2")
    axes[1].fill_between(
        ls,
        [r["step_vs_forward"]["min"] for r in rows],
        [r["step_vs_forward"]["max"] for r in rows],
        alpha=0.2,
        color="C2",
    )
    axes[1].axhline(2.0, color="grey", lw=1, ls=":", label="2x (forward + input-gradient backward)")
    axes[1].axhline(TARGETS["step_vs_forward"], color="C3", lw=1, ls="--", label="2.3x target")
    for ax in axes:
        ax.set_xticks(ls, [str(x) for x in ls])
    axes[1].set(xlabel="input length", ylabel="step / forward", title="training step / eval forward")
    axes[1].set_ylim(bottom=0)
    axes[1].legend()
    fig.tight_layout()
    paths.append(os.path.join(results_dir, f"{name}-scaling-input-length.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


# ------------------------------------------------------------------------------------------------ markdown
def _x(value: float) -> str:
    return f"{value:.2f}x"


def _s(value: float) -> str:
    return f"{value:.3f}" if value < 1 else f"{value:.2f}"


def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def scoring_section(markdown_dir: str) -> list[str]:
    """The label-scorer rows (`python benchmarks/scoring.py`, its own run) when `results/scoring.json` exists."""
    path = os.path.join(RESULTS, "scoring", "scoring.json")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        saved = json.load(f)
    machine = saved["machine"]
    lines = [
        "## Label scoring: one scorer that encodes each input once",
        "",
        f"`{machine['command']}` on {machine['date_utc']} ({machine['cpu']}, flags "
        f"{', '.join(machine['cpu_flags']) or 'none'}, {machine['torch_threads']} torch thread, {saved['dtype']}; "
        f"{saved['repeats']} interleaved repeats; [`{os.path.relpath(path, markdown_dir)}`]"
        f"({os.path.relpath(path, markdown_dir)})). Old: {saved['old']}. New: {saved['new']}.",
        "",
        "| case | B x C | old (s) | new (s) | old / new | max abs score difference |",
        "|---|---|---|---|---|---|",
    ]
    for r in saved["results"]:
        lines.append(
            f"| {r['case']} | {r['batch']} x {r['candidates']} | {r['old_median_s']:.3f} | {r['new_median_s']:.3f} "
            f"| {_x(r['median_ratio'])} (CPU {_x(r['median_ratio_cpu'])}) | {r['max_abs_score_diff']:.1e} |"
        )
    return [*lines, ""]


# results/<folder> -> what it holds and the command that writes it (folders not listed get a generic line)
REPORT_SOURCES = {
    "run": ("speed, memory and adapter size beside PEFT, LoRA, full fine-tuning (this page)", "python -m benchmarks.run"),
    "quality": ("the paper's Figure 3 ablations on the embedded T5, summarised in [`QUALITY.md`](QUALITY.md)",
                "python -m benchmarks.quality"),
    "multi_prompt": ("mixed-task batches and prompt ensembles", "python -m benchmarks.multi_prompt"),
    "multitask": ("K prompts trained in one run beside K runs", "python -m benchmarks.multitask"),
    "scoring": ("the label scorer, old way beside new", "python -m benchmarks.scoring"),
    "memory_plan": ("memory plan of T5 shapes, planned beside measured", "python -m benchmarks.memory_plan"),
    "encoder_use": ("how much of the embedded encoder a prompt uses", "python -m benchmarks.encoder_use"),
    "embedded_v3_attempt1": ("the collapsed first v3 build of the embedded model, kept as a warning",
                             "python -m scripts.embedded_build"),
    "serving": ("`softprompt serve` under concurrent load; `serving_params.*`: requests with mixed parameters "
                "(`python -m benchmarks.serving_params`)", "python -m benchmarks.serving"),
    "shared_prefix": ("decoder-only prompt computed once per batch beside PEFT; T5 step against its forward",
                      "python -m benchmarks.shared_prefix"),
}


def refresh_index(path: str) -> None:
    """Rewrite only the "Every report" section of the markdown report at `path` (after a benchmark adds files)."""
    from benchmarks.common import write_text

    with open(path, encoding="utf-8") as f:
        text = f.read()
    start = text.index("## Every report")
    end = text.index("\n## ", start + 1) + 1
    write_text(path, text[:start] + "\n".join(index_section(os.path.dirname(os.path.abspath(path)))) + "\n" + text[end:])


def report_files(results_dir: str = RESULTS) -> dict[str, list[str]]:
    """Every file under `results_dir`, by benchmark: its folder, or for a loose file the name before the first
    dot. Paths are relative to `results_dir`."""
    found: dict[str, list[str]] = {}
    for root, _, files in os.walk(results_dir):
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), results_dir)
            key = rel.split(os.sep)[0] if os.sep in rel else name.split(".")[0]
            found.setdefault(key, []).append(rel)
    return {key: sorted(paths) for key, paths in sorted(found.items())}


def index_section(markdown_dir: str, results_dir: str = RESULTS) -> list[str]:
    """The index of every report: one row per benchmark, linking each of its files under `results/`."""
    rel = os.path.relpath(results_dir, markdown_dir)
    lines = ["## Every report", "", "| benchmark | what | command | files |", "|---|---|---|---|"]
    for key, paths in report_files(results_dir).items():
        what, command = REPORT_SOURCES.get(key, ("-", "-"))
        links = ", ".join(f"[`{p}`]({rel}/{p})" for p in paths)
        lines.append(f"| {key} | {what} | `{command}` | {links} |")
    return [*lines, ""]


def serving_section(markdown_dir: str) -> list[str]:
    """The `softprompt serve` load test (`python -m benchmarks.serving`, its own run): the section that run
    rendered into `results/serving/serving.md`, links made relative to `markdown_dir`."""
    results = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    path = os.path.join(results, "serving", "serving.md")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        text = f.read().strip()
    rel = os.path.relpath(results, markdown_dir)
    text = text.replace("](results/", f"]({rel}/").replace("(results/", f"({rel}/")
    return ["## Serving: continuous mixed-adapter batching under concurrent load", "",
            "(From `results/serving/serving.md`, which `python -m benchmarks.serving` writes.)", "", text, ""]


def markdown(results: dict, plot_paths: list[str], json_name: str, markdown_dir: str) -> str:
    from .report_text import fast_path_section, memory_notes, method_section, profile_section

    meta, head = results["meta"], results["headline"]
    meta = {**meta, "command": meta["command"].strip()}
    shapes = list(results["main"])
    lines = [
        "# Benchmarks: SoftPromptConfig beside PEFT prompt tuning, LoRA and full fine-tuning",
        "",
        f"Generated by `{meta['command']}` on {meta['date_utc']} ({meta['mode']} mode, {meta['wall_s']:.0f} s).",
        f"Device: {meta.get('accelerator', meta['cpu'])} ({meta['device']}, {meta['torch_threads']} torch threads, "
        f"{meta['cpu_count']} CPUs, flags {', '.join(meta['cpu_flags']) or 'n/a'}). Load average before / after: "
        f"{meta['load_average_before']} / {meta['load_average_after']}; CPU pressure (share of the last minute "
        f"in which a runnable task waited for a core) before / after: {meta.get('cpu_pressure_before')}% / "
        f"{meta.get('cpu_pressure_after')}%. Versions: "
        + ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v)
        + ".",
        f"Every sample is in [`{json_name}`]({json_name}). Random weights; batch "
        f"{results['main'][shapes[0]]['inputs']['batch_size']}, input {results['main'][shapes[0]]['inputs']['input_len']}"
        f" tokens, target {results['main'][shapes[0]]['inputs']['target_len']} tokens, P = "
        f"{results['main'][shapes[0]]['num_virtual_tokens']}, AdamW for every method.",
        "",
        *index_section(markdown_dir),
        *scoring_section(markdown_dir),
        *serving_section(markdown_dir),
        "## Headline",
        "",
        "| ratio | " + " | ".join(shapes) + " | target | verdict |",
        "|---|" + "---|" * len(shapes) + "---|---|",
    ]
    keys = list(dict.fromkeys(k for s in shapes for k in head[s]))
    for key in keys:
        cells, target, verdict = [], "", []
        for s in shapes:
            row = head[s].get(key)
            if row is None:
                cells.append("-")
                continue
            spread = f" ({_x(row['min'])}-{_x(row['max'])})" if "min" in row and row.get("n", 0) > 1 else ""
            other = "wall" if meta.get("clock") == "cpu" else "CPU"
            cpu = f"; {other} {_x(row['cpu'])}" if row.get("cpu") else ""
            cells.append(_x(row["value"]) + spread + cpu)
            target = row.get("target", target)
            if "verdict" in row:
                verdict.append(f"{s.split('-')[0]}: {row['verdict']}")
        lines.append(f"| {key} | " + " | ".join(cells) + f" | {target} | {'; '.join(verdict)} |")
    if meta.get("clock") == "cpu":
        clock_note = (
            "Step ratios are medians of per-round paired ratios of **process CPU time** (`--clock cpu`, "
            "robust on a shared machine with one thread: a process's CPU time does not grow while it "
            'waits for a core); min-max over rounds in brackets, "wall" is the wall-time ratio.'
        )
    else:
        clock_note = (
            "Step ratios are medians of per-round paired wall-time ratios (min-max over rounds in "
            'brackets; "CPU" is the same ratio of process CPU time, a cross-check on a busy machine).'
        )
    lines += [
        "",
        clock_note + " Memory ratios compare the training memory of fresh processes (see Method).",
        "",
        "SoftPromptConfig and PEFT's PromptTuningConfig run the same forward and backward (PEFT's extra P rows "
        "on T5 are looked up and sliced away), so their step-time ratio is also the noise floor of these paired "
        "measurements: across repeated full runs on this machine it came out between 0.94x and 1.10x, and a "
        "difference of less than about 10% between them is not a difference between the libraries.",
        "",
    ]

    for shape_name, block in results["main"].items():
        cases, rounds = block["timing"]["cases"], block["timing"]["rounds"]
        lines += [
            f"## Step time: {shape_name}",
            "",
            f"Median of {rounds} interleaved rounds (order shuffled per round; each timed step right after "
            f"{block['timing'].get('settle', 0)} untimed step(s) of the same case).",
            "",
            "| case | median s | min-max s | CPU s | trainable params | saved for backward MB |",
            "|---|---|---|---|---|---|",
        ]
        for case, c in cases.items():
            label = CASE_LABELS.get(case, case)
            saved = f"{c['saved_activations_mb']:,.0f}" if "saved_activations_mb" in c else "-"
            lines.append(
                f"| {label} | {_s(c['median_s'])} | {_s(c['min_s'])}-{_s(c['max_s'])} | "
                f"{_s(c['cpu_median_s'])} | {c['trainable_params']:,} | {saved} |"
            )
        lines.append("")

    memory = results.get("memory", {})
    if memory:
        lines += [
            "## Peak training memory (one fresh process per configuration)",
            "",
            "| configuration | training memory MB | model after setup MB | setup peak MB | steps s (not "
            "interleaved) |",
            "|---|---|---|---|---|",
        ]
        for name, r in memory.items():
            if not r.get("ok"):
                lines.append(f"| {name} | failed: {r['error'][:80]} | | | |")
                continue
            lines.append(
                f"| {name} | {_mb(r['train_mb'])} | {_mb(r['model_mb'])} | "
                f"{_mb(r['setup_peak_mb'] - r['rss_start_mb'])} | "
                + ", ".join(_s(t) for t in r["step_s"])
                + " |"
            )
        lines += [
            "",
            "Training memory = peak resident set during the steps minus the resident set of the freshly "
            "forked process (libraries loaded). The `fp32_disk`/`int8_disk` rows load a saved copy: "
            "safetensors maps the file, so the weights become resident during the first step and count "
            "in the training peak rather than after setup.",
            "",
        ]
        lines += memory_notes(results)

    lines += [
        "## Adapter size on disk (`save_pretrained`)",
        "",
        "| shape | method | weights bytes | all files bytes |",
        "|---|---|---|---|",
    ]
    for shape_name, block in results["main"].items():
        for method, size in block["adapter_size"].items():
            lines.append(
                f"| {shape_name} | {METHOD_LABELS[method]} | {size['weights_bytes']:,} | "
                f"{size['total_bytes']:,} |"
            )
    lines.append("")

    scaling = _clocked_scaling(results["scaling"], meta.get("clock", "wall"))
    unit = "CPU s" if meta.get("clock") == "cpu" else "s"
    lines += [
        f"## Scaling ({scaling['shape']['name']})",
        "",
        f"Times are medians in {'process CPU seconds' if unit == 'CPU s' else 'wall seconds'}; ratios are "
        "paired per round.",
        "",
    ]
    for path in plot_paths:
        rel = os.path.relpath(path, markdown_dir)
        lines.append(f"![{os.path.basename(path)}]({rel})")
    lines += ["", f"| P | input length | ours {unit} | PEFT {unit} | ours / PEFT |", "|---|---|---|---|---|"]
    for r in scaling["prompt_length"]:
        peft = (
            f"{_s(r['peft_prompt_tuning_s'])} | {_x(r['ratio_vs_peft']['ratio'])}"
            if "peft_prompt_tuning_s" in r
            else "- | -"
        )
        lines.append(f"| {r['P']} | {r['L']} | {_s(r['softprompt_s'])} | {peft} |")
    lines += [
        "",
        f"| input length | P | step {unit} | forward {unit} | step / forward | training tokens/s (wall) |",
        "|---|---|---|---|---|---|",
    ]
    for r in scaling["input_length"]:
        lines.append(
            f"| {r['L']} | {r['P']} | {_s(r['softprompt_s'])} | {_s(r['forward_s'])} | "
            f"{_x(r['step_vs_forward']['ratio'])} | {r['train_tokens_per_s']:,.0f} |"
        )
    lines.append("")
    lines += profile_section(results) + fast_path_section(results) + method_section(results)
    return "\n".join(lines) + "\n"


def write_all(results: dict, results_dir: str, name: str, markdown_path: str) -> list[str]:
    """Write `<results_dir>/<name>.json`, the scaling PNGs and the Markdown report; return their paths."""
    os.makedirs(results_dir, exist_ok=True)
    json_path = write_json(os.path.join(results_dir, f"{name}.json"), results, indent=1)
    plots = plot_scaling(results["scaling"], results_dir, name, results["meta"].get("clock", "wall"))
    md_dir = os.path.dirname(os.path.abspath(markdown_path))
    text = markdown(results, plots, os.path.relpath(json_path, md_dir), md_dir)
    write_text(markdown_path, text)
    return [json_path, *plots, markdown_path]


if __name__ == "__main__":  # regenerate a report from a saved JSON
    with open(sys.argv[1]) as f:
        saved = json.load(f)
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(RESULTS), "RESULTS.md")
    print(write_all(saved, os.path.dirname(sys.argv[1]), saved["meta"]["name"], out))
