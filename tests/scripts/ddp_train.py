"""Multi-process prompt tuning with the stock `Seq2SeqTrainer`, for test_distributed.py.

    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \\
        --dynamo_backend no --main_process_port PORT tests/scripts/ddp_train.py --output_dir OUT --use_cpu

Nothing softprompt-specific happens here beyond `get_peft_model(base, SoftPromptConfig(...))`: DDP wraps the
PEFT model, the prompt `[P, H]` is the only parameter that needs a gradient, so it is the only tensor the
ranks all-reduce. Every rank writes `OUT/rank{r}.json` (world size, engine, the ids of the batches it saw)
and `OUT/prompt_rank{r}.safetensors` (initial and final prompt); rank 0 saves the adapter to `OUT/adapter`.

Why `--multi_gpu` on a CPU machine: in accelerate 1.x `accelerate launch --cpu --num_processes 2` uses the
"simple" launcher, which starts *one* process unless an MPI hostfile is given. `--multi_gpu` starts the
processes with torchrun; `use_cpu=True` in the training arguments then makes accelerate pick the
`MULTI_CPU` engine with the gloo backend (accelerate `PartialState(cpu=True)`).

`--world_only` reports the world each process sees and exits (used to pin the launcher behaviour above).
"""

from __future__ import annotations

import argparse
import json
import os

# (source, target) pairs in the words of the tiny tokenizer's corpus: a sentiment task
PAIRS = [
    ("the movie was a great success and the audience loved it", "positive"),
    ("a terrible film with a weak story and bad acting", "negative"),
    ("this is a positive review of a wonderful book", "positive"),
    ("this is a negative review of a boring play", "negative"),
    ("the audience loved the wonderful story", "positive"),
    ("a boring film with bad acting", "negative"),
    ("a great book and a wonderful play", "positive"),
    ("a weak story and a terrible play", "negative"),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--max_steps", type=int, default=6)
    parser.add_argument("--per_device_train_batch_size", type=int, default=2)
    parser.add_argument("--learning_rate", type=float, default=0.3)  # paper section 3: Adafactor at 0.3
    parser.add_argument("--num_virtual_tokens", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--use_cpu", action="store_true", help="train on CPU (gloo) even if CUDA is present")
    parser.add_argument("--world_only", action="store_true", help="report the process world and exit")
    parser.add_argument("--sync_prompt_grads", action="store_true",
                        help="add PromptGradSyncCallback (FSDP with FSDP_IGNORED_MODULES set to the prompt encoders)")
    return parser.parse_args(argv)


def report_world(args: argparse.Namespace) -> None:
    from accelerate import PartialState

    state = PartialState(cpu=args.use_cpu)
    _write_json(args.output_dir, f"world_rank{state.process_index}.json", _world(state))


def _world(state) -> dict:
    return {"process_index": state.process_index, "num_processes": state.num_processes,
            "distributed_type": str(state.distributed_type), "backend": state.backend}


def _write_json(directory: str, name: str, data: dict) -> None:
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, name), "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)


def train(args: argparse.Namespace) -> None:
    import torch
    from datasets import Dataset
    from peft import get_peft_model
    from safetensors.torch import save_file
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments

    from softprompt_ext import SoftPromptConfig
    from softprompt_ext.tiny_models import build_t5, build_tokenizer
    from softprompt_ext.training.distributed import PromptGradSyncCallback

    torch.set_num_threads(1)  # two processes share two cores
    training_args = Seq2SeqTrainingArguments(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.per_device_train_batch_size,
        learning_rate=args.learning_rate,
        optim="adafactor",
        lr_scheduler_type="constant",
        weight_decay=1e-5,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=args.seed,
        use_cpu=args.use_cpu,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    state = training_args.distributed_state  # built by the arguments: the engine the Trainer will use

    tokenizer = build_tokenizer()
    base = build_t5(len(tokenizer), seed=args.seed)
    config = SoftPromptConfig(
        task_type="SEQ_2_SEQ_LM",
        num_virtual_tokens=args.num_virtual_tokens,
        prompt_tuning_init="RANDOM_UNIFORM",
        init_seed=args.seed,
    )
    model = get_peft_model(base, config)
    prompt = model.prompt_encoder["default"].embedding.weight  # [P, H], the only trainable tensor
    initial = prompt.detach().clone()

    def encode(batch):
        features = tokenizer(batch["source"], truncation=True, max_length=32)
        features["labels"] = tokenizer(batch["target"], truncation=True, max_length=4)["input_ids"]
        return features

    data = Dataset.from_dict({"source": [s for s, _ in PAIRS], "target": [t for _, t in PAIRS]})
    data = data.map(encode, batched=True, remove_columns=["source", "target"])

    seen: list[list[list[int]]] = []

    class RecordingTrainer(Seq2SeqTrainer):
        """Records the ids of every batch this rank trains on (to show that the ranks see different data)."""

        def training_step(self, model, inputs, num_items_in_batch=None):
            seen.append(inputs["input_ids"].tolist())  # [b, T] per step
            return super().training_step(model, inputs, num_items_in_batch)

    trainer = RecordingTrainer(
        model=model,
        args=training_args,
        train_dataset=data,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=base, padding=True),
        callbacks=[PromptGradSyncCallback()] if args.sync_prompt_grads else None,
    )
    trainer.train()
    final = prompt.detach().clone()

    rank = state.process_index
    save_file({"initial": initial.contiguous(), "final": final.contiguous()},
              os.path.join(args.output_dir, f"prompt_rank{rank}.safetensors"))
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    _write_json(args.output_dir, f"rank{rank}.json", {
        **_world(state),
        "parallel_mode": str(training_args.parallel_mode),
        "global_step": trainer.state.global_step,
        "batches": seen,
        "losses": losses,
        "device": str(prompt.device),
    })
    trainer.save_model(os.path.join(args.output_dir, "adapter"))  # writes on the main process only


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.world_only:
        report_world(args)
    else:
        train(args)


if __name__ == "__main__":
    main()
