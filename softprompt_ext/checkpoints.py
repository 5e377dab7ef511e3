"""LM-adapted T5 checkpoints (paper section 3.3, Figure 3c/3d).

Off-the-shelf span-corruption T5 is a poor base for prompt tuning: its outputs mimic sentinels and some
sizes score zero. T5 1.1 "LM-adapted" for 100K extra steps on the prefix-LM objective fixes it. This module
knows the released LM-adapted checkpoints, maps span-corruption names to them, and warns (once per
model, offline) when a `SoftPromptConfig` is put on a known span-corruption-only checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass


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

_warned: set[str] = set()


def _normalise(name_or_path: str | None) -> str | None:
    """Hub id of a name, a Hub-cache snapshot path (`models--google--t5-v1_1-base/...`) or None."""
    if not name_or_path:
        return None
    name = str(name_or_path).strip().rstrip("/")
    cached = re.search(r"models--([^/\\]+?)--([^/\\]+)", name)
    if cached:
        return f"{cached.group(1)}/{cached.group(2)}"
    return name


def lm_adapted_counterpart(name_or_path: str | None) -> str | None:
    """The LM-adapted checkpoint for a name: itself if already LM-adapted, None if there is none known.

    >>> lm_adapted_counterpart("google/t5-v1_1-base")
    'google/t5-base-lm-adapt'
    """
    name = _normalise(name_or_path)
    if name is None:
        return None
    if name in LM_ADAPTED:
        return name
    return SPAN_CORRUPTION_TO_LM_ADAPTED.get(name)


def resolve_lm_adapted(name_or_path: str) -> str:
    """Like `lm_adapted_counterpart`, but raise `ValueError` naming the known checkpoints when there is none."""
    resolved = lm_adapted_counterpart(name_or_path)
    if resolved is None:
        raise ValueError(
            f"{name_or_path!r} has no known LM-adapted counterpart; known: {sorted(SPAN_CORRUPTION_TO_LM_ADAPTED)} "
            f"-> {sorted(LM_ADAPTED)}. LM-adapt it yourself with `softprompt-lm-adapt`."
        )
    return resolved


def is_span_corruption_only(name_or_path: str | None) -> bool:
    """True for a known span-corruption T5 checkpoint that was not LM-adapted (no network used)."""
    if name_or_path and os.path.isfile(os.path.join(str(name_or_path), "config.json")):
        try:
            with open(os.path.join(str(name_or_path), "config.json"), encoding="utf-8") as handle:
                if json.load(handle).get("lm_adaptation"):
                    return False  # LM-adapted locally by softprompt-lm-adapt
        except (OSError, ValueError):
            pass
    name = _normalise(name_or_path)
    return name is not None and name in SPAN_CORRUPTION_TO_LM_ADAPTED


def warn_if_span_corruption(name_or_path: str | None) -> None:
    """Warn once per model when prompt tuning starts on a span-corruption-only checkpoint."""
    if not is_span_corruption_only(name_or_path):
        return
    name = _normalise(name_or_path)
    if name in _warned:
        return
    _warned.add(name)
    warnings.warn(
        f"{name!r} is a span-corruption T5 checkpoint: prompt tuning on it is unstable and can score 0 "
        "(Lester et al. 2021, section 3.3). Use its LM-adapted counterpart "
        f"{SPAN_CORRUPTION_TO_LM_ADAPTED[name]!r}, or pass warn_if_not_lm_adapted=False to silence this.",
        UserWarning,
        stacklevel=5,
    )
