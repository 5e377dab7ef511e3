"""The parts of a base model that reading a prompt needs: its input embedding table and its tokenizer.

Reading a prompt of T5-XXL (11B parameters) needs 32,128 x 4,096 numbers of it, so the table is read on its
own when it can be: the model is built on the `meta` device (no memory, no weights) only to learn the
parameter name of its input embeddings, and that one tensor is read from the checkpoint's safetensors
(sharded or not, local or on the Hub). When the name is not found (a renamed or pickled checkpoint), the
whole model is loaded once as the fallback. Nothing here runs remote code.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from ..adapters.reader import locate

_SAFETENSORS = "model.safetensors"
_SAFETENSORS_INDEX = "model.safetensors.index.json"


def _auto_class(task_type: str | None):
    """The transformers auto class PEFT would wrap for `task_type` (decides parameter names)."""
    import transformers

    names = {
        "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM",
        "CAUSAL_LM": "AutoModelForCausalLM",
        "SEQ_CLS": "AutoModelForSequenceClassification",
        "TOKEN_CLS": "AutoModelForTokenClassification",
        "QUESTION_ANS": "AutoModelForQuestionAnswering",
    }
    return getattr(transformers, names.get(str(getattr(task_type, "value", task_type)), "AutoModel"))


def embedding_table(base_model: Any, task_type: str | None = None) -> torch.Tensor:
    """The input embedding table `[V, H]` of a base model.

    Args:
        base_model: a Hub id or directory of a transformers model, a loaded model (anything with
            `get_input_embeddings`), or the table itself `[V, H]`.
        task_type: the adapter's PEFT task type; picks the auto class (parameter names differ between
            `LlamaModel` and `LlamaForCausalLM`).
    Raises:
        ValueError: the model cannot be loaded; the message names it and the cause.
    """
    if isinstance(base_model, torch.Tensor):
        table = base_model
    elif hasattr(base_model, "get_input_embeddings"):
        table = base_model.get_input_embeddings().weight
    elif isinstance(base_model, str):
        found = _table_from_checkpoint(base_model, task_type)
        table = found if found is not None else _load_model(base_model, task_type).get_input_embeddings().weight
    else:
        raise TypeError(
            f"base_model must be a model id, a directory, a loaded model or a [V, H] tensor, got "
            f"{type(base_model).__name__}."
        )
    if table.dim() != 2:
        raise ValueError(f"the input embedding table has shape {tuple(table.shape)}, expected [V, d_model].")
    return table.detach()


def _load_model(name: str, task_type: str | None):
    try:
        return _auto_class(task_type).from_pretrained(name)
    except Exception as exc:  # transformers raises OSError, ValueError, KeyError, ... for a bad model
        raise ValueError(
            f"base model {name!r} could not be loaded ({type(exc).__name__}: {_one_line(exc)}); pass the "
            "directory or Hub id of the model the adapter was trained on."
        ) from None


def _table_from_checkpoint(name: str, task_type: str | None) -> torch.Tensor | None:
    """Read only the embedding tensor from the safetensors checkpoint; None when that is not possible."""
    from safetensors import safe_open
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name)
    except Exception as exc:
        raise ValueError(
            f"base model {name!r} has no readable config.json ({type(exc).__name__}: {_one_line(exc)}); pass "
            "the directory or Hub id of the model the adapter was trained on."
        ) from None
    try:
        with torch.device("meta"):  # shapes and names only: allocates nothing
            skeleton = _auto_class(task_type).from_config(config)
        weight = skeleton.get_input_embeddings().weight
        candidates = [n for n, p in skeleton.named_parameters(remove_duplicate=False) if p is weight]
        files, sharded = _checkpoint_files(name)
    except Exception:  # an architecture the skeleton cannot be built for: load it the ordinary way
        return None
    for key in _matching_keys(candidates, list(files)):
        path = locate(name, files[key]) if sharded else files[key]
        if path is None:
            continue
        with safe_open(path, framework="pt") as handle:
            table = handle.get_tensor(key)  # [V, H]
        if tuple(table.shape) == tuple(weight.shape):
            return table
    return None


def _checkpoint_files(name: str) -> tuple[dict[str, str], bool]:
    """Checkpoint key -> its safetensors file (a local path; a shard name when the flag says sharded)."""
    from safetensors import safe_open

    index = locate(name, _SAFETENSORS_INDEX)
    if index is not None:  # sharded: only the shard holding the table is fetched
        with open(index, encoding="utf-8") as handle:
            return dict(json.load(handle)["weight_map"]), True
    single = locate(name, _SAFETENSORS)
    if single is None:
        return {}, False
    with safe_open(single, framework="pt") as handle:
        return dict.fromkeys(handle.keys(), single), False


def _matching_keys(candidates: list[str], keys: list[str]) -> list[str]:
    """Checkpoint keys naming the embedding: exact names first, then names differing by a prefix
    (`model.embed_tokens.weight` in the checkpoint, `embed_tokens.weight` in a bare `LlamaModel`)."""
    exact = [c for c in candidates if c in keys]
    prefixed = [k for c in candidates for k in keys if k.endswith("." + c) or c.endswith("." + k)]
    return list(dict.fromkeys(exact + prefixed))


def tokenizer_for(sources: list[str | None]):
    """The first tokenizer that loads from `sources` (directories or Hub ids; None entries skipped).

    Raises:
        ValueError: none loads; the message names every source tried.
    """
    from transformers import AutoTokenizer

    tried = []
    for source in dict.fromkeys(s for s in sources if s):
        try:
            return AutoTokenizer.from_pretrained(source)
        except Exception as exc:  # a missing or broken tokenizer: try the next source
            tried.append(f"{source!r} ({type(exc).__name__})")
    if not tried:
        raise ValueError("no tokenizer to read token names with; pass tokenizer= (a directory or Hub id).")
    raise ValueError(
        f"no tokenizer could be loaded from {', '.join(tried)}; pass tokenizer= (a directory or Hub id)."
    )


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."
