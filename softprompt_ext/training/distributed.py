"""Prompt tuning a frozen base sharded across processes (FSDP): keep the prompt whole, sync it, save it.

Only the prompt `[P, d_model]` trains; the base is frozen and, for XL/XXL, too big for one device, so FSDP
(or ZeRO-3) shards it. Three things go wrong when the prompt is sharded together with the base, and this
module is the small fix for each:

1. **The optimizer sees a different tensor.** FSDP1 with `use_orig_params=True` puts the prompt (it lives in
   `PeftModel.prompt_encoder`, outside every T5 block) into the root unit's flat parameter with the shared
   embedding; each rank's `.parameters()` then yields a *1-D slice* of the prompt (on 2 CPU ranks here:
   0 elements on rank 0, all 64 on rank 1). Adafactor factors only 2-D tensors and clips its update by the
   tensor's RMS, so on a slice it runs a different (unfactored, per-slice-clipped) optimizer than on one
   device. FSDP2 keeps a `[P/N, d]` DTensor, which Transformers' `Adafactor` rejects ("mixed torch.Tensor and
   DTensor", torch 2.13). `prompt_modules(model)` lists the prompt encoders, to pass as FSDP's
   `ignored_modules` (FSDP1) / `ignored_params` (FSDP2): the prompt then stays a whole, replicated 2-D
   parameter on every rank and the paper's Adafactor runs unchanged.
2. **Ignored parameters get no gradient sync.** `all_reduce_prompt_grads(model)` averages the prompt's
   gradient over the ranks (one all-reduce of P x d floats) before `optimizer.step()`;
   `PromptGradSyncCallback` does it inside a `Trainer` (`on_pre_optimizer_step`); there the prompt is kept out
   of the shards with `FSDP_IGNORED_MODULES=IGNORED_MODULES_REGEX` in the environment of `accelerate launch`.
3. **Saving.** A sharded or wrapped prompt must be gathered before it is written. `gather_prompt(model)` returns
   the full `[P, d]` tensor on every rank whatever the wrapper (none, DDP, FSDP1, FSDP2, ignored or not);
   `save_prompt_adapter(model, dir)` writes an ordinary PEFT adapter from the main rank only, with the
   gathered tensor, so `PeftModel.from_pretrained` loads it on one device.
4. **Resuming.** `save_prompt_checkpoint` / `load_prompt_checkpoint`: the whole prompt, its optimizer state
   and the step in one file (written atomically by rank 0), for a hand-written FSDP loop.

Everything here is a no-op without an initialised process group, so single-process code can call it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch

from ..peft_internals import prompt_encoders, prompt_parameters, prompt_weight, replace_prompt_weight

IGNORED_MODULES_REGEX = r"(.*\.)?prompt_encoder"
"""For accelerate's FSDP plugin (`FullyShardedDataParallelPlugin(ignored_modules=...)`, or the environment
variable `FSDP_IGNORED_MODULES` that `accelerate launch` / the Trainer read): the module names it fullmatches
are the prompt encoders of a `PeftModel`, and nothing of the base model."""


def unwrap(model: Any) -> Any:
    """The `PeftModel` inside DDP / FSDP1 wrappers (`.module`), or `model` itself (FSDP2 wraps in place)."""
    while hasattr(model, "module") and not prompt_encoders(model):
        model = model.module
    return model


def _dist_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def prompt_modules(model: Any) -> list[torch.nn.Module]:
    """The prompt encoders of a PEFT model: pass them as FSDP `ignored_modules` to keep the prompt whole.

    `FSDP(model, ignored_modules=prompt_modules(model), use_orig_params=True, ...)` (FSDP1), or
    `fully_shard(model, ignored_params=set(prompt_parameters(model)))` (FSDP2). Then call
    `all_reduce_prompt_grads` before each optimizer step.
    """
    encoders = prompt_encoders(unwrap(model))
    if not encoders:
        raise ValueError("model has no prompt encoder: pass the PeftModel of a SoftPromptConfig adapter")
    return encoders


def all_reduce_prompt_grads(model: Any) -> int:
    """Average the prompt's gradient over all ranks in place; returns the number of tensors reduced.

    Needed when the prompt is an FSDP-ignored parameter (FSDP then leaves its gradient rank-local). Under DDP
    or a sharded prompt the gradient is already synchronised: do not call it there (it would be harmless for
    DDP -- the mean of equal tensors -- but costs an all-reduce). Without a process group it does nothing.
    """
    if not _dist_ready() or torch.distributed.get_world_size() == 1:
        return 0
    world = torch.distributed.get_world_size()
    count = 0
    for param in prompt_parameters(unwrap(model)):
        if param.grad is None:
            param.grad = torch.zeros_like(param)  # a rank without a gradient still joins the collective
        torch.distributed.all_reduce(param.grad, op=torch.distributed.ReduceOp.SUM)
        param.grad.div_(world)
        count += 1
    return count


@contextlib.contextmanager
def full_prompt(model: Any, adapter_name: str = "default") -> Iterator[Any]:
    """Yield the `PeftModel` with the whole `[P, d_model]` prompt of `adapter_name` in place (read only).

    A collective under FSDP: enter it on every rank. FSDP1 with the prompt in a sharded flat parameter:
    `summon_full_params(writeback=False)`. FSDP2 (a DTensor prompt): the gathered tensor is put in place for
    the block and the DTensor put back after. An ignored, DDP or single-device prompt is already whole.
    PEFT's `save_pretrained` reads the prompt through the encoder's forward, so saving inside this block
    writes the whole prompt.
    """
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    peft_model = unwrap(model)
    weight = prompt_weight(peft_model, adapter_name)
    if isinstance(model, FSDP) and weight.dim() != 2:  # a view into a sharded flat parameter
        with FSDP.summon_full_params(model, writeback=False, recurse=True):
            yield peft_model
        return
    full_tensor = getattr(weight, "full_tensor", None)  # FSDP2: a DTensor
    if not callable(full_tensor):
        yield peft_model
        return
    whole = torch.nn.Parameter(full_tensor().detach(), requires_grad=False)
    sharded = replace_prompt_weight(peft_model, adapter_name, whole)
    try:
        yield peft_model
    finally:
        replace_prompt_weight(peft_model, adapter_name, sharded)


def gather_prompt(model: Any, adapter_name: str = "default") -> torch.Tensor:
    """The full prompt `[P, d_model]` of `adapter_name`, as a detached tensor copied to CPU, on every rank.

    Works on a plain `PeftModel`, under DDP, FSDP1 and FSDP2, the prompt sharded or FSDP-ignored. A collective
    under FSDP (see `full_prompt`): call it on every rank.
    """
    with full_prompt(model, adapter_name) as peft_model:
        return prompt_weight(peft_model, adapter_name).detach().to("cpu", copy=True)


def save_prompt_adapter(
    model: Any, save_directory: str | os.PathLike, adapter_name: str = "default", **save_kwargs: Any
) -> bool:
    """Save the adapter (P x d prompt, configs) from the main rank; returns whether this rank wrote it.

    Call it on every rank (the gather is a collective). The files are what `PeftModel.save_pretrained` writes
    on one device: `adapter_model.safetensors` holding `prompt_embeddings` `[P, d_model]`, plus the config
    files, loadable by plain PEFT. Ranks meet at a barrier afterwards, so no rank reads a half-written folder.
    """
    main = not _dist_ready() or torch.distributed.get_rank() == 0
    with full_prompt(model, adapter_name) as peft_model:
        if main:
            # An explicit state_dict: PEFT would otherwise call `model.state_dict()`, which under FSDP is a
            # collective (all-gathers in the state-dict hooks) and, entered on rank 0 alone, hangs.
            weight = prompt_weight(peft_model, adapter_name).detach()
            save_kwargs.setdefault("state_dict", {"prompt_embeddings": weight})
            peft_model.save_pretrained(str(save_directory), selected_adapters=[adapter_name], **save_kwargs)
    if _dist_ready():
        torch.distributed.barrier()
    return main


def save_prompt_checkpoint(
    model: Any, optimizer: torch.optim.Optimizer, path: str | os.PathLike, step: int, adapter_name: str = "default"
) -> bool:
    """Write the whole prompt, the optimizer state and the step to `path` (one file, atomically, rank 0 only).

    For a prompt kept out of the shards (`prompt_modules` ignored), whose optimizer state is then the same on
    every rank; a sharded prompt's optimizer holds per-rank slices, refused here. Call it on every rank.
    Resume with `load_prompt_checkpoint`. Returns whether this rank wrote the file.
    """
    from ..adapters.atomic import atomic_write

    prompt = gather_prompt(model, adapter_name)
    for group in optimizer.param_groups:
        for param in group["params"]:
            if tuple(param.shape) != tuple(prompt.shape):
                raise ValueError(
                    f"the optimizer steps a tensor of shape {tuple(param.shape)}, not the whole prompt "
                    f"{tuple(prompt.shape)}: keep the prompt out of the FSDP shards (prompt_modules) to checkpoint it"
                )
    main = not _dist_ready() or torch.distributed.get_rank() == 0
    if main:
        state = {"prompt": prompt, "optimizer": optimizer.state_dict(), "step": int(step)}
        atomic_write(path, lambda tmp: torch.save(state, tmp))
    if _dist_ready():
        torch.distributed.barrier()
    return main


def load_prompt_checkpoint(
    model: Any, optimizer: torch.optim.Optimizer, path: str | os.PathLike, adapter_name: str = "default"
) -> int:
    """Put a `save_prompt_checkpoint` file's prompt and optimizer state back on this rank; returns its step.

    The prompt must be whole on this rank (not wrapped yet, or FSDP-ignored). Tensors only (`weights_only`).
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    weight = prompt_weight(unwrap(model), adapter_name)
    if tuple(weight.shape) != tuple(state["prompt"].shape):
        raise ValueError(f"checkpoint prompt {tuple(state['prompt'].shape)} does not fit {tuple(weight.shape)}")
    with torch.no_grad():
        weight.copy_(state["prompt"].to(weight.device, weight.dtype))
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"])


def _callback_base() -> type:
    from transformers import TrainerCallback

    return TrainerCallback


class PromptGradSyncCallback(_callback_base()):  # type: ignore[misc]
    """`Trainer` callback: `all_reduce_prompt_grads` before every optimizer step (FSDP with the prompt ignored).

    With `Trainer(..., callbacks=[PromptGradSyncCallback()])` and the prompt encoders in the FSDP plugin's
    `ignored_modules`, every rank steps the same whole prompt with the same averaged gradient.
    Runs after gradient clipping; keep `max_grad_norm=0` (the paper's recipe) or clipping acts on rank-local
    gradients.
    """

    def on_pre_optimizer_step(self, args, state, control, **kwargs):  # noqa: D102
        model = kwargs.get("model")
        if model is not None:
            all_reduce_prompt_grads(model)
        return control
