"""The one reader of adapter files: every path that reads an adapter (PEFT's loader slot, `from_pretrained`,
`continue_from`, `SAVED_PROMPT`, `load_for_training`, validation, readout, similarity, the CLI) comes here.

Adapters come from strangers on the Hub (Lester et al. 2021, sections 1 and 6: a prompt per task, shared and
stored by the thousand), so one door with all the checks protects every path:

* JSON (`read_adapter_json`): at most `MAX_JSON_BYTES`, UTF-8, valid JSON, an object, not nested past what
  Python can parse; otherwise one `AdapterError` naming the file.
* Weights (`read_prompt`): `adapter_model.safetensors` only -- pickles are never opened (unpickling can run
  code). The header is read first: the prompt must be 2-D, floating point, with the rows, width and d_model
  the caller expects, so a tensor that does not fit is refused before its data is read (a 12 KB sparse file
  cannot make the reader allocate gigabytes). Tensors other than the prompt are refused unless they belong to
  a module the config declares in `modules_to_save` (PEFT loads every tensor of the file into the model with
  `strict=False`: an undeclared `lm_head.weight` would overwrite the frozen base model). Values must be finite
  *after* the cast to float32, the dtype the prompt is used in (a float64 1e300 is inf in float32).
* With the base model known (`module_tensors`, from `peft_internals.modules_to_save_tensors`), each
  `modules_to_save` tensor is checked against the base module's tensor it stands for (`check_module_tensor`):
  present (PEFT would stop with a bare `KeyError`), the same shape, a floating dtype for a floating tensor (PEFT
  casts it, as it casts the prompt) or else the same dtype, finite after the cast; a tensor under a declared
  name that the base model does not have is refused. PEFT's own loader runs the same check through the prompt
  encoder's `check_saved_modules` hook, just before it loads the tensors into the model.
* Locations (`find_adapter_file`): a local directory, or a Hub repo id through `huggingface_hub`; a missing
  directory, an invalid repo id, an offline cache miss and an unreachable Hub are each one clear `AdapterError`,
  the last within `HUB_PROBE_TIMEOUT` seconds (not after huggingface_hub's retries).
* Digests: a local adapter directory written by `save_adapter_atomically` holds `softprompt_digest.json`, the
  sha256 of each of its files; every file read from it must match (a file missing, added or changed since
  means a mix of two saves, e.g. a `save_pretrained` over it killed midway). No digest file: nothing to check.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError

from ..peft_internals import CONFIG_NAME, PROMPT_KEY, SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME
from .atomic import DIGEST_NAME, UNDIGESTED, interrupted_leftover, sha256_file

HUB_PROBE_TIMEOUT = 5.0  # seconds for the one look at an uncached Hub file (HF_HUB_ETAG_TIMEOUT overrides)
MAX_JSON_BYTES = 1 << 20  # an adapter's JSON files are a few KB; a larger one is refused before parsing
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")  # safetensors names of the dtypes a prompt may have
_TORCH_DTYPES = {  # safetensors dtype names -> torch dtypes, for modules_to_save tensors
    "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64, "I64": torch.int64,
    "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}


class AdapterError(ValueError):
    """An adapter that must not be loaded; the message names the file and the problem."""


# ---------------------------------------------------------------------------------------------- locations
def locate(path_or_repo: str, filename: str, subfolder: str | None = None, **hub_kwargs: Any) -> str | None:
    """Local path of `filename` in a directory or Hub repo; None when it has no such file (no other checks)."""
    folder = os.path.join(path_or_repo, subfolder) if subfolder else path_or_repo
    if os.path.isdir(folder):
        candidate = os.path.join(folder, filename)
        return candidate if os.path.isfile(candidate) else None
    return _hub_file(path_or_repo, filename, subfolder, hub_kwargs)


def _hub_file(repo: str, filename: str, subfolder: str | None, hub_kwargs: dict[str, Any]) -> str | None:
    """`filename` of a Hub repo through the local cache; offline or unreachable is one clear `AdapterError`.

    huggingface_hub alone answers both with a `LocalEntryNotFoundError` (an `EntryNotFoundError`, as for a
    file the repo lacks) and, online, only after retrying a failed request 5 times with 60 s timeouts (tens of
    seconds when the connection is refused, minutes when packets are dropped). So: offline (`HF_HUB_OFFLINE=1` or
    `local_files_only`) only the cache is asked; online, a file that is not cached is first looked up with one
    HEAD request without retries (timeout `HF_HUB_ETAG_TIMEOUT`, default here `HUB_PROBE_TIMEOUT` s).
    """
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url, try_to_load_from_cache
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RemoteEntryNotFoundError

    if hub_kwargs.get("local_dir") is not None:  # huggingface_hub's own local-folder mode
        try:
            return hf_hub_download(repo, filename, subfolder=subfolder, **hub_kwargs)
        except EntryNotFoundError:
            return None
    where = f"{subfolder}/{filename}" if subfolder else filename
    revision, repo_type = hub_kwargs.get("revision"), hub_kwargs.get("repo_type")
    cached = try_to_load_from_cache(
        repo, where, cache_dir=hub_kwargs.get("cache_dir"), revision=revision, repo_type=repo_type
    )
    if constants.is_offline_mode() or hub_kwargs.get("local_files_only"):
        if isinstance(cached, str):
            return cached
        if cached is not None:  # the cache knows the repo has no such file
            return None
        raise AdapterError(
            f"{repo!r} (Hub repo, {where}): offline (HF_HUB_OFFLINE=1 or local_files_only) and the file is not in "
            "the local Hugging Face cache, and there is no local directory of that name. Connect once without "
            "HF_HUB_OFFLINE to download it, or pass the adapter's directory."
        )
    if not isinstance(cached, str):  # a failed request would now be retried for many seconds: look once
        url = hf_hub_url(repo, filename, subfolder=subfolder, repo_type=repo_type, revision=revision,
                         endpoint=hub_kwargs.get("endpoint"))
        try:
            get_hf_file_metadata(url, token=hub_kwargs.get("token"), timeout=_probe_timeout(),
                                 headers=hub_kwargs.get("headers"), endpoint=hub_kwargs.get("endpoint"))
        except RemoteEntryNotFoundError:  # the repo exists and lacks the file
            return None
        except HfHubHTTPError:
            raise  # no such repo, gated, server error: find_adapter_file names it
        except Exception as exc:  # connection refused, timeout, DNS: httpx's errors are not OSErrors
            raise AdapterError(_unreachable(repo, where, url, exc)) from None
    try:
        return hf_hub_download(repo, filename, subfolder=subfolder, **hub_kwargs)
    except RemoteEntryNotFoundError:
        return None
    except LocalEntryNotFoundError as exc:  # the Hub went away between the look and the download
        raise AdapterError(_unreachable(repo, where, repo, exc.__cause__ or exc)) from None


def _probe_timeout() -> float:
    try:
        return float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or HUB_PROBE_TIMEOUT)
    except ValueError:
        return HUB_PROBE_TIMEOUT


def _unreachable(repo: str, where: str, url: str, exc: BaseException) -> str:
    return (
        f"{repo!r} (Hub repo, {where}): the Hub is unreachable ({type(exc).__name__}: {exc} -- {url}) and the "
        "file is not in the local cache. Check the network or HF_ENDPOINT, pass the adapter's local directory, "
        "or set HF_HUB_OFFLINE=1 to use only the cache."
    )


def find_adapter_file(
    path_or_repo: str, filename: str, subfolder: str | None = None, **hub_kwargs: Any
) -> str | None:
    """`locate`, with a missing local directory or an unreachable Hub repo turned into an `AdapterError`."""
    from huggingface_hub.errors import HFValidationError

    folder = os.path.join(path_or_repo, subfolder) if subfolder else path_or_repo
    if os.path.isfile(folder):
        raise AdapterError(f"{folder!r} is a file; pass the adapter's directory (or a Hub repo id).")
    if not os.path.isdir(folder) and (os.path.isabs(path_or_repo) or path_or_repo.startswith(".")):
        raise AdapterError(
            f"No directory {folder!r}: pass an adapter directory or a Hub repo id.{interrupted_save_hint(folder)}"
        )
    if os.path.isdir(folder):
        found = locate(path_or_repo, filename, subfolder)
        check_digest(folder, filename, found)
        return found
    try:
        return locate(path_or_repo, filename, subfolder, **hub_kwargs)
    except HFValidationError:
        raise AdapterError(f"{path_or_repo!r} is neither an adapter directory nor a valid Hub repo id.") from None
    except OSError as exc:  # huggingface_hub's not-found, offline and HTTP errors are OSErrors
        raise AdapterError(f"{filename} of {folder!r} cannot be fetched: {exc}") from None


def check_digest(folder: str, filename: str, found: str | None) -> None:
    """`folder/filename` must be the file `save_adapter_atomically` wrote, when the folder has a digest."""
    digest_file = os.path.join(folder, DIGEST_NAME)
    if filename in UNDIGESTED or not os.path.isfile(digest_file):
        return
    files = read_json_file(digest_file).get("files")
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise AdapterError(f"{digest_file}: no 'files' table of sha256 digests; the file is damaged.")
    fix = (
        "the directory mixes files of two saves (a save_pretrained over it killed midway, or files copied in). "
        "Save the adapter again with softprompt_ext.save_adapter_atomically; if you replaced the files on "
        f"purpose, delete {DIGEST_NAME}."
    )
    path = os.path.join(folder, filename)
    if filename not in files:
        if found is not None:
            raise AdapterError(f"{path}: not among the files {digest_file} lists: {fix}")
        return
    if found is None:
        raise AdapterError(f"{path}: missing, but {digest_file} lists it: {fix}")
    try:
        actual = sha256_file(found)
    except OSError as exc:
        raise AdapterError(f"{path}: cannot be read ({exc.strerror or exc}).") from None
    if actual != files[filename]:
        raise AdapterError(f"{path}: its sha256 differs from the one {digest_file} recorded when it was saved: {fix}")


def interrupted_save_hint(folder: str) -> str:
    """A hint when `save_adapter_atomically` was killed between its two renames, else ''."""
    leftover = interrupted_leftover(folder)
    if leftover is None:
        return ""
    return (
        f" {leftover} exists: a save was interrupted; softprompt_ext.adapters.atomic.recover_adapter_dir({folder!r}) "
        "restores the previous adapter."
    )


# ---------------------------------------------------------------------------------------------- JSON
def read_adapter_json(
    path_or_repo: str, filename: str = CONFIG_NAME, subfolder: str | None = None, **hub_kwargs: Any
) -> dict | None:
    """The JSON object in `filename` of an adapter, None when absent; never more than MAX_JSON_BYTES read."""
    local = find_adapter_file(path_or_repo, filename, subfolder, **hub_kwargs)
    if local is None:
        return None
    return read_json_file(local)


def read_json_file(local: str) -> dict:
    """A local adapter JSON file, checked for size, encoding, syntax, depth and type."""
    try:
        size = os.path.getsize(local)
        if size > MAX_JSON_BYTES:
            raise AdapterError(
                f"{local}: {size} bytes; an adapter's {os.path.basename(local)} is a few KB, this one is refused."
            )
        with open(local, "rb") as handle:
            raw = handle.read(MAX_JSON_BYTES + 1)
    except OSError as exc:
        raise AdapterError(f"{local}: cannot be read ({exc.strerror or exc}).") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise AdapterError(f"{local}: not UTF-8 text ({exc.reason} at byte {exc.start}); the file is damaged.") from None
    except json.JSONDecodeError as exc:
        raise AdapterError(f"{local}: not valid JSON ({exc}); the file is damaged.") from None
    except RecursionError:
        raise AdapterError(f"{local}: JSON nested too deeply to be an adapter config; the file is damaged.") from None
    if not isinstance(data, dict):
        raise AdapterError(f"{local}: expected a JSON object, got a JSON {type(data).__name__}; the file is damaged.")
    return data


# ---------------------------------------------------------------------------------------------- weights
def find_weights(path_or_repo: str, subfolder: str | None = None, **hub_kwargs: Any) -> str:
    """Local path of the adapter's `adapter_model.safetensors`; a pickle-only adapter is refused."""
    local = find_adapter_file(path_or_repo, SAFETENSORS_WEIGHTS_NAME, subfolder, **hub_kwargs)
    if local is not None:
        return local
    where = os.path.join(path_or_repo, subfolder) if subfolder else path_or_repo
    pickle_file = os.path.join(where, WEIGHTS_NAME)
    found = f"{pickle_file} is a pickle" if os.path.isfile(pickle_file) else f"No {SAFETENSORS_WEIGHTS_NAME} at {where!r}"
    raise AdapterError(
        f"{found}: only {SAFETENSORS_WEIGHTS_NAME} is loaded. Pickled weights ({WEIGHTS_NAME}) are refused "
        "because unpickling a file can run arbitrary code. If you trust the file's author, convert it once: "
        "safetensors.torch.save_file(torch.load(path, weights_only=True), 'adapter_model.safetensors')."
        + interrupted_save_hint(where)
    )


def read_prompt(
    source: str | os.PathLike,
    *,
    expected_rows: int | None = None,
    token_dim: int | None = None,
    d_model: int | None = None,
    modules_to_save: Iterable[str] | None = None,
    module_tensors: Mapping[str, torch.Tensor] | None = None,
    subfolder: str | None = None,
    **hub_kwargs: Any,
) -> torch.Tensor:
    """The saved prompt `[R, H]` (float32) of an adapter directory, Hub adapter id or `.safetensors` file.

    Args:
        source: adapter directory, Hub repo id, or a `.safetensors` file.
        expected_rows: R the config implies (`peft_internals.saved_prompt_rows`), checked when given.
        token_dim: the width `adapter_config.json` records, checked when given.
        d_model: the base model's width, checked when given -- all three from the header, before the data.
        modules_to_save: module names the config declares; their tensors may sit beside the prompt.
        module_tensors: with a base model: saved key -> the base module's tensor, for every tensor PEFT will
            read for `modules_to_save` (`peft_internals.modules_to_save_tensors`); each must be in the file and
            fit (`check_module_tensor`), and no other tensor may be.
    Raises:
        AdapterError: naming the file, for every way the file is not a usable prompt.
    """
    from safetensors import SafetensorError, safe_open

    source = os.fspath(source)
    if os.path.isfile(source):
        if not source.endswith(".safetensors"):
            raise AdapterError(
                f"{source}: only .safetensors prompts are read (pickle files can run code when loaded); "
                "re-save the adapter with safe_serialization=True."
            )
        weights_file = source
    else:
        weights_file = find_weights(source, subfolder, **hub_kwargs)
    declared = [m for m in (modules_to_save or ()) if isinstance(m, str) and m]
    try:
        with safe_open(weights_file, framework="pt") as handle:
            keys = list(handle.keys())
            if PROMPT_KEY not in keys:
                raise AdapterError(
                    f"{weights_file}: holds {sorted(keys)[:10]} but no {PROMPT_KEY!r}; it is not a prompt-tuning adapter."
                )
            foreign = sorted(k for k in keys if k != PROMPT_KEY and not any(f".{m}." in f".{k}" for m in declared))
            if foreign:
                raise AdapterError(
                    f"{weights_file}: holds tensor(s) {foreign[:5]} besides {PROMPT_KEY!r} that belong to no module "
                    f"the config declares in modules_to_save ({declared}); PEFT would load them into the frozen base "
                    "model. A prompt adapter holds its prompt only; refusing the file."
                )
            if module_tensors is not None:
                _check_module_headers(weights_file, handle, keys, declared, module_tensors)
            header = handle.get_slice(PROMPT_KEY)
            shape, dtype = tuple(header.get_shape()), header.get_dtype()
            _check_header(weights_file, shape, dtype, expected_rows, token_dim, d_model)
            prompt = handle.get_tensor(PROMPT_KEY).float()  # [R, H]: the dtype it is used in
            for key in keys if module_tensors is not None else ():
                if key != PROMPT_KEY:
                    check_module_values(weights_file, key, handle.get_tensor(key), module_tensors[key])  # type: ignore[index]
    except SafetensorError as exc:
        raise AdapterError(f"{weights_file}: not a readable safetensors file ({exc}); it is truncated or damaged.") from None
    except OSError as exc:
        raise AdapterError(f"{weights_file}: cannot be read ({exc}).") from None
    finite = torch.isfinite(prompt)
    if not bool(finite.all()):
        raise AdapterError(
            f"{weights_file}: {int((~finite).sum())} of {prompt.numel()} prompt values are NaN or inf in float32; "
            "the adapter is damaged."
        )
    return prompt


def check_module_tensor(where: str, key: str, shape: Iterable[int], dtype: Any, target: torch.Tensor) -> None:
    """A saved `modules_to_save` tensor against the base module's tensor it replaces (shape and dtype).

    `dtype` is a torch dtype or a safetensors dtype name. A floating tensor may be saved in any floating dtype
    (PEFT casts it, as it casts the prompt: an adapter trained in float32 serves a bfloat16 model); any other
    tensor (an integer buffer) must have exactly the base tensor's dtype.
    """
    shape = tuple(int(n) for n in shape)
    if shape != tuple(target.shape):
        raise AdapterError(
            f"{where}: modules_to_save tensor {key!r} has shape {list(shape)} but the base model's is "
            f"{list(target.shape)}: the adapter was saved from a different model; load it onto that one."
        )
    torch_dtype = _TORCH_DTYPES.get(dtype) if isinstance(dtype, str) else dtype
    fits = torch_dtype is not None and (
        torch_dtype.is_floating_point if target.is_floating_point() else torch_dtype == target.dtype
    )
    if not fits:
        raise AdapterError(
            f"{where}: modules_to_save tensor {key!r} has dtype {dtype} but the base model's is {target.dtype}; "
            "PEFT would cast it silently. The adapter is damaged or not made for this model."
        )


def check_module_values(where: str, key: str, saved: torch.Tensor, target: torch.Tensor) -> None:
    """A floating `modules_to_save` tensor must be finite in the dtype of the module it is loaded into."""
    if target.is_floating_point() and not bool(torch.isfinite(saved.to(target.dtype)).all()):
        raise AdapterError(
            f"{where}: modules_to_save tensor {key!r} holds NaN or inf values in {target.dtype}; the adapter is damaged."
        )


def _check_module_headers(
    weights_file: str, handle: Any, keys: list[str], declared: list[str], module_tensors: Mapping[str, torch.Tensor]
) -> None:
    missing = sorted(set(module_tensors) - set(keys))
    if missing:
        raise AdapterError(
            f"{weights_file}: {CONFIG_NAME} declares modules_to_save {declared} and the base model has such a module, "
            f"but the file holds no tensor {missing[:5]} for it (PEFT would stop with a bare KeyError). The adapter "
            "was saved from a model without that module; load it onto that model, or drop the name from "
            "modules_to_save."
        )
    for key in keys:
        if key == PROMPT_KEY:
            continue
        if key not in module_tensors:
            raise AdapterError(
                f"{weights_file}: modules_to_save tensor {key!r} names no tensor of the base model (declared: "
                f"{declared}); the adapter was saved from a different model. Refusing the file."
            )
        header = handle.get_slice(key)
        check_module_tensor(weights_file, key, header.get_shape(), header.get_dtype(), module_tensors[key])


def _check_header(
    weights_file: str, shape: tuple, dtype: str, expected_rows: int | None, token_dim: int | None, d_model: int | None
) -> None:
    if dtype not in FLOAT_DTYPES:
        raise AdapterError(
            f"{weights_file}: {PROMPT_KEY} has dtype {dtype}; a prompt is floating point "
            f"({', '.join(FLOAT_DTYPES)}). The adapter is damaged or not a prompt."
        )
    if len(shape) != 2:
        raise AdapterError(f"{weights_file}: {PROMPT_KEY} has shape {list(shape)}, expected 2 dimensions [P, d_model].")
    if shape[1] < 1 or math.prod(shape) == 0:
        raise AdapterError(f"{weights_file}: {PROMPT_KEY} has shape {list(shape)}; an empty prompt cannot be used.")
    if expected_rows is not None and shape[0] != expected_rows:
        raise AdapterError(
            f"{weights_file}: {PROMPT_KEY} has {shape[0]} rows but {CONFIG_NAME} implies {expected_rows} "
            "(num_virtual_tokens x prompt submodules); the adapter files do not belong together."
        )
    if token_dim is not None and shape[1] != token_dim:
        raise AdapterError(
            f"{weights_file}: {PROMPT_KEY} has width {shape[1]} but {CONFIG_NAME} says token_dim={token_dim}; "
            "the adapter files do not belong together."
        )
    if d_model is not None and shape[1] != d_model:
        raise AdapterError(
            f"{weights_file}: the prompt has shape {tuple(shape)} (rows, d_model) but the base model's d_model is "
            f"{d_model}: the adapter was trained on a different base model; load it onto that one."
        )
