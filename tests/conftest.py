"""Shared fixtures: a tokenizer trained offline and tiny T5 / Llama / GPT-2 models built from configs.

Nothing here touches the network; `HF_HUB_OFFLINE=1` makes any accidental download fail fast.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

import softprompt_ext  # noqa: E402,F401  (registers with PEFT)
from softprompt_ext import tiny_models  # noqa: E402

torch.set_num_threads(1)  # tiny models: splitting their matmuls over threads only costs (measured 3x)

MODEL_BUILDERS = {
    "t5": tiny_models.build_t5,
    "llama": tiny_models.build_llama,
    "gpt2": tiny_models.build_gpt2,
}
TASK_TYPES = {"t5": "SEQ_2_SEQ_LM", "llama": "CAUSAL_LM", "gpt2": "CAUSAL_LM"}


@pytest.fixture(scope="session")
def tokenizer():
    """T5-like fast tokenizer: 0 <pad>, 1 </s>, 2 <unk>, sentinels last; EOS appended by default."""
    return tiny_models.build_tokenizer()


@pytest.fixture(scope="session")
def tokenizer_dir(tokenizer, tmp_path_factory) -> str:
    """The same tokenizer saved to a directory, for `tokenizer_name_or_path`."""
    return tiny_models.save_tokenizer(tokenizer, str(tmp_path_factory.mktemp("tokenizer")))


@pytest.fixture
def make_model(tokenizer):
    """`make_model(kind, indexed=False, **kwargs)`: a fresh tiny model; `indexed` sets embedding row i to i."""

    def make(kind: str = "t5", indexed: bool = False, **kwargs):
        model = MODEL_BUILDERS[kind](len(tokenizer), **kwargs)
        if indexed:
            tiny_models.fill_rows_with_index(model)
        return model

    return make
