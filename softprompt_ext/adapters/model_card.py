"""Model card (README.md) of a saved soft-prompt adapter.

PEFT's `save_pretrained` writes the card first (`library_name: peft`, `base_model`, PEFT version); the
config's `save_pretrained` runs after it and adds the soft-prompt facts here, so `push_to_hub` uploads
a card that says what the prompt is and how it was made. Re-saving replaces the section, never stacks it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Protocol

from huggingface_hub import ModelCard, ModelCardData

from ..peft_internals import SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME
from .atomic import CARD_NAME, atomic_write_text


class CardFacts(Protocol):
    """The fields the card reads. `SoftPromptConfig` has them; this module does not import it, so `config.py`
    imports this module without a cycle."""

    @property
    def task_type(self) -> Any: ...
    @property
    def num_virtual_tokens(self) -> int: ...
    @property
    def token_dim(self) -> int | None: ...
    @property
    def base_model_name_or_path(self) -> str | None: ...
    @property
    def prompt_tuning_init(self) -> Any: ...
    @property
    def class_labels(self) -> Sequence[str] | None: ...
    @property
    def sample_vocab_size(self) -> int | None: ...
    @property
    def init_range(self) -> float: ...
    @property
    def init_prompt_path(self) -> str | None: ...
    @property
    def init_seed(self) -> int | None: ...


TAGS = ("prompt-tuning", "softprompt-ext", "peft")
_BEGIN = "<!-- softprompt-ext:begin -->"
_END = "<!-- softprompt-ext:end -->"


def card_section(config: CardFacts) -> str:
    """The markdown section describing the prompt."""
    init = getattr(config.prompt_tuning_init, "value", config.prompt_tuning_init)
    lines = [
        _BEGIN,
        "## Soft prompt (softprompt-ext)",
        "",
        "Prompt tuning as in Lester et al. (2021), *The Power of Scale for Parameter-Efficient Prompt Tuning*:",
        "a frozen base model with a trained prompt in front of its "
        + ("encoder input." if config.task_type == "SEQ_2_SEQ_LM" else "input."),
        "",
        "| | |",
        "|---|---|",
        f"| prompt length P | {config.num_virtual_tokens} |",
        f"| d_model | {config.token_dim} |",
        f"| trainable parameters | {config.num_virtual_tokens * (config.token_dim or 0):,} |",
        f"| base model | `{config.base_model_name_or_path}` |",
        f"| initialisation | `{init}` |",
    ]
    if config.class_labels:
        lines.append(f"| class labels | {', '.join(f'`{label}`' for label in config.class_labels)} |")
    if init == "SAMPLE_VOCAB" or config.class_labels or init == "TEXT":
        size = config.sample_vocab_size
        lines.append(f"| sample_vocab_size | {size if size is not None else '5000 (paper), at most the vocabulary'} |")
    if init == "RANDOM_UNIFORM":
        lines.append(f"| init_range | {config.init_range} |")
    if init == "SAVED_PROMPT":
        lines.append(f"| started from | `{config.init_prompt_path}` |")
    if config.init_seed is not None:
        lines.append(f"| init_seed | {config.init_seed} |")
    lines += [
        "",
        "```python",
        "from peft import PeftModel",
        "model = PeftModel.from_pretrained(base_model, ADAPTER)  # plain PEFT loads it; softprompt_ext adds the record",
        "```",
        _END,
    ]
    return "\n".join(lines)


def update_model_card(directory: str, config: CardFacts) -> bool:
    """Add the soft-prompt section and tags to `directory/README.md` when the directory holds an adapter.

    Returns whether a card was written.
    """
    path = os.path.join(directory, CARD_NAME)
    holds_adapter = any(
        os.path.exists(os.path.join(directory, name)) for name in (CARD_NAME, SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME)
    )
    if not holds_adapter:
        return False
    card = ModelCard.load(path) if os.path.exists(path) else ModelCard.from_template(ModelCardData())
    card.data["library_name"] = "peft"
    card.data["tags"] = sorted(set(card.data.get("tags") or []) | set(TAGS))
    if config.base_model_name_or_path and not card.data.get("base_model"):
        card.data["base_model"] = config.base_model_name_or_path
    text = card.text
    if _BEGIN in text and _END in text:
        head, rest = text.split(_BEGIN, 1)
        text = head + card_section(config) + rest.split(_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + card_section(config) + "\n"
    card.text = text
    atomic_write_text(path, str(card))
    return True
