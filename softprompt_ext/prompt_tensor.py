"""Get a prompt tensor: `load_prompt(source)` -> `[P, H]` (float32, on the CPU), from a model or an adapter.

    from softprompt_ext.prompt_tensor import load_prompt

    prompt = load_prompt("my-adapter")        # a directory, a Hub id, a .safetensors file,
    prompt = load_prompt(peft_model, "sst2")  # a PeftModel (default: its active adapter), or a [P, H] tensor

`P` is the prompt length, `H` the model width. This is the one way for a user or a new tool. Underneath there
are two doors and every function that needs a prompt goes through one of them:

* a loaded model: `peft_internals.prompt_weight(model, name)`, the live parameter `[R, H]` (R = 2P for a plain
  PEFT seq2seq adapter, else P). `placement.loaded_prompts` (a batch of adapters, validated, gradients kept)
  and `training.distributed.gather_prompt` (FSDP: a collective on every rank) call it for their own needs;
* a saved adapter: `adapters.reader.read_prompt`, the one reader of untrusted weight files, reached through
  `adapters.validation.validate_adapter` so that config, record and weights are checked together.

Only the first P rows reach the encoder (`peft_internals.encoder_prompt`, paper section 2), so only they are
returned.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from .adapters.reader import read_prompt
from .adapters.validation import AdapterReport, validate_adapter
from .peft_internals import encoder_prompt, has_prompt_encoder, is_prompt_tuning, prompt_weight

__all__ = ["adapter_prompt", "check_exists", "load_prompt", "model_prompt"]


def load_prompt(source: Any, adapter_name: str | None = None) -> torch.Tensor:
    """The prompt `[P, H]` (float32, on the CPU) of an adapter, a `PeftModel`, or a tensor.

    Args:
        source: an adapter directory, a Hub adapter id, a `.safetensors` file holding `prompt_embeddings`, a
            `peft.PeftModel` with a prompt-tuning adapter, or a `[P, H]` tensor.
        adapter_name: for a `PeftModel`: which adapter (default: the active one).
    Raises:
        ValueError: the source is missing, damaged or not a prompt-tuning adapter.
    """
    if isinstance(source, torch.Tensor):
        if source.dim() != 2:
            raise ValueError(f"a prompt tensor must be [P, d_model], got shape {tuple(source.shape)}.")
        return source.detach().float().cpu()
    if hasattr(source, "peft_config") and hasattr(source, "get_base_model"):
        return model_prompt(source, adapter_name)[0]
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str):
        raise TypeError(
            f"a prompt source must be an adapter path, a Hub id, a PeftModel or a tensor, got {type(source).__name__}."
        )
    check_exists(source)
    if os.path.isfile(source):
        return read_prompt(source)  # [P, H]: a bare .safetensors file, checked by the one reader
    return adapter_prompt(source)[0]


def check_exists(source: str) -> None:
    """A string that is clearly a local path (not a Hub id `owner/name`) must exist."""
    looks_local = source.startswith((".", "/", "~")) or source.count("/") > 1 or "\\" in source
    looks_local = looks_local or source.endswith(".safetensors")
    if looks_local and not os.path.exists(source):
        raise ValueError(f"{source!r}: no such file or directory; pass an adapter directory or a Hub adapter id.")


def adapter_prompt(adapter: str) -> tuple[torch.Tensor, AdapterReport]:
    """(prompt `[P, H]`, the validation report) of a saved adapter directory or Hub adapter id."""
    report = validate_adapter(adapter)  # config, record and weights through the one reader
    return encoder_prompt(report.prompt, report.config), report  # [P, H]: plain PEFT seq2seq saves 2P rows


def model_prompt(model: Any, adapter_name: str | None) -> tuple[torch.Tensor, Any]:
    """(prompt `[P, H]` detached on the CPU in float32, its config) of one adapter of a `PeftModel`."""
    name = adapter_name or model.active_adapter
    if name not in model.peft_config:
        raise ValueError(f"adapter_name={name!r} is not in this model; it has {sorted(model.peft_config)}.")
    config = model.peft_config[name]
    if not is_prompt_tuning(config) or not has_prompt_encoder(model, name):
        raise ValueError(
            f"adapter {name!r} is a {getattr(config.peft_type, 'value', config.peft_type)} adapter; the readout "
            "reads prompt-tuning (PROMPT_TUNING) adapters only."
        )
    weight = prompt_weight(model, name)  # [rows, H]
    return encoder_prompt(weight, config).detach().float().cpu(), config  # [P, H]
