"""LM-adapted T5 checkpoints (paper section 3.3, Figure 3c/3d).

Off-the-shelf span-corruption T5 is a poor base for prompt tuning: its outputs mimic sentinels and some
sizes score zero. T5 1.1 "LM-adapted" for 100K extra steps on the prefix-LM objective fixes it. This module
knows the released LM-adapted checkpoints, maps span-corruption names to them, and warns (once per model,
offline) when a `SoftPromptConfig` is put on a known span-corruption-only checkpoint.

Detection never uses the network. In order:
1. a `config.json` (the local directory's, the Hub cache's for a Hub id, or a config passed in) with a truthy
   `lm_adaptation` key is adapted (`softprompt-lm-adapt` writes it);
2. the name: Hub ids (case-insensitive), Hub-cache snapshot paths (`models--google--t5-v1_1-base/snapshots/
   <sha>`), and any path or id whose last component is a checkpoint's name (`./models/t5-v1_1-base`,
   `t5-v1_1-base`, `me/t5-v1_1-base`);
3. the config when the name says nothing: `pretraining.objective == "span_corruption"` (recorded by
   `scripts/embedded_build/build.py`), `continued_pretraining.source` (written by
   `softprompt-lm-adapt --objective span_corruption`), and the shape of the original T5 (ReLU, tied
   embeddings, vocabulary 32,128, one of five sizes), which only span-corruption checkpoints have. T5 1.1 shapes
   are shared by span-corruption, LM-adapted and Flan-T5 checkpoints, so a T5 1.1 config alone never warns.
mT5 and ByT5 are span-corruption-only too, with no released PyTorch LM-adapted counterpart: the warning
points to `softprompt-lm-adapt` instead.
"""

from __future__ import annotations

import json
import os
import re
import sys
import warnings
from dataclasses import dataclass
from types import FrameType
from typing import Any


@dataclass(frozen=True)
class CheckpointInfo:
    """Shape of a released LM-adapted checkpoint (T5 1.1: GeGLU, untied embeddings, vocab 32,128)."""

    hub_id: str
    params: str  # approximate parameter count as released
    d_model: int
    d_ff: int
    num_layers: int  # per stack (encoder and decoder each)
    num_heads: int
    vocab_size: int = 32128


LM_ADAPTED: dict[str, CheckpointInfo] = {
    info.hub_id: info
    for info in (
        CheckpointInfo("google/t5-small-lm-adapt", "77M", 512, 1024, 8, 6),
        CheckpointInfo("google/t5-base-lm-adapt", "250M", 768, 2048, 12, 12),
        CheckpointInfo("google/t5-large-lm-adapt", "800M", 1024, 2816, 24, 16),
        CheckpointInfo("google/t5-xl-lm-adapt", "3B", 2048, 5120, 24, 32),
        CheckpointInfo("google/t5-xxl-lm-adapt", "11B", 4096, 10240, 24, 64),
    )
}

_SIZES = {"small": "small", "base": "base", "large": "large", "3b": "xl", "xl": "xl", "11b": "xxl", "xxl": "xxl"}

# span-corruption name -> LM-adapted counterpart of the same size
SPAN_CORRUPTION_TO_LM_ADAPTED: dict[str, str] = {}
for _size in ("small", "base", "large", "3b", "11b"):
    SPAN_CORRUPTION_TO_LM_ADAPTED[f"t5-{_size}"] = f"google/t5-{_SIZES[_size]}-lm-adapt"
    SPAN_CORRUPTION_TO_LM_ADAPTED[f"google-t5/t5-{_size}"] = f"google/t5-{_SIZES[_size]}-lm-adapt"
for _size in ("small", "base", "large", "xl", "xxl"):
    SPAN_CORRUPTION_TO_LM_ADAPTED[f"google/t5-v1_1-{_size}"] = f"google/t5-{_size}-lm-adapt"

# span-corruption-only checkpoints without a released LM-adapted counterpart: LM-adapt them yourself
SPAN_CORRUPTION_ONLY: frozenset[str] = frozenset(
    f"google/{family}-{size}" for family in ("mt5", "byt5") for size in ("small", "base", "large", "xl", "xxl")
)

# (d_model, d_ff, num_layers, num_heads) of the original T5 (ReLU, tied embeddings): span corruption only
_T5_V1_0_SHAPES = {
    (512, 2048, 6, 8): "t5-small",
    (768, 3072, 12, 12): "t5-base",
    (1024, 4096, 24, 16): "t5-large",
    (1024, 16384, 24, 32): "t5-3b",
    (1024, 65536, 24, 128): "t5-11b",
}

_ALL_NAMES = [*LM_ADAPTED, *SPAN_CORRUPTION_TO_LM_ADAPTED, *sorted(SPAN_CORRUPTION_ONLY)]
_CANONICAL = {name.lower(): name for name in _ALL_NAMES}
# the last path component alone ("t5-v1_1-base") names a checkpoint too; "t5-base" maps to itself
_BY_BASENAME = {name.split("/")[-1].lower(): name for name in reversed(_ALL_NAMES)}
_REPO_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")
_LM_ADAPT_COMMAND = "softprompt-lm-adapt --model_name_or_path {name} --train_files corpus.txt --output_dir {out}"

_warned: set[str] = set()


def _normalise(name_or_path: str | None) -> str | None:
    """Hub id of a name, a Hub-cache snapshot path (`models--google--t5-v1_1-base/...`) or None."""
    if not name_or_path:
        return None
    name = str(name_or_path).strip().rstrip("/\\")
    cached = re.search(r"models--([^/\\]+?)--([^/\\]+)", name)
    if cached:
        return f"{cached.group(1)}/{cached.group(2)}"
    return name


def _known_name(name_or_path: str | None) -> str | None:
    """The registry name a name or path stands for, or None."""
    name = _normalise(name_or_path)
    if name is None:
        return None
    if name.lower() in _CANONICAL:
        return _CANONICAL[name.lower()]
    # a local copy ("./models/t5-v1_1-base"), a mirror ("me/t5-v1_1-base") or an id without its organisation
    return _BY_BASENAME.get(re.split(r"[/\\]", name)[-1].lower())


def _read_config(name_or_path: str | None) -> dict[str, Any] | None:
    """config.json of a local directory, or of a Hub id already in the local Hub cache; never downloads."""
    if not name_or_path:
        return None
    path = os.path.join(str(name_or_path), "config.json")
    if not os.path.isfile(path):
        name = _normalise(name_or_path)
        if name is None or not _REPO_ID.match(name):
            return None
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(name, "config.json")
        except Exception:  # an id the cache cannot hold: nothing to read
            return None
        if not isinstance(cached, str):
            return None
        path = cached
    try:
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def _as_dict(config: Any) -> dict[str, Any] | None:
    if config is None or isinstance(config, dict):
        return config
    to_dict = getattr(config, "to_dict", None)
    return to_dict() if callable(to_dict) else None


def _is_span_name(name: str | None) -> bool:
    return name in SPAN_CORRUPTION_TO_LM_ADAPTED or name in SPAN_CORRUPTION_ONLY


def _from_config(config: dict[str, Any]) -> str | None:
    """The span-corruption checkpoint a config says it comes from, or None (see the module docstring)."""
    pretraining = config.get("pretraining")  # recorded by scripts/embedded_build/build.py and similar builders
    if isinstance(pretraining, dict) and pretraining.get("objective") == "span_corruption":
        return "span_corruption"
    continued = config.get("continued_pretraining")
    if isinstance(continued, dict) and _is_span_name(_known_name(continued.get("source"))):
        return _known_name(continued.get("source"))
    if config.get("model_type") != "t5" or config.get("vocab_size") != 32128:
        return None
    # T5 1.1 shapes: gated activation, untied output layer (transformers 5 records it as scale_decoder_outputs)
    if config.get("feed_forward_proj", "relu") != "relu" or config.get("tie_word_embeddings", True) is False:
        return None
    if config.get("scale_decoder_outputs", True) is False:
        return None
    shape = tuple(config.get(k) for k in ("d_model", "d_ff", "num_layers", "num_heads"))
    return _T5_V1_0_SHAPES.get(shape)  # type: ignore[arg-type]  # a shape with a None is simply not found


def span_corruption_checkpoint(name_or_path: str | None, config: Any = None) -> str | None:
    """The registry name of the span-corruption-only checkpoint this model is, or None (not known or adapted).

    Args:
        name_or_path: the model's `name_or_path` (Hub id, Hub-cache path or local directory).
        config: the model's config (`PretrainedConfig` or dict); default: read `config.json` offline.
    """
    config = _as_dict(config) if config is not None else _read_config(name_or_path)
    if config and config.get("lm_adaptation"):
        return None  # LM-adapted by softprompt-lm-adapt (or recorded so by its maker)
    known = _known_name(name_or_path)
    if known in LM_ADAPTED:
        return None
    if _is_span_name(known):
        return known
    return _from_config(config) if config else None


def lm_adapted_counterpart(name_or_path: str | None, config: Any = None) -> str | None:
    """The LM-adapted checkpoint for a name: itself if already LM-adapted, None if there is none known.

    >>> lm_adapted_counterpart("google/t5-v1_1-base")
    'google/t5-base-lm-adapt'
    """
    known = _known_name(name_or_path)
    if known in LM_ADAPTED:
        return known
    loaded = _as_dict(config) if config is not None else _read_config(name_or_path)
    if loaded and loaded.get("lm_adaptation"):
        return str(name_or_path)
    return SPAN_CORRUPTION_TO_LM_ADAPTED.get(span_corruption_checkpoint(name_or_path, loaded) or "")


def resolve_lm_adapted(name_or_path: str) -> str:
    """Like `lm_adapted_counterpart`, but raise `ValueError` saying what to do when there is none."""
    resolved = lm_adapted_counterpart(name_or_path)
    if resolved is not None:
        return resolved
    known = span_corruption_checkpoint(name_or_path)
    command = _LM_ADAPT_COMMAND.format(name=name_or_path, out=f"{str(name_or_path).split('/')[-1]}-lm-adapt")
    if known is not None:
        raise ValueError(f"{name_or_path!r} has no released LM-adapted counterpart; LM-adapt it yourself: {command}")
    raise ValueError(
        f"{name_or_path!r} has no known LM-adapted counterpart (known: t5-{{small,base,large,3b,11b}}, "
        f"google-t5/t5-*, google/t5-v1_1-{{small,base,large,xl,xxl}} and {sorted(LM_ADAPTED)}); "
        f"LM-adapt it yourself: {command}"
    )


def is_span_corruption_only(name_or_path: str | None, config: Any = None) -> bool:
    """True for a known span-corruption checkpoint that was not LM-adapted (no network used)."""
    return span_corruption_checkpoint(name_or_path, config) is not None


def _caller_stacklevel() -> int:
    """Stack level of the first frame outside softprompt_ext, PEFT, transformers and torch (the user's call)."""
    inside = [os.path.dirname(os.path.abspath(__file__))]
    for module in ("peft", "transformers", "torch"):
        loaded = sys.modules.get(module)
        where = getattr(loaded, "__file__", None)
        if where:
            inside.append(os.path.dirname(os.path.abspath(where)))
    frame: FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and any(os.path.abspath(frame.f_code.co_filename).startswith(p + os.sep) for p in inside):
        frame, level = frame.f_back, level + 1
    return level


def warn_if_span_corruption(name_or_path: str | None, config: Any = None) -> bool:
    """Warn once per model when prompt tuning starts on a span-corruption-only checkpoint; True if it warned."""
    known = span_corruption_checkpoint(name_or_path, config)
    if known is None:
        return False
    key = _normalise(name_or_path) or known
    if key in _warned:
        return False
    _warned.add(key)
    named = repr(key) if key == known else f"{key!r} ({known})"
    replacement = SPAN_CORRUPTION_TO_LM_ADAPTED.get(known)
    fix = (
        f"Use its LM-adapted counterpart {replacement!r}"
        if replacement
        else "No LM-adapted counterpart is released for it; LM-adapt it yourself: "
        + _LM_ADAPT_COMMAND.format(name=key, out=f"{known.split('/')[-1]}-lm-adapt")
    )
    warnings.warn(
        f"{named} is a span-corruption checkpoint: prompt tuning on it is unstable and can score 0, while "
        f"LM adaptation fixes it (Lester et al. 2021, section 3.3). {fix}; or pass "
        "warn_if_not_lm_adapted=False to silence this.",
        UserWarning,
        stacklevel=_caller_stacklevel(),
    )
    return True
