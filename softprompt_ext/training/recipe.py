"""Training a soft prompt with the Transformers `Trainer`: the paper's recipe; continuing a saved prompt.

Lester, Al-Rfou, Constant (2021), "The Power of Scale for Parameter-Efficient Prompt Tuning", section 3:
Adafactor, constant learning rate 0.3, decay rate 0.8, no parameter scaling, weight decay 1e-5, batch 32,
30,000 steps, the checkpoint that scores best on dev. The official T5X config: `adafactor.Adafactor(
decay_rate=0.8, multiply_by_parameter_scale=False, weight_decay_rate=1e-5)`, a constant schedule, a
checkpoint every 1,000 steps.

Design decisions
----------------
* Two ways in, one optimizer. `PaperTrainingArguments` is a `Seq2SeqTrainingArguments` whose defaults are
  the recipe, so `Seq2SeqTrainer(model, args=PaperTrainingArguments(...))` (or `Trainer`, or
  `HfArgumentParser`) needs no wiring: `optim="adafactor"` makes Transformers build its own `Adafactor`
  with `scale_parameter=False, relative_step=False`, and that class's other defaults (`decay_rate=-0.8`,
  `warmup_init=False`, `clip_threshold=1.0`, no first moment) already are the paper's. `optim_args` can't
  change them (Transformers ignores `optim_args` for `adafactor`), so the recipe is expressed through the
  plain fields. `paper_optimizer(model)` builds the same optimizer for `Trainer(optimizers=...)`; a test
  checks that both ways train to the same prompt.
* Sign of the decay rate. The paper and T5X write the second-moment decay as beta2_t = 1 - t^(-0.8) with
  `decay_rate=0.8`; Transformers computes beta2_t = 1 - t^decay_rate and so writes the same schedule as
  `decay_rate=-0.8`. `paper_optimizer` takes the paper's positive number and negates it.
* Weight decay keeps T5X's meaning. T5X multiplies the parameter by (1 - weight_decay_rate) every step;
  Transformers' Adafactor subtracts lr * weight_decay * parameter. The paper's 1e-5 is therefore passed
  as weight_decay = 1e-5 / lr (3.33e-5 at lr 0.3), so that the per-step shrink is the paper's.
* Known difference: Transformers factors the second moment of every 2-D parameter; T5X factors only when
  both dimensions are >= 128, so at P = 100 the official run keeps the full P x d estimate. Not measured.
* No gradient clipping (`max_grad_norm=0`): T5X has none; Adafactor clips its own update (threshold 1).
* Checkpoints keep the optimizer state (`save_only_model=False`): it covers the prompt only, so a
  checkpoint stays a few KB on tiny models (about 2 x P x d floats on real ones) and
  `resume_from_checkpoint` continues exactly.
* Not applied: dropout 0.1 and z-loss 1e-4 (T5X fine-tuning defaults) belong to the base model and loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import Seq2SeqTrainingArguments
from transformers.optimization import Adafactor, get_constant_schedule

from ..peft_internals import prompt_parameters

PAPER_LEARNING_RATE = 0.3  # section 3; appendix search space 0.001-0.5
PAPER_DECAY_RATE = 0.8  # T5X sign convention: beta2_t = 1 - t^(-0.8)
PAPER_WEIGHT_DECAY_RATE = 1e-5  # T5X meaning: parameter *= (1 - 1e-5) every step
PAPER_BATCH_SIZE = 32  # global batch; appendix search space {32 .. 512}
PAPER_MAX_STEPS = 30_000  # appendix search space {10k, 20k, 30k}
PAPER_EVAL_STEPS = 1_000  # the official runs save (and are evaluated) every 1,000 steps


def transformers_weight_decay(weight_decay_rate: float, learning_rate: float) -> float:
    """Transformers' Adafactor `weight_decay` that shrinks a parameter by `weight_decay_rate` per step."""
    if not isinstance(learning_rate, int | float) or not math.isfinite(learning_rate) or learning_rate <= 0:
        raise ValueError(
            f"learning_rate must be a finite number > 0, got {learning_rate!r}; "
            f"the paper uses {PAPER_LEARNING_RATE}."
        )
    if (
        not isinstance(weight_decay_rate, int | float)
        or not math.isfinite(weight_decay_rate)
        or weight_decay_rate < 0
    ):
        raise ValueError(
            f"weight_decay_rate must be a finite number >= 0, got {weight_decay_rate!r}; "
            f"the paper uses {PAPER_WEIGHT_DECAY_RATE} (0 turns weight decay off)."
        )
    return weight_decay_rate / learning_rate


@dataclass
class PaperTrainingArguments(Seq2SeqTrainingArguments):
    """`Seq2SeqTrainingArguments` whose defaults are the paper's recipe (section 3); all can be overridden.

    Works with `Seq2SeqTrainer`, with `Trainer` (causal LMs), and with `HfArgumentParser`. The defaults
    that differ from Transformers':

    * `optim="adafactor"`, `learning_rate=0.3`, `lr_scheduler_type="constant"`, `max_grad_norm=0.0`.
    * `weight_decay_rate=1e-5`, the paper's weight decay in T5X's meaning (see the module docstring). It sets
      `weight_decay` to `weight_decay_rate / learning_rate` unless `weight_decay` is given, which then wins.
    * `per_device_train_batch_size=32` (the paper's batch is global: with N processes, divide by N or use
      `gradient_accumulation_steps`), `per_device_eval_batch_size=32`, `max_steps=30000`.
    * Evaluate and save every 1,000 steps; `load_best_model_at_end` is True whenever there is an evaluation
      (`eval_strategy != "no"`), so the prompt in memory after `train()` is the one best on dev
      (`metric_for_best_model`, default the loss). Add `transformers.EarlyStoppingCallback` to stop early too.
    * `logging_steps=100`, `save_only_model=False` (the optimizer state is the prompt's only: small, and
      needed for `resume_from_checkpoint`).
    """

    learning_rate: float = field(default=PAPER_LEARNING_RATE, metadata={"help": "Constant LR (paper: 0.3)."})
    optim: str = field(default="adafactor", metadata={"help": "Optimizer (paper: Adafactor)."})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "LR schedule (paper: constant)."})
    max_grad_norm: float = field(default=0.0, metadata={"help": "Gradient clipping; 0 = none, as in T5X."})
    weight_decay: float | None = field(  # type: ignore[assignment]  # None: derived in __post_init__
        default=None, metadata={"help": "Transformers' weight decay (x lr); default weight_decay_rate / lr."}
    )
    weight_decay_rate: float = field(
        default=PAPER_WEIGHT_DECAY_RATE, metadata={"help": "Per-step weight decay as in T5X (paper: 1e-5)."}
    )
    per_device_train_batch_size: int = field(
        default=PAPER_BATCH_SIZE, metadata={"help": "Paper: 32 (global)."}
    )
    per_device_eval_batch_size: int = field(default=PAPER_BATCH_SIZE, metadata={"help": "Eval batch size."})
    max_steps: int = field(default=PAPER_MAX_STEPS, metadata={"help": "Training steps (paper: 30,000)."})
    eval_strategy: str = field(default="steps", metadata={"help": "Evaluate on dev every eval_steps."})
    eval_steps: float | None = field(
        default=PAPER_EVAL_STEPS, metadata={"help": "Steps between evaluations."}
    )
    save_strategy: str = field(default="steps", metadata={"help": "Save a checkpoint every save_steps."})
    save_steps: float = field(default=PAPER_EVAL_STEPS, metadata={"help": "Steps between checkpoints."})
    logging_steps: float = field(default=100, metadata={"help": "Steps between log lines."})
    load_best_model_at_end: bool | None = field(  # type: ignore[assignment]  # None: decided in __post_init__
        default=None, metadata={"help": "Keep the prompt best on dev; default: True when evaluating."}
    )
    save_only_model: bool = field(
        default=False, metadata={"help": "Keep False: the optimizer state is small and resume needs it."}
    )

    def __post_init__(self) -> None:
        if self.weight_decay is None:
            self.weight_decay = transformers_weight_decay(self.weight_decay_rate, self.learning_rate)
        if self.load_best_model_at_end is None:
            self.load_best_model_at_end = (
                str(getattr(self.eval_strategy, "value", self.eval_strategy)) != "no"
            )
        super().__post_init__()


def paper_optimizer(
    model: torch.nn.Module,
    learning_rate: float = PAPER_LEARNING_RATE,
    decay_rate: float = PAPER_DECAY_RATE,
    weight_decay_rate: float = PAPER_WEIGHT_DECAY_RATE,
) -> tuple[Adafactor, torch.optim.lr_scheduler.LambdaLR]:
    """The paper's Adafactor over the trainable (prompt) parameters, and a constant schedule.

    Pass the pair to `Trainer(optimizers=paper_optimizer(model))` when your `TrainingArguments` are not
    `PaperTrainingArguments`; it is the optimizer `PaperTrainingArguments` builds with `optim="adafactor"`.

    Args:
        model: a `PeftModel` whose soft prompt is trainable (checked with `check_trainable_prompt`).
        learning_rate: constant learning rate. Default 0.3 (section 3).
        decay_rate: second-moment decay exponent in the paper's (T5X's) sign: beta2_t = 1 - t^(-decay_rate).
            Default 0.8. Transformers writes the same value as -0.8; this function negates it.
        weight_decay_rate: per-step multiplicative weight decay as in T5X. Default 1e-5.
    """
    if isinstance(decay_rate, bool) or not isinstance(decay_rate, int | float) or not 0 < decay_rate <= 1:
        raise ValueError(
            f"decay_rate must be in (0, 1], got {decay_rate!r}; it is the paper's positive exponent "
            f"(beta2_t = 1 - t^-decay_rate, paper: {PAPER_DECAY_RATE}). Transformers' Adafactor writes it "
            "negated (-0.8); pass the positive number here."
        )
    weight_decay = transformers_weight_decay(weight_decay_rate, learning_rate)
    params = check_trainable_prompt(model)
    optimizer = Adafactor(
        params,
        lr=learning_rate,
        decay_rate=-decay_rate,
        weight_decay=weight_decay,
        scale_parameter=False,  # T5X multiply_by_parameter_scale=False
        relative_step=False,  # the external constant LR is used as is
        warmup_init=False,
        clip_threshold=1.0,  # Adafactor's update clipping, as in T5X
        beta1=None,  # no first moment, as in T5X's default
    )
    return optimizer, get_constant_schedule(optimizer)


def check_trainable_prompt(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The trainable parameters of a prompt-tuning `PeftModel`; raises when training would change nothing.

    `peft.prepare_model_for_kbit_training` sets `requires_grad=False` on every parameter it sees. Called on
    the `PeftModel` (after `get_peft_model`) it freezes the prompt too, and the Trainer then runs, logs a
    constant loss and saves the initial prompt without any error. This check names the fix instead.
    """
    prompt = prompt_parameters(model)
    if not prompt:
        raise TypeError(
            f"model is a {type(model).__name__}, not a prompt-tuning PeftModel; build it with "
            "peft.get_peft_model(base_model, SoftPromptConfig(...)) first."
        )
    if not any(p.requires_grad for p in prompt):
        raise ValueError(
            "the soft prompt is frozen (requires_grad=False), so training would not change it. "
            "peft.prepare_model_for_kbit_training freezes every parameter: call it on the base model "
            "*before* get_peft_model, not on the PeftModel. To continue training a saved prompt, use "
            "softprompt_ext.load_for_training(base_model, adapter)."
        )
    return [p for p in model.parameters() if p.requires_grad]


def load_for_training(
    base_model: torch.nn.Module, adapter: str, adapter_name: str = "default", **overrides: Any
):
    """A `PeftModel` whose trainable prompt starts exactly at the saved prompt of `adapter`.

    This is the supported way to continue training a saved prompt: PEFT refuses
    `PeftModel.from_pretrained(base, adapter, is_trainable=True)` for prompt adapters ("Cannot set a prompt
    learning adapter to trainable"). The new adapter's config is `SoftPromptConfig.continue_from(adapter)`
    (settings kept, `prompt_tuning_init="SAVED_PROMPT"`), so the saved adapter records where it started.

    To resume an interrupted `Trainer` run with its optimizer state and step count, use
    `trainer.train(resume_from_checkpoint=...)` instead; this function starts a new run from the prompt only.

    Args:
        base_model: the frozen base model the adapter was trained on (quantised or not).
        adapter: an adapter directory or Hub adapter id (softprompt-ext or plain PEFT prompt tuning).
        adapter_name: PEFT adapter name. Default "default".
        overrides: `SoftPromptConfig` fields to change, e.g. `num_virtual_tokens` (truncate or fill).
    """
    from peft import get_peft_model

    from ..config import SoftPromptConfig

    config = SoftPromptConfig.continue_from(adapter, **overrides)
    model = get_peft_model(base_model, config, adapter_name=adapter_name)
    check_trainable_prompt(model)
    return model
