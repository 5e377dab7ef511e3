"""Train four prompts in one run through the embedded LM-adapted T5 with the Transformers Trainer (offline).

Four binary tasks cut from the bundled WordNet supersense data (animal/artifact, body/food, location/person,
plant/substance). Each task gets its own 20-token prompt initialised from its two class labels; one
`MultiTaskTrainer` run trains all four (each example through its own task's prompt, one frozen model), the
examples mixed by T5's temperature-scaled examples-proportional rates (the bundled classes are balanced, so
the four rates are equal here; `mixing_rates` prints them). Each prompt is then scored on its
task's dev rows with its task's metric and saved as its own ordinary PEFT adapter, with a summary card.

    python examples/train_multitask.py                      # 200 steps of 32 mixed examples
    python examples/train_multitask.py --max_steps 4 --batch_size 8   # smoke: 61 s on 2 shared cores
"""

from __future__ import annotations

import argparse
import dataclasses
import os

from datasets import Dataset
from peft import PeftModel
from transformers import DataCollatorForSeq2Seq

from softprompt_ext import (
    MultiTaskCollator,
    MultiTaskTrainer,
    PaperTrainingArguments,
    SoftPromptConfig,
    build_multitask_model,
    default_model_and_tokenizer,
    evaluate_per_task,
    get_task,
    mix_tasks,
    save_task_prompts,
    tokenize_for_seq2seq,
)
from softprompt_ext.training.mixing import mixing_rates

PAIRS = (("animal", "artifact"), ("body", "food"), ("location", "person"), ("plant", "substance"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max_steps", type=int, default=200)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--output_dir", default="multitask-prompts")
    args = parser.parse_args()

    base, tokenizer = default_model_and_tokenizer()
    supersense = get_task("supersense")
    tasks, train, dev = {}, {}, {}
    for pair in PAIRS:
        name = f"{pair[0]}_{pair[1]}"  # adapter names may not contain "."
        tasks[name] = dataclasses.replace(supersense, name=name, label_names=pair)
        keep = lambda row, pair=pair: row["label"] in pair  # noqa: E731
        formatted = tasks[name].format(supersense.load("train").filter(keep))
        train[name] = tokenize_for_seq2seq(formatted, tokenizer, max_input_length=64)
        dev[name] = tasks[name].format(supersense.load("dev").filter(keep)).to_list()
    print("mixing rates:", {t: round(r, 3) for t, r in mixing_rates({t: len(d) for t, d in train.items()},
                                                                    "temperature", temperature=args.temperature).items()})

    configs = {
        name: SoftPromptConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=20, prompt_tuning_init="CLASS_LABELS",
                               class_labels=list(task.class_labels), tokenizer_name_or_path=base.name_or_path,
                               init_seed=k)
        for k, (name, task) in enumerate(tasks.items())
    }
    model = build_multitask_model(base, configs)
    before = evaluate_per_task(model, tokenizer, {n: (tasks[n], dev[n]) for n in tasks})
    mixture: Dataset = mix_tasks(train, args.max_steps * args.batch_size, "temperature", temperature=args.temperature)
    trainer = MultiTaskTrainer(
        model=model,
        args=PaperTrainingArguments(os.path.join(args.output_dir, "checkpoints"), max_steps=args.max_steps,
                                    per_device_train_batch_size=args.batch_size, eval_strategy="no",
                                    save_steps=max(args.max_steps // 2, 1), logging_steps=20, report_to=[],
                                    use_cpu=True, disable_tqdm=True),
        train_dataset=mixture,
        data_collator=MultiTaskCollator(DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)),
    )
    trainer.train()
    model.eval()
    after = evaluate_per_task(model, tokenizer, {n: (tasks[n], dev[n]) for n in tasks})
    for name in tasks:
        print(f"{name:18} dev accuracy {before[name]['accuracy']:5.1f} -> {after[name]['accuracy']:5.1f} "
              f"(chance 50, {len(dev[name])} rows)")
    folder = os.path.join(args.output_dir, "prompts")
    save_task_prompts(model, folder, scores=after, extra={"steps": args.max_steps, "mixing": "temperature",
                                                          "temperature": args.temperature})
    # each prompt is an ordinary adapter: plain PEFT loads it on a fresh base model
    fresh, _ = default_model_and_tokenizer()
    first = next(iter(tasks))
    PeftModel.from_pretrained(fresh, os.path.join(folder, first))
    print(f"saved {len(tasks)} adapters and a summary card under {folder}/")


if __name__ == "__main__":
    main()
