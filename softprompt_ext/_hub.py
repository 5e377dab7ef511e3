"""Reading adapter files from a directory or a Hub repo (safetensors and JSON only, never pickle)."""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError
from peft.utils import SAFETENSORS_WEIGHTS_NAME

PROMPT_KEY = "prompt_embeddings"  # the key PEFT saves a prompt-tuning adapter under


def locate(path_or_repo: str, filename: str, subfolder: str | None = None, **hub_kwargs: Any) -> str | None:
    """Local path of `filename` in an adapter directory or Hub repo; None when the repo has no such file."""
    folder = os.path.join(path_or_repo, subfolder) if subfolder else path_or_repo
    if os.path.isdir(folder):
        candidate = os.path.join(folder, filename)
        return candidate if os.path.isfile(candidate) else None
    try:
        return hf_hub_download(path_or_repo, filename, subfolder=subfolder, **hub_kwargs)
    except EntryNotFoundError:  # absent in the repo, or offline and not in the local cache
        return None


def read_adapter_json(path_or_repo: str, filename: str, subfolder: str | None = None, **hub_kwargs: Any):
    """Parsed JSON object of `filename` in the adapter, or None when absent."""
    local = locate(path_or_repo, filename, subfolder, **hub_kwargs)
    if local is None:
        return None
    with open(local, encoding="utf-8") as handle:
        try:
            data = json.load(handle)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{local}: not valid JSON ({exc}); the adapter file is damaged.") from None
    if not isinstance(data, dict):
        raise ValueError(f"{local}: expected a JSON object, got {type(data).__name__}; the adapter is damaged.")
    return data


def read_prompt(path_or_repo: str, **hub_kwargs: Any) -> torch.Tensor:
    """The saved prompt `[P, H]` (float32) of an adapter directory, Hub adapter id or `.safetensors` file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if os.path.isfile(path_or_repo):
        local = path_or_repo
        if not local.endswith(".safetensors"):
            raise ValueError(
                f"{local}: only .safetensors prompts are read (pickle files can run code when loaded); "
                "re-save the adapter with safe_serialization=True."
            )
    else:
        local = locate(path_or_repo, SAFETENSORS_WEIGHTS_NAME, None, **hub_kwargs)
        if local is None:
            raise ValueError(
                f"No {SAFETENSORS_WEIGHTS_NAME} at {path_or_repo!r}; pass an adapter directory, a Hub adapter "
                "id or a .safetensors file (pickled adapter_model.bin files are not read)."
            )
    try:
        tensors = load_file(local)
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{local}: cannot be read as safetensors ({exc}); the file is damaged.") from None
    if PROMPT_KEY not in tensors:
        raise ValueError(f"{local}: holds {sorted(tensors)} but no {PROMPT_KEY!r}; it is not a prompt-tuning adapter.")
    prompt = tensors[PROMPT_KEY]
    if prompt.dim() != 2:
        raise ValueError(f"{local}: {PROMPT_KEY} has shape {tuple(prompt.shape)}, expected [P, d_model].")
    return prompt.float()
