"""Train K soft prompts in one run through one frozen model (multi-task prompt tuning).

Paper sections 1 and 6: only the prompt differs between tasks, so one frozen model trains a batch whose
examples belong to different tasks. Example i carries `task_names[i]` and goes through the mixed-batch
forward (`softprompt_ext.placement.mixed_forward`, `[B, P_i + T_i, H]`), so its gradient reaches only its own
task's prompt; one PEFT adapter per task, all trainable (`build_multitask_model`).

The one decision: the loss is the sum over tasks of each task's own token mean, L = sum_t L_t, so every
prompt gets exactly the gradient of its separate run; with one Adafactor param group per prompt
(`multitask_optimizer`) K prompts train as K runs would, also under gradient accumulation and DDP
(`MultiTaskTrainer` counts each task's label tokens over the whole step first). Why, and what is not
supported: docs/reference/design-notes.md, "Training K prompts in one run".
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from peft import PeftModel, get_peft_model
from transformers import Seq2SeqTrainer, Trainer
from transformers.optimization import Adafactor, get_constant_schedule

from ..adapters.reader import read_prompt
from ..config import SoftPromptConfig
from ..peft_internals import prompt_weight
from ..placement import MixedOutput, _is_encoder_decoder, mixed_forward
from ..special_tokens import IGNORE_INDEX
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
def multitask_loss(
    output: MixedOutput,
    task_names: Sequence[str],
    token_counts: Mapping[str, torch.Tensor | int] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`(sum_t L_t, {t: L_t})`: L_t is task t's summed NLL in the batch over its label-token count.

    `output` is `mixed_forward(..., labels=...)`'s result; `task_names` the B task names. Without
    `token_counts` the count is task t's label tokens in this batch (L_t its token mean). With `token_counts`
    (task -> count) the given count is the denominator instead: the tokens of the whole accumulation window
    (and of every process), so that summing the micro-batch losses gives each task's mean over the full
    batch. See the module docstring for why each prompt's gradient is then its separate-run gradient. Tasks
    whose examples hold no label token are left out.
    """
    if output.num_label_tokens is None or output.loss_per_example is None:
        raise ValueError("multitask_loss needs mixed_forward(..., labels=...)'s output: it has no per-example loss.")
    counts = output.num_label_tokens  # [B]
    summed = torch.where(counts > 0, output.loss_per_example.nan_to_num(0.0) * counts, 0.0)  # [B] summed NLL
    per_task: dict[str, torch.Tensor] = {}
    for name in dict.fromkeys(task_names):
        rows = torch.tensor([n == name for n in task_names], device=summed.device)  # [B]
        tokens = counts[rows].sum()
        if int(tokens) == 0:
            continue
        if token_counts is None:
            per_task[name] = summed[rows].sum() / tokens
            continue
        if name not in token_counts or int(token_counts[name]) < int(tokens):
            raise ValueError(
                f"token_counts[{name!r}] = {token_counts.get(name)!r} but this batch alone holds {int(tokens)} "
                f"label tokens of task {name!r}; token_counts must count the task's label tokens over the whole "
                "accumulation window (every micro-batch, every process), this batch included."
            )
        per_task[name] = summed[rows].sum() / token_counts[name]
    return torch.stack(list(per_task.values())).sum(), per_task


def label_token_counts(batch: Mapping[str, Any], encoder_decoder: bool) -> torch.Tensor:
    """`[B]` label tokens per example of a collated batch, as `mixed_forward` counts them (`num_label_tokens`).

    Seq2seq: labels other than -100. Decoder-only: labels other than -100 at positions with
    `attention_mask == 1` (mixed_forward ignores labels on padding; with a prompt of P >= 1 rows in front,
    every real token is predicted, the first one by the prompt's last row).
    """
    labels = batch["labels"]
    valid = labels != IGNORE_INDEX
    mask = batch.get("attention_mask")
    if not encoder_decoder and mask is not None:
        valid = valid & mask.to(valid.device).bool()
    return valid.sum(1)


def multitask_step_loss(
    model: PeftModel, batch: Mapping[str, Any], token_counts: Mapping[str, torch.Tensor | int] | None = None
) -> tuple[torch.Tensor, MixedOutput]:
    """The multi-task loss of one collated batch (`input_ids`, `attention_mask`, `labels`, `task_names`).

    `token_counts`: see `multitask_loss` (None: each task's mean over this batch).
    """
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
    loss, _ = multitask_loss(output, names, token_counts)
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
@dataclass
class _Window:
    """One optimizer step's micro-batches: `local` / `total` `[K]` label tokens per task (this process / all
    processes), `seen` the tokens the forwards counted so far, `remaining` the micro-batches still to run."""

    local: torch.Tensor
    total: torch.Tensor
    seen: torch.Tensor
    remaining: int


def _world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class MultiTaskTrainer(Seq2SeqTrainer):
    """`Seq2SeqTrainer` that trains every task's prompt at once (works for causal LMs as well).

    Use with `PaperTrainingArguments`, `data_collator=MultiTaskCollator(...)` and a training set with a
    `task` column in the order to train in (`softprompt_ext.training.mixing`). `tasks` defaults to every
    adapter of the model. Checkpoints hold every prompt (PEFT's layout: one sub-folder per adapter) and one
    optimizer with a param group per task; `train(resume_from_checkpoint=...)` restores all of them.

    Gradient accumulation and DDP (`accelerate launch` / torchrun, several processes): each optimizer step's
    loss is, for every task, its summed NLL over all micro-batches of all processes divided by its label
    tokens there -- the loss of one process with the whole global batch (module docstring, "Accumulation and
    processes").
    """

    # compute_loss already divides by the whole window's token counts: the Trainer must not divide by the
    # number of micro-batches again (transformers >= 5 reads this attribute in training_step)
    loss_is_scaled_for_ga = True

    def __init__(self, *args: Any, tasks: Sequence[str] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.model: Any  # a PeftModel holding the task prompts (Trainer types it as any module)
        self.tasks = list(tasks) if tasks is not None else list(self.model.peft_config)
        task_prompt_parameters(self.model, self.tasks)
        self.model_accepts_loss_kwargs = False  # the loss is our per-task mean, not the model's
        self._window: _Window | None = None
        if self.args.gradient_accumulation_steps > 1 and not hasattr(Trainer, "loss_is_scaled_for_ga"):
            raise ValueError(
                f"gradient_accumulation_steps={self.args.gradient_accumulation_steps} needs a transformers whose "
                "Trainer reads `loss_is_scaled_for_ga` (this one would divide the already-normalised loss by the "
                "number of micro-batches again); upgrade transformers or set gradient_accumulation_steps=1 and "
                "raise per_device_train_batch_size instead."
            )

    # -- accumulation window: count every task's label tokens over the step's micro-batches (and processes)
    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        self._window = self._count_window(batch_samples, device) if batch_samples else None
        return batch_samples, num_items_in_batch

    def _count_window(self, batch_samples: Sequence[Mapping[str, Any]], device: torch.device) -> _Window:
        index = {t: i for i, t in enumerate(self.tasks)}
        encoder_decoder = _is_encoder_decoder(self.model)
        local = torch.zeros(len(self.tasks), dtype=torch.long)
        for number, batch in enumerate(batch_samples):
            names = batch.get(TASK_NAMES)
            if names is None:
                raise ValueError(
                    f"micro-batch {number} has no {TASK_NAMES!r}; pass data_collator=MultiTaskCollator(collator) "
                    f"and give every example a {TASK_COLUMN!r} column."
                )
            if "labels" not in batch:
                raise ValueError(
                    f"micro-batch {number} has no 'labels' (keys: {sorted(batch)}); multi-task training needs "
                    "the target ids of every example (-100 where no loss is wanted)."
                )
            unknown = sorted(set(names) - set(index))
            if unknown:
                raise ValueError(
                    f"micro-batch {number} holds examples of tasks {unknown}, which are not among the trained "
                    f"tasks {self.tasks}; add them to MultiTaskTrainer(tasks=...) (and build_multitask_model) or "
                    "drop those examples."
                )
            rows = torch.tensor([index[n] for n in names])
            local.index_add_(0, rows, label_token_counts(batch, encoder_decoder).cpu().long())
        total = local.clone()
        if _world_size() > 1:  # every task's count over the global batch
            total = total.to(device)
            torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.SUM)
            total = total.cpu()
        return _Window(local=local, total=total, seen=torch.zeros_like(local), remaining=len(batch_samples))

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        window = self._window
        if window is not None:
            window.remaining -= 1
            if window.remaining == 0:
                self._window = None
                self._finish_window(window)
        # This process's share of the step's loss; the Trainer logs the mean over processes, so scale the
        # logged value by the world size to log the global loss (the backward above used the unscaled loss).
        return loss * _world_size()

    def _finish_window(self, window: _Window) -> None:
        """After the window's last backward: check the counts, and sum every prompt's gradient over processes."""
        if not torch.equal(window.seen, window.local):
            raise RuntimeError(
                f"label tokens per task {dict(zip(self.tasks, window.local.tolist(), strict=True))} were counted "
                f"from the batches, but the forwards averaged over {dict(zip(self.tasks, window.seen.tolist(), strict=True))}; "
                "label_token_counts no longer matches mixed_forward's num_label_tokens (a bug: please report it)."
            )
        if _world_size() == 1:
            return
        # The forward bypasses DDP's wrapper (it places K prompts itself), so DDP does not reduce: each process
        # holds d(its share)/d(prompt); the global gradient is their sum. Same task order on every process;
        # a task with no label token anywhere keeps grad None (Adafactor skips it, as a separate run would).
        for i, param in enumerate(task_prompt_parameters(self.model, self.tasks).values()):
            if int(window.total[i]) == 0:
                continue
            grad = param.grad if param.grad is not None else torch.zeros_like(param)
            torch.distributed.all_reduce(grad, op=torch.distributed.ReduceOp.SUM)
            param.grad = grad

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        columns = cast(list[str] | None, self._signature_columns)
        if columns is not None and TASK_COLUMN not in columns:
            columns.append(TASK_COLUMN)

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        return torch.utils.data.SequentialSampler(dataset)  # the mixture's order (module docstring)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        window = self._window  # set for a training micro-batch, None in evaluation
        counts = None if window is None else dict(zip(self.tasks, window.total, strict=True))
        loss, output = multitask_step_loss(self.model, inputs, counts)
        if window is not None:
            index = {t: i for i, t in enumerate(self.tasks)}
            rows = torch.tensor([index[n] for n in inputs[TASK_NAMES]])
            assert output.num_label_tokens is not None
            window.seen.index_add_(0, rows, output.num_label_tokens.detach().cpu().long())
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
