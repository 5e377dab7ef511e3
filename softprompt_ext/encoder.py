"""`SoftPromptEmbedding`: the prompt encoder behind `SoftPromptConfig`.

It *produces* the prompt `[P, H]`; placing it in front of the encoder input stays PEFT's job
(`PeftModelForSeq2SeqLM.forward` / `generate` concatenate `[prompt; input]` before the encoder's input
dropout, as the official implementation does).

PEFT builds the prompt encoder of every `PROMPT_TUNING` adapter from its tuner registry, so this class
stands there (see `registration.py`) and serves both configs:

* `SoftPromptConfig`: exactly P x d_model float32 parameters, initialised by `init.build_initial_prompt`;
* a plain `PromptTuningConfig`: PEFT's own `PromptEmbedding.__init__`, untouched.
"""

from __future__ import annotations

from typing import Any, cast

import torch

from .adapters.reader import AdapterError, check_module_tensor, check_module_values
from .config import SoftPromptConfig
from .init import build_initial_prompt
from .peft_internals import (
    PROMPT_KEY,
    PromptEncoderBase,
    gather_params_ctx,
    warn_if_causal_generate_is_broken,
)

_WEIGHTS_FOLLOW = "_softprompt_weights_follow"  # instance attribute, never a dataclass field: not saved


def mark_weights_follow(config: Any) -> None:
    """Tell the next prompt encoder built from `config` that a saved prompt is loaded into it right after.

    Set by the registry loader that `PeftModel.from_pretrained` and `load_adapter` call; the encoder then skips
    the init, whatever `inference_mode` says (a config with `inference_mode=True` given to `get_peft_model`
    initialises like any other, as in PEFT).
    """
    if isinstance(config, SoftPromptConfig):
        config.__dict__[_WEIGHTS_FOLLOW] = True


class SoftPromptEmbedding(PromptEncoderBase):
    """The learned prompt of one adapter.

    Args:
        config: the adapter's config; PEFT has filled `token_dim` (d_model) and `base_model_name_or_path`.
        word_embeddings: the base model's input embedding module (table `[V, H]`).

    Attributes:
        embedding: `nn.Embedding(P, H)`, float32 whatever the base model's dtype; PEFT casts the prompt to the
            input embeddings' dtype at concatenation.

    Input: indices `[B, P]`; output `[B, P, H]`.
    """

    def __init__(self, config, word_embeddings: torch.nn.Module):
        table = cast(torch.Tensor, word_embeddings.weight)  # [V, H]
        model_dim = table.shape[-1]
        if config.token_dim != model_dim and getattr(table, "ds_shape", None) is None:
            # a loaded adapter_config.json carries the d_model it was trained with (plain PEFT adapters too:
            # PEFT would build a [P, token_dim] prompt that fails only at the first forward)
            raise ValueError(
                f"the adapter's token_dim (d_model) is {config.token_dim} but this model's d_model is "
                f"{model_dim}: the prompt was trained on a different base model; load it onto that model."
            )
        if not isinstance(config, SoftPromptConfig):
            super().__init__(config, word_embeddings)  # plain PEFT behaviour, bit for bit
            return
        self.init_module_only()
        num_rows, dim = config.num_virtual_tokens, config.token_dim
        if getattr(config.task_type, "value", config.task_type) == "CAUSAL_LM":
            warn_if_causal_generate_is_broken()
        if config.__dict__.pop(_WEIGHTS_FOLLOW, False):
            # built by PeftModel.from_pretrained / load_adapter: the saved prompt is loaded next, so skip the
            # init (no tokenizer or init prompt needed, the global RNG untouched). Consumed here: the same config
            # object passed to get_peft_model later initialises as usual.
            weight = torch.zeros(num_rows, dim, dtype=torch.float32)  # [P, H]
        else:
            if config.warn_if_not_lm_adapted:
                from .lm_adapted import warn_if_span_corruption

                warn_if_span_corruption(config.base_model_name_or_path)
            with gather_params_ctx(word_embeddings.parameters()):
                weight = build_initial_prompt(config, table)  # [P, H]
            if weight.shape != (num_rows, dim):
                raise ValueError(
                    f"initial prompt has shape {tuple(weight.shape)}, expected ({num_rows}, {dim}) "
                    "(num_virtual_tokens, d_model)."
                )
        self.embedding = torch.nn.Embedding(num_rows, dim, _weight=weight.contiguous())
        if config.inference_mode:
            # inference mode (every loaded adapter) is frozen; continue training with SoftPromptConfig.continue_from
            self.embedding.weight.requires_grad_(False)
        self._soft_config = config

    def check_saved_state(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Refuse a saved prompt that does not fit this model, naming both shapes (PEFT calls this first)."""
        config = getattr(self, "_soft_config", None)
        if config is not None:
            saved = state_dict.get(PROMPT_KEY)
            if saved is None:
                raise ValueError(f"the adapter weights hold {sorted(state_dict)} but no {PROMPT_KEY!r}.")
            expected = tuple(self.embedding.weight.shape)
            if not saved.is_floating_point():  # PEFT's load_state_dict would cast ints, bools, complex silently
                raise ValueError(
                    f"the saved prompt has dtype {saved.dtype}; a prompt is floating point. The adapter is damaged."
                )
            if saved.dim() != 2 or saved.shape[1] != expected[1]:
                raise ValueError(
                    f"the saved prompt has shape {tuple(saved.shape)} (P, d_model) but this model's d_model is "
                    f"{expected[1]}: the adapter was trained on a different base model."
                )
            if saved.shape[0] != expected[0]:
                raise ValueError(
                    f"the saved prompt has {saved.shape[0]} rows but adapter_config.json says "
                    f"num_virtual_tokens={expected[0]}; the adapter files do not belong together."
                )
            if not torch.isfinite(saved.float()).all():  # finite in the float32 it is used in
                raise ValueError("the saved prompt holds NaN or inf values; the adapter is damaged.")

    @classmethod
    def check_saved_modules(
        cls, state_dict: dict[str, torch.Tensor], targets: dict[str, tuple[str, torch.Tensor]]
    ) -> None:
        """Before PEFT loads an adapter's tensors (plain PEFT adapters too): only the prompt and the copies of
        the adapter's `modules_to_save`, each fitting the module it is loaded into. Anything else would go into
        the frozen base model (PEFT loads with `strict=False`) -- also when `validate_adapter` did not run
        because a config was passed to `PeftModel.from_pretrained(..., config=...)`."""
        where = "the adapter weights"
        foreign = sorted(key for key in state_dict if key != PROMPT_KEY and key not in targets)
        if foreign:
            raise AdapterError(
                f"{where} hold tensor(s) {foreign[:5]} besides {PROMPT_KEY!r} that belong to no module of the "
                "adapter's modules_to_save; PEFT would load them into the frozen base model. Refusing the adapter."
            )
        for key, saved in state_dict.items():
            if key != PROMPT_KEY:
                saved_key, target = targets[key]
                check_module_tensor(where, saved_key, saved.shape, saved.dtype, target)
                check_module_values(where, saved_key, saved, target)
