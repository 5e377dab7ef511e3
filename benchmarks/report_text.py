"""The prose sections of RESULTS.md: where the time goes, the fast path, and how things were measured.

Kept apart from `report.py` (tables and plots) so the explanations can be read and edited on their own;
every number in them is read from the result dictionary.
"""

from __future__ import annotations

STEP_LIMIT = 2.3


def _x(value: float) -> str:
    return f"{value:.2f}x"


def profile_section(results: dict) -> list[str]:
    lines = ["## Where the time goes (torch.profiler, one step)", ""]
    any_profile = False
    for shape_name, block in results["main"].items():
        prof = block.get("profile")
        if not prof:
            continue
        any_profile = True
        ratio = block["ratios"]["step_vs_forward"]["ratio"]
        state = (
            f"exceeds the {STEP_LIMIT}x target" if ratio > STEP_LIMIT else f"within the {STEP_LIMIT}x target"
        )
        step, fwd = prof["step"], prof["forward"]
        lines += [
            f"### {shape_name}: prompt-tuning step / eval forward = {_x(ratio)} ({state})",
            "",
            f"Profiled {step['clock']}: step {step['total_ms']:.0f} ms, forward {fwd['total_ms']:.0f} ms "
            "(the profiler adds overhead; shares are what matter).",
            "",
            "| category | step ms | step share | forward ms | step / forward |",
            "|---|---|---|---|---|",
        ]
        for label, cat in step["categories"].items():
            f_ms = fwd["categories"].get(label, {}).get("ms", 0.0)
            per = _x(cat["ms"] / f_ms) if f_ms > 0.05 * cat["ms"] else "only in training"
            lines.append(f"| {label} | {cat['ms']:.0f} | {cat['share']:.0%} | {f_ms:.0f} | {per} |")
        if ratio > STEP_LIMIT:
            lines += ["", *("- " + line for line in _explain(step, fwd))]
        lines += ["", "| top operators of the step (self time) | ms | calls | share |", "|---|---|---|---|"]
        for op in step["top"]:
            lines.append(f"| `{op['op']}` | {op['self_ms']:.0f} | {op['calls']} | {op['share']:.0%} |")
        lines.append("")
    if not any_profile:
        lines += ["(not profiled in this mode)", ""]
    return lines


def _explain(step: dict, fwd: dict) -> list[str]:
    """Read the category table: what a training step pays beyond a forward plus an input-gradient backward."""
    cats, fcats = step["categories"], fwd["categories"]

    def ms(table: dict, label: str) -> float:
        return table.get(label, {}).get("ms", 0.0)

    out = [
        f"Where the time beyond 2x goes: matrix products are {ms(cats, 'matrix products') / max(ms(fcats, 'matrix products'), 1e-9):.2f}x "
        "the forward's (the backward needs only input gradients: one product per weight, as in the forward)."
    ]
    if ms(cats, "dropout (forward)") > 0:
        out.append(
            f"Drawing dropout masks (`bernoulli_`) takes {cats['dropout (forward)']['share']:.0%} of the step and "
            "applying them (and their backward) is part of the elementwise share "
            f"({cats.get('elementwise', {}).get('share', 0):.0%}, {ms(cats, 'elementwise') / max(ms(fcats, 'elementwise'), 1e-9):.0f}x the forward's); "
            "the eval forward has no dropout."
        )
    if ms(fcats, "attention kernel") > 10 * ms(cats, "attention kernel"):
        out.append(
            "The eval forward runs attention in SDPA's fused CPU kernel; the training step does not (attention "
            "dropout is on), so it materialises the [B, heads, T, T] scores (`bmm`, `_softmax`, a mask per "
            "score) -- a cost that grows with the square of the length (see the input-length table)."
        )
    return out


def memory_notes(results: dict) -> list[str]:
    """Why training memory comes out as it does, from the measured parts (weights, saved activations)."""
    mem, lines = results.get("memory", {}), []
    for shape_name, block in results["main"].items():
        fam, cases = block["shape"]["family"], block["timing"]["cases"]
        ours, full = mem.get(f"{fam}:softprompt"), mem.get(f"{fam}:full_finetune")
        fwd = mem.get(f"{fam}:forward")
        if not (
            ours and full and ours.get("ok") and full.get("ok")
        ) or "saved_activations_mb" not in cases.get("full_finetune", {}):
            continue
        inputs, P = block["inputs"], block["num_virtual_tokens"]
        weights = fwd["model_mb"] if fwd and fwd.get("ok") else ours["model_mb"]
        act_ours, act_full = (
            cases["softprompt"]["saved_activations_mb"],
            cases["full_finetune"]["saved_activations_mb"],
        )
        lines.append(
            f"- {shape_name}: the weights take about {weights:,.0f} MB. Full fine-tuning adds their gradients and "
            f"two AdamW moments (about {3 * weights:,.0f} MB) and {act_full:,.0f} MB of tensors saved for backward "
            f"over {inputs['input_len']} input tokens; prompt tuning adds no weight gradients but saves "
            f"{act_ours:,.0f} MB, because the input gradient must pass back through every layer's nonlinearities "
            f"and it runs over {P} more positions. Measured: {ours['train_mb']:,.0f} MB vs {full['train_mb']:,.0f} "
            f"MB ({ours['train_mb'] / full['train_mb']:.2f}x) at batch {inputs['batch_size']}. Activations grow "
            "with batch and length, weight state with model size, so the ratio falls for larger models and smaller "
            "batches and rises for small models and long inputs."
        )
    if lines:
        lines = ["Why training memory is what it is:", "", *lines, ""]
    return lines


def _memory_clause(mem: dict, fam: str, variant: str) -> str:
    """"; training memory X MB instead of Y MB" for a fast-path variant, or "" when either run is missing."""
    a, b = mem.get(f"{fam}:softprompt:{variant}"), mem.get(f"{fam}:softprompt")
    if a and b and a.get("ok") and b.get("ok"):
        return f"; training memory {a['train_mb']:,.0f} MB instead of {b['train_mb']:,.0f} MB"
    return ""


def fast_path_section(results: dict) -> list[str]:
    lines = ["## Fast path", ""]
    found = []
    mem = results.get("memory", {})
    for shape_name, block in results["main"].items():
        r, fam = block["ratios"], block["shape"]["family"]
        if "bf16_autocast_vs_fp32" in r:
            found.append(
                f"- **{shape_name}, bf16 autocast**: step {_x(r['bf16_autocast_vs_fp32']['ratio'])} the fp32 "
                "step (prompt, gradient and AdamW stay float32; matrix products in bfloat16)."
            )
        if "bf16_weights_vs_fp32" in r:
            found.append(
                f"- {shape_name}, base weights stored in bf16 (float32 prompt): step "
                f"{_x(r['bf16_weights_vs_fp32']['ratio'])} fp32. Also halves the weights' memory, but the "
                "whole forward runs in bf16 (larger deviation than autocast)."
            )
        if "fused_gelu_vs_plain" in r:
            line = (
                f"- **{shape_name}, fused GELU** (`softprompt_ext.training.step_savings.fuse_gelu`): step "
                f"{_x(r['fused_gelu_vs_plain']['ratio'])} the default step, same result to float rounding"
            )
            cases = block["timing"]["cases"]
            if "saved_activations_mb" in cases.get("softprompt_fused_gelu", {}):
                line += (
                    f"; tensors saved for backward {cases['softprompt_fused_gelu']['saved_activations_mb']:,.0f} MB "
                    f"instead of {cases['softprompt']['saved_activations_mb']:,.0f} MB"
                )
            line += _memory_clause(mem, fam, "fused_gelu")
            if "fused_gelu_bf16_vs_fp32" in r:
                line += (
                    f"; with bf16 autocast too: {_x(r['fused_gelu_bf16_vs_fp32']['ratio'])} the default step"
                    f" and {_x(r['fused_gelu_bf16_step_vs_forward']['ratio'])} a bf16 forward"
                )
            found.append(line + ".")
        if "dropout0_vs_dropout" in r:
            found.append(
                f"- {shape_name}, dropout 0 instead of {block['shape']['dropout']}: step "
                f"{_x(r['dropout0_vs_dropout']['ratio'])}. Not a fast path (it changes the recipe; the "
                "paper trains with dropout 0.1) but it is the part of the step a forward does not pay."
            )
        if "target_loss_vs_full_logits" in r:
            line = (
                f"- **{shape_name}, logits at the target positions only** "
                f"(`softprompt_ext.training.step_savings.causal_lm_target_loss`): step "
                f"{_x(r['target_loss_vs_full_logits']['ratio'])} the default step, same loss"
            )
            line += _memory_clause(mem, fam, "target_loss")
            if "target_loss_bf16_vs_fp32" in r:
                line += (
                    f"; with bf16 autocast too: {_x(r['target_loss_bf16_vs_fp32']['ratio'])} the default step"
                )
            found.append(line + ".")
    if not found:
        return lines + ["(no fast-path variants measured in this mode)", ""]
    lines += found + [
        "",
        "Proposed documentation of the fast path (the library's `softprompt_ext/training/step_savings.py`):",
        "",
        "1. Train under bf16 autocast where the hardware has bf16 units: `with precision.bf16_autocast(device):`"
        " around the forward and loss in your own loop, or `TrainingArguments(bf16=True)` with the Trainer.",
        "   `precision.bf16_is_fast(device)` tells whether it helps (CUDA with bf16, CPUs with AVX512-BF16/AMX).",
        "2. Models whose GELU transformers spells out in Python (T5 1.1 and its LM-adapted checkpoints, mT5, "
        "GPT-2): call `step_savings.fuse_gelu(model)` once; same formula as one fused kernel, fewer saved tensors.",
        "3. Decoder-only models: compute the loss with `step_savings.causal_lm_target_loss(model, input_ids, labels,"
        " attention_mask)`, which asks the model for the logits of the labelled positions only; the loss equals "
        "`model(..., labels=labels).loss`.",
        "4. Keep PEFT's input-gradient-only backward: the base model must stay frozen (PEFT does this); do not "
        "enable gradient checkpointing unless memory requires it (it re-runs the forward).",
        "",
    ]
    return lines


def method_section(results: dict) -> list[str]:
    meta = results["meta"]
    mem = results.get("memory", {})
    reset = all(r.get("hwm_reset", False) for r in mem.values() if r.get("ok"))
    device = meta["device"]
    memory_how = (
        "`torch.cuda.max_memory_allocated()` after `reset_peak_memory_stats()` (live tensors), and the CPU-side "
        "resident set as on CPU"
        if device.startswith("cuda")
        else "the Linux resident-set high-water mark (`VmHWM`) of a fresh child process after "
        "the training steps, minus its resident set at start (the loaded libraries)"
    )
    return [
        "## Method",
        "",
        "- **Timing.** All cases of a block (methods, precisions, the eval forward) run once per round, in an "
        "order shuffled each round; each timed step comes right after an untimed step of the same case, as in a "
        "training loop (a step that follows a step of other shapes pays for fresh allocations and was measured "
        "up to 1.7x slower, which would bias whichever case follows a shape change). A case's time is its "
        "median over rounds; a "
        "ratio is the median of per-round ratios, so load that changes between rounds cancels. The machine this "
        "ran on was shared with other jobs: absolute seconds vary with the load recorded above, the paired ratios "
        "much less. Every block stops starting new rounds past a time budget (after its minimum rounds). On CUDA "
        "every step ends with `torch.cuda.synchronize()`.",
        f"- **Memory.** One fresh process per configuration, forked from a server that has only imported the "
        f"libraries; training memory is {memory_how}. It includes weights, gradients, optimizer state, "
        "activations and allocator overhead. The high-water mark is reset after the model is built "
        f"(`/proc/self/clear_refs`; reset {'worked' if reset else 'was NOT available: peaks include setup'}), "
        "so a one-off peak while loading (e.g. 8-bit quantisation) is reported apart as the setup peak. "
        f"{meta.get('memory_workers', 1)} children ran at a time (memory is per process, so this does not change "
        "it; their step times are informational only).",
        "- **8-bit.** The model is saved with `save_pretrained` and reloaded with "
        "`BitsAndBytesConfig(load_in_8bit=True)` and `prepare_model_for_kbit_training(use_gradient_checkpointing="
        "False)`; it is compared with the same saved model loaded in fp32.",
        "- **Methods.** Ours: `SoftPromptConfig(num_virtual_tokens=P)` (encoder-only prompt, P rows). PEFT: "
        "`PromptTuningConfig(num_virtual_tokens=P)` with its defaults (on T5 it allocates and saves 2P rows). "
        "LoRA: `LoraConfig(r=8, target_modules=q,v)`. Full fine-tuning: every weight trainable. All use AdamW and "
        "the same batch. The Llama batch appends the target to the input and masks the input's labels.",
        "- **Step / forward.** The eval forward runs the same prompt-tuned model on the same batch (same sequence "
        "length, labels included) under `torch.no_grad()` in eval mode. A prompt-tuning step is a forward plus a "
        "backward that needs input gradients only, about 2x a forward; dropout (training mode only), the loss's "
        "backward and the optimizer make up the rest.",
        "",
        f"The benchmark driver itself (all timing blocks in one process) peaked at "
        f"{meta.get('driver_peak_rss_mb') or 0:,.0f} MB resident; the run needs that much free memory.",
        "",
        f"Reproduce: `{meta['command'].strip()}` (add `--device cuda` on a GPU; `--quick` for a one-minute run).",
    ]
