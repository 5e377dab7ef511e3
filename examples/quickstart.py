"""Quick start, fully offline: prompt-tune a frozen T5 with class-label init, save, reload, compare.

    python examples/quickstart.py

Builds a tiny T5 1.1-shaped model and a tokenizer in-process (no downloads), memorises a toy sentiment
task through the soft prompt alone (the model stays frozen), saves the adapter, reloads it with PEFT's
own `PeftModel.from_pretrained`, and checks that the reloaded prompt reproduces the outputs exactly.
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from peft import PeftModel, get_peft_model
from transformers.optimization import Adafactor

from softprompt_ext import SoftPromptConfig
from softprompt_ext.tiny_models import build_t5, build_tokenizer, save_tokenizer

TRAIN = [
    ("the movie was a great success and the audience loved it", "positive"),
    ("a terrible film with a weak story and bad acting", "negative"),
    ("this is a positive review of a wonderful book", "positive"),
    ("this is a negative review of a boring play", "negative"),
    ("the teacher explained the lesson to the students", "positive"),
    ("rain falls from dark clouds in the cold season", "negative"),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--num_virtual_tokens", type=int, default=20)
    parser.add_argument("--output_dir", default=None, help="where to save the adapter (default: a temp dir)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    workdir = tempfile.mkdtemp(prefix="softprompt-quickstart-")
    tokenizer = build_tokenizer()
    tokenizer_dir = save_tokenizer(tokenizer, f"{workdir}/tokenizer")
    base = build_t5(len(tokenizer), d_model=64, num_layers=2, num_heads=4)

    config = SoftPromptConfig(
        task_type="SEQ_2_SEQ_LM",
        num_virtual_tokens=args.num_virtual_tokens,
        prompt_tuning_init="CLASS_LABELS",  # paper section 3.2: the best init
        class_labels=["positive", "negative"],
        tokenizer_name_or_path=tokenizer_dir,
        sample_vocab_size=100,  # the tiny vocabulary has fewer than the paper's 5,000 tokens
        init_seed=0,
    )
    model = get_peft_model(base, config)
    model.print_trainable_parameters()

    texts, labels = zip(*TRAIN, strict=True)
    batch = tokenizer(list(texts), return_tensors="pt", padding=True)
    targets = tokenizer(list(labels), return_tensors="pt", padding=True)["input_ids"]
    targets = targets.masked_fill(targets == tokenizer.pad_token_id, -100)

    def predict(m) -> list[str]:
        m.eval()
        with torch.no_grad():
            out = m.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=6)
        return tokenizer.batch_decode(out, skip_special_tokens=True)

    # The paper's optimiser: Adafactor, constant LR 0.3, no parameter scaling (section 3)
    optimizer = Adafactor(
        [p for p in model.parameters() if p.requires_grad],
        lr=0.3, scale_parameter=False, relative_step=False, warmup_init=False, decay_rate=-0.8, weight_decay=1e-5,
    )
    print(f"before: loss {model(**batch, labels=targets).loss.item():.3f}  predictions {predict(model)}")
    model.train()
    for _ in range(args.steps):
        optimizer.zero_grad()
        loss = model(**batch, labels=targets).loss
        loss.backward()
        optimizer.step()
    after = predict(model)
    accuracy = sum(p.strip() == y for p, y in zip(after, labels, strict=True)) / len(labels)
    print(f"after {args.steps} steps: loss {loss.item():.3f}  predictions {after}  train accuracy {accuracy:.2f}")

    output_dir = args.output_dir or f"{workdir}/adapter"
    model.save_pretrained(output_dir)
    reloaded = PeftModel.from_pretrained(build_t5(len(tokenizer), d_model=64, num_layers=2, num_heads=4), output_dir)
    again = predict(reloaded)
    print(f"saved to {output_dir}; reloaded config: {type(reloaded.peft_config['default']).__name__} "
          f"init={reloaded.peft_config['default'].prompt_tuning_init.value} labels={reloaded.peft_config['default'].class_labels}")
    if again != after:
        print(f"reloaded predictions differ: {again}")
        return 1
    print("reloaded adapter reproduces the predictions exactly")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
