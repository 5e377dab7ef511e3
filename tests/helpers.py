"""What several test files share: model builders by kind, prompt configs, inputs, a free port, a PEFT bug.

Fixtures stay in `conftest.py`; plain helpers live here and tests import them (`from helpers import ...`),
as PEFT's tests import `testing_common.py`.
"""

from __future__ import annotations

import torch
from peft import get_peft_model

from benchmarks.common import free_port
from softprompt_ext import SoftPromptConfig, tiny_models

__all__ = [
    "MODEL_BUILDERS",
    "TASK_TYPES",
    "TEXTS",
    "free_port",
    "padded_batch",
    "prompt_grad",
    "prompt_model",
    "random_prompt_config",
]

MODEL_BUILDERS = {
    "t5": tiny_models.build_t5,
    "llama": tiny_models.build_llama,
    "gpt2": tiny_models.build_gpt2,
}
TASK_TYPES = {"t5": "SEQ_2_SEQ_LM", "llama": "CAUSAL_LM", "gpt2": "CAUSAL_LM"}


def random_prompt_config(kind: str, length: int, seed: int) -> SoftPromptConfig:
    """A RANDOM_UNIFORM(1.0) prompt of `length` rows for a model `kind` ("t5", "llama", "gpt2")."""
    return SoftPromptConfig(
        task_type=TASK_TYPES[kind],
        num_virtual_tokens=length,
        prompt_tuning_init="RANDOM_UNIFORM",
        init_range=1.0,
        init_seed=seed,
    )


def prompt_model(make_model, kind: str, num_virtual_tokens: int = 3):
    """A tiny `kind` model with one SAMPLE_VOCAB soft prompt (the step-savings and precision tests)."""
    task = TASK_TYPES[kind]
    config = SoftPromptConfig(task_type=task, num_virtual_tokens=num_virtual_tokens, sample_vocab_size=50, init_seed=0)
    return get_peft_model(make_model(kind), config)


def prompt_grad(model, loss: torch.Tensor) -> torch.Tensor:
    """d loss / d prompt `[P, H]` of the default adapter."""
    return torch.autograd.grad(loss, model.prompt_encoder.default.embedding.weight)[0]  # [P, H]


# of the multi-prompt tests (test_mixed_batches, test_ensembles, test_scoring): different lengths, so padding matters
TEXTS = ["the cat sat on the mat", "a ship", "rain falls from dark clouds in the cold season", "the river"]


def padded_batch(tokenizer, side: str, texts: list[str] = TEXTS):
    """`(input_ids [B, T], attention_mask [B, T])` of `texts`, padded on `side` ("left" or "right")."""
    previous, tokenizer.padding_side = tokenizer.padding_side, side
    try:
        enc = tokenizer(texts, return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = previous
    return enc.input_ids, enc.attention_mask


def blind_to_the_cache(model) -> None:
    """Give `model` the bug of PEFT 0.21 under transformers >= 5.24: its `prepare_inputs_for_generation` does not
    see the cache (transformers passes it under a name PEFT 0.21 does not read), so it prepends the prompt again
    at every decoding step. PEFT's `generate` installs the model's `prepare_inputs_for_generation` on the base
    model, so an instance attribute is what it calls."""
    original = model.prepare_inputs_for_generation

    def blind(*args, **kwargs):
        names = [n for n in ("cache", "past_key_values") if kwargs.get(n) is not None]
        hidden = {n: kwargs.pop(n) for n in names}
        inputs = original(*args, **kwargs)
        inputs.update(hidden)  # the base model still gets its cache, and the prompt on top of it
        return inputs

    model.prepare_inputs_for_generation = blind
