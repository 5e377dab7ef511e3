"""The base model that examples and demos use when none is named: the one place that decides it.

The default is the embedded tiny LM-adapted T5 (`softprompt_ext.embedded`, 8.4M parameters, d_model 256,
shipped in the package): pretrained with span corruption and LM-adapted on WordNet 3.0 text by
`scripts/build_embedded_model.py`, so it loads offline in about a second and a soft prompt can steer it
(Lester et al. 2021 prompt-tune LM-adapted T5, section 3.3). Point this function elsewhere and every example
that takes no `--model_name_or_path` follows.
"""

from __future__ import annotations

DEFAULT_KIND = "lm_adapt"  # softprompt_ext.embedded.CHECKPOINTS key
DEFAULT_D_MODEL = 256  # the embedded model's width: a prompt of P tokens trains P x 256 numbers


def default_model_path() -> str:
    """Directory of the default checkpoint (model + tokenizer); `from_pretrained` accepts it."""
    from .embedded import embedded_model_path

    return embedded_model_path(DEFAULT_KIND)


def default_model_and_tokenizer():
    """`(model, tokenizer)`: the default base model (`T5ForConditionalGeneration`, fp32, eval mode), its tokenizer.

    The model's `name_or_path` is the shipped checkpoint's directory, which also holds the tokenizer, so it can
    be passed as `SoftPromptConfig(tokenizer_name_or_path=...)` for the prompt initialiser.
    """
    from .embedded import load_embedded

    return load_embedded(DEFAULT_KIND)
