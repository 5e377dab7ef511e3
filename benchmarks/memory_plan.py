"""Per-device memory of prompt tuning T5 1.1 (LM-adapted) Small..XXL under DDP, FSDP full shard, ZeRO-3.

    python -m benchmarks.memory_plan                     # writes benchmarks/results/memory_plan/memory_plan.json, prints tables
    python -m benchmarks.memory_plan --measure           # also the measured tiny-model points (2 CPU processes)

Shapes are the published T5 1.1 / LM-adapted configs (vocab 32128, d_kv 64, gated GELU, untied lm_head).
Lester et al. (2021) section 3: prompt length P = 100, batch 32 (global), inputs 512, targets 128.

The model (bytes per device; N devices; b = 32 / N examples per device; T_e = 512 + P; T_d = 128)
----------------------------------------------------------------------------------------------------
* Weights, `w` bytes each (bf16 2, fp32 4). DDP: all of them. FSDP FULL_SHARD: 1/N of them, plus what is
  gathered at once: the root unit (shared embedding + lm_head + final norms: FSDP1 keeps it gathered through
  forward and backward, since no T5 block holds it) and two T5 blocks (the running one and the prefetched
  one). ZeRO-3: 1/N, plus the largest single module and DeepSpeed's prefetch bucket (5e7 parameters).
* Frozen base: no gradients and no optimizer state for it. The prompt (P x d, fp32, replicated -- kept out of
  the shards): parameter + gradient + Adafactor factored second moment (P + d numbers) in fp32.
* Activations, `a` bytes each (bf16 2 under autocast, fp32 4), everything backward keeps, because the gradient
  must reach the prompt at the encoder's input through every layer. Counted per example:
    encoder layer:  T_e (4 d + 4 i + 4 f) + H T_e^2 (a + 4)/a          (i = H d_kv, f = d_ff)
    decoder layer:  T_d (6 d + 6 i + 4 f) + 2 T_e i + H (T_d^2 + T_d T_e) (a + 4)/a
    embeddings/out: (T_e + T_d) d  +  T_d V (a + 8)/a   (logits, their fp32 upcast and log-softmax for the loss)
  (layer norm inputs, q/k/v, attention output, residuals, the FFN's two input projections, GELU and product;
  the attention probabilities are saved once in fp32 -- HF T5 runs softmax in float -- and once in `a`).
  With activation checkpointing per T5 block (examples/accelerate/fsdp.yaml): the block inputs of every
  layer, plus one layer's full activations (recomputed in backward), plus the logits term.
  Assumptions: no dropout masks (dropout 0 or fused), no fused/flash attention (that drops the T^2 terms),
  no allocator fragmentation, no CUDA context (~0.5-1 GiB per device), no temporary buffers of the
  all-gathers beyond the gathered units counted above, no padding waste.
* DDP and FSDP split the batch the same way, so activations per device are the same; only weights differ.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "memory_plan" / "memory_plan.json"
GIB = 2**30
PROMPT_LENGTH = 100
BATCH = 32
INPUT_LENGTH = 512
TARGET_LENGTH = 128
DEVICES = (1, 2, 4, 8)
ZERO3_PREFETCH_PARAMS = 5e7  # DeepSpeed stage3_prefetch_bucket_size default
RELATIVE_BUCKETS = 32


@dataclass(frozen=True)
class Shape:
    name: str
    d_model: int
    d_ff: int
    num_layers: int  # per stack (encoder and decoder each)
    num_heads: int
    d_kv: int = 64
    vocab: int = 32128


# google/t5-v1_1-{small,base,large,xl,xxl} and t5-{...}-lm-adapt config.json
T5_SHAPES = [
    Shape("T5-Small", 512, 1024, 8, 6),
    Shape("T5-Base", 768, 2048, 12, 12),
    Shape("T5-Large", 1024, 2816, 24, 16),
    Shape("T5-XL", 2048, 5120, 24, 32),
    Shape("T5-XXL", 4096, 10240, 24, 64),
]


def parameter_counts(s: Shape) -> dict[str, int]:
    """Parameters of the T5 1.1 model: per encoder/decoder block, root unit (embeddings, lm_head, norms), total."""
    inner = s.num_heads * s.d_kv
    attention = 4 * s.d_model * inner
    ffn = 3 * s.d_model * s.d_ff  # gated GELU: wi_0, wi_1, wo
    encoder_block = attention + ffn + 2 * s.d_model
    decoder_block = 2 * attention + ffn + 3 * s.d_model
    root = 2 * s.vocab * s.d_model + 2 * s.d_model + 2 * RELATIVE_BUCKETS * s.num_heads
    total = s.num_layers * (encoder_block + decoder_block) + root
    return {"encoder_block": encoder_block, "decoder_block": decoder_block, "root": root, "total": total,
            "largest_module": max(s.vocab * s.d_model, s.d_model * s.d_ff)}


def activation_bytes_per_example(s: Shape, a: int, prompt: int, src: int, tgt: int, checkpointing: bool) -> float:
    """Bytes of activations backward keeps for one example (module docstring for the formula)."""
    te, td, d, f, h = src + prompt, tgt, s.d_model, s.d_ff, s.num_heads
    i = h * s.d_kv
    softmax = (a + 4) / a
    enc_layer = te * (4 * d + 4 * i + 4 * f) + h * te * te * softmax
    dec_layer = td * (6 * d + 6 * i + 4 * f) + 2 * te * i + h * (td * td + td * te) * softmax
    ends = (te + td) * d + td * s.vocab * (a + 8) / a
    if checkpointing:
        elements = s.num_layers * (te + td) * d + max(enc_layer, dec_layer) + ends
    else:
        elements = s.num_layers * (enc_layer + dec_layer) + ends
    return elements * a


def plan(s: Shape, strategy: str, n: int, weight_bytes: int, act_bytes: int, checkpointing: bool,
         prompt: int = PROMPT_LENGTH, batch: int = BATCH, src: int = INPUT_LENGTH, tgt: int = TARGET_LENGTH) -> dict:
    """Per-device bytes of one configuration, by part."""
    counts = parameter_counts(s)
    total = counts["total"] * weight_bytes
    if strategy == "ddp":
        weights = total
    elif strategy == "fsdp":
        gathered = counts["root"] + 2 * max(counts["encoder_block"], counts["decoder_block"])
        weights = total / n + gathered * weight_bytes * (n > 1)
    elif strategy == "zero3":
        gathered = counts["largest_module"] + ZERO3_PREFETCH_PARAMS
        weights = total / n + min(gathered, counts["total"]) * weight_bytes * (n > 1)
    else:
        raise ValueError(strategy)
    weights = min(weights, total) if strategy != "ddp" else weights
    prompt_state = (2 * prompt * s.d_model + prompt + s.d_model) * 4  # fp32 param, grad, factored moment
    per_device_batch = max(batch // n, 1)
    activations = per_device_batch * activation_bytes_per_example(s, act_bytes, prompt, src, tgt, checkpointing)
    return {"weights": weights, "prompt_and_optimizer": prompt_state, "activations": activations,
            "total": weights + prompt_state + activations, "per_device_batch": per_device_batch}


def full_plan() -> dict:
    rows = []
    for shape in T5_SHAPES:
        counts = parameter_counts(shape)
        for precision, (w, a) in {"bf16": (2, 2), "fp32": (4, 4)}.items():
            for checkpointing in (False, True):
                for strategy in ("ddp", "fsdp", "zero3"):
                    for n in DEVICES:
                        part = plan(shape, strategy, n, w, a, checkpointing)
                        rows.append({"model": shape.name, "params": counts["total"], "precision": precision,
                                     "activation_checkpointing": checkpointing, "strategy": strategy,
                                     "devices": n, **{k: (v / GIB if k != "per_device_batch" else v)
                                                      for k, v in part.items()}})
    return {"units": "GiB per device", "prompt_length": PROMPT_LENGTH, "global_batch": BATCH,
            "input_length": INPUT_LENGTH, "target_length": TARGET_LENGTH,
            "shapes": [asdict(s) for s in T5_SHAPES], "rows": rows}


def table(result: dict, precision: str, checkpointing: bool) -> str:
    lines = ["| model (params) | strategy | " + " | ".join(f"N={n}" for n in DEVICES) + " |",
             "|---|---|" + "---|" * len(DEVICES)]
    for shape in T5_SHAPES:
        for strategy in ("ddp", "fsdp", "zero3"):
            cells = [r for r in result["rows"] if r["model"] == shape.name and r["strategy"] == strategy
                     and r["precision"] == precision and r["activation_checkpointing"] == checkpointing]
            params = cells[0]["params"] / 1e9
            lines.append(f"| {shape.name} ({params:.2f}B) | {strategy} | "
                         + " | ".join(f"{c['total']:.1f} ({c['weights']:.1f} w)" for c in cells) + " |")
    return "\n".join(lines)


def measure(out_dir: Path, d_model: int = 512, num_layers: int = 4, d_ff: int = 2048) -> dict:
    """Single-process vs 2-process FSDP1 (CPU, gloo) RSS on a tiny-vocabulary model, next to the prediction."""
    script = ROOT / "tests" / "scripts" / "fsdp_train.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    common = ["--precision", "fp32", "--d_model", str(d_model), "--num_layers", str(num_layers),
              "--d_ff", str(d_ff), "--max_steps", "2"]
    runs = {}
    for name, mode, procs in (("single", "single", 1), ("fsdp1_2proc", "fsdp1-ignored", 2)):
        target = out_dir / name
        launcher = [sys.executable] if procs == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29655"]
        subprocess.run([*launcher, str(script), "--output_dir", str(target), "--mode", mode, *common],
                       check=True, env=env, cwd=ROOT, capture_output=True, timeout=400)
        facts = [json.loads((target / f"rank{r}.json").read_text(encoding="utf-8")) for r in range(procs)]
        runs[name] = facts
    from softprompt_ext.tiny_models import build_tokenizer

    shape = Shape("tiny", d_model, d_ff, num_layers, 2, d_kv=d_model // 2, vocab=len(build_tokenizer()))
    measured = []
    for name, strategy, n in (("single", "ddp", 1), ("fsdp1_2proc", "fsdp", 2)):
        predicted = plan(shape, strategy, n, 4, 4, False, prompt=4, batch=4, src=16, tgt=4)
        for fact in runs[name]:
            measured.append({
                "run": name, "rank": fact["rank"], "params": fact["params"],
                "local_param_mib": fact["local_param_mib"],
                "rss_kept_mib": fact["rss_end_mib"] - fact["rss_start_mib"],
                "peak_rss_mib": fact["peak_rss_mib"],
                "predicted_weights_mib": predicted["weights"] / 2**20,
                "predicted_resident_shards_mib": parameter_counts(shape)["total"] * 4 / n / 2**20,
                "predicted_total_mib": predicted["total"] / 2**20,
            })
    return {"shape": asdict(shape), "note": "rss_kept = VmRSS after training minus VmRSS before building the model; "
            "each rank builds the full model before FSDP shards it, so peak RSS is not reduced on CPU",
            "points": measured}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--measure", action="store_true", help="run the tiny single vs 2-process measurement")
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args(argv)
    result = full_plan()
    if args.measure:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            result["measured"] = measure(Path(tmp))
    from benchmarks.common import run_info, write_json

    result["meta"] = run_info("memory_plan", "memory_plan", argv if argv is not None else sys.argv[1:])
    write_json(args.output, result, indent=1)
    for precision, ckpt in (("bf16", True), ("fp32", False)):
        print(f"\n{precision} weights and activations, activation checkpointing {'on' if ckpt else 'off'}"
              " -- GiB per device: total (weights)")
        print(table(result, precision, ckpt))
    if "measured" in result:
        print(json.dumps(result["measured"]["points"], indent=1))


if __name__ == "__main__":
    main()
