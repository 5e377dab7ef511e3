"""Checking a prompt adapter before loading it: an untrusted or damaged adapter fails loudly, naming the file.

Lester, Al-Rfou, Constant (2021), "The Power of Scale for Parameter-Efficient Prompt Tuning",
https://arxiv.org/abs/2104.08691 -- section 1 and 6: a prompt is a small file that is shared, stored per
task and loaded next to many others into one frozen model. Such files come from strangers on the Hub, so
reading one must never run code, and a damaged one must never become a silently wrong model.

What `validate_adapter` checks, in order, each failure one `AdapterError` (a `ValueError`) naming the file:

1. `adapter_config.json`: present, at most 1 MiB, UTF-8 JSON, an object, `peft_type == "PROMPT_TUNING"`,
   and every field PEFT reads has the right type (`num_virtual_tokens` an int >= 1, `token_dim` an int or
   null, ...); then the config class's own validation runs (`SoftPromptConfig` when the adapter carries a
   `softprompt_config.json` record, PEFT's `PromptTuningConfig` otherwise), its error prefixed with the file.
2. The weights: `adapter_model.safetensors` only. A pickle-only adapter (`adapter_model.bin`) is refused:
   unpickling can run code, and even `torch.load(weights_only=True)` -- PEFT's fallback -- had a code
   execution hole (CVE-2025-32434, fixed in torch 2.6). Nothing here calls `torch.load`.
3. The safetensors file parses (a truncated or corrupted header or body is caught by the safetensors reader,
   which checks that the header's offsets cover the file exactly), holds `prompt_embeddings` and nothing
   else of concern, and the tensor is 2-D, floating point (F16/BF16/F32/F64; PEFT would cast integers or
   booleans silently), has the rows the config implies (P; P x num_transformer_submodules for a plain PEFT
   adapter) and `token_dim` columns, and is finite. Shape and dtype are read from the header before the
   data, so a tensor that does not fit the config is refused without reading its data.
4. With `base_model`: the task type fits the model (SEQ_2_SEQ_LM needs an encoder-decoder model, CAUSAL_LM a
   decoder-only one), the prompt width equals the model's d_model (`get_input_embeddings()` width), and every
   `modules_to_save` tensor fits the base module it stands for: present, same shape, a compatible dtype, finite;
   a declared module the file has no tensors for is one clear error, not PEFT's bare `KeyError`.

`load_adapter_safely` validates first and then loads with PEFT's own `PeftModel.from_pretrained` (or
`load_adapter` for a `PeftModel`), compares the loaded prompt with the validated one (so a file swapped
between the two reads is caught) and removes a half-added adapter when loading fails. It holds whatever
PEFT does, so it is the guarantee for callers; `PeftModel.from_pretrained` alone raises PEFT's own errors
for a config without `peft_type` or with bad JSON, before any softprompt-ext code runs.

Not checked (cannot be): that a well-formed prompt is a *good* prompt. Values are bounded only by
finiteness; a wrong but finite prompt from a stranger is the stranger's prompt.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from huggingface_hub import hf_hub_download
from peft import PeftModel, PromptTuningConfig

from ..config import RECORD_KEY, RECORD_NAME, SoftPromptConfig, known_fields, split_embedded_record
from ..peft_internals import CONFIG_NAME, modules_to_save_tensors, prompt_weight, saved_prompt_rows
from .reader import (
    AdapterError,
    find_weights,
    interrupted_save_hint,
    read_adapter_json,
    read_prompt,
)

# adapter_config.json fields PEFT reads for a prompt adapter: name -> (allowed JSON types, may be null)
_FIELD_TYPES: dict[str, tuple[tuple[type, ...], bool]] = {
    "num_virtual_tokens": ((int,), False),
    "token_dim": ((int,), True),
    "num_transformer_submodules": ((int,), True),
    "num_attention_heads": ((int,), True),
    "num_layers": ((int,), True),
    "task_type": ((str,), True),
    "prompt_tuning_init": ((str,), True),
    "prompt_tuning_init_text": ((str,), True),
    "tokenizer_name_or_path": ((str,), True),
    "tokenizer_kwargs": ((dict,), True),
    "base_model_name_or_path": ((str,), True),
    "revision": ((str,), True),
    "inference_mode": ((bool,), True),
    "modules_to_save": ((list,), True),
}


@dataclass(frozen=True)
class AdapterReport:
    """What `validate_adapter` found in a valid adapter.

    Attributes:
        location: the directory or Hub repo id given (with the subfolder, if any).
        config: `SoftPromptConfig` with a `softprompt_config.json`, else PEFT's `PromptTuningConfig`.
        weights_file: local path of the validated `adapter_model.safetensors`.
        prompt: the saved prompt `[R, H]` in float32 (R = P, or P x num_transformer_submodules for plain PEFT).
        plain, record: the parsed `adapter_config.json` and `softprompt_config.json` (None when absent).
    """

    location: str
    config: PromptTuningConfig
    weights_file: str
    prompt: torch.Tensor
    plain: dict = field(default_factory=dict, repr=False)
    record: dict | None = field(default=None, repr=False)

    @property
    def d_model(self) -> int:
        return int(self.prompt.shape[1])


def validate_adapter(
    path_or_repo: str | os.PathLike,
    base_model: torch.nn.Module | None = None,
    *,
    subfolder: str | None = None,
    **hub_kwargs: Any,
) -> AdapterReport:
    """Check a prompt adapter (directory or Hub repo id) without running any of its content.

    Args:
        path_or_repo: adapter directory or Hub repo id.
        base_model: optional model (a `PreTrainedModel` or a `PeftModel`) the adapter must fit: its d_model
            (input-embedding width) must equal the prompt's width, and its modules named in `modules_to_save`
            must match the saved tensors in shape and dtype.
        subfolder: subfolder of the adapter inside `path_or_repo`.
        **hub_kwargs: passed to `huggingface_hub.hf_hub_download` (`revision`, `token`, `cache_dir`, ...).

    Returns:
        An `AdapterReport` with the built config and the prompt `[R, H]`.

    Raises:
        AdapterError: (a `ValueError`) for every problem in the adapter's files, naming the file.
        TypeError: when `path_or_repo` is not a path or `base_model` is not a torch module.
    """
    if not isinstance(path_or_repo, str | os.PathLike):
        raise TypeError(f"path_or_repo must be an adapter directory or Hub repo id, got {path_or_repo!r}.")
    path_or_repo = os.fspath(path_or_repo)
    if base_model is not None and not isinstance(base_model, torch.nn.Module):
        raise TypeError(f"base_model must be a torch model or None, got {type(base_model).__name__}.")
    where = os.path.join(path_or_repo, subfolder) if subfolder else path_or_repo

    plain = read_adapter_json(path_or_repo, CONFIG_NAME, subfolder, **hub_kwargs)
    if plain is None:
        raise AdapterError(
            f"No {CONFIG_NAME} at {where!r}: it is not an adapter directory or repo." + interrupted_save_hint(where)
        )
    config_file = os.path.join(where, CONFIG_NAME)
    _check_fields(plain, config_file)
    record = read_adapter_json(path_or_repo, RECORD_NAME, subfolder, **hub_kwargs)
    embedded = split_embedded_record(plain)[1]
    config = build_config(plain, record if record is not None else embedded, config_file)
    record = _reconcile_records(record, embedded, config_file)  # after: a bad value is named first

    if base_model is not None:
        _check_task_type(config, base_model, config_file)
    weights_file = find_weights(path_or_repo, subfolder, **hub_kwargs)
    prompt = read_prompt(
        weights_file,
        expected_rows=saved_prompt_rows(config),
        token_dim=config.token_dim,
        d_model=_model_dim(base_model) if base_model is not None else None,
        modules_to_save=config.modules_to_save,
        module_tensors=modules_to_save_tensors(base_model, config.modules_to_save) if base_model is not None else None,
    )  # [R, H]
    return AdapterReport(
        location=where, config=config, weights_file=weights_file, prompt=prompt, plain=plain, record=record
    )


def load_adapter_safely(
    model: torch.nn.Module, path_or_repo: str | os.PathLike, adapter_name: str = "default", **kwargs: Any
) -> PeftModel:
    """`validate_adapter`, then load with PEFT, then check that PEFT loaded exactly the validated prompt.

    Args:
        model: a base model (loaded with `PeftModel.from_pretrained`) or a `PeftModel` (the adapter is added
            with `model.load_adapter`; on failure the half-added adapter is deleted again).
        path_or_repo: adapter directory or Hub repo id.
        adapter_name: name of the loaded adapter.
        **kwargs: passed to PEFT's loader (`subfolder`, `revision`, `torch_device`, ...).

    Returns:
        The `PeftModel` holding the adapter (`model` itself when it is a `PeftModel`).
    """
    path_or_repo = os.fspath(path_or_repo) if isinstance(path_or_repo, os.PathLike) else path_or_repo
    hub_keys = inspect.signature(hf_hub_download).parameters
    hub_kwargs = {k: v for k, v in kwargs.items() if k in hub_keys and k != "subfolder"}
    report = validate_adapter(path_or_repo, model, subfolder=kwargs.get("subfolder"), **hub_kwargs)
    if isinstance(model, PeftModel):
        if adapter_name in model.peft_config:
            raise ValueError(
                f"adapter_name={adapter_name!r} is already loaded; pick another name or delete it first with "
                f"model.delete_adapter({adapter_name!r})."
            )
        peft_model = model
        try:
            model.load_adapter(path_or_repo, adapter_name=adapter_name, **kwargs)
            _check_loaded(model, adapter_name, report)
        except BaseException:
            if adapter_name in model.peft_config:  # PEFT adds the adapter before reading the weights
                model.delete_adapter(adapter_name)
            raise
    else:
        peft_model = PeftModel.from_pretrained(model, path_or_repo, adapter_name=adapter_name, **kwargs)
        _check_loaded(peft_model, adapter_name, report)
    return peft_model


# ------------------------------------------------------------------------------------------- config
def _check_fields(plain: dict[str, Any], config_file: str) -> None:
    """peft_type and the types of the fields PEFT reads; the config classes check values afterwards."""
    if "peft_type" not in plain:
        raise AdapterError(f"{config_file}: no 'peft_type' key; every PEFT adapter config names its method.")
    if plain["peft_type"] != "PROMPT_TUNING":
        raise AdapterError(
            f"{config_file}: peft_type={plain['peft_type']!r}; only prompt-tuning adapters (peft_type "
            "'PROMPT_TUNING') are validated here."
        )
    if "num_virtual_tokens" not in plain:
        raise AdapterError(
            f"{config_file}: no 'num_virtual_tokens' key; a prompt adapter records its length P."
        )
    for name, (types, nullable) in _FIELD_TYPES.items():
        if name not in plain or (plain[name] is None and nullable):
            continue
        value = plain[name]
        ok = isinstance(value, types) and not (bool not in types and isinstance(value, bool))
        if not ok:
            expected = " or ".join(t.__name__ for t in types) + (" or null" if nullable else "")
            raise AdapterError(
                f"{config_file}: {name}={value!r} has type {type(value).__name__}, expected {expected}."
            )
    for name in ("num_virtual_tokens", "token_dim"):
        if isinstance(plain.get(name), int) and plain[name] < 1:
            raise AdapterError(f"{config_file}: {name}={plain[name]} must be >= 1.")
    if plain.get("num_transformer_submodules") not in (None, 1, 2):
        raise AdapterError(
            f"{config_file}: num_transformer_submodules={plain['num_transformer_submodules']!r} "
            "must be 1 or 2."
        )


def _reconcile_records(record: dict | None, embedded: dict | None, config_file: str) -> dict | None:
    """The adapter's record: `softprompt_config.json`, or the copy in `adapter_config.json` when that is all.

    An adapter saved by softprompt-ext holds both, equal; a plain-PEFT re-save keeps only the copy. Two that
    differ mean one file was edited or swapped: refused, naming both.
    """
    if record is not None and embedded is not None and record != embedded:
        raise AdapterError(
            f"{config_file}: auto_mapping[{RECORD_KEY!r}] differs from {RECORD_NAME} beside it (one of the two was "
            f"edited or replaced); make them equal, or delete auto_mapping[{RECORD_KEY!r}] to keep {RECORD_NAME}."
        )
    return record if record is not None else embedded


def build_config(
    plain: dict[str, Any], record: dict[str, Any] | None, config_file: str, **overrides: Any
) -> PromptTuningConfig:
    """The config object of a parsed adapter, its validation errors prefixed with the file.

    `SoftPromptConfig` when the adapter carries a record, else PEFT's `PromptTuningConfig` built the way PEFT's
    `from_pretrained` builds it: unknown keys dropped with a warning, `overrides` only where the file is silent.
    """
    try:
        if record is not None:
            return SoftPromptConfig.from_parts(plain, record, **overrides)
        return PromptTuningConfig(**known_fields(PromptTuningConfig, {**overrides, **plain}, config_file, stacklevel=4))
    except (ValueError, TypeError) as exc:
        files = config_file if record is None else f"{config_file} + {RECORD_NAME}"
        raise AdapterError(f"{files}: {exc}") from exc


# ------------------------------------------------------------------------------------------- model
def _model_dim(model: torch.nn.Module) -> int:
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    get = getattr(base, "get_input_embeddings", None)
    embeddings = get() if callable(get) else None
    if embeddings is None or not hasattr(embeddings, "weight"):
        raise TypeError(
            f"base_model ({type(base).__name__}) has no input embeddings (get_input_embeddings()); pass the "
            "transformers model the adapter was trained on."
        )
    return int(embeddings.weight.shape[-1])


def _check_task_type(config: PromptTuningConfig, model: torch.nn.Module, config_file: str) -> None:
    """A SEQ_2_SEQ_LM prompt needs an encoder-decoder model, a CAUSAL_LM prompt a decoder-only one: PEFT would
    load either onto either and place the prompt where the other kind of model never reads it."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    encoder_decoder = getattr(getattr(base, "config", None), "is_encoder_decoder", None)
    task = getattr(config.task_type, "value", config.task_type)
    expected = {"SEQ_2_SEQ_LM": True, "CAUSAL_LM": False}.get(str(task))
    if expected is None or encoder_decoder is None or bool(encoder_decoder) == expected:
        return
    kind, other = ("a decoder-only", "an encoder-decoder") if expected else ("an encoder-decoder", "a decoder-only")
    raise AdapterError(
        f"{config_file}: task_type={task!r} but the base model ({type(base).__name__}) is {kind} model: the prompt "
        f"was trained for {other} model (base_model_name_or_path={config.base_model_name_or_path!r}); load it "
        "onto that model."
    )


def _check_loaded(model: PeftModel, adapter_name: str, report: AdapterReport) -> None:
    """The prompt PEFT loaded must be the validated one (a file replaced between the two reads is caught)."""
    loaded = prompt_weight(model, adapter_name).detach()  # [R, H]
    expected = report.prompt.to(device=loaded.device, dtype=loaded.dtype)
    if loaded.shape != expected.shape or not torch.equal(loaded, expected):
        raise AdapterError(
            f"{report.weights_file}: the prompt PEFT loaded differs from the validated one; the adapter "
            "changed on disk while loading. Load it again."
        )
