"""A tiny prompt-tuning run with the stock `Seq2SeqTrainer`, for tests/test_interrupted_training.py.

    python tests/scripts/interrupted_training.py OUT --max_steps 12 --save_steps 4 [--step_delay 0.3] \\
        [--resume]

Everything that decides the result is fixed: the model (`build_t5(seed=0)`), the prompt (RANDOM_UNIFORM,
`init_seed=0`), the 32 examples (drawn from a seeded generator), the Trainer seed (data order) and one
torch thread (summation order). So an uninterrupted run and a killed-then-resumed run must end with the
same prompt. `--step_delay` slows each step (a callback of this script) so the test can kill the process
mid-run; `--resume` continues from `adapters.atomic.last_complete_checkpoint(OUT)` (or Trainer's own choice with
`--resume_with_true`). The final prompt `[P, H]` is written to `OUT/final_prompt.safetensors`.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

VOCAB, P, H, EXAMPLES, LENGTH = 64, 4, 16, 32, 6


class Examples(torch.utils.data.Dataset):
    """32 fixed (input, target) pairs of token ids; target = the first two input tokens (a learnable task)."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(1234)
        self.inputs = torch.randint(3, VOCAB, (EXAMPLES, LENGTH), generator=generator)  # [N, T]

    def __len__(self) -> int:
        return EXAMPLES

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        labels = torch.cat([self.inputs[i, :2], torch.tensor([1])])  # [3], EOS last
        return {
            "input_ids": self.inputs[i],
            "attention_mask": torch.ones(LENGTH, dtype=torch.long),
            "labels": labels,
        }


def train(
    output_dir: str,
    max_steps: int,
    save_steps: int,
    step_delay: float = 0.0,
    resume: str | bool | None = None,
):
    """Run (or resume) the tiny training; return the final prompt `[P, H]`."""
    from peft import get_peft_model
    from safetensors.torch import save_file
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, TrainerCallback

    from softprompt_ext import SoftPromptConfig
    from softprompt_ext.tiny_models import build_t5

    class Slow(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            time.sleep(step_delay)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = SoftPromptConfig(
            task_type="SEQ_2_SEQ_LM", num_virtual_tokens=P, prompt_tuning_init="RANDOM_UNIFORM", init_seed=0
        )
        model = get_peft_model(build_t5(VOCAB, d_model=H, seed=0), config)
        args = Seq2SeqTrainingArguments(
            output_dir=output_dir,
            max_steps=max_steps,
            save_steps=save_steps,
            per_device_train_batch_size=4,
            learning_rate=0.1,
            seed=0,
            use_cpu=True,
            report_to="none",
            disable_tqdm=True,
            logging_steps=1,
            save_strategy="steps",
            dataloader_num_workers=0,
        )
        trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=Examples(), callbacks=[Slow()])
        trainer.train(resume_from_checkpoint=resume)
        prompt = model.prompt_encoder["default"].embedding.weight.detach().clone()  # [P, H]
        save_file({"prompt_embeddings": prompt}, os.path.join(output_dir, "final_prompt.safetensors"))
        return prompt
    finally:
        torch.set_num_threads(threads)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("--max_steps", type=int, default=12)
    parser.add_argument("--save_steps", type=int, default=4)
    parser.add_argument("--step_delay", type=float, default=0.0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--resume_with_true", action="store_true")
    args = parser.parse_args()
    resume = None
    if args.resume_with_true:
        resume = True
    elif args.resume:
        from softprompt_ext.adapters.atomic import last_complete_checkpoint

        resume = last_complete_checkpoint(args.output_dir)
    train(args.output_dir, args.max_steps, args.save_steps, args.step_delay, resume)


if __name__ == "__main__":
    main()
