"""Nearest-token readout of a learned prompt (Lester et al. 2021, section 7 "Interpretability").

The paper reads a prompt by listing, for every prompt position, the vocabulary tokens whose input
embeddings are closest to it by cosine similarity: learned rows form semantic clusters, and rows initialised
from class labels usually keep their label as nearest neighbour after training.

    from softprompt_ext.analysis.readout import adapter_readout, format_readout

    readout = adapter_readout("my-adapter", top_k=5)   # base model from adapter_config.json
    print(format_readout(readout))

Design decisions
----------------
* Cosine, as in the paper: prompt rows and vocabulary rows have very different norms (a prompt trained from
  `RANDOM_UNIFORM` sits far from the vocabulary), so dot product or L2 distance would mostly rank by norm.
* One matrix product `[P, H] x [H, V]` with the prompt rows normalised; the scores are then divided by the
  table's row norms, which gives the same cosine without a normalised copy of a 32k x 4096 table. Excluded
  ids get `-inf` before `topk`, so there is no Python loop over the vocabulary.
* Special tokens are skipped by default -- the same set `special_tokens.excluded_token_ids` keeps out of
  `SAMPLE_VOCAB` (pad, EOS, UNK, byte fallback) -- and T5's sentinels `<extra_id_i>` on their own switch
  (a span-corruption-only T5 pulls prompts towards sentinels, paper section 3.3, so keeping them can be the
  point). Table rows past the tokenizer (T5 pads 32,100 tokens to 32,128 rows) name no token and are
  skipped with the special tokens.
* The prompt is read from `adapter_model.safetensors` only (`prompt_tensor.load_prompt`, never pickle). Plain PEFT
  seq2seq adapters save 2P rows (encoder and decoder halves); only the first P reach the encoder, so only
  they are read.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..adapters.model_card import CARD_NAME
from ..adapters.reader import locate
from ..adapters.validation import validate_adapter
from ..config import RECORD_NAME
from ..peft_internals import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME, encoder_prompt
from ..prompt_tensor import adapter_prompt, check_exists, model_prompt
from ..special_tokens import readout_skip_ids
from .base_model import embedding_table, tokenizer_for


@dataclass(frozen=True)
class Neighbour:
    """One vocabulary token near a prompt position."""

    token_id: int
    token: str  # the tokenizer's piece (`▁the` for SentencePiece), `<id:N>` without a tokenizer
    score: float  # cosine similarity in [-1, 1]


# ---------------------------------------------------------------------------------------------- core
def nearest_tokens(
    prompt: torch.Tensor,
    table: torch.Tensor,
    *,
    top_k: int = 5,
    exclude_ids: set[int] | frozenset[int] = frozenset(),
    tokenizer: Any = None,
) -> list[list[Neighbour]]:
    """The `top_k` vocabulary tokens nearest to each prompt row by cosine similarity.

    Args:
        prompt: the prompt `[P, H]`.
        table: the input embedding table `[V, H]`.
        top_k: neighbours per position (fewer when fewer tokens are left after `exclude_ids`).
        exclude_ids: token ids never returned (ids outside the table are ignored).
        tokenizer: names the tokens; without one they read `<id:N>`.
    Returns:
        P lists (one per position, in prompt order) of `top_k` neighbours, best first.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be an int >= 1, got {top_k!r}; e.g. top_k=5.")
    if prompt.dim() != 2 or table.dim() != 2 or prompt.shape[1] != table.shape[1]:
        raise ValueError(
            f"the prompt has shape {tuple(prompt.shape)} (P, d_model) but the embedding table has shape "
            f"{tuple(table.shape)} (V, d_model); read the prompt against the base model it was trained on."
        )
    table = table.detach()
    prompt = prompt.detach().to(device=table.device, dtype=torch.float32)  # [P, H]
    keep = torch.ones(table.shape[0], dtype=torch.bool, device=table.device)  # [V]
    drop = [i for i in exclude_ids if 0 <= i < table.shape[0]]
    if drop:
        keep[torch.as_tensor(drop, device=table.device)] = False
    k = min(top_k, int(keep.sum()))
    if k == 0:
        raise ValueError("every token of the vocabulary is excluded; pass fewer exclude_ids.")

    unit = torch.nn.functional.normalize(prompt, dim=1)  # [P, H]
    table32 = table.float()  # no copy when the table already is float32
    norms = torch.linalg.vector_norm(table32, dim=1).clamp_min(1e-12)  # [V]
    scores = (unit @ table32.T) / norms  # [P, V]
    scores = scores.masked_fill(~keep, float("-inf"))  # [P, V]
    top_scores, top_ids = scores.topk(k, dim=1)  # [P, k], [P, k]

    ids = top_ids.cpu().tolist()
    names = _token_names(tokenizer, sorted({i for row in ids for i in row}))
    values = top_scores.cpu().tolist()
    return [
        [Neighbour(token_id=i, token=names[i], score=float(s)) for i, s in zip(row_ids, row_scores, strict=True)]
        for row_ids, row_scores in zip(ids, values, strict=True)
    ]


# ---------------------------------------------------------------------------------------------- readouts
def model_readout(
    model: Any,
    tokenizer: Any = None,
    *,
    adapter_name: str | None = None,
    top_k: int = 5,
    skip_special: bool = True,
    skip_sentinels: bool = True,
) -> list[list[Neighbour]]:
    """Nearest tokens of each position of a loaded `PeftModel`'s prompt.

    Args:
        model: a `peft.PeftModel` holding a prompt-tuning adapter.
        tokenizer: the base model's tokenizer; default: loaded from the adapter's `tokenizer_name_or_path` or
            `base_model_name_or_path`.
        adapter_name: which adapter (default: the active one).
        top_k, skip_special, skip_sentinels: see `nearest_tokens` and `softprompt_ext.special_tokens.readout_skip_ids`.
    Returns:
        P lists of `top_k` `Neighbour`s, best first.
    """
    prompt, config = model_prompt(model, adapter_name)  # [P, H]
    if tokenizer is None:
        tokenizer = tokenizer_for([config.tokenizer_name_or_path, config.base_model_name_or_path])
    table = model.get_base_model().get_input_embeddings().weight  # [V, H]
    exclude = readout_skip_ids(tokenizer, table.shape[0], special=skip_special, sentinels=skip_sentinels)
    return nearest_tokens(prompt, table, top_k=top_k, exclude_ids=exclude, tokenizer=tokenizer)


def adapter_readout(
    adapter: str,
    base_model: Any = None,
    *,
    tokenizer: Any = None,
    top_k: int = 5,
    skip_special: bool = True,
    skip_sentinels: bool = True,
) -> list[list[Neighbour]]:
    """Nearest tokens of each position of a saved adapter's prompt.

    Args:
        adapter: an adapter directory or Hub adapter id (`adapter_model.safetensors` is read; never pickle).
        base_model: the model it was trained on -- a directory, a Hub id, a loaded model or its embedding
            table `[V, H]`. Default: `base_model_name_or_path` of `adapter_config.json`. Only the input
            embedding tensor is read when the checkpoint is safetensors.
        tokenizer: a tokenizer, or its directory / Hub id. Default: the base model's, else the adapter's
            `tokenizer_name_or_path`.
        top_k, skip_special, skip_sentinels: see `nearest_tokens` and `softprompt_ext.special_tokens.readout_skip_ids`.
    Returns:
        P lists of `top_k` `Neighbour`s, best first.
    """
    check_exists(adapter)
    prompt, report = adapter_prompt(adapter)  # [P, H]
    config = report.plain
    base = base_model if base_model is not None else config.get("base_model_name_or_path")
    if base is None:
        raise ValueError(
            f"adapter {adapter!r} names no base_model_name_or_path; pass base_model= (CLI: --base), the model "
            "the prompt was trained on."
        )
    table = embedding_table(base, config.get("task_type"))  # [V, H]
    if isinstance(tokenizer, str):  # named explicitly: no silent fallback to another tokenizer
        tokenizer = tokenizer_for([tokenizer])
    elif tokenizer is None:
        base_name = base if isinstance(base, str) else getattr(base, "name_or_path", None)
        tokenizer = tokenizer_for([base_name, config.get("tokenizer_name_or_path")])
    exclude = readout_skip_ids(tokenizer, table.shape[0], special=skip_special, sentinels=skip_sentinels)
    return nearest_tokens(prompt, table, top_k=top_k, exclude_ids=exclude, tokenizer=tokenizer)


def adapter_info(adapter: str) -> dict[str, Any]:
    """What a saved adapter holds: P, d_model, task type, base model, init record, size on disk.

    Args:
        adapter: an adapter directory or Hub adapter id.
    Returns:
        A JSON-ready dict; `record` is the content of `softprompt_config.json` (None for plain PEFT adapters).
    """
    check_exists(adapter)
    report = validate_adapter(adapter)  # config, record and weights through the one reader
    config, record, saved = report.plain, report.record, report.prompt  # saved: [rows, H]
    prompt = encoder_prompt(saved, report.config)  # [P, H]
    if os.path.isdir(adapter):
        files = {
            os.path.relpath(os.path.join(root, f), adapter): os.path.getsize(os.path.join(root, f))
            for root, _, found in os.walk(adapter)
            for f in found
        }
    else:  # a Hub id: the files read from it (cached locally by huggingface_hub)
        names = [CONFIG_NAME, RECORD_NAME, SAFETENSORS_WEIGHTS_NAME, CARD_NAME]
        located = {name: locate(adapter, name) for name in names}
        files = {name: os.path.getsize(path) for name, path in located.items() if path is not None}
    return {
        "adapter": adapter,
        "num_virtual_tokens": prompt.shape[0],
        "saved_rows": saved.shape[0],
        "d_model": prompt.shape[1],
        "mean_row_norm": torch.linalg.vector_norm(prompt, dim=1).mean().item(),
        "peft_type": config.get("peft_type"),
        "task_type": config.get("task_type"),
        "base_model_name_or_path": config.get("base_model_name_or_path"),
        "tokenizer_name_or_path": config.get("tokenizer_name_or_path"),
        "prompt_tuning_init": (record or config).get("prompt_tuning_init"),
        "record": record,
        "files": dict(sorted(files.items())),
        "size_on_disk": sum(files.values()),
    }


# ---------------------------------------------------------------------------------------------- output
def readout_to_dict(readout: list[list[Neighbour]]) -> list[dict[str, Any]]:
    """JSON-ready form: `[{"position": i, "neighbours": [{"token_id", "token", "score"}, ...]}, ...]`."""
    return [{"position": i, "neighbours": [asdict(n) for n in row]} for i, row in enumerate(readout)]


def format_readout(readout: list[list[Neighbour]], digits: int = 3) -> str:
    """A plain-text table: one line per prompt position, neighbours best first as `token score`."""
    if not readout:
        return "(empty prompt)"
    cells = [[f"{_printable(n.token)} {n.score:.{digits}f}" for n in row] for row in readout]
    k = max(len(row) for row in cells)
    widths = [max(len(row[j]) for row in cells if j < len(row)) for j in range(k)]
    pos_width = max(3, len(str(len(readout) - 1)))
    header = "pos".rjust(pos_width) + "  " + "  ".join(f"#{j + 1}".ljust(w) for j, w in enumerate(widths))
    lines = [header.rstrip()]
    for i, row in enumerate(cells):
        padded = "  ".join(c.ljust(w) for c, w in zip(row, widths[: len(row)], strict=True))
        lines.append((str(i).rjust(pos_width) + "  " + padded).rstrip())
    return "\n".join(lines)


def _printable(token: str) -> str:
    return token.replace("\n", "\\n").replace("\t", "\\t").replace(" ", "\u2423") or "''"


def _token_names(tokenizer: Any, ids: list[int]) -> dict[int, str]:
    if tokenizer is None:
        return {i: f"<id:{i}>" for i in ids}
    names = tokenizer.convert_ids_to_tokens(ids)
    return {i: (name if name is not None else f"<id:{i}>") for i, name in zip(ids, names, strict=True)}
