"""How similar two soft prompts are, and retrieval of the most similar saved prompt (SPoT-style transfer).

Lester et al. (2021) train one prompt per task on a frozen model; Vu et al. (2022), "SPoT: Better Frozen Model
Adaptation through Soft Prompt Transfer" (https://arxiv.org/abs/2110.07904), start a new task's prompt from
the most similar source prompt. SPoT measures similarity between *prompts trained on each task* -- for the
target task, one trained briefly on it -- not between task descriptions. So transfer is:

    from peft import get_peft_model
    from softprompt_ext import SoftPromptConfig
    from softprompt_ext.analysis.similarity import most_similar

    # 1. a prompt trained for a few hundred steps on the target task: `probe` (a PeftModel or adapter dir)
    best = most_similar(probe, "saved_prompts/")[0]
    config = SoftPromptConfig.continue_from(best.path, num_virtual_tokens=100)   # or:
    config = SoftPromptConfig(task_type="SEQ_2_SEQ_LM", prompt_tuning_init="SAVED_PROMPT",
                              init_prompt_path=best.path, num_virtual_tokens=100)
    model = get_peft_model(base, config)

Two measures, both cosines and so independent of the prompts' norms:

* `max_cosine` (default): for every row of one prompt, the cosine of the closest row of the other, averaged
  over rows, then averaged over both directions so that `sim(a, b) == sim(b, a)`:
  `1/2 (mean_i max_j cos(a_i, b_j) + mean_j max_i cos(a_i, b_j))`. It ignores the order of rows (position
  i of one prompt need not line up with position i of another) and works for prompts of different lengths
  P. Equal to 1 when every row of each prompt also appears (up to scale) in the other.
* `pooled_cosine`: the cosine of the two mean-pooled prompts, `cos(mean_i a_i, mean_j b_j)`. This is the
  "average tokens" task embedding of SPoT; cheaper and coarser.

Prompts compare only within one model width: a d_model mismatch is an error naming both sides.

Size: `max_cosine` works through the `[P, Q]` cosines in blocks of rows (`BLOCK_COSINES` at a time, 64 MB), so
memory stays flat whatever P and Q are; above `MAX_COSINES` cosines (two P = 32,768 prompts; the paper's are
P <= 150) it refuses with a `ValueError` instead of computing for minutes -- `pooled_cosine` is O(P + Q).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..peft_internals import SAFETENSORS_WEIGHTS_NAME
from ..prompt_tensor import load_prompt

BLOCK_COSINES = 1 << 24  # cosines computed at once by max_cosine: 64 MB of float32
MAX_COSINES = 1 << 30  # P x Q above which max_cosine refuses (about a minute on one CPU core)
PromptSource = Any  # a [P, H] tensor, an adapter directory, a Hub adapter id, a .safetensors file or a PeftModel


# ---------------------------------------------------------------------------------------------- measures
def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every row of `a` `[P, H]` with every row of `b` `[Q, H]`: `[P, Q]`."""
    _check_widths(a, b, "a", "b")
    a_unit = torch.nn.functional.normalize(a.float(), dim=1)  # [P, H]
    b_unit = torch.nn.functional.normalize(b.float(), dim=1)  # [Q, H]
    return a_unit @ b_unit.T  # [P, Q]


def max_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Symmetrised mean of per-row best cosines between prompts `a` `[P, H]` and `b` `[Q, H]` (see module doc).

    Computed in blocks of rows of `a`, never the whole `[P, Q]` matrix at once (see "Size" in the module doc).
    """
    _check_widths(a, b, "a", "b")
    rows_a, rows_b = a.shape[0], b.shape[0]
    if rows_a * rows_b > MAX_COSINES:
        raise ValueError(
            f"max_cosine of prompts with P={rows_a} and P={rows_b} rows needs {rows_a * rows_b:,} cosines, more "
            f"than the {MAX_COSINES:,} it computes (a soft prompt has P <= 150 in the paper); use "
            "measure='pooled_cosine' for prompts this long."
        )
    a_unit = torch.nn.functional.normalize(a.float(), dim=1)  # [P, H]
    b_unit = torch.nn.functional.normalize(b.float(), dim=1)  # [Q, H]
    step = max(1, BLOCK_COSINES // rows_b)
    best_of_a = torch.empty(rows_a)  # [P]
    best_of_b = torch.full((rows_b,), -float("inf"))  # [Q]
    for start in range(0, rows_a, step):
        block = a_unit[start : start + step] @ b_unit.T  # [step, Q]
        best_of_a[start : start + step] = block.max(dim=1).values
        best_of_b = torch.maximum(best_of_b, block.max(dim=0).values)
    return 0.5 * (best_of_a.mean().item() + best_of_b.mean().item())


def pooled_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine of the mean-pooled prompts: `cos(mean(a), mean(b))` for `a` `[P, H]`, `b` `[Q, H]`."""
    _check_widths(a, b, "a", "b")
    return torch.nn.functional.cosine_similarity(a.float().mean(0), b.float().mean(0), dim=0).item()


MEASURES: dict[str, Callable[[torch.Tensor, torch.Tensor], float]] = {
    "max_cosine": max_cosine,
    "pooled_cosine": pooled_cosine,
}


def _measure(name: str) -> Callable[[torch.Tensor, torch.Tensor], float]:
    if name not in MEASURES:
        raise ValueError(f"measure={name!r} is not known; use one of {sorted(MEASURES)}.")
    return MEASURES[name]


def _check_widths(a: torch.Tensor, b: torch.Tensor, a_name: str, b_name: str) -> None:
    for name, t in ((a_name, a), (b_name, b)):
        if t.dim() != 2 or t.shape[0] == 0:
            raise ValueError(f"prompt {name} has shape {tuple(t.shape)}; a prompt is [P, d_model] with P >= 1.")
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"d_model mismatch: prompt {a_name} is {tuple(a.shape)} (P, d_model) but prompt {b_name} is "
            f"{tuple(b.shape)}; prompts only compare between models of the same width."
        )


def prompt_similarity(a: PromptSource, b: PromptSource, measure: str = "max_cosine") -> float:
    """Similarity of two prompts, each a tensor `[P, H]`, an adapter (directory / Hub id / file) or a PeftModel."""
    fn = _measure(measure)
    pa, pb = load_prompt(a), load_prompt(b)  # [P, H], [Q, H]
    _check_widths(pa, pb, _label(a), _label(b))
    return fn(pa, pb)


def similarity_matrix(prompts: Sequence[PromptSource], measure: str = "max_cosine") -> torch.Tensor:
    """Pairwise similarities `[N, N]` of N prompts (symmetric for both measures; diagonal 1)."""
    fn = _measure(measure)
    loaded = [load_prompt(p) for p in prompts]  # N x [P_n, H]
    out = torch.ones(len(loaded), len(loaded))  # [N, N]
    for i in range(len(loaded)):
        for j in range(i + 1, len(loaded)):
            _check_widths(loaded[i], loaded[j], _label(prompts[i]), _label(prompts[j]))
            out[i, j] = out[j, i] = fn(loaded[i], loaded[j])
    return out


# ---------------------------------------------------------------------------------------------- retrieval
@dataclass(frozen=True)
class Match:
    """One saved prompt ranked by `most_similar`; `path` goes straight to `init_prompt_path`."""

    path: str
    score: float
    measure: str
    num_virtual_tokens: int  # P of the saved prompt
    d_model: int


def library_entries(library: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """The adapters of a library: a folder of adapter directories, an adapter, a Hub id, or a list of those.

    A folder that holds `adapter_model.safetensors` is one adapter; any other folder contributes its
    immediate subfolders that hold one (sorted by name). Other strings are kept as adapter paths or Hub ids.
    """
    items = [library] if isinstance(library, str | os.PathLike) else list(library)
    if not items:
        raise ValueError("library is empty; pass a folder of adapter directories or a list of adapters.")
    entries: list[str] = []
    for item in items:
        item = os.fspath(item)
        if os.path.isdir(item) and not os.path.isfile(os.path.join(item, SAFETENSORS_WEIGHTS_NAME)):
            found = sorted(
                os.path.join(item, name)
                for name in os.listdir(item)
                if os.path.isfile(os.path.join(item, name, SAFETENSORS_WEIGHTS_NAME))
            )
            if not found:
                raise ValueError(
                    f"library folder {item!r} holds no adapters (subfolders with adapter_model.safetensors); "
                    "pass a folder of saved prompt-tuning adapters."
                )
            entries.extend(found)
        else:
            entries.append(item)
    return list(dict.fromkeys(entries))


def most_similar(
    target: PromptSource,
    library: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    measure: str = "max_cosine",
    top_k: int | None = None,
) -> list[Match]:
    """Saved prompts ranked by similarity to `target`, most similar first.

    For SPoT-style transfer, `target` should be a prompt trained briefly on the target task (Vu et al. 2022
    retrieve by the similarity of such task prompts), and the first match's `path` starts the new prompt
    (`SoftPromptConfig.continue_from(best.path)` or `prompt_tuning_init="SAVED_PROMPT"`).

    Args:
        target: a tensor `[P, H]`, an adapter (directory, Hub id, `.safetensors` file) or a `PeftModel`.
        library: see `library_entries`. The target itself is left out when it is one of them.
        measure: `"max_cosine"` (default) or `"pooled_cosine"`; see the module docstring.
        top_k: keep the best `top_k` only (default: all).
    Raises:
        ValueError: an adapter cannot be read, or a library prompt's d_model differs from the target's
            (the message names both).
    """
    fn = _measure(measure)
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}.")
    query = load_prompt(target)  # [P, H]
    target_path = _real(target)
    matches = []
    for entry in library_entries(library):
        if target_path is not None and _real(entry) == target_path:
            continue  # a prompt is trivially most similar to itself
        prompt = load_prompt(entry)  # [Q, H]
        _check_widths(query, prompt, f"target {_label(target)}", repr(entry))
        matches.append(Match(entry, fn(query, prompt), measure, prompt.shape[0], prompt.shape[1]))
    matches.sort(key=lambda m: (-m.score, m.path))  # ties: by path, so the order is reproducible
    return matches if top_k is None else matches[:top_k]


def _real(source: Any) -> str | None:
    if isinstance(source, str | os.PathLike) and os.path.exists(source):
        return os.path.realpath(source)
    return None


def _label(source: Any) -> str:
    if isinstance(source, str | os.PathLike):
        return repr(os.fspath(source))
    if isinstance(source, torch.Tensor):
        return "(tensor)"
    return f"({type(source).__name__})"
