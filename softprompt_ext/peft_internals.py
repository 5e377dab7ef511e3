"""The one module that touches PEFT's internals: every attribute path, private helper and registry slot.

softprompt-ext extends PEFT without patching it (see `registration.py`), but a few things it needs are not
public API: the registry dicts, the prompt encoder's base class, where a `PeftModel` keeps its prompts and
input embeddings, how `from_pretrained` splits its keyword arguments, how many rows a plain PEFT prompt
adapter saves. Each is reached through a function or constant here, and each has a test in
`tests/test_peft_internals.py` that names the PEFT behaviour it relies on -- so a PEFT upgrade that changes one
fails there first, and this file is the only one to fix. Everywhere else the library uses PEFT's public
names only (`from peft import PeftModel, get_peft_model, PromptTuningConfig, ...`); `tests/test_architecture.py`
checks that with a search of the source.
"""

from __future__ import annotations

import functools
import threading
import warnings
from types import FrameType
from typing import Any, cast

import torch
from peft import MODEL_TYPE_TO_PEFT_MODEL_MAPPING, PeftModel, PromptTuningConfig
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
from peft.tuners.prompt_tuning import PromptEmbedding
from peft.tuners.tuners_utils import BasePromptEncoder
from peft.utils import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME, AuxiliaryTrainingWrapper, PeftType
from peft.utils.integrations import gather_params_ctx

__all__ = [
    "CONFIG_NAME",
    "PEFT_TYPE_TO_CONFIG_MAPPING",
    "PEFT_TYPE_TO_TUNER_MAPPING",
    "PROMPT_KEY",
    "SAFETENSORS_WEIGHTS_NAME",
    "WEIGHTS_NAME",
    "BasePromptEncoder",
    "PeftType",
    "PromptEmbedding",
    "active_prompt_config",
    "adapter_load_targets",
    "causal_lm_model_class",
    "prompt_tuning_registry_entries",
    "set_prompt_tuning_registry_entries",
    "set_causal_lm_model_class",
    "causal_generate_reinserts_prompt",
    "generate_differs_from_forward",
    "encoder_prompt",
    "gather_params_ctx",
    "PromptEncoderBase",
    "input_embeddings",
    "is_prompt_tuning",
    "modules_to_save_tensors",
    "prompt_parameters",
    "prompt_weight",
    "record_peft_version_missing",
    "saved_prompt_rows",
    "split_from_pretrained_kwargs",
    "warn_if_causal_generate_is_broken",
]

PROMPT_KEY = "prompt_embeddings"  # the tensor name PEFT saves a prompt-tuning adapter's prompt under


# ---------------------------------------------------------------------------------------------- registries
def prompt_tuning_registry_entries() -> tuple[Any, Any]:
    """`(tuner class, config class)` PEFT builds for `peft_type=PROMPT_TUNING` (its two registry slots)."""
    return (
        PEFT_TYPE_TO_TUNER_MAPPING.get(PeftType.PROMPT_TUNING),
        PEFT_TYPE_TO_CONFIG_MAPPING.get(PeftType.PROMPT_TUNING),
    )


def set_prompt_tuning_registry_entries(tuner: type, config: type) -> None:
    """Put `tuner` and `config` in PEFT's PROMPT_TUNING registry slots (what `get_peft_model` and
    `PeftModel.from_pretrained` look up)."""
    PEFT_TYPE_TO_TUNER_MAPPING[PeftType.PROMPT_TUNING] = tuner
    PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.PROMPT_TUNING] = config


def causal_lm_model_class() -> type:
    """The `PeftModel` class PEFT builds for `task_type="CAUSAL_LM"` (its task registry slot, read by
    `get_peft_model` and `PeftModel.from_pretrained`)."""
    return MODEL_TYPE_TO_PEFT_MODEL_MAPPING["CAUSAL_LM"]


def set_causal_lm_model_class(model_class: type) -> None:
    """Put `model_class` in PEFT's `CAUSAL_LM` task registry slot."""
    MODEL_TYPE_TO_PEFT_MODEL_MAPPING["CAUSAL_LM"] = model_class


# ---------------------------------------------------------------------------------------------- configs
def is_prompt_tuning(config: Any) -> bool:
    """Whether a PEFT config is a prompt-tuning one (`peft_type` PROMPT_TUNING, enum or string)."""
    peft_type = getattr(config, "peft_type", None)
    return getattr(peft_type, "value", peft_type) == PeftType.PROMPT_TUNING.value


def saved_prompt_rows(config: PromptTuningConfig) -> int:
    """Rows PEFT allocates (and saves) for a prompt adapter: P x `num_transformer_submodules`.

    PEFT fills a missing `num_transformer_submodules` with 2 for SEQ_2_SEQ_LM (a prompt for the encoder *and*
    one for the decoder, of which its forward uses only the first P rows) and 1 otherwise. `SoftPromptConfig`
    always says 1 (paper section 2: encoder only).
    """
    submodules = config.num_transformer_submodules
    if submodules is None:  # PEFT's default, applied when the adapter is set up
        submodules = 2 if getattr(config.task_type, "value", config.task_type) == "SEQ_2_SEQ_LM" else 1
    return int(config.num_virtual_tokens) * int(submodules)


def encoder_prompt(weight: torch.Tensor, config: PromptTuningConfig) -> torch.Tensor:
    """The rows `[P, H]` of a saved or loaded prompt `[R, H]` that PEFT puts in front of the input.

    With 2P rows (a plain PEFT seq2seq adapter) PEFT's forward uses the first P, the encoder's; the rest are
    the decoder's, which its prompt-tuning forward never reads.
    """
    return weight[: int(config.num_virtual_tokens)]


def split_from_pretrained_kwargs(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """`(hub_kwargs, config_kwargs, other_kwargs)`: how PEFT's `PeftConfig.from_pretrained` splits its kwargs."""
    return PromptTuningConfig._split_kwargs(kwargs)


def record_peft_version_missing(config: Any, saved: dict[str, Any]) -> None:
    """Set `_peft_version_missing` as PEFT's `PeftConfig.from_pretrained` does (0.22+): whether the saved
    `adapter_config.json` keys lacked `peft_version` (a file from before PEFT 0.18; not saved back)."""
    config._peft_version_missing = "peft_version" not in saved


def active_prompt_config(model: Any) -> Any | None:
    """The active adapter's config when it is a prompt-learning adapter that prepends virtual tokens."""
    config = getattr(model, "active_peft_config", None)
    peft_type = getattr(getattr(config, "peft_type", None), "value", getattr(config, "peft_type", None))
    # prompt and p-tuning prepend embeddings (they appear in the logits); prefix tuning uses the KV cache
    if peft_type in ("PROMPT_TUNING", "P_TUNING", "MULTITASK_PROMPT_TUNING"):
        return config
    return None


# ---------------------------------------------------------------------------------------------- models
def prompt_weight(model: PeftModel, adapter_name: str) -> torch.Tensor:
    """The prompt parameter `[R, H]` of a loaded prompt-tuning adapter (R = `saved_prompt_rows`)."""
    encoder: Any = model.prompt_encoder[adapter_name]
    return cast(torch.Tensor, encoder.embedding.weight)


def has_prompt_encoder(model: Any, adapter_name: str) -> bool:
    """Whether `model` holds a prompt encoder under `adapter_name`."""
    encoders = getattr(model, "prompt_encoder", None)
    return encoders is not None and adapter_name in encoders


def prompt_encoders(model: Any) -> list[torch.nn.Module]:
    """The prompt encoder modules of a PEFT model, one per adapter (`[]` without prompt adapters)."""
    encoders = getattr(model, "prompt_encoder", None)
    return list(encoders.values()) if encoders is not None else []


def replace_prompt_weight(model: PeftModel, adapter_name: str, weight: torch.nn.Parameter) -> torch.nn.Parameter:
    """Put `weight` in place of the prompt parameter of `adapter_name`; returns the one it replaced."""
    embedding: Any = model.prompt_encoder[adapter_name].embedding
    previous = cast(torch.nn.Parameter, embedding._parameters["weight"])
    embedding._parameters["weight"] = weight
    return previous


def prompt_parameters(model: Any) -> list[torch.nn.Parameter]:
    """Every parameter of every prompt encoder of a PEFT model (`[]` for a model without prompt adapters)."""
    encoders = getattr(model, "prompt_encoder", None)
    if encoders is None or not len(encoders):
        return []
    return list(encoders.parameters())


def modules_to_save_tensors(model: torch.nn.Module, modules_to_save: Any) -> dict[str, torch.Tensor]:
    """What PEFT will look up in a prompt adapter's file for `modules_to_save` on `model`: saved key -> base tensor.

    PEFT wraps every module whose name ends with a listed name (`_set_trainable`: `key.endswith(name)`) and, when
    loading, reads `base_model.<module>.<tensor>` from the file for each tensor of the module's state dict, with a
    bare `KeyError` when one is absent (`set_peft_model_state_dict`). `model` is the transformers model or a
    `PeftModel` (modules it already wraps count with their original module; nothing inside a wrapper matches).
    """
    names = [m for m in (modules_to_save or ()) if isinstance(m, str) and m]
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    if not names:
        return {}
    found: dict[str, torch.Tensor] = {}
    wrappers: list[str] = []
    for key, module in base.named_modules(remove_duplicate=False):
        if any(key.startswith(f"{w}.") for w in wrappers):
            continue  # the copies and the original inside a wrapper
        if isinstance(module, AuxiliaryTrainingWrapper):
            wrappers.append(key)
        if not key or not any(key.endswith(name) for name in names):
            continue
        original = getattr(module, "original_module", module)
        for tensor_name, tensor in original.state_dict(keep_vars=True).items():
            found[f"base_model.{key}.{tensor_name}"] = tensor
    return found


def adapter_load_targets(model: PeftModel, adapter_name: str) -> dict[str, tuple[str, torch.Tensor]]:
    """Keys of a prompt adapter's remapped state dict that PEFT loads into a `modules_to_save` copy of
    `adapter_name` -> (the key as saved in the file, the copy's tensor), from
    `AuxiliaryTrainingWrapper.adapter_state_dict_load_map`. Any other key but the prompt would be loaded into the
    base model itself (`load_state_dict(strict=False)`)."""
    targets: dict[str, tuple[str, torch.Tensor]] = {}
    for name, module in model.named_modules():
        if isinstance(module, AuxiliaryTrainingWrapper):
            own = module.state_dict(keep_vars=True)
            for saved_key, loaded_key in module.adapter_state_dict_load_map(adapter_name).items():
                if loaded_key in own:
                    targets[f"{name}.{loaded_key}"] = (f"{name}.{saved_key}", own[loaded_key])
    return targets


def input_embeddings(model: PeftModel) -> torch.nn.Module:
    """The base model's input embedding module, as PEFT keeps it on a model with prompt adapters."""
    return cast(torch.nn.Module, model.word_embeddings)


class PromptEncoderBase(PromptEmbedding):
    """PEFT's prompt-tuning encoder with the two hooks softprompt-ext needs, each named here.

    * `init_module_only()`: run `BasePromptEncoder.__init__` (plain `nn.Module` set-up) without
      `PromptEmbedding.__init__`, which would build and initialise PEFT's own `[P x submodules, H]` table.
    * `check_saved_state(state_dict)`: called with the adapter's tensors before they are loaded; PEFT loads a
      prompt encoder's weights by calling its `_load_adapter_state_dict` (`set_peft_model_state_dict`).
    * `check_saved_modules(state_dict, targets)`: called with the adapter's remapped tensors and
      `adapter_load_targets` *before* PEFT's `model.load_state_dict(state_dict, strict=False)`: the tuner class's
      `_remap_adapter_state_dict_for_load(model, config, adapter_name, state_dict)` is the one step of
      `set_peft_model_state_dict` that sees the model and the file's tensors before they are loaded.
    """

    def init_module_only(self) -> None:
        BasePromptEncoder.__init__(self)

    def check_saved_state(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Raise when the saved tensors do not fit this encoder; the default accepts everything."""

    @classmethod
    def check_saved_modules(
        cls, state_dict: dict[str, torch.Tensor], targets: dict[str, tuple[str, torch.Tensor]]
    ) -> None:
        """Raise when a saved tensor is not the prompt and not one of `targets`; the default accepts everything."""

    def _load_adapter_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.check_saved_state(state_dict)
        super()._load_adapter_state_dict(state_dict)

    @classmethod
    def _remap_adapter_state_dict_for_load(cls, model, config, adapter_name, state_dict):
        state_dict = super()._remap_adapter_state_dict_for_load(
            model=model, config=config, adapter_name=adapter_name, state_dict=state_dict
        )
        cls.check_saved_modules(state_dict, adapter_load_targets(model, adapter_name))
        return state_dict


# ---------------------------------------------------------------------------------------------- known upstream bugs
_probing = threading.local()
_warned: list[bool] = []


def warn_if_causal_generate_is_broken() -> None:
    """Warn once per process, when a causal-LM soft-prompt model is built, if PEFT's generate is wrong here."""
    if _warned or not causal_generate_reinserts_prompt():
        return
    _warned.append(True)
    import peft
    import transformers

    warnings.warn(
        "This PEFT + transformers combination re-inserts a soft prompt at every step of a causal LM's "
        f"model.generate(...), so tokens after the first are wrong (PEFT {peft.__version__} with transformers "
        f"{transformers.__version__}). Generate with "
        "softprompt_ext.generate(model, input_ids=..., attention_mask=..., max_new_tokens=...) instead; "
        "forward passes and training are unaffected.",
        UserWarning,
        stacklevel=_caller_stacklevel(),
    )


def _caller_stacklevel() -> int:
    """The `stacklevel` of the first frame outside softprompt_ext, PEFT, transformers and torch: the user's line
    (`get_peft_model(...)`, `PeftModel.from_pretrained(...)`, ...), however deep inside PEFT the call came."""
    import os
    import sys

    import peft
    import transformers

    libraries = tuple(
        os.path.dirname(os.path.abspath(str(module.__file__))) + os.sep
        for module in (sys.modules[__name__.split(".")[0]], peft, transformers, torch)
    )
    frame: FrameType | None = sys._getframe(1)
    level = 1  # stacklevel 1: the function that calls warnings.warn
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(libraries):
        frame, level = frame.f_back, level + 1
    return level


@functools.cache
def causal_generate_reinserts_prompt() -> bool:
    """Whether this PEFT + transformers re-insert the prompt at every step of a causal LM's `generate`.

    PEFT 0.21 with transformers >= 5.24: `PeftModelForCausalLM.prepare_inputs_for_generation` looks for the
    cache under `past_key_values`, which transformers 5.24 passes as `cache`, so every decoding step prepends
    the prompt again and tokens after the first are wrong (PEFT 0.22 reads the cache under either name).
    Measured once per process on a 1-layer random GPT-2 (`generate_differs_from_forward`). An installed PEFT
    that fixes the bug answers False, and the library's workaround switches off.
    """
    if getattr(_probing, "active", False):
        return False  # the probe itself builds a soft-prompt model
    _probing.active = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the probe's own model is not the user's business
            return _probe_causal_generate()
    finally:
        _probing.active = False


def _probe_causal_generate() -> bool:
    from peft import get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    generator = torch.Generator().manual_seed(0)
    config = GPT2Config(vocab_size=16, n_positions=32, n_embd=8, n_layer=1, n_head=2, bos_token_id=0,
                        eos_token_id=15, pad_token_id=15)
    with torch.random.fork_rng():  # leave the user's global RNG as it was
        torch.manual_seed(0)
        base = GPT2LMHeadModel(config).eval()
        model = get_peft_model(base, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)).eval()
    with torch.no_grad():
        prompt_weight(model, "default").copy_(torch.randn(3, 8, generator=generator) * 3)
    return generate_differs_from_forward(model, torch.tensor([[1, 2, 3]]))


def generate_differs_from_forward(model: Any, ids: torch.Tensor) -> bool:
    """Whether a causal prompt model's `generate` computed other logits for its 2nd token than a full forward.

    `ids: [1, T]`. Two greedy steps with the raw logits returned (`output_logits=True`): the logits of the second
    generated token `[1, V]` are compared with a forward pass (no cache) over the input plus the first generated
    token. Raw logits, not `scores`: scores are the logits after the logits processors (`min_new_tokens` puts
    -inf on EOS), so they never equal a plain forward.
    """
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=2,
                             min_new_tokens=2, do_sample=False, output_logits=True, return_dict_in_generate=True,
                             pad_token_id=model.config.pad_token_id)
        sequence = out.sequences[:, : ids.shape[1] + 1]  # input + first generated token
        full = model(input_ids=sequence, attention_mask=torch.ones_like(sequence)).logits[:, -1]  # [1, V]
    return not torch.allclose(out.logits[1].float(), full.float(), atol=1e-4, rtol=1e-4)
