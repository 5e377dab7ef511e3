"""The one place where softprompt-ext meets PEFT's registries.

PEFT can't learn a new `PeftType` without patching (`register_peft_method` accepts only names already in
the `PeftType` enum, and `peft_model.py` branches on `peft_type`). So softprompt-ext keeps
`peft_type=PROMPT_TUNING` and fills PEFT's two registry slots for it with subclasses that behave exactly
like PEFT's own classes for a plain `PromptTuningConfig`:

* `PEFT_TYPE_TO_TUNER_MAPPING[PROMPT_TUNING] = SoftPromptEmbedding` -- the prompt encoder PEFT instantiates
  in `PeftModel._setup_prompt_encoder`;
* `PEFT_TYPE_TO_CONFIG_MAPPING[PROMPT_TUNING] = PromptTuningConfigLoader` -- what `PeftModel.from_pretrained`
  and `load_adapter` call `.from_pretrained` on: it returns a `SoftPromptConfig` for adapters that carry a
  `softprompt_config.json` record and a plain `PromptTuningConfig` otherwise.

No PEFT function is replaced. `tests/test_peft_contract.py` pins the PEFT behaviour relied on here.
"""

from __future__ import annotations

from typing import Any

from peft import PromptTuningConfig
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
from peft.tuners.prompt_tuning import PromptEmbedding
from peft.utils import PeftType

from ._hub import locate
from .config import RECORD_NAME, SoftPromptConfig
from .encoder import SoftPromptEmbedding
from .safety import validate_adapter


class PromptTuningConfigLoader(PromptTuningConfig):
    """PEFT's config registry entry for `PROMPT_TUNING` while softprompt-ext is imported.

    Constructing it gives a plain `PromptTuningConfig` (so `get_peft_config` and `PeftConfig.from_pretrained`
    behave as in plain PEFT); `from_pretrained` gives a `SoftPromptConfig` when the adapter has a record.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> PromptTuningConfig:  # type: ignore[misc]
        return PromptTuningConfig(*args, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, subfolder: str | None = None, **kwargs: Any):
        hub_kwargs, _, _ = SoftPromptConfig._split_kwargs(kwargs)
        # PEFT calls this before it adds the adapter and reads the weights (falling back to a pickled
        # adapter_model.bin): check config, record and safetensors weights first, naming the bad file.
        validate_adapter(pretrained_model_name_or_path, subfolder=subfolder, **hub_kwargs)
        if locate(pretrained_model_name_or_path, RECORD_NAME, subfolder, **hub_kwargs) is not None:
            return SoftPromptConfig.from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
        return PromptTuningConfig.from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)


def register() -> None:
    """Fill PEFT's PROMPT_TUNING registry slots (idempotent; runs on `import softprompt_ext`)."""
    current_tuner = PEFT_TYPE_TO_TUNER_MAPPING.get(PeftType.PROMPT_TUNING)
    current_config = PEFT_TYPE_TO_CONFIG_MAPPING.get(PeftType.PROMPT_TUNING)
    if current_tuner not in (PromptEmbedding, SoftPromptEmbedding) or current_config not in (
        PromptTuningConfig,
        PromptTuningConfigLoader,
    ):
        raise RuntimeError(
            f"PEFT's PROMPT_TUNING registry holds {current_tuner!r} / {current_config!r}, not PEFT's own classes: "
            "another plugin claims prompt tuning; softprompt-ext will not override it."
        )
    PEFT_TYPE_TO_TUNER_MAPPING[PeftType.PROMPT_TUNING] = SoftPromptEmbedding
    PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.PROMPT_TUNING] = PromptTuningConfigLoader


def unregister() -> None:
    """Give PEFT's own classes back their registry slots (used by tests of plain-PEFT behaviour)."""
    PEFT_TYPE_TO_TUNER_MAPPING[PeftType.PROMPT_TUNING] = PromptEmbedding
    PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.PROMPT_TUNING] = PromptTuningConfig
