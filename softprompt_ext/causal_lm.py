"""The causal-LM PEFT model class that `get_peft_model` builds for a `SoftPromptConfig`.

PEFT picks the model class of a task type from its task registry (`get_peft_model`,
`PeftModel.from_pretrained`); `registration.register` puts this class in the `CAUSAL_LM` slot. Built with a
`SoftPromptConfig` it is PEFT's `PeftModelForCausalLM` plus one override: `forward` runs the shared prompt
prefix (`shared_prefix.py`, the prompt computed once per batch) whenever that equals PEFT's per-row forward,
and PEFT's own forward otherwise. Built with any other config, `__new__` returns a plain
`peft.PeftModelForCausalLM`, so LoRA and every other method never meet this class. The class keeps PEFT's
name: `AutoPeftModelForCausalLM` compares the registry's class name with its own target's.
"""

from __future__ import annotations

from typing import Any

import peft

from .config import SoftPromptConfig
from .peft_internals import active_prompt_config, input_embeddings
from .shared_prefix import explain_once, per_row_reason, shared_prefix_forward


class PeftModelForCausalLM(peft.PeftModelForCausalLM):
    """`peft.PeftModelForCausalLM` whose forward shares the prompt across the batch for `SoftPromptConfig`.

    Same constructor, attributes, saving, loading and `generate` as PEFT's class (generation never calls
    `forward` with the prompt: PEFT places it in `prepare_inputs_for_generation`).
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        config = kwargs.get("peft_config", args[1] if len(args) > 1 else None)
        if config is not None and not isinstance(config, SoftPromptConfig):
            return peft.PeftModelForCausalLM(*args, **kwargs)  # another method: PEFT's own class, untouched
        return super().__new__(cls)

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        inputs_embeds=None,
        labels=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        task_ids=None,
        **kwargs,
    ):
        """PEFT's causal-LM forward; with an active `SoftPromptConfig` adapter, the prompt is computed once.

        Args and returns as `peft.PeftModelForCausalLM.forward`: `input_ids` or `inputs_embeds` `[B, T]` /
        `[B, T, H]`, `attention_mask [B, T]`, `labels [B, T]`; logits `[B, P + T, V]`.
        """
        config = active_prompt_config(self)
        options = dict(kwargs, output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                       return_dict=return_dict, task_ids=task_ids, labels=labels)
        reason = None
        if isinstance(config, SoftPromptConfig):
            reason = per_row_reason(self.get_base_model(), options)
        if not isinstance(config, SoftPromptConfig) or reason is not None or (input_ids is None) == (
            inputs_embeds is None
        ):
            if reason is not None:
                explain_once(reason)
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                                   labels=labels, output_attentions=output_attentions,
                                   output_hidden_states=output_hidden_states, return_dict=return_dict,
                                   task_ids=task_ids, **kwargs)
        if inputs_embeds is None:
            inputs_embeds = input_embeddings(self)(input_ids)  # [B, T, H]
        prompt = self.get_prompt(batch_size=1).to(inputs_embeds.dtype)  # [1, P, H]
        return shared_prefix_forward(
            self.get_base_model(), prompt, inputs_embeds, attention_mask, labels,
            use_cache=kwargs.get("use_cache"), num_items_in_batch=kwargs.get("num_items_in_batch"),
            logits_to_keep=kwargs.get("logits_to_keep") or 0,
        )
