"""Prompt-tune the embedded LM-adapted T5 on WordNet noun supersenses, save the prompt, reload it, compare.

    python examples/supersense.py                 # 800 steps: 328 s of training on one core of a 2-core AMD
                                                  # EPYC without bf16 units (fp32), dev accuracy 0.000 -> 0.206
    python examples/supersense.py --precision bf16  # force bf16 autocast (default "auto": only with bf16 units)
    python examples/supersense.py --steps 2       # smoke run

Everything is offline and shipped with the package: a tiny T5 (9.4M parameters) that was pretrained with span
corruption and LM-adapted on WordNet glosses and prose (`softprompt_ext.embedded`, built by
`scripts/embedded_build/build.py`), and an 8-class task (a noun's lemmas and definition -> "animal", "plant",
"food", ...). The recipe is the paper's (Lester et al. 2021, section 3): the model stays frozen, only P soft
prompt vectors train, initialised from the class labels' embeddings (section 3.2), with Adafactor at a
constant learning rate of 0.3. The adapter is reloaded with PEFT's own `PeftModel.from_pretrained`.
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import tempfile
import time

# Everything this job loads ships in the package, so it asks nothing of the Hub. Set before huggingface_hub is
# imported (it reads the variable once): otherwise an import can still reach for the Hub on its own (bitsandbytes
# looks up a CPU kernel on AVX512-BF16 machines, without a timeout). A user's own setting wins.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from peft import PeftModel, get_peft_model  # noqa: E402

from softprompt_ext import SoftPromptConfig, generate_texts  # noqa: E402
from softprompt_ext.embedded import embedded_model_path, load_embedded  # noqa: E402
from softprompt_ext.precision import autocast, bf16_is_fast, resolve_precision  # noqa: E402
from softprompt_ext.tasks.supersense import SUPERSENSE, SUPERSENSE_LABELS, read_supersense, supersense_batch  # noqa: E402
from softprompt_ext.training.recipe import paper_optimizer  # noqa: E402


def accuracy(predictions: list[str], rows: list[dict]) -> float:
    return SUPERSENSE.compute_metrics(predictions, [{"targets": r["label"]} for r in rows])["accuracy"] / 100


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=800, help="training steps (batch 16)")
    parser.add_argument("--num_virtual_tokens", type=int, default=20)
    parser.add_argument("--dev_size", type=int, default=320, help="dev examples to score (all: 320)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", default=None, help="where to save the adapter (default: a temp dir)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="auto: bf16 autocast only on a CPU/GPU with bf16 units, else fp32 (softprompt_ext.precision)")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # on 2 shared cores one thread was faster than two (see benchmarks/QUALITY.md)

    print(f"precision: {resolve_precision(args.precision)} (bf16 units: {'yes' if bf16_is_fast('cpu') else 'no'})")
    base, tokenizer = load_embedded("lm_adapt")
    config = SoftPromptConfig(
        task_type="SEQ_2_SEQ_LM",
        num_virtual_tokens=args.num_virtual_tokens,
        prompt_tuning_init="CLASS_LABELS",  # paper section 3.2: start from the label words' embeddings
        class_labels=list(SUPERSENSE_LABELS),
        tokenizer_name_or_path=embedded_model_path("lm_adapt"),
        sample_vocab_size=1000,  # rows past the labels: the 1,000 most common of this 8,192-token vocabulary
        init_seed=args.seed,
    )
    model = get_peft_model(base, config)
    model.print_trainable_parameters()
    train, dev = read_supersense("train"), read_supersense("dev")[: args.dev_size]
    dev_texts = [r["text"] for r in dev]
    predict = functools.partial(generate_texts, max_input_length=64, precision=args.precision)
    print(f"dev accuracy before tuning: {accuracy(predict(model, tokenizer, dev_texts), dev):.3f} "
          f"(chance {1 / len(SUPERSENSE_LABELS):.3f})")

    optimizer, _ = paper_optimizer(model)  # Adafactor, constant lr 0.3 (section 3)
    rng, order, started = random.Random(args.seed), [], time.time()
    for step in range(1, args.steps + 1):
        model.train()
        if len(order) < 16:
            order += rng.sample(range(len(train)), len(train))
        rows, order = [train[i] for i in order[:16]], order[16:]
        batch = supersense_batch(tokenizer, rows)  # input_ids [B, S], attention_mask, labels [B, T]
        with autocast("cpu", args.precision):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 20 == 0 or step == args.steps:
            print(f"step {step}/{args.steps} loss {loss.item():.3f} ({time.time() - started:.0f} s)")

    predictions = predict(model, tokenizer, dev_texts)
    print(f"dev accuracy after {args.steps} steps: {accuracy(predictions, dev):.3f}")

    output_dir = args.output_dir or tempfile.mkdtemp(prefix="softprompt-supersense-")
    model.save_pretrained(output_dir)
    fresh, _ = load_embedded("lm_adapt")
    reloaded = PeftModel.from_pretrained(fresh, output_dir)  # PEFT's own loader
    again = predict(reloaded, tokenizer, dev_texts)
    for row, before, after in list(zip(dev, predictions, again, strict=True))[:5]:
        print(f"  {row['text'][:60]!r:64} gold {row['label']:10} tuned {before!r:12} reloaded {after!r}")
    same = sum(a == b for a, b in zip(predictions, again, strict=True))
    print(f"reloaded adapter from {output_dir}: {same}/{len(dev)} predictions identical")
    return 0 if same == len(dev) else 1


if __name__ == "__main__":
    raise SystemExit(main())
