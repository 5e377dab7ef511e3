"""Multi-task prompt tuning (`MultiTaskTrainer`) in several processes, for tests/test_multitask_ddp.py.

    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \\
        --dynamo_backend no --main_process_port PORT tests/scripts/multitask_ddp_train.py --output_dir OUT \\
        --per_device_train_batch_size 4 --use_cpu
    python tests/scripts/multitask_ddp_train.py --output_dir OUT --per_device_train_batch_size 8 --use_cpu

(`--multi_gpu` on a CPU machine: see tests/scripts/ddp_train.py; with `use_cpu=True` accelerate then runs
DDP over gloo.) Four tasks, each with targets of different lengths, tiny T5, prompts P = 3, 5, 4, 2. Every
optimizer step reads the next `GLOBAL_BATCH` = 8 rows of `LAYOUT` in order, whatever the number of processes
W and of micro-batches M (per-device batch = 8 / (W M)): accelerate gives rank r the per-device batches
r, r + W, ... of the sequential data, so a step's 8 rows are split over the ranks and micro-batches, and a
task's examples land on both ranks with different label counts. "rare" is in step 0 only, on the last
rank: the other ranks have no gradient for it, and in steps 1 and 2 no rank has one.

Every rank writes `OUT/rank{r}.json` (world, engine, the task names of every micro-batch it trained on, the
logged losses) and `OUT/prompts_rank{r}.safetensors`: `{task}/initial`, `{task}/final` and `{task}/grad{s}`
(the gradient the optimizer saw at step s; absent where the prompt had none).
"""

from __future__ import annotations

import argparse
import json
import os

# (source, target) pairs; the targets of one task differ in length, so its examples carry different label counts
DATA = {
    "animals": [("the cat sat", "animal"), ("a dog ran far away", "a small animal"), ("birds sing", "animal"),
                ("the horse", "a big farm animal"), ("fish swim in the river", "animal"), ("a cow", "farm animal")],
    "food": [("bread and butter", "food"), ("an apple", "a sweet fruit"), ("cheese on the table", "food"),
             ("rice", "a grain"), ("soup is hot", "hot food for dinner"), ("a cake with cream", "food")],
    "verbs": [("to run", "verb"), ("she sings loudly", "a verb of sound"), ("they eat", "verb"),
              ("walk to the house", "verb of motion"), ("swim", "verb"), ("read a book", "a verb")],
    "rare": [("a strange word", "rare")],
}
LENGTHS = {"animals": 3, "food": 5, "verbs": 4, "rare": 2}
GLOBAL_BATCH = 8
LAYOUT = [  # the task of every row, one line per optimizer step
    ["animals", "animals", "animals", "food", "food", "food", "verbs", "rare"],
    ["animals", "animals", "food", "food", "verbs", "verbs", "verbs", "verbs"],
    ["animals", "food", "food", "food", "food", "verbs", "verbs", "verbs"],
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--per_device_train_batch_size", type=int, default=GLOBAL_BATCH)
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--use_cpu", action="store_true", help="train on CPU (gloo) even if CUDA is present")
    return parser.parse_args(argv)


def rows(tokenizer) -> list[dict]:
    taken = dict.fromkeys(DATA, 0)
    out = []
    for step in LAYOUT:
        for task in step:
            source, target = DATA[task][taken[task] % len(DATA[task])]
            taken[task] += 1
            out.append({"input_ids": tokenizer(source).input_ids, "labels": tokenizer(target).input_ids, "task": task})
    return out


def train(args: argparse.Namespace) -> None:
    import torch
    from datasets import Dataset
    from safetensors.torch import save_file
    from transformers import DataCollatorForSeq2Seq, TrainerCallback

    from softprompt_ext import PaperTrainingArguments, SoftPromptConfig
    from softprompt_ext.special_tokens import IGNORE_INDEX
    from softprompt_ext.tiny_models import build_t5, build_tokenizer
    from softprompt_ext.training.multitask import (
        TASK_NAMES,
        MultiTaskCollator,
        MultiTaskTrainer,
        build_multitask_model,
        task_prompt_parameters,
    )

    torch.set_num_threads(1)  # two processes share two cores
    training_args = PaperTrainingArguments(
        output_dir=args.output_dir,
        max_steps=len(LAYOUT),
        per_device_train_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        eval_strategy="no",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
        use_cpu=args.use_cpu,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    state = training_args.distributed_state
    if GLOBAL_BATCH != state.num_processes * args.per_device_train_batch_size * args.gradient_accumulation_steps:
        raise ValueError(
            f"processes x per_device_train_batch_size x gradient_accumulation_steps = {state.num_processes} x "
            f"{args.per_device_train_batch_size} x {args.gradient_accumulation_steps}, but a step of LAYOUT holds "
            f"{GLOBAL_BATCH} rows; choose them so that the product is {GLOBAL_BATCH}."
        )

    tokenizer = build_tokenizer()
    configs = {
        name: SoftPromptConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=length, init_seed=k,
                               prompt_tuning_init="RANDOM_UNIFORM")
        for k, (name, length) in enumerate(LENGTHS.items())
    }
    model = build_multitask_model(build_t5(len(tokenizer), seed=0), configs)
    params = task_prompt_parameters(model, list(LENGTHS))
    tensors = {f"{name}/initial": p.detach().clone() for name, p in params.items()}
    seen: list[list[str]] = []

    class Record(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            for name, p in params.items():
                if p.grad is not None:
                    tensors[f"{name}/grad{state.global_step}"] = p.grad.detach().clone()

    class RecordingTrainer(MultiTaskTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            seen.append(list(inputs[TASK_NAMES]))
            return super().training_step(model, inputs, num_items_in_batch)

    trainer = RecordingTrainer(
        model=model,
        args=training_args,
        train_dataset=Dataset.from_list(rows(tokenizer)),
        data_collator=MultiTaskCollator(DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX)),
        callbacks=[Record()],
    )
    trainer.train()

    rank = state.process_index
    tensors.update({f"{name}/final": p.detach().clone() for name, p in params.items()})
    os.makedirs(args.output_dir, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()},
              os.path.join(args.output_dir, f"prompts_rank{rank}.safetensors"))
    facts = {
        "process_index": rank, "num_processes": state.num_processes,
        "distributed_type": str(state.distributed_type), "backend": state.backend,
        "wrapped": type(trainer.model_wrapped).__name__,
        "global_step": trainer.state.global_step, "micro_batches": seen,
        "losses": [entry["loss"] for entry in trainer.state.log_history if "loss" in entry],
    }
    with open(os.path.join(args.output_dir, f"rank{rank}.json"), "w", encoding="utf-8") as handle:
        json.dump(facts, handle, indent=2)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # leave together and close the gloo group: a rank that exits with the group's threads still running
        # aborts ("terminate called without an active exception", seen once in CI after training had finished)
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    train(parse_args())
