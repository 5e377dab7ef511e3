"""Train K soft prompts in one run through one frozen model (multi-task prompt tuning, issue 19).

Lester, Al-Rfou, Constant (2021), https://arxiv.org/abs/2104.08691 -- sections 1 and 6: only the prompt
differs between tasks, so one frozen model serves (and here: trains) a batch whose examples belong to
different tasks. Each example carries its task name; the forward is the mixed-batch forward
(`softprompt_ext.placement.mixed_forward`): example i is run with prompt `task_names[i]`, so the gradient of
example i reaches only its own task's prompt.

Design decisions
----------------
* **K adapters, all trainable.** One PEFT adapter per task (`build_multitask_model`: `get_peft_model` for
  the first, `PeftModel.add_adapter` for the others, each with its own `SoftPromptConfig` and init). PEFT
  trains "the active adapter" only in the sense that its forward uses it; a prompt adapter's parameter is
  trainable exactly when its config has `inference_mode=False`, which `add_adapter` honours for every
  adapter (`PeftModel.set_requires_grad` refuses prompt learning). Nothing in PEFT is patched; the active
  adapter is irrelevant because the forward places every prompt itself.
* **The loss: sum over tasks of each task's own mean.** A separate run of task t with batch B_t minimises
  L_t = sum_{i in B_t} nll_i / sum_{i in B_t} n_i (the token mean over its batch, what PEFT's forward and the
  Trainer report). The multi-task batch is the union of the B_t and its loss is L = sum_t L_t. Prompt t
  appears only in L_t, so dL/d(prompt_t) = dL_t/d(prompt_t): every prompt gets exactly its separate-run
  gradient. (The mean over the whole mixed batch would instead scale task t's gradient by its share of the
  batch's tokens, which changes with the mixture.)
* **Optimizer: one Adafactor param group per prompt.** Transformers' Adafactor keeps its state (step count,
  factored second moments, update RMS clipping) per tensor and uses no statistic across tensors; with
  `scale_parameter=False, relative_step=False` (the paper's recipe) the group holds only hyperparameters.
  One group per prompt (`group["task"]`) therefore updates every prompt as K separate optimizers would, and a
  prompt absent from a batch (no gradient) is skipped, as its separate run never saw that step. The
  equivalence is tested (`tests/test_multitask.py`).
* **Order.** `MultiTaskTrainer` reads the training set in its stored order (no extra shuffle): the order is
  the mixture's, built with `softprompt_ext.training.mixing` (proportional, uniform, temperature, or equal
  steps per task); a resumed run skips the batches already seen, in the same order.
* Not supported: `gradient_accumulation_steps > 1` (each task's mean would need its token count over all
  micro-batches) and `predict_with_generate` during training (PEFT's generate uses one active adapter);
  evaluate per task afterwards (`softprompt_ext.inference.per_task.evaluate_per_task`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import torch
from peft import PeftModel, get_peft_model
from transformers import Seq2SeqTrainer
from transformers.optimization import Adafactor, get_constant_schedule

from ..adapters.reader import read_prompt
from ..config import SoftPromptConfig
from ..peft_internals import prompt_weight
from ..placement import MixedOutput, mixed_forward
from .recipe import PAPER_DECAY_RATE, PAPER_LEARNING_RATE, PAPER_WEIGHT_DECAY_RATE, transformers_weight_decay

TASK_COLUMN = "task"  # the dataset column holding each example's task (= adapter) name
TASK_NAMES = "task_names"  # the batch key the collator puts the B names under


# ---------------------------------------------------------------------------------------------- model
def build_multitask_model(base_model: torch.nn.Module, configs: Mapping[str, SoftPromptConfig]) -> PeftModel:
    """A `PeftModel` over the frozen `base_model` with one trainable prompt adapter per task.

    Args:
        base_model: the model to freeze (seq2seq or causal LM).
        configs: task name -> its `SoftPromptConfig` (each with its own P, init and `init_seed`); the task
            name is the adapter name. Insertion order is the task order.

    Raises:
        ValueError: no configs, or a config with `inference_mode=True` (that prompt would be frozen).
        TypeError: a config that is not a `SoftPromptConfig`.
    """
    if not isinstance(configs, Mapping) or not configs:
        raise ValueError(
            f"configs must be a non-empty mapping task name -> SoftPromptConfig, got {configs!r}; e.g. "
            "{'noun.animal': SoftPromptConfig(...), 'noun.food': SoftPromptConfig(...)}."
        )
    for name, config in configs.items():
        if not isinstance(config, SoftPromptConfig):
            raise TypeError(f"configs[{name!r}] is a {type(config).__name__}; pass a SoftPromptConfig per task.")
        if config.inference_mode:
            raise ValueError(
                f"configs[{name!r}] has inference_mode=True, so its prompt would be frozen; leave "
                "inference_mode=False for a prompt you train."
            )
    names = list(configs)
    model = get_peft_model(base_model, configs[names[0]], adapter_name=names[0])
    for name in names[1:]:
        model.add_adapter(name, configs[name])
    task_prompt_parameters(model, names)  # all trainable
    return model


def task_prompt_parameters(model: PeftModel, tasks: Sequence[str]) -> dict[str, torch.nn.Parameter]:
    """Task name -> its trainable prompt parameter `[P_t, H]`; raises for a missing or frozen prompt."""
    missing = [t for t in tasks if t not in getattr(model, "peft_config", {})]
    if missing:
        raise ValueError(
            f"tasks {missing} have no adapter in this model (adapters: {sorted(getattr(model, 'peft_config', {}))}); "
            "build the model with build_multitask_model(base, {task: SoftPromptConfig(...)})."
        )
    params = {t: prompt_weight(model, t) for t in tasks}
    frozen = [t for t, p in params.items() if not p.requires_grad]
    if frozen:
        raise ValueError(
            f"the prompts of tasks {frozen} are frozen (requires_grad=False): loaded adapters are frozen. "
            "Continue a saved prompt with SoftPromptConfig.continue_from(path) in build_multitask_model."
        )
    return cast(dict[str, torch.nn.Parameter], params)


# ---------------------------------------------------------------------------------------------- loss
def multitask_loss(output: MixedOutput, task_names: Sequence[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`(sum_t L_t, {t: L_t})`: L_t is task t's token-mean loss over its examples in the batch.

    `output` is `mixed_forward(..., labels=...)`'s result; `task_names` the B task names. See the module
    docstring for why each prompt's gradient is then its separate-run gradient. Tasks whose examples hold
    no label token are left out.
    """
    if output.num_label_tokens is None or output.loss_per_example is None:
        raise ValueError("multitask_loss needs mixed_forward(..., labels=...)'s output: it has no per-example loss.")
    counts = output.num_label_tokens  # [B]
    summed = torch.where(counts > 0, output.loss_per_example.nan_to_num(0.0) * counts, 0.0)  # [B] summed NLL
    per_task: dict[str, torch.Tensor] = {}
    for name in dict.fromkeys(task_names):
        rows = torch.tensor([n == name for n in task_names], device=summed.device)  # [B]
        tokens = counts[rows].sum()
        if int(tokens) > 0:
            per_task[name] = summed[rows].sum() / tokens
    return torch.stack(list(per_task.values())).sum(), per_task


def multitask_step_loss(model: PeftModel, batch: Mapping[str, Any]) -> tuple[torch.Tensor, MixedOutput]:
    """The multi-task loss of one collated batch (`input_ids`, `attention_mask`, `labels`, `task_names`)."""
    names = batch.get(TASK_NAMES)
    if names is None:
        raise ValueError(
            f"the batch has no {TASK_NAMES!r}; wrap your collator in MultiTaskCollator(collator) and give every "
            f"example a {TASK_COLUMN!r} column (softprompt_ext.training.mixing builds one)."
        )
    output = mixed_forward(
        model,
        batch["input_ids"],
        batch.get("attention_mask"),
        list(names),
        labels=batch["labels"],
        decoder_input_ids=batch.get("decoder_input_ids"),
    )
    loss, _ = multitask_loss(output, names)
    return loss, output


# ---------------------------------------------------------------------------------------------- optimizer
def multitask_optimizer(
    model: PeftModel,
    tasks: Sequence[str],
    learning_rate: float = PAPER_LEARNING_RATE,
    decay_rate: float = PAPER_DECAY_RATE,
    weight_decay_rate: float = PAPER_WEIGHT_DECAY_RATE,
) -> tuple[Adafactor, torch.optim.lr_scheduler.LambdaLR]:
    """`paper_optimizer` for K prompts: the paper's Adafactor with one param group per task (`group["task"]`).

    Equal, prompt by prompt, to K runs each with `paper_optimizer` (see the module docstring). Arguments as in
    `softprompt_ext.paper_optimizer`.
    """
    if isinstance(decay_rate, bool) or not isinstance(decay_rate, int | float) or not 0 < decay_rate <= 1:
        raise ValueError(
            f"decay_rate must be in (0, 1], got {decay_rate!r}; it is the paper's positive exponent "
            f"(paper: {PAPER_DECAY_RATE})."
        )
    weight_decay = transformers_weight_decay(weight_decay_rate, learning_rate)
    groups = [{"params": [p], "task": t} for t, p in task_prompt_parameters(model, tasks).items()]
    optimizer = Adafactor(
        groups,
        lr=learning_rate,
        decay_rate=-decay_rate,
        weight_decay=weight_decay,
        scale_parameter=False,
        relative_step=False,
        warmup_init=False,
        clip_threshold=1.0,
        beta1=None,
    )
    return optimizer, get_constant_schedule(optimizer)


# ---------------------------------------------------------------------------------------------- data
class MultiTaskCollator:
    """Wraps a collator (e.g. `DataCollatorForSeq2Seq`): takes each feature's task name out, collates the
    rest, and returns the batch with `batch["task_names"]` = the B names (a list of str)."""

    def __init__(self, collator: Callable[[list[dict[str, Any]]], Mapping[str, Any]], task_column: str = TASK_COLUMN):
        self.collator = collator
        self.task_column = task_column

    def __call__(self, features: list[Mapping[str, Any]]) -> dict[str, Any]:
        names, rest = [], []
        for i, feature in enumerate(features):
            if self.task_column not in feature:
                raise ValueError(
                    f"example {i} of the batch has no {self.task_column!r} field (keys: {sorted(feature)}); "
                    "every example needs its task name (the adapter to train)."
                )
            names.append(str(feature[self.task_column]))
            rest.append({k: v for k, v in feature.items() if k != self.task_column})
        batch = dict(self.collator(rest))
        batch[TASK_NAMES] = names
        return batch


# ---------------------------------------------------------------------------------------------- trainer
class MultiTaskTrainer(Seq2SeqTrainer):
    """`Seq2SeqTrainer` that trains every task's prompt at once (works for causal LMs as well).

    Use with `PaperTrainingArguments`, `data_collator=MultiTaskCollator(...)` and a training set with a
    `task` column in the order to train in (`softprompt_ext.training.mixing`). `tasks` defaults to every
    adapter of the model. Checkpoints hold every prompt (PEFT's layout: one sub-folder per adapter) and one
    optimizer with a param group per task; `train(resume_from_checkpoint=...)` restores all of them.
    """

    def __init__(self, *args: Any, tasks: Sequence[str] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.model: Any  # a PeftModel holding the task prompts (Trainer types it as any module)
        self.tasks = list(tasks) if tasks is not None else list(self.model.peft_config)
        task_prompt_parameters(self.model, self.tasks)
        if self.args.gradient_accumulation_steps != 1:
            raise ValueError(
                f"gradient_accumulation_steps={self.args.gradient_accumulation_steps}: multi-task training needs 1 "
                "(each task's mean loss would need its token count over all micro-batches); raise "
                "per_device_train_batch_size instead."
            )
        self.model_accepts_loss_kwargs = False  # the loss is our per-task mean, not the model's

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        columns = cast(list[str] | None, self._signature_columns)
        if columns is not None and TASK_COLUMN not in columns:
            columns.append(TASK_COLUMN)

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        return torch.utils.data.SequentialSampler(dataset)  # the mixture's order (module docstring)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, output = multitask_step_loss(self.model, inputs)
        return (loss, {"loss": loss, "logits": output.logits}) if return_outputs else loss

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            target = self.model if model is None else model
            cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, target)
            decay = set(self.get_decay_parameter_names(target))
            names = {id(p): n for n, p in target.named_parameters()}
            groups = [
                {"params": [p], "task": t, "weight_decay": self.args.weight_decay if names.get(id(p)) in decay else 0.0}
                for t, p in task_prompt_parameters(self.model, self.tasks).items()
            ]
            self.optimizer = cls(groups, **kwargs)
        return self.optimizer

    def _load_prompts(self, folder: str) -> None:
        """Copy every task's saved prompt from a checkpoint folder into the (trainable) parameters, in place."""
        for task, param in task_prompt_parameters(self.model, self.tasks).items():
            source = folder if task == "default" else os.path.join(folder, task)
            saved = read_prompt(source)  # [R, H] float32
            with torch.no_grad():
                param.copy_(saved[: param.shape[0]].to(param.device, param.dtype))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        self._load_prompts(resume_from_checkpoint)

    def _load_best_model(self):
        self._load_prompts(self.state.best_model_checkpoint)
