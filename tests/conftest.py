"""Shared fixtures: a tokenizer trained offline and tiny T5 / Llama / GPT-2 models built from configs.

Nothing here touches the network; `HF_HUB_OFFLINE=1` makes any accidental download fail fast. Fixtures only:
helpers that tests import live in `tests/helpers.py`.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

# `random_prompt_config` stays importable from here for tests/test_serving*.py until they import it from helpers
from helpers import MODEL_BUILDERS, random_prompt_config  # noqa: E402,F401
from peft import PeftModel, get_peft_model  # noqa: E402

import softprompt_ext  # noqa: E402,F401  (registers with PEFT)
from softprompt_ext import tiny_models  # noqa: E402

torch.set_num_threads(1)  # tiny models: splitting their matmuls over threads only costs (measured 3x)

@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`): tiny models gain
    nothing from threads, and on busy shared cores threads wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


@pytest.fixture
def build(make_model, tmp_path):
    """`build(kind)`: a fresh base model with the prompts p3 (P=3), p7 (P=7), p5 (P=5) loaded through PEFT's
    `PeftModel.from_pretrained` + `load_adapter`, saved under `tmp_path / name`. Weights are scaled so that
    greedy outputs vary. For the multi-prompt tests (test_mixed_batches.py, test_ensembles.py)."""

    def make(kind: str) -> PeftModel:
        base = make_model(kind)
        with torch.no_grad():
            for p in base.parameters():
                if p.dim() > 1:
                    p.mul_(3.0)  # tiny random models otherwise repeat one token
        trained = get_peft_model(base, random_prompt_config(kind, 3, 1), adapter_name="p3")
        trained.add_adapter("p7", random_prompt_config(kind, 7, 2))
        trained.add_adapter("p5", random_prompt_config(kind, 5, 3))
        trained.save_pretrained(str(tmp_path), selected_adapters=["p3", "p7", "p5"])
        model = PeftModel.from_pretrained(trained.get_base_model(), str(tmp_path / "p3"), adapter_name="p3")
        model.load_adapter(str(tmp_path / "p7"), adapter_name="p7")
        model.load_adapter(str(tmp_path / "p5"), adapter_name="p5")
        return model.eval()

    return make
