"""Build the embedded tiny T5 (span corruption, then LM adaptation) and the WordNet supersense task, offline.

    python scripts/build_embedded_model.py [--pretrain_steps 3000] [--work_dir build/embedded]

Lester et al. (2021) prompt-tune T5 1.1 checkpoints that were pretrained with span corruption and then
"LM-adapted" for 100K more steps of prefix LM (section 3.3; ~10% on top of ~1M). This script repeats that
recipe at CPU scale, every step seeded:

1. data: Debian's `wordnet-base` (installed with apt-get when /usr/share/wordnet is missing), WordNet 3.0
   licence. The supersense splits are drawn first; the corpus leaves their dev/test synsets out.
2. tokenizer: SentencePiece-style Unigram (`tokenizers`) on the corpus, T5 id layout (0 pad, 1 EOS, 2 unk,
   100 sentinels `<extra_id_i>` last).
3. pretraining: a T5 1.1-shaped model (GeGLU, relative attention, dropout 0 as in T5 1.1 pretraining) on
   span corruption (`softprompt_ext.training.lm_objectives`, T5's noise 0.15, spans of 3), `--precision` (default
   auto: bf16 autocast where the CPU/GPU has bf16 units, else fp32; the shipped build ran bf16), AdamW with
   warm-up and cosine decay, a fixed step budget; documents get fresh noise each epoch. Transformers 5.x's T5
   class always ties input and output embeddings, so the model follows T5 1.0's tied convention (unit-scale
   table, decoder output scaled by d_model^-0.5) rather than T5 1.1's untied head; see `build_model`.
4. LM adaptation: `softprompt_ext.training.lm_adapt.lm_adapt` (the library's tool, Trainer + Adafactor 1e-3 constant)
   on the same corpus for 10% of the pretraining steps.
5. export: fp16 safetensors, config, tokenizer and a model card into `softprompt_ext/data/embedded/`; the
   build record (steps, tokens, loss curves, wall times) goes next to them as `build_record.json`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time

import torch

from softprompt_ext.precision import autocast, resolve_precision

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import model_card_text  # noqa: E402
import wordnet_data  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMBEDDED = os.path.join(REPO, "softprompt_ext", "data", "embedded")
TASK_DIR = os.path.join(REPO, "softprompt_ext", "data", "wordnet_supersense")
PER_CLASS = {"train": 250, "dev": 40, "test": 40}
MODEL_SHAPE = {"d_model": 256, "d_kv": 64, "d_ff": 683, "num_layers": 4, "num_decoder_layers": 4, "num_heads": 4}


def ensure_wordnet() -> None:
    """Install Debian's wordnet-base (needs root) unless its data files are already there."""
    if all(os.path.isfile(os.path.join(wordnet_data.WORDNET_DIR, f)) for f in wordnet_data.DATA_FILES):
        return
    subprocess.run(["apt-get", "update"], check=True)
    subprocess.run(["apt-get", "install", "-y", "wordnet-base"], check=True)


def write_licence(directory: str, copyright_file: str = "/usr/share/doc/wordnet-base/copyright") -> None:
    """LICENSE = the WordNet 3.0 licence text as Debian's copyright file states it (its `Files: *` stanza)."""
    with open(copyright_file, encoding="utf-8") as handle:
        text = handle.read()
    stanza = text.split("License: WordNet3.0", 1)[1].split("\nFiles:", 1)[0]
    body = "\n".join("" if line.strip() == "." else line[1:] for line in stanza.strip("\n").splitlines())
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "LICENSE"), "w", encoding="utf-8") as handle:
        handle.write("WordNet 3.0 license (from Debian's wordnet-base copyright file)\n\n" + body.strip() + "\n")


def write_task(splits: dict[str, list[dict[str, str]]]) -> None:
    os.makedirs(TASK_DIR, exist_ok=True)
    for name, rows in splits.items():
        with open(os.path.join(TASK_DIR, f"{name}.jsonl"), "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    with open(os.path.join(TASK_DIR, "README.md"), "w", encoding="utf-8") as handle:
        handle.write(model_card_text.task_readme(PER_CLASS))
    write_licence(TASK_DIR)


def train_tokenizer(lines: list[str], vocab_size: int, num_sentinels: int = 100):
    """Unigram tokenizer with T5's layout; `vocab_size` counts everything, sentinels included."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size - num_sentinels, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>",
        shrinking_factor=0.75, max_piece_length=16,
    )
    tok.train_from_iterator(lines, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
        additional_special_tokens=[f"<extra_id_{i}>" for i in range(num_sentinels)],
    )


def build_model(vocab_size: int, seed: int):
    """A T5 1.1-shaped model with T5 1.0's tied-embedding convention (table N(0, 1), outputs x d_model^-0.5).

    Transformers 5 always ties T5's output layer to the input table, so T5 1.1's untied head is not
    available. An earlier build drew the tied table from N(0, d_model^-0.5) to get unit-scale logits without
    output scaling: token embeddings then had norm ~1 against a residual stream that grew to norm ~8,500 with
    effective rank 1.4 after 3,000 steps, leaving token identity below bf16 resolution in the encoder (a
    linear probe on its outputs scored 0.27 on the supersense dev set, input embeddings alone 0.49) and an
    LM-adapted decoder that ignored its input. Mesh TensorFlow's tied T5 keeps the table at unit scale and
    scales the decoder output by d_model^-0.5 instead (Transformers: `tie_word_embeddings=True`).
    """
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=vocab_size, **MODEL_SHAPE, feed_forward_proj="gated-gelu", tie_word_embeddings=True,
        dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    return T5ForConditionalGeneration(config)  # shared table drawn from N(0, initializer_factor = 1)


def span_examples(objective, lines: list[str], epoch: int, seed: int) -> list[dict[str, list[int]]]:
    """All span-corruption examples of one epoch (noise drawn per (epoch, line)), shuffled."""
    objective.seed = seed * 1000 + epoch
    rows = [ex for index, text in enumerate(lines) for ex in objective.examples(text, index)]
    random.Random(f"{seed}:{epoch}").shuffle(rows)
    return rows


def pretrain(model, tokenizer, lines: list[str], args) -> dict:
    """Span-corruption pretraining in `args.precision`; returns the record (loss curve, tokens, wall time)."""
    from softprompt_ext.training.lm_objectives import LMObjective, Seq2SeqCollator

    objective = LMObjective(tokenizer, objective="span_corruption", input_length=args.input_length,
                            target_length=args.target_length, seed=args.seed)
    collate = Seq2SeqCollator(tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    warmup = max(1, args.pretrain_steps // 20)

    def lr_at(step: int) -> float:  # linear warm-up, cosine decay to 10%
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, args.pretrain_steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    model.train()
    curve, tokens, window, epoch, position = [], 0, [], 0, 0
    rows = span_examples(objective, lines, epoch, args.seed)
    start = time.time()
    last = min(args.pretrain_steps, getattr(args, "verify_steps", 0) or args.pretrain_steps)
    for step in range(1, last + 1):
        if position + args.batch_size > len(rows):
            epoch, position = epoch + 1, 0
            rows = span_examples(objective, lines, epoch, args.seed)
        batch = collate(rows[position : position + args.batch_size])
        position += args.batch_size
        tokens += int(batch["attention_mask"].sum()) + int((batch["labels"] != -100).sum())
        with autocast("cpu", args.precision):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        window.append(loss.item())
        if step % args.log_every == 0 or step == 1:
            curve.append({"step": step, "loss": sum(window) / len(window), "tokens": tokens,
                          "seconds": round(time.time() - start, 1)})
            window = []
            print(f"pretrain step {step}/{args.pretrain_steps} loss {curve[-1]['loss']:.3f} "
                  f"tokens {tokens} {curve[-1]['seconds']}s", flush=True)
        if args.save_every and step % args.save_every == 0 and step < args.pretrain_steps:
            model.save_pretrained(os.path.join(args.work_dir, f"span-step{step}"))  # for inspection mid-build
    model.eval()
    return {"objective": "span_corruption", "steps": args.pretrain_steps, "batch_size": args.batch_size,
            "input_length": args.input_length, "target_length": args.target_length, "tokens_seen": tokens,
            "epochs_started": epoch + 1, "examples_per_epoch": len(rows), "optimizer": "AdamW",
            "learning_rate": args.lr, "schedule": "linear warm-up 5%, cosine to 10%", "precision": precision_label(args.precision),
            "wall_seconds": round(time.time() - start, 1), "loss_curve": curve}


def export(src: str, dst: str, tokenizer_dir: str, with_card: str | None) -> None:
    """fp16 safetensors + config (+ tokenizer files, + README) from a saved fp32 checkpoint."""
    from transformers import T5ForConditionalGeneration

    model = T5ForConditionalGeneration.from_pretrained(src, dtype=torch.float32)
    shutil.rmtree(dst, ignore_errors=True)
    model.to(torch.float16).save_pretrained(dst, safe_serialization=True)
    for name in os.listdir(tokenizer_dir):
        shutil.copy(os.path.join(tokenizer_dir, name), dst)
    if with_card:
        with open(os.path.join(dst, "README.md"), "w", encoding="utf-8") as handle:
            handle.write(with_card)


def precision_label(precision: str) -> str:
    return "bf16 autocast" if resolve_precision(precision) == "bf16" else "fp32"


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work_dir", default=os.path.join(REPO, "build", "embedded"))
    parser.add_argument("--pretrain_steps", type=int, default=3000)
    parser.add_argument("--adapt_fraction", type=float, default=0.1)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--input_length", type=int, default=128)
    parser.add_argument("--target_length", type=int, default=32)
    parser.add_argument("--vocab_size", type=int, default=4096)
    # AdamW peak lr. 2e-3 (the first build) grew a residual-stream outlier direction by step 500 (norm ~1,300,
    # effective rank 2, encoder unused); 5e-4 kept norm ~40 and rank ~100 at the same step (measured).
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log_every", type=int, default=50)
    parser.add_argument("--save_every", type=int, default=0, help="also save the model every N pretraining steps")
    parser.add_argument("--verify_steps", type=int, default=0,
                        help="only rerun the first N pretraining steps (same schedule) and compare the loss curve "
                        "with the shipped build_record.json; writes nothing to the package")
    # one thread: on 2 shared cores two threads ran ~3x slower per step than one (contention), measured
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="auto: bf16 autocast only where the hardware has bf16 units (softprompt_ext.precision); "
                        "bf16 reproduces the shipped build's record exactly")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    os.makedirs(args.work_dir, exist_ok=True)
    record: dict = {"command": "python scripts/build_embedded_model.py " + " ".join(argv or sys.argv[1:]),
                    "torch": torch.__version__, "model_shape": MODEL_SHAPE}
    t0 = time.time()

    ensure_wordnet()
    synsets = wordnet_data.read_wordnet()
    splits = wordnet_data.supersense_splits(synsets, PER_CLASS, seed=args.seed)
    if not args.verify_steps:
        write_task(splits)
    lines = wordnet_data.corpus_lines(synsets, splits["dev"] + splits["test"])
    corpus = os.path.join(args.work_dir, "corpus.txt")
    with open(corpus, "w", encoding="utf-8") as handle:
        handle.writelines(line + "\n" for line in lines)
    record["data"] = {"synsets": len(synsets), "corpus_lines": len(lines), "corpus_chars": sum(map(len, lines)),
                      "held_out_synsets": len(splits["dev"]) + len(splits["test"])}

    tokenizer_dir = os.path.join(args.work_dir, "tokenizer")
    if os.path.isfile(os.path.join(tokenizer_dir, "tokenizer.json")):  # same corpus, same seed: reuse (minutes)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        record["tokenizer_reused"] = tokenizer_dir
    else:
        tokenizer = train_tokenizer(lines, args.vocab_size)
        tokenizer.save_pretrained(tokenizer_dir)
    vocab = -(-len(tokenizer) // 64) * 64  # embedding rows rounded up, as T5 pads 32,100 to 32,128
    record["tokenizer"] = {"kind": "Unigram (tokenizers)", "tokens": len(tokenizer), "embedding_rows": vocab,
                           "corpus_tokens": sum(len(tokenizer(line)["input_ids"]) for line in lines)}
    print("tokenizer", record["tokenizer"], flush=True)

    model = build_model(vocab, args.seed)
    record["parameters"] = sum(p.numel() for p in model.parameters())
    record["pretraining"] = pretrain(model, tokenizer, lines, args)
    if args.verify_steps:
        return verify(record["pretraining"]["loss_curve"], args.verify_steps)
    model.config.pretraining = {k: v for k, v in record["pretraining"].items() if k != "loss_curve"}
    model.config.pretraining["data"] = "WordNet 3.0 glosses and examples (dev/test synsets held out)"
    span_dir = os.path.join(args.work_dir, "span")
    model.save_pretrained(span_dir)
    tokenizer.save_pretrained(span_dir)

    from softprompt_ext.training.lm_adapt import lm_adapt

    adapt_steps = max(1, round(args.pretrain_steps * args.adapt_fraction))
    adapt_dir = os.path.join(args.work_dir, "lm_adapt")
    started = time.time()
    result = lm_adapt(
        span_dir, adapt_dir, train_files=[corpus], objective="prefix_lm", input_length=args.input_length,
        target_length=args.target_length, max_steps=adapt_steps, per_device_train_batch_size=args.batch_size,
        bf16=resolve_precision(args.precision) == "bf16", use_cpu=True, seed=args.seed, logging_steps=max(1, args.log_every // 2), save_strategy="no",
        report_to="none", dataloader_num_workers=0, include_num_input_tokens_seen="all",
    )
    record["lm_adaptation"] = {
        "objective": "prefix_lm", "steps": result.global_step, "batch_size": args.batch_size,
        "optimizer": "Adafactor (Trainer), constant 1e-3", "precision": precision_label(args.precision),
        "wall_seconds": round(time.time() - started, 1), "training_loss": result.training_loss,
        "loss_curve": [{"step": h["step"], "loss": h["loss"], "tokens": h.get("num_input_tokens_seen")}
                       for h in result.log_history if "loss" in h],
    }
    record["total_wall_seconds"] = round(time.time() - t0, 1)

    card = model_card_text.model_card(record)
    export(adapt_dir, os.path.join(EMBEDDED, "t5-wordnet-lm-adapt"), tokenizer_dir, card)
    export(span_dir, os.path.join(EMBEDDED, "t5-wordnet-span"), tokenizer_dir, None)
    write_licence(EMBEDDED)
    with open(os.path.join(EMBEDDED, "build_record.json"), "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=1)
    print(f"done in {record['total_wall_seconds']} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
