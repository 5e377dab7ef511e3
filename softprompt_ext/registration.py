"""The one place where softprompt-ext meets PEFT's registries.

PEFT can't learn a new `PeftType` without patching (`register_peft_method` accepts only names already in
the `PeftType` enum, and `peft_model.py` branches on `peft_type`). So softprompt-ext keeps
`peft_type=PROMPT_TUNING` and fills PEFT's two registry slots for it with subclasses that behave exactly
like PEFT's own classes for a plain `PromptTuningConfig`:

* the tuner slot (`PEFT_TYPE_TO_TUNER_MAPPING[PROMPT_TUNING]`) = `SoftPromptEmbedding` -- the prompt encoder PEFT instantiates
  in `PeftModel._setup_prompt_encoder`;
* the task slot (`MODEL_TYPE_TO_PEFT_MODEL_MAPPING["CAUSAL_LM"]`) = `causal_lm.PeftModelForCausalLM` -- PEFT's class
  with the shared prompt prefix in `forward` for a `SoftPromptConfig` (a plain `peft.PeftModelForCausalLM` for
  every other config);
* the config slot (`PEFT_TYPE_TO_CONFIG_MAPPING[PROMPT_TUNING]`) = `PromptTuningConfigLoader` -- what `PeftModel.from_pretrained`
  and `load_adapter` call `.from_pretrained` on: it returns a `SoftPromptConfig` for adapters that carry a
  `softprompt_config.json` record and a plain `PromptTuningConfig` otherwise.

No PEFT function is replaced. The registry slots are reached through `peft_internals.py`, whose tests pin
the PEFT behaviour relied on.
"""

from __future__ import annotations

from typing import Any

import peft
from peft import PromptTuningConfig

from .adapters.validation import build_config, validate_adapter
from .causal_lm import PeftModelForCausalLM
from .config import SoftPromptConfig, known_fields, split_embedded_record
from .encoder import SoftPromptEmbedding, mark_weights_follow
from .peft_internals import (
    PromptEmbedding,
    causal_lm_model_class,
    prompt_tuning_registry_entries,
    record_peft_version_missing,
    set_causal_lm_model_class,
    set_prompt_tuning_registry_entries,
    split_from_pretrained_kwargs,
)


class PromptTuningConfigLoader(PromptTuningConfig):
    """PEFT's config registry entry for `PROMPT_TUNING` while softprompt-ext is imported.

    Built from keys (`PeftConfig.from_pretrained`, `PeftConfig.from_peft_type`, `peft.get_peft_config`): a
    `SoftPromptConfig` when the keys carry a softprompt-ext record (record fields, or the record copy in
    `auto_mapping`), else an instance of this class, which is PEFT's `PromptTuningConfig` in every field and
    behaviour. `from_pretrained` (what `PeftModel.from_pretrained` and `load_adapter` call) validates the adapter
    files first. So every PEFT entry point gives a soft adapter the same class.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> PromptTuningConfig:  # type: ignore[misc]
        _, embedded = split_embedded_record(kwargs)
        if embedded is not None:
            return SoftPromptConfig.from_parts(kwargs, embedded)
        if set(kwargs) & set(SoftPromptConfig.record_field_names()):
            try:
                return SoftPromptConfig(*args, **kwargs)
            except (TypeError, ValueError):
                pass  # not a valid SoftPromptConfig: PEFT's own fields decide
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # keys a newer PEFT wrote are dropped with one warning naming PromptTuningConfig, as plain PEFT does
        # (PEFT's own fallback would name this class)
        super().__init__(*args, **known_fields(PromptTuningConfig, kwargs, stacklevel=4))

    def __repr__(self) -> str:  # PEFT's class name, as PEFT would print it
        text = super().__repr__()
        return "PromptTuningConfig" + text[len(type(self).__qualname__):]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, subfolder: str | None = None, **kwargs: Any):
        hub_kwargs, class_kwargs, _ = split_from_pretrained_kwargs(kwargs)
        # PEFT calls this before it adds the adapter and reads the weights (falling back to a pickled
        # adapter_model.bin): check config, record and safetensors weights first, naming the bad file. The
        # config comes from the files validation has already parsed: each is read once.
        report = validate_adapter(pretrained_model_name_or_path, subfolder=subfolder, **hub_kwargs)
        config = report.config if not class_kwargs else build_config(
            report.plain, report.record, report.location, **class_kwargs
        )
        if type(config) is PromptTuningConfig:
            config.__class__ = cls  # the registry's class, as from PeftConfig.from_pretrained (no fields added)
        record_peft_version_missing(config, report.plain)
        mark_weights_follow(config)
        return config


def register() -> None:
    """Fill PEFT's PROMPT_TUNING registry slots (idempotent; runs on `import softprompt_ext`)."""
    current_tuner, current_config = prompt_tuning_registry_entries()
    if current_tuner not in (PromptEmbedding, SoftPromptEmbedding) or current_config not in (
        PromptTuningConfig,
        PromptTuningConfigLoader,
    ):
        raise RuntimeError(
            f"PEFT's PROMPT_TUNING registry holds {current_tuner!r} / {current_config!r}, not PEFT's own classes: "
            "another plugin claims prompt tuning; softprompt-ext will not override it."
        )
    set_prompt_tuning_registry_entries(SoftPromptEmbedding, PromptTuningConfigLoader)
    if causal_lm_model_class() is peft.PeftModelForCausalLM:  # another plugin's class stays
        set_causal_lm_model_class(PeftModelForCausalLM)


def unregister() -> None:
    """Give PEFT's own classes back their registry slots (used by tests of plain-PEFT behaviour)."""
    set_prompt_tuning_registry_entries(PromptEmbedding, PromptTuningConfig)
    if causal_lm_model_class() is PeftModelForCausalLM:
        set_causal_lm_model_class(peft.PeftModelForCausalLM)
