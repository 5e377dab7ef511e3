"""Benchmark: the one label scorer (each input encoded once) against repeating every input C times.

Rank classification scores C candidate labels per input (Lester et al. 2021, sections 5-6). The old scorers
(`rank_classify`'s `_score_seq2seq` / `_score_causal`, `ensembles.score_labels`) turned B inputs x C
candidates into B*C full rows, so the T5 encoder, or a causal LM's whole (prompt +) context, ran C times per
input. `softprompt_ext.inference.scoring.score_label_ids` runs the encoder / context once per input and only the
labels per candidate. Both are measured side by side in one run:

* T5: the embedded LM-adapted T5 (`load_embedded("lm_adapt")`) with a P=20 SoftPromptConfig
  prompt (class-label init, as `examples/supersense.py`), B real dev inputs of WordNet supersense, C=8 labels
  (`SUPERSENSE_LABELS` + EOS, as `rank_classify` scores T5 targets).
* Decoder-only: a tiny random Llama (d_model 256, 4 layers, the embedded tokenizer's vocabulary)
  with two prompts (P=20 and P=10) alternating over the batch (a mixed-task batch), the same inputs without
  EOS and the same 8 labels without EOS.

"Old way" is a ~15-line reference below (`repeat_per_candidate`: every input repeated C times through
`mixed_batches.mixed_forward`, scores from the per-example loss), not the removed code. Repeats are
interleaved (old, new, old, new, ...) after one warm-up of each; reported: the median over repeats of the
per-repeat time ratio old/new (wall clock, and process CPU time, the steadier one on a shared machine), the
median times, and the largest absolute difference between the two ways' [B, C] scores. fp32 throughout (no
bf16 autocast: this CPU has no fast bf16). One torch thread by default (see `benchmarks/multi_prompt.py`).

    python -m benchmarks.scoring                 # B=32, 5 repeats per way and model
    python -m benchmarks.scoring --repeats 3 --batch 16
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

from benchmarks.common import RESULTS, run_info, write_json

IGNORE = -100


def repeat_per_candidate(model, ids, mask, names, label_ids, encoder_decoder: bool) -> torch.Tensor:
    """The old way: each input repeated C times, one `mixed_forward` over B*C full rows -> `[B, C]` scores."""
    from softprompt_ext.inference.mixed_batches import mixed_forward

    batch, num_labels, width = ids.shape[0], len(label_ids), max(map(len, label_ids))
    targets = torch.full((num_labels, width), IGNORE)  # [C, W]
    for c, label in enumerate(label_ids):
        targets[c, : len(label)] = torch.tensor(label)
    targets = targets.repeat(batch, 1)  # [B*C, W], row b*C + c
    rows_ids, rows_mask = (
        ids.repeat_interleave(num_labels, 0),
        mask.repeat_interleave(num_labels, 0),
    )  # [B*C, T]
    rows_names = [name for name in names for _ in range(num_labels)]
    if encoder_decoder:
        out = mixed_forward(model, rows_ids, rows_mask, rows_names, labels=targets)
    else:  # [input; label] rows, loss on the label tokens only
        out = mixed_forward(
            model,
            torch.cat([rows_ids, targets.clamp(min=0)], 1),
            torch.cat([rows_mask, (targets != IGNORE).long()], 1),
            rows_names,
            labels=torch.cat([torch.full_like(rows_ids, IGNORE), targets], 1),
        )
    return -(out.loss_per_example * out.num_label_tokens).view(batch, num_labels)


def build_t5(batch: int):
    from peft import get_peft_model

    from softprompt_ext import SoftPromptConfig
    from softprompt_ext.embedded import embedded_model_path, load_embedded
    from softprompt_ext.tasks.supersense import SUPERSENSE_LABELS, read_supersense

    base, tokenizer = load_embedded("lm_adapt")
    config = SoftPromptConfig(
        task_type="SEQ_2_SEQ_LM",
        num_virtual_tokens=20,
        prompt_tuning_init="CLASS_LABELS",
        class_labels=list(SUPERSENSE_LABELS),
        tokenizer_name_or_path=embedded_model_path("lm_adapt"),
        sample_vocab_size=1000,
        init_seed=0,
    )
    model = get_peft_model(base, config).eval()
    rows = read_supersense("dev")[:batch]
    enc = tokenizer(
        [r["text"] for r in rows], padding=True, truncation=True, max_length=64, return_tensors="pt"
    )
    eos = tokenizer.eos_token_id
    labels = [tokenizer(label, add_special_tokens=False)["input_ids"] + [eos] for label in SUPERSENSE_LABELS]
    info = {
        "model": "embedded lm_adapt T5",
        "prompt_lengths": [20],
        "adapters": ["default"],
    }
    return model, enc["input_ids"], enc["attention_mask"], ["default"] * batch, labels, info


def build_llama(batch: int):
    from peft import get_peft_model
    from transformers import AutoTokenizer

    from softprompt_ext import SoftPromptConfig
    from softprompt_ext.embedded import embedded_model_path
    from softprompt_ext.tasks.supersense import SUPERSENSE_LABELS, read_supersense
    from softprompt_ext.tiny_models import build_llama as make

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_path("lm_adapt"))
    base = make(len(tokenizer), d_model=256, num_layers=4, num_heads=4, seed=0)

    def prompt(length: int, seed: int) -> SoftPromptConfig:
        return SoftPromptConfig(
            task_type="CAUSAL_LM",
            num_virtual_tokens=length,
            prompt_tuning_init="RANDOM_UNIFORM",
            init_seed=seed,
        )

    model = get_peft_model(base, prompt(20, 0), adapter_name="p20")
    model.add_adapter("p10", prompt(10, 1))
    rows = read_supersense("dev")[:batch]
    enc = tokenizer(
        [r["text"] for r in rows],
        padding=True,
        truncation=True,
        max_length=64,
        return_tensors="pt",
        add_special_tokens=False,
    )  # no EOS: the old way would score the label after it
    labels = [tokenizer(label, add_special_tokens=False)["input_ids"] for label in SUPERSENSE_LABELS]
    names = ["p20" if b % 2 == 0 else "p10" for b in range(batch)]
    info = {
        "model": "tiny random Llama (d_model 256, 4 layers, 4 heads, vocabulary 4,096)",
        "prompt_lengths": [20, 10],
        "adapters": ["p20", "p10"],
    }
    return model.eval(), enc["input_ids"], enc["attention_mask"], names, labels, info


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def compare(name: str, built, repeats: int, encoder_decoder: bool) -> dict:
    from softprompt_ext.inference.scoring import score_label_ids

    model, ids, mask, names, labels, info = built

    def old():
        with torch.no_grad():
            return repeat_per_candidate(model, ids, mask, names, labels, encoder_decoder)

    def new():
        return score_label_ids(model, ids, mask, labels, names).scores

    reference, scores = old(), new()  # warm-up, and the two ways' scores
    wall = {"old": [], "new": []}
    cpu = {"old": [], "new": []}
    for _ in range(repeats):  # interleaved: old, new, old, new, ...
        for key, fn in (("old", old), ("new", new)):
            _, w, c = timed(fn)
            wall[key].append(w)
            cpu[key].append(c)
    return {
        "case": name,
        **info,
        "batch": int(ids.shape[0]),
        "candidates": len(labels),
        "input_tokens_max": int(ids.shape[1]),
        "label_tokens_max": max(map(len, labels)),
        "old_median_s": round(statistics.median(wall["old"]), 4),
        "new_median_s": round(statistics.median(wall["new"]), 4),
        "median_ratio": round(
            statistics.median(o / n for o, n in zip(wall["old"], wall["new"], strict=True)), 2
        ),
        "median_ratio_cpu": round(
            statistics.median(o / n for o, n in zip(cpu["old"], cpu["new"], strict=True)), 2
        ),
        "max_abs_score_diff": float((reference - scores).abs().max()),
        "wall_s": {k: [round(x, 4) for x in v] for k, v in wall.items()},
    }


def markdown_row(r: dict) -> str:
    return (
        f"| {r['case']} | {r['batch']} x {r['candidates']} | {r['old_median_s']:.3f} | {r['new_median_s']:.3f} | "
        f"{r['median_ratio']:.2f}x | {r['median_ratio_cpu']:.2f}x | {r['max_abs_score_diff']:.1e} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32, help="inputs per call (B)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of each way per model")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", default=os.path.join(RESULTS, "scoring", "scoring.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from benchmarks import machine

    machine.quiet_libraries()
    started, load_before = time.perf_counter(), machine.load_average()
    results = [
        compare("T5 (embedded, P=20)", build_t5(args.batch), args.repeats, encoder_decoder=True),
        compare("Llama (tiny, P=20/10 mixed)", build_llama(args.batch), args.repeats, encoder_decoder=False),
    ]
    info = run_info("label_scoring", "scoring", argv if argv is not None else sys.argv[1:], mode="cpu")
    info.update(
        load_average_before=load_before,
        load_average_after=machine.load_average(),
        cpu_pressure_avg60=machine.cpu_pressure(),
    )
    report = {
        "benchmark": "label_scoring",
        "machine": info,
        "dtype": "float32",
        "repeats": args.repeats,
        "statistic": "median over interleaved repeats of old/new time; max |old - new| over the [B, C] scores",
        "old": "every input repeated C times through inference.mixed_batches.mixed_forward (B*C full rows)",
        "new": "softprompt_ext.inference.scoring.score_label_ids (each input encoded once)",
        "results": results,
        "total_wall_s": round(time.perf_counter() - started, 1),
    }
    write_json(args.out, report)
    print("| case | B x C | old (s) | new (s) | speedup (wall) | speedup (CPU) | max abs score diff |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(markdown_row(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
