"""The embedded tiny LM-adapted T5 and the bundled WordNet supersense task (offline, shipped in the wheel).

Prompt tuning only means something on a pretrained model (Lester et al. 2021), and nothing may be downloaded
in tests, examples or CI. `scripts/build_embedded_model.py` therefore builds a ~9M-parameter T5 1.1-style model
on WordNet 3.0 text (span corruption, then LM adaptation with `softprompt_ext.lm_adapt`, paper section 3.3) and
ships two checkpoints (8.4M parameters, ~17 MB each) in fp16 under `softprompt_ext/data/embedded/`:

* `"lm_adapt"` - `t5-wordnet-lm-adapt`: span corruption + prefix-LM adaptation; the default base.
* `"span"` - `t5-wordnet-span`: span corruption only (for the paper's Figure 3 "LM adaptation" ablation).

The task (`wordnet_supersense`): noun gloss -> lexicographer category word, split by synset. Files are read
with `importlib.resources`, so this works from a wheel as well as from a source checkout.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch

CHECKPOINTS = {"lm_adapt": "t5-wordnet-lm-adapt", "span": "t5-wordnet-span"}
SUPERSENSE_LABELS = ("animal", "artifact", "body", "food", "location", "person", "plant", "substance")
SUPERSENSE_SPLITS = ("train", "dev", "test")


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
            "`python scripts/build_embedded_model.py`."
        )
    return str(path)


def load_embedded(kind: str = "lm_adapt", dtype: torch.dtype = torch.float32):
    """`(model, tokenizer)` of a shipped checkpoint, in eval mode; weights are stored in fp16, loaded as `dtype`."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    path = embedded_model_path(kind)
    model = AutoModelForSeq2SeqLM.from_pretrained(path, dtype=dtype)
    return model.eval(), AutoTokenizer.from_pretrained(path)


def read_supersense(split: str) -> list[dict[str, str]]:
    """Rows of a split as dicts with `id`, `text`, `label` and `lexname`."""
    if split not in SUPERSENSE_SPLITS:
        raise ValueError(f"split={split!r} is not a supersense split; use one of {list(SUPERSENSE_SPLITS)}.")
    path = _data_dir() / "wordnet_supersense" / f"{split}.jsonl"
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def load_supersense(split: str):
    """A split of the bundled WordNet noun supersense task as a `datasets.Dataset` (columns as `read_supersense`)."""
    from datasets import Dataset

    return Dataset.from_list(read_supersense(split))


def supersense_batch(tokenizer, rows: list[dict], sentinel: bool = False, max_length: int = 64) -> dict:
    """Rows of the task -> `input_ids [B, S]`, `attention_mask [B, S]`, `labels [B, T]` (label word + EOS, padding
    -100). `sentinel` prefixes every target with `<extra_id_0>` (the paper's "span corruption + sentinel")."""
    from .lm_objectives import add_sentinel_prefix

    enc = tokenizer([r["text"] for r in rows], padding=True, truncation=True, max_length=max_length,
                    return_tensors="pt")
    targets = [tokenizer(r["label"])["input_ids"] for r in rows]
    if sentinel:
        targets = [add_sentinel_prefix(t, tokenizer) for t in targets]
    width = max(map(len, targets))
    labels = torch.tensor([t + [-100] * (width - len(t)) for t in targets])
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}
