"""The embedded tiny LM-adapted T5 (offline, shipped in the wheel) and the default base model of the examples.

Prompt tuning only means something on a pretrained model (Lester et al. 2021), and nothing may be downloaded
in tests, examples or CI. `scripts/embedded_build/build.py` therefore builds a T5 1.1-style model on WordNet 3.0
glosses and permissively licensed prose (span corruption, then LM adaptation with
`softprompt_ext.training.lm_adapt`, paper section 3.3) and ships two checkpoints (9.4M parameters, vocabulary
8,192, ~19 MB each) in fp16 under `softprompt_ext/data/embedded/`:

* `"lm_adapt"` - `t5-wordnet-lm-adapt`: span corruption + prefix-LM adaptation; the default base.
* `"span"` - `t5-wordnet-span`: span corruption only (for the paper's Figure 3 "LM adaptation" ablation).

The task trained on it, WordNet noun supersenses, is `softprompt_ext.tasks.supersense`. Files are read with
`importlib.resources`, so this works from a wheel as well as from a source checkout.

`default_model_path()` / `default_model_and_tokenizer()` are the one place that decides which base model the
examples use when none is named (the LM-adapted checkpoint: Lester et al. 2021 prompt-tune LM-adapted T5,
section 3.3); point them elsewhere and every example that takes no `--model_name_or_path` follows.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch

CHECKPOINTS = {"lm_adapt": "t5-wordnet-lm-adapt", "span": "t5-wordnet-span"}
DEFAULT_KIND = "lm_adapt"  # the examples' base model when none is named
DEFAULT_D_MODEL = 256  # the embedded model's width: a prompt of P tokens trains P x 256 numbers


def data_dir() -> Path:
    """`softprompt_ext/data`: the shipped checkpoints and task files."""
    return _data_dir()


def _data_dir() -> Path:
    return Path(str(resources.files("softprompt_ext") / "data"))


def embedded_model_path(kind: str = "lm_adapt") -> str:
    """Directory of a shipped checkpoint (`from_pretrained` accepts it); `kind` is "lm_adapt" or "span"."""
    if kind not in CHECKPOINTS:
        raise ValueError(f"kind={kind!r} is not an embedded checkpoint; use one of {sorted(CHECKPOINTS)}.")
    path = _data_dir() / "embedded" / CHECKPOINTS[kind]
    if not (path / "config.json").is_file():
        raise ValueError(
            f"the embedded checkpoint {kind!r} is missing at {path}; rebuild it with "
            "`python -m scripts.embedded_build`."
        )
    return str(path)


def load_embedded(kind: str = "lm_adapt", dtype: torch.dtype = torch.float32):
    """`(model, tokenizer)` of a shipped checkpoint, in eval mode; weights are stored in fp16, loaded as `dtype`."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    path = embedded_model_path(kind)
    model = AutoModelForSeq2SeqLM.from_pretrained(path, dtype=dtype)
    return model.eval(), AutoTokenizer.from_pretrained(path)


def default_model_path() -> str:
    """Directory of the default checkpoint (model + tokenizer); `from_pretrained` accepts it."""
    return embedded_model_path(DEFAULT_KIND)


def default_model_and_tokenizer():
    """`(model, tokenizer)`: the default base model (`T5ForConditionalGeneration`, fp32, eval mode), its tokenizer.

    The model's `name_or_path` is the shipped checkpoint's directory, which also holds the tokenizer, so it can
    be passed as `SoftPromptConfig(tokenizer_name_or_path=...)` for the prompt initialiser.
    """
    return load_embedded(DEFAULT_KIND)
