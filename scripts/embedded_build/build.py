"""Build the embedded tiny T5 (span corruption, then LM adaptation) and the WordNet supersense tasks, offline.

    python -m scripts.embedded_build [--pretrain_steps 3000] [--work_dir build/embedded]
    python -m scripts.embedded_build --corpus build/corpus --d_model 384 --plan      # size it first
    python -m scripts.embedded_build --corpus build/corpus --time_budget_s 3000      # one sitting ...
    python -m scripts.embedded_build --corpus build/corpus --resume                  # ... and the next

Lester et al. (2021) prompt-tune T5 1.1 checkpoints that were pretrained with span corruption and then
"LM-adapted" for 100K more steps of prefix LM (section 3.3; ~10% on top of ~1M). This script repeats that
recipe at CPU scale, every step seeded:

1. data: Debian's `wordnet-base` (installed with apt-get when /usr/share/wordnet is missing), WordNet 3.0
   licence. The splits of both supersense tasks (nouns, and the held-out verbs) are drawn first; the corpus leaves
   their dev/test synsets out. `--corpus DIR` adds the paragraphs of a `scripts/embedded_build/corpus.py` output
   (permissive licences; refused unless leak-filtered against both tasks' dev/test definitions and unless its
   manifest's sha256 matches corpus.txt); every source and its
   licence goes into the build record and the model card. `--without_wordnet` trains on the corpus alone and
   writes no task (tests, corpus experiments).
2. tokenizer: SentencePiece-style Unigram (`tokenizers`) on the pretraining lines (`--tokenizer_lines N`:
   N evenly spaced ones), T5 id layout (0 pad, 1 EOS, 2 unk, 100 sentinels `<extra_id_i>` last).
3. pretraining: a T5 1.1-shaped model (GeGLU, relative attention, dropout 0 as in T5 1.1 pretraining; size
   from `--d_model --d_ff --num_layers --num_heads --d_kv`, see `plan.py`: `--plan` prints parameters,
   checkpoint sizes and tokens per step, and a shape whose two shipped fp16 checkpoints exceed 60 MB is refused
   without `--allow_large`) on span corruption (`softprompt_ext.training.lm_objectives`, T5's noise 0.15, spans
   of 3), `--precision` through `softprompt_ext.precision` (default auto: bf16 autocast where the device has
   bf16 units, else fp32; the shipped build ran fp32) on `--device` (auto: CUDA when available), `--optimizer`
   (adafactor: T5's, each update relative to the parameter's RMS, peak 1e-2; adamw: the v2 build's, 5e-4) with
   warm-up and cosine decay, a fixed step budget; documents get fresh noise each epoch. Transformers 5.x's T5
   class always ties input and output embeddings, so the model follows T5 1.0's tied convention (unit-scale
   table, decoder output scaled by d_model^-0.5) rather than T5 1.1's untied head; see `build_model`.
4. LM adaptation: `softprompt_ext.training.lm_adapt.lm_adapt` (the library's tool: Trainer + T5's
   parameter-scaled Adafactor, 1e-3 constant)
   on the same lines for 10% of the pretraining steps.
5. export: fp16 safetensors, config, tokenizer and a model card into `--export_dir` (default
   `softprompt_ext/data/embedded/`); the build record (steps, tokens, loss curves, wall times, sources, run
   segments) goes next to them as `build_record.json`.

Health: `--watch_every N` records the encoder's per-layer norm and effective rank every N pretraining steps,
and `--min_rank R` ends the sitting (exit status 3, state saved) when a layer falls below R; after the export,
the encoder-use diagnostics of both checkpoints go into the record and the model cards (`--no_health` skips).

Sittings (`sittings.py`): the training state is saved atomically into `--work_dir` every `--save_every`
steps and when a sitting ends -- SIGINT/SIGTERM, `--sitting_steps N` steps, or `--time_budget_s` seconds of
wall time -- and `--resume` continues pretraining, or LM adaptation (from the Trainer's checkpoint-N), exactly
where it stopped: N steps straight and N/2 + resume give the same weights (tests/test_build_embedded.py). Each
sitting's segments (steps, wall time, CPU, torch, device, precision) are listed in the build record.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time

import torch

from softprompt_ext.adapters.atomic import atomic_write_text
from softprompt_ext.embedded import CHECKPOINTS
from softprompt_ext.precision import PRECISIONS, autocast, resolve_precision

from . import card_text as model_card_text
from . import plan as build_plan
from . import sittings
from .data import NUM_SENTINELS, data_label, load_or_train_tokenizer, pretraining_lines, write_licence
from .sittings import Build, precision_label

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EMBEDDED = os.path.join(REPO, "softprompt_ext", "data", "embedded")
MODEL_SHAPE = build_plan.MODEL_SHAPE
# what decides the weights: a --resume with any of these changed is refused (build_sittings.check_fingerprint)
FINGERPRINT_FLAGS = ("seed", "pretrain_steps", "adapt_fraction", "batch_size", "input_length", "target_length",
                     "vocab_size", "lr", "tokenizer_lines", "optimizer")
# peak learning rate per --optimizer when --lr is left out (see make_optimizer)
DEFAULT_LR = {"adamw": 5e-4, "adafactor": 1e-2}


def build_model(shape: dict[str, int], vocab_rows: int, seed: int):
    """A T5 1.1-shaped model with T5 1.0's tied-embedding convention (table N(0, 1), outputs x d_model^-0.5).

    Transformers 5 always ties T5's output layer to the input table, so T5 1.1's untied head is not
    available. An earlier build drew the tied table from N(0, d_model^-0.5) to get unit-scale logits without
    output scaling: token embeddings then had norm ~1 against a residual stream that grew to norm ~8,500 with
    effective rank 1.4 after 3,000 steps, leaving token identity below bf16 resolution in the encoder (a
    linear probe on its outputs scored 0.27 on the supersense dev set, input embeddings alone 0.49) and an
    LM-adapted decoder that ignored its input. Mesh TensorFlow's tied T5 keeps the table at unit scale and
    scales the decoder output by d_model^-0.5 instead (Transformers: `tie_word_embeddings=True`).
    """
    from transformers import T5ForConditionalGeneration

    torch.manual_seed(seed)
    # shared table drawn from N(0, initializer_factor = 1); built on the CPU, so every device starts alike
    return T5ForConditionalGeneration(build_plan.t5_config(shape, vocab_rows))


OPTIMIZER_LABELS = {"adamw": "AdamW (betas 0.9, 0.98; weight decay 0.01; gradient norm clipped at 1)",
                    "adafactor": "Adafactor (T5's: update scaled by parameter RMS, no momentum, update clipping 1)"}


def make_optimizer(model, name: str, lr: float) -> torch.optim.Optimizer:
    """`--optimizer`: the pretraining optimizer at peak learning rate `lr` (the schedule multiplies it).

    adafactor (T5's pretraining optimizer, Raffel et al. 2020 section 3.1.2): Mesh TensorFlow's defaults,
    `multiply_by_parameter_scale=True`, so each update is relative to the parameter's RMS. The tied table is
    drawn at unit scale while the layer matrices sit at ~d_model^-0.5, so one global step size suits both
    only when it is relative. adamw (the first builds): its per-entry step is absolute, so the unit-scale table,
    which is also the output layer, moves ~sqrt(d_model) times slower, relative to its size, than the layers do
    (measured in tests/test_build_embedded.py). The Adafactor settings are `lm_adapt.T5_ADAFACTOR_KWARGS`, the
    ones LM adaptation uses.
    """
    if name == "adafactor":
        from transformers.optimization import Adafactor

        from softprompt_ext.training.lm_adapt import T5_ADAFACTOR_KWARGS

        return Adafactor(model.parameters(), lr=lr, weight_decay=0.0, **T5_ADAFACTOR_KWARGS)
    return torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)


def span_examples(objective, lines: list[str], epoch: int, seed: int) -> list[dict[str, list[int]]]:
    """All span-corruption examples of one epoch (noise drawn per (epoch, line)), shuffled."""
    objective.seed = seed * 1000 + epoch
    rows = [ex for index, text in enumerate(lines) for ex in objective.examples(text, index)]
    random.Random(f"{seed}:{epoch}").shuffle(rows)
    return rows


def line_token_ids(objective, lines: list[str], batch: int = 4096) -> list[list[int]]:
    """Every line's token ids as the objective reads text (no special tokens, none taken from the text)."""
    out: list[list[int]] = []
    for start in range(0, len(lines), batch):
        encoded = objective.tokenizer(lines[start : start + batch], add_special_tokens=False)["input_ids"]
        out += [[i for i in ids if i not in objective.drop] for ids in encoded]
    return out


def packed_span_examples(objective, line_ids: list[list[int]], epoch: int, seed: int) -> list[dict[str, list[int]]]:
    """`--pack`: T5's packing. Every line's tokens, in a fresh order each epoch, are concatenated and cut into
    chunks of the objective's chunk length, so every example fills `input_length` instead of holding one short
    gloss or paragraph (the unpacked examples of the corpus build averaged ~1,760 real tokens per batch of 32 x
    (128 + 32)). A line may straddle two chunks; lines are not separated (T5 concatenates documents the same
    way). Noise is drawn per (seed, epoch, chunk), so an epoch's examples are a pure function of those."""
    from softprompt_ext.training.lm_objectives import (
        MIN_CHUNK_TOKENS,
        apply_span_corruption,
        random_spans_noise_mask,
    )

    order = list(range(len(line_ids)))
    random.Random(f"pack:{seed}:{epoch}").shuffle(order)
    stream = [token for i in order for token in line_ids[i]]
    rows = []
    for index, start in enumerate(range(0, len(stream), objective.chunk_length)):
        chunk = stream[start : start + objective.chunk_length]
        if len(chunk) < MIN_CHUNK_TOKENS:  # the stream's last few tokens
            continue
        rng = random.Random(f"{seed * 1000 + epoch}:{index}")
        mask = random_spans_noise_mask(len(chunk), objective.noise_density, objective.mean_noise_span_length, rng)
        rows.append(apply_span_corruption(chunk, mask, sentinel_ids=objective.sentinels,
                                          eos_token_id=objective.eos_token_id))
    random.Random(f"{seed}:{epoch}").shuffle(rows)
    return rows


def pretrain(model, tokenizer, lines: list[str], args, device: str, sitting: sittings.Sitting,
             resumed: dict | None = None, save=None) -> dict | None:
    """Span-corruption pretraining in `args.precision` on `device`; the record, or None if the sitting stopped.

    `resumed`: a `pretrain_state.pt` payload to continue from; `save(payload)` stores one (every
    `args.save_every` steps and when the sitting stops). Without `save` (--verify_steps) nothing is stored.
    """
    from softprompt_ext.training.lm_objectives import LMObjective, Seq2SeqCollator

    objective = LMObjective(tokenizer, objective="span_corruption", input_length=args.input_length,
                            target_length=args.target_length, seed=args.seed)
    collate = Seq2SeqCollator(tokenizer.pad_token_id)
    line_ids = line_token_ids(objective, lines) if getattr(args, "pack", False) else None

    def epoch_rows(epoch: int) -> list[dict[str, list[int]]]:
        if line_ids is not None:
            return packed_span_examples(objective, line_ids, epoch, args.seed)
        return span_examples(objective, lines, epoch, args.seed)

    optimizer = make_optimizer(model, args.optimizer, args.lr)
    warmup = max(1, args.pretrain_steps // 20)

    def lr_at(step: int) -> float:  # linear warm-up, cosine decay to 10%
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, args.pretrain_steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    # the data position: span examples are a pure function of (seed, epoch, line), so this restores the order
    at = {"step": 0, "epoch": 0, "position": 0, "tokens": 0, "curve": [], "window": [], "wall_seconds": 0.0}
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        sittings.set_rng_state(resumed["rng"])
        at = resumed["progress"]
        print(f"resuming pretraining after step {at['step']}", flush=True)
    cuda = device == "cuda"
    model.train()
    rows = epoch_rows(at["epoch"])
    start, spent = time.time(), at["wall_seconds"]
    last = min(args.pretrain_steps, getattr(args, "verify_steps", 0) or args.pretrain_steps)

    def payload() -> dict:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": sittings.rng_state(), "progress": at}

    for step in range(at["step"] + 1, last + 1):
        if at["position"] + args.batch_size > len(rows):
            at["epoch"], at["position"] = at["epoch"] + 1, 0
            rows = epoch_rows(at["epoch"])
        batch = collate(rows[at["position"] : at["position"] + args.batch_size])
        at["position"] += args.batch_size
        at["tokens"] += int(batch["attention_mask"].sum()) + int((batch["labels"] != -100).sum())
        if cuda:  # pinned host memory lets the copy overlap; on the CPU both would only cost time
            batch = {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}
        with autocast(device, args.precision):
            loss = model(**batch).loss
        loss.backward()
        if args.optimizer == "adamw":  # Adafactor clips its own update instead (T5 clips no gradient)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        at["window"].append(loss.item())
        at["step"], at["wall_seconds"] = step, spent + time.time() - start
        if step % args.log_every == 0 or step == 1:
            at["curve"].append({"step": step, "loss": sum(at["window"]) / len(at["window"]), "tokens": at["tokens"],
                                "seconds": round(at["wall_seconds"], 1)})
            at["window"] = []
            print(f"pretrain step {step}/{args.pretrain_steps} loss {at['curve'][-1]['loss']:.3f} "
                  f"tokens {at['tokens']} {at['curve'][-1]['seconds']}s", flush=True)
        if args.watch_every and step % args.watch_every == 0:
            watch_encoder(model, tokenizer, at, step, args.min_rank, sitting)
        stop = sitting.step_done() is not None and step < last  # counted on the last step too (--sitting_steps)
        if save is not None and (stop or (args.save_every and step % args.save_every == 0 and step < last)):
            save(payload())
        if stop:
            return None
    model.eval()
    return {"objective": "span_corruption", "packed": bool(getattr(args, "pack", False)),
            "steps": args.pretrain_steps, "batch_size": args.batch_size,
            "input_length": args.input_length, "target_length": args.target_length, "tokens_seen": at["tokens"],
            "epochs_started": at["epoch"] + 1, "examples_per_epoch": len(rows),
            "optimizer": OPTIMIZER_LABELS[args.optimizer],
            "learning_rate": args.lr, "schedule": "linear warm-up 5%, cosine to 10%",
            "precision": precision_label(args.precision, device), "wall_seconds": round(at["wall_seconds"], 1),
            "loss_curve": at["curve"], "encoder_watch": at.get("watch", [])}


@functools.lru_cache(maxsize=1)
def _watch_texts() -> list[str]:
    """The 64 noun-task dev glosses the watch encodes (read once per process, not at every watch)."""
    from softprompt_ext.tasks.supersense import read_supersense

    return [row["text"] for row in read_supersense("dev")[:64]]


def watch_encoder(model, tokenizer, at: dict, step: int, min_rank: float, sitting: sittings.Sitting) -> None:
    """`--watch_every`: the encoder's residual stream (`benchmarks/encoder_use.py`: mean token norm and effective
    rank after each layer) on 64 noun-task dev glosses, held out of pretraining, appended to the loss curve's
    record. With `--min_rank R`, a layer whose effective rank falls below R ends the sitting (state saved, exit
    status 3): the first v3 build's encoder collapsed to rank 3.5-8.7 unnoticed until its export, two hours in
    (benchmarks/results/embedded_v3_attempt1/). Reads no random numbers and changes no weight."""
    from benchmarks import encoder_use  # run from the repository root (python -m scripts.embedded_build)

    texts = _watch_texts()
    model.eval()
    stream = encoder_use.residual_stream(model, tokenizer, texts)  # [embeddings, layer 1, ..., final norm]
    model.train()
    layers = stream[1:]
    point = {"step": step, "min_rank": min(layer["effective_rank"] for layer in layers),
             "max_norm_ratio": round(max(layer["norm"] for layer in layers) / stream[0]["norm"], 1),
             "stream": stream}
    at.setdefault("watch", []).append(point)
    print(f"encoder watch at step {step}: lowest effective rank {point['min_rank']}, largest norm "
          f"{point['max_norm_ratio']}x the embeddings'", flush=True)
    if min_rank and point["min_rank"] < min_rank:
        sitting.unhealthy = (f"step {step}: an encoder layer's effective rank is {point['min_rank']}, below "
                             f"--min_rank {min_rank}")
        print(f"health: {sitting.unhealthy}; the state is saved. Rebuild with other settings (a lower --lr), or "
              "--resume with --min_rank 0 to train on regardless.", flush=True)


def export(src: str, dst: str, tokenizer_dir: str) -> None:
    """fp16 safetensors + config + tokenizer files from a saved fp32 checkpoint (the card comes after health)."""
    from transformers import T5ForConditionalGeneration

    model = T5ForConditionalGeneration.from_pretrained(src, dtype=torch.float32)
    shutil.rmtree(dst, ignore_errors=True)
    model.to(torch.float16).save_pretrained(dst, safe_serialization=True)
    for name in os.listdir(tokenizer_dir):
        shutil.copy(os.path.join(tokenizer_dir, name), dst)


def health(export_dir: str) -> dict:
    """Health first: `benchmarks/encoder_use.py` on both exported checkpoints -- the loss with each
    example's own vs a neighbour's input (does the decoder read its encoder?), the encoder's residual stream
    (norms, effective rank) and a linear probe of the bundled task on the frozen encoder. A soft prompt acts
    only through the encoder (Lester et al. 2021, section 2), so a model that fails these cannot be prompt-tuned."""
    from benchmarks import encoder_use  # run from the repository root (python -m scripts.embedded_build)

    threads = torch.get_num_threads()
    try:
        return {kind: encoder_use.main(kind, os.path.join(export_dir, folder))
                for kind, folder in CHECKPOINTS.items()}
    finally:
        torch.set_num_threads(threads)


def health_line(report: dict) -> str:
    """One line per checkpoint: own vs shuffled input loss, final effective rank, probe accuracy."""
    parts = []
    for kind, r in report.items():
        rank = r["residual_stream"][-1]["effective_rank"] if r.get("residual_stream") else float("nan")
        parts.append(f"{kind}: loss own {r['own_input_loss']:.3f} vs shuffled {r['shuffled_input_loss']:.3f}, "
                     f"encoder rank {rank:.1f}, probe dev {r['linear_probe']['dev_accuracy']:.3f}")
    return "health: " + "; ".join(parts)


def check_same_text(data: dict, record_path: str = os.path.join(EMBEDDED, "build_record.json")) -> None:
    """--verify_steps reproduces the shipped build only from the same pretraining text: refuse other text first
    (the lines' sha256 where the record has it, else their count and length) instead of reporting a mismatch."""
    with open(record_path, encoding="utf-8") as handle:
        shipped = json.load(handle)["data"]
    keys = ["lines_sha256"] if "lines_sha256" in shipped else ["corpus_lines", "corpus_chars"]
    differ = {k: (shipped.get(k), data.get(k)) for k in keys if shipped.get(k) != data.get(k)}
    if differ:
        said = ", ".join(f"{k} {old} shipped vs {new} now" for k, (old, new) in differ.items())
        raise ValueError(f"--verify_steps: the shipped model was pretrained on other text ({said}); pass the flags "
                         "of its build_record.json 'command' (--corpus, --tokenizer_lines, ...) on the same WordNet, "
                         "or rebuild the model with this script.")


def verify(curve: list[dict], steps: int, tolerance: float = 0.02) -> int:
    """Compare a rerun's loss curve with the shipped record's at the same steps; 0 if all within `tolerance`."""
    with open(os.path.join(EMBEDDED, "build_record.json"), encoding="utf-8") as handle:
        shipped = {p["step"]: p["loss"] for p in json.load(handle)["pretraining"]["loss_curve"] if p["step"] <= steps}
    pairs = [(p["step"], p["loss"], shipped[p["step"]]) for p in curve if p["step"] in shipped]
    if not pairs:
        print(f"no logged step <= {steps} to compare; use a multiple of --log_every", flush=True)
        return 1
    worst = max(abs(new - old) / old for _, new, old in pairs)
    for step, new, old in pairs:
        print(f"step {step}: loss {new:.4f} (shipped {old:.4f})")
    print(f"largest relative difference {worst:.2%} (tolerance {tolerance:.0%}):",
          "reproduced" if worst <= tolerance else "NOT reproduced", flush=True)
    return 0 if worst <= tolerance else 1


# ---------------------------------------------------------------------------------------------- the build
def resolve_device(choice: str) -> str:
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but torch.cuda.is_available() is False here; pass --device auto (CUDA "
                         "when available) or --device cpu, or install a CUDA build of torch.")
    return choice


def validate(args) -> None:
    """User errors: ValueError naming the flag, the value and the fix."""
    if args.vocab_size <= NUM_SENTINELS + 3:
        raise ValueError(f"--vocab_size={args.vocab_size}: it counts 3 special tokens and {NUM_SENTINELS} "
                         f"sentinels too, so it must be > {NUM_SENTINELS + 3} (default 8192).")
    if args.without_wordnet and not args.corpus:
        raise ValueError("--without_wordnet leaves no text to train on; pass --corpus DIR (a corpus.py output).")
    for name in ("pretrain_steps", "batch_size", "log_every"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name}={getattr(args, name)}: must be >= 1.")
    for name in ("sitting_steps", "tokenizer_lines"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name}={getattr(args, name)}: must be >= 1 (leave it out for no limit).")
    if args.save_every < 0 or (args.time_budget_s is not None and args.time_budget_s < 0):
        raise ValueError(f"--save_every={args.save_every} and --time_budget_s={args.time_budget_s} must be >= 0.")
    if args.watch_every < 0 or args.min_rank < 0:
        raise ValueError(f"--watch_every={args.watch_every} and --min_rank={args.min_rank} must be >= 0 (0: off).")
    if args.min_rank and not args.watch_every:
        raise ValueError(f"--min_rank={args.min_rank} needs --watch_every N > 0: the rank is checked only when the "
                         "encoder is watched.")
    if args.resume and args.verify_steps:
        raise ValueError("--resume with --verify_steps: a verification reruns the first steps from scratch and "
                         "saves nothing; drop one of them.")


def lm_adaptation(build: Build, span_dir: str, corpus: str) -> dict | None:
    """LM adaptation with the library's Trainer tool, resumed from its last complete checkpoint-N if any."""
    from softprompt_ext.adapters.atomic import last_complete_checkpoint
    from softprompt_ext.training.lm_adapt import lm_adapt

    args, device = build.args, build.device
    adapt_steps = max(1, round(args.pretrain_steps * args.adapt_fraction))
    adapt_dir = os.path.join(args.work_dir, "lm_adapt")
    resume = last_complete_checkpoint(adapt_dir) if os.path.isdir(adapt_dir) else None
    build.begin("lm_adaptation", int(resume.rsplit("-", 1)[1]) if resume else 0)
    saving = ({"save_strategy": "steps", "save_steps": args.save_every, "save_total_limit": 2} if args.save_every
              else {"save_strategy": "no"})  # a stop still saves checkpoint-N (sittings.stop_callback)
    result = lm_adapt(
        span_dir, adapt_dir, train_files=[corpus], objective="prefix_lm", input_length=args.input_length,
        target_length=args.target_length, max_steps=adapt_steps, per_device_train_batch_size=args.batch_size,
        bf16=resolve_precision(args.precision, device) == "bf16", use_cpu=device == "cpu", seed=args.seed,
        logging_steps=max(1, args.log_every // 2), report_to="none", dataloader_num_workers=0,
        dataloader_pin_memory=device == "cuda", include_num_input_tokens_seen="all", resume_from_checkpoint=resume,
        callbacks=[sittings.stop_callback(build.sitting)], **saving,
    )
    build.save(result.global_step, finished=result.global_step >= adapt_steps)
    if result.global_step < adapt_steps:
        return None
    return {
        "objective": "prefix_lm", "steps": result.global_step, "batch_size": args.batch_size,
        "optimizer": "Adafactor (T5's, updates scaled by parameter RMS), constant 1e-3", "precision": precision_label(args.precision, device),
        "wall_seconds": build.phase_wall("lm_adaptation"), "training_loss": result.training_loss,
        "loss_curve": [{"step": h["step"], "loss": h["loss"], "tokens": h.get("num_input_tokens_seen")}
                       for h in result.log_history if "loss" in h],
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work_dir", default=os.path.join(REPO, "build", "embedded"))
    parser.add_argument("--export_dir", default=EMBEDDED, help="where the checkpoints and build_record.json go")
    parser.add_argument("--corpus", help="a scripts/embedded_build/corpus.py output directory (corpus.txt + manifest.json) "
                        "whose paragraphs join the WordNet glosses")
    parser.add_argument("--without_wordnet", action="store_true",
                        help="train on --corpus alone; writes no task and no WordNet licence")
    parser.add_argument("--pretrain_steps", type=int, default=2000)
    parser.add_argument("--adapt_fraction", type=float, default=0.1)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--input_length", type=int, default=128)
    parser.add_argument("--target_length", type=int, default=32)
    parser.add_argument("--vocab_size", type=int, default=8192)
    parser.add_argument("--tokenizer_lines", type=int, help="train the tokenizer on N evenly spaced lines only")
    build_plan.add_shape_flags(parser)
    parser.add_argument("--plan", action="store_true",
                        help="print parameters, fp16/int8 checkpoint sizes and tokens per step, then exit")
    parser.add_argument("--allow_large", action="store_true",
                        help=f"build a shape whose two shipped checkpoints exceed {build_plan.SHIPPED_CAP_BYTES // 10**6} MB")
    # AdamW peak lr: 2e-3 (the first build) grew a residual-stream outlier direction by step 500 (norm ~1,300,
    # effective rank 2, encoder unused); 5e-4 kept norm ~40 and rank ~100 at the same step (measured). Adafactor:
    # T5's 1e-2 (the shipped v3: lowest encoder layer rank 21.1 and norm <= 3.9x the embeddings' at step 2,000).
    parser.add_argument("--optimizer", choices=sorted(DEFAULT_LR), default="adafactor",
                        help="pretraining optimizer: adafactor (default) is T5's, each update relative to the "
                        "parameter's scale; adamw is the v2 build's")
    parser.add_argument("--lr", type=float, help="peak learning rate (default: 5e-4 with adamw, 1e-2 with "
                        "adafactor, T5's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log_every", type=int, default=50)
    parser.add_argument("--save_every", type=int, default=500,
                        help="save the training state into --work_dir every N steps (0: only when a sitting ends)")
    parser.add_argument("--resume", action="store_true", help="continue the build in --work_dir where it stopped")
    parser.add_argument("--sitting_steps", type=int, help="end this sitting after N training steps (state saved)")
    parser.add_argument("--time_budget_s", type=float,
                        help="end this sitting once N seconds of wall time are spent (state saved)")
    parser.add_argument("--verify_steps", type=int, default=0,
                        help="only rerun the first N pretraining steps (same schedule) and compare the loss curve "
                        "with the shipped build_record.json; writes nothing to the package")
    parser.add_argument("--pack", action="store_true",
                        help="pretraining: concatenate the lines and cut them into full-length examples (T5's "
                        "packing) instead of one example per line")
    parser.add_argument("--watch_every", type=int, default=250,
                        help="every N pretraining steps, record the encoder's residual-stream norm and effective "
                        "rank per layer (0: never); the record's pretraining.encoder_watch")
    parser.add_argument("--min_rank", type=float, default=0.0,
                        help="with --watch_every: end the sitting (state saved, exit status 3) when an encoder "
                        "layer's effective rank falls below this (tests/test_embedded.py pins >= 10; 0: never)")
    parser.add_argument("--no_health", action="store_true",
                        help="skip the encoder-use diagnostics of the exported checkpoints (benchmarks/encoder_use.py)")
    # one thread: on 2 shared cores two threads ran ~3x slower per step than one (contention), measured
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: CUDA when torch sees a GPU, else the CPU")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto: bf16 autocast only where the device has bf16 units (softprompt_ext.precision); "
                        "the shipped build ran fp32 (its record names the precision); --verify_steps compares best in the same one")
    args = parser.parse_args(argv)
    if args.lr is None:
        args.lr = DEFAULT_LR[args.optimizer]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    validate(args)
    shape = build_plan.shape_from_args(args)
    device = resolve_device(args.device)
    adapt_steps = max(1, round(args.pretrain_steps * args.adapt_fraction))
    sized = build_plan.plan(shape, build_plan.embedding_rows(args.vocab_size), args.batch_size, args.input_length,
                            args.target_length)
    if args.plan:
        print(build_plan.format_plan(sized, args.pretrain_steps, adapt_steps), flush=True)
    build_plan.check_size(sized, args.allow_large)
    if args.plan:
        return 0
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    os.makedirs(args.work_dir, exist_ok=True)
    command = "python -m scripts.embedded_build " + " ".join(sys.argv[1:] if argv is None else argv)
    record: dict = {"command": command, "torch": torch.__version__, "model_shape": shape}
    with sittings.Sitting(args.time_budget_s, args.sitting_steps) as sitting:
        build = Build(args, device, sitting, command)
        return run(build, record, shape)


def run(build: Build, record: dict, shape: dict[str, int]) -> int:
    args, device, state = build.args, build.device, build.state
    lines = pretraining_lines(args, record)
    text = "".join(line + "\n" for line in lines)
    fingerprint = {**{k: getattr(args, k) for k in FINGERPRINT_FLAGS}, "model_shape": shape,
                   "lines_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}
    if args.pack:  # only when set: builds started before --pack existed keep their fingerprint
        fingerprint["pack"] = True
    record["data"]["lines_sha256"] = fingerprint["lines_sha256"]
    if args.verify_steps:
        check_same_text(record["data"])
    if args.resume:  # before the tokenizer: other lines would retrain it over the one this build uses
        sittings.check_fingerprint(state["fingerprint"], fingerprint, args.work_dir)
        if state["phase"] == "done":
            print(f"the build in {args.work_dir} is done; its record is in {args.export_dir}", flush=True)
            return 0
    state["fingerprint"] = fingerprint
    corpus = os.path.join(args.work_dir, "corpus.txt")  # LM adaptation reads the same lines from here
    atomic_write_text(corpus, text)
    if args.verify_steps:  # the shipped tokenizer: tokenizers' Unigram trainer is not bit-identical run to run
        from transformers import AutoTokenizer

        tokenizer_dir = os.path.join(EMBEDDED, CHECKPOINTS["span"])
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        record["tokenizer"] = {"embedding_rows": build_plan.embedding_rows(len(tokenizer))}
    else:
        tokenizer, tokenizer_dir = load_or_train_tokenizer(lines, args, record)
    model = build_model(shape, record["tokenizer"]["embedding_rows"], args.seed)
    record["parameters"] = sum(p.numel() for p in model.parameters())
    span_dir = os.path.join(args.work_dir, "span")

    if state["phase"] == "pretraining":
        state_file = os.path.join(args.work_dir, sittings.PRETRAIN_STATE)
        resumed = sittings.load_training_state(args.work_dir) if args.resume and os.path.isfile(state_file) else None
        build.begin("pretraining", resumed["progress"]["step"] if resumed else 0)
        build.save()
        pretraining = pretrain(model.to(device), tokenizer, lines, args, device, build.sitting, resumed,
                               None if args.verify_steps else build.save_pretraining)
        if pretraining is None:
            return build.stopped("pretraining", args.pretrain_steps)
        if args.verify_steps:
            return verify(pretraining["loss_curve"], args.verify_steps)
        model.config.pretraining = {k: v for k, v in pretraining.items() if k != "loss_curve"}
        model.config.pretraining["data"] = data_label(record)
        model.save_pretrained(span_dir)
        tokenizer.save_pretrained(span_dir)
        state.update(phase="lm_adaptation", pretraining=pretraining)
        build.save(args.pretrain_steps, finished=True)
        if os.path.isfile(state_file):  # the span checkpoint holds what is left to keep
            os.remove(state_file)
        shutil.rmtree(os.path.join(args.work_dir, "lm_adapt"), ignore_errors=True)
        if build.sitting.should_stop():
            return build.stopped("pretraining", args.pretrain_steps)

    if state["phase"] == "lm_adaptation":
        adaptation = lm_adaptation(build, span_dir, corpus)
        if adaptation is None:
            return build.stopped("lm_adaptation", max(1, round(args.pretrain_steps * args.adapt_fraction)))
        state.update(phase="export", lm_adaptation=adaptation)
        build.save()
    record.update(pretraining=state["pretraining"], lm_adaptation=state["lm_adaptation"], segments=state["segments"],
                  total_wall_seconds=state["wall_seconds"])

    export(os.path.join(args.work_dir, "lm_adapt"), os.path.join(args.export_dir, CHECKPOINTS["lm_adapt"]),
           tokenizer_dir)
    export(span_dir, os.path.join(args.export_dir, CHECKPOINTS["span"]), tokenizer_dir)
    if not args.without_wordnet:
        write_licence(args.export_dir)
    if not args.no_health:
        record["health"] = health(args.export_dir)
        print(health_line(record["health"]), flush=True)
    atomic_write_text(os.path.join(args.export_dir, "build_record.json"), json.dumps(record, indent=1))
    model_card_text.write_cards(args.export_dir)  # both cards, from the record just written (health included)
    state["phase"] = "done"
    build.save()
    print(f"done in {record['total_wall_seconds']} s", flush=True)
    return 0


