"""The base model that examples and demos use when none is named: the one place that decides it.

Today the default is a tiny T5 1.1-shaped model (d_model 32, 2 + 2 layers, GeGLU, untied embeddings) with
random weights, and the offline-trained tokenizer of `tiny_models`, both built in-process: it runs anywhere
in seconds and without a network, which is what a default has to do. With random weights it knows nothing
about language: on the demo task the loss falls but the generated labels stay wrong. Point this function
elsewhere (e.g. at a checkpoint shipped with the package) and every example follows.
"""

from __future__ import annotations

DEFAULT_D_MODEL = (
    32  # wide enough that a short prompt visibly moves the loss, small enough for seconds on a CPU
)
DEFAULT_NUM_LAYERS = 2


def default_model_and_tokenizer():
    """`(model, tokenizer)`: the default base model (`T5ForConditionalGeneration`, eval mode), its tokenizer.

    The model's `name_or_path` is empty (it was never saved); save the tokenizer and pass its directory as
    `SoftPromptConfig(tokenizer_name_or_path=...)` so the prompt initialiser can read it.
    """
    from .tiny_models import build_t5, build_tokenizer

    tokenizer = build_tokenizer()
    model = build_t5(
        len(tokenizer), d_model=DEFAULT_D_MODEL, num_layers=DEFAULT_NUM_LAYERS, num_heads=2, seed=0
    )
    return model, tokenizer
