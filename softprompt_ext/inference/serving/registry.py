"""The adapter store of `softprompt serve`: every known adapter's source, a memory budget, LRU eviction.

Lester et al. (2021), sections 1 and 6: one frozen model serves many tasks because a task is only its prompt
(P x d_model floats, e.g. 100 x 768 x 4 bytes = 300 kB for T5-Base). A server may still know more prompts
than it wants resident, so the store keeps at most `max_adapters` prompts (and at most `max_bytes` of prompt
weights) loaded in the `PeftModel` and evicts the least recently used one when a new one is needed; an
evicted adapter stays registered and is read again from its source -- through `load_adapter_safely`, the
same checks as the first time -- on its next use.

Every adapter goes through `validate_adapter` (against the base model) when it is registered and through
`load_adapter_safely` whenever it is loaded, so a damaged or hostile file is refused with the reader's
message and never reaches the model. A refused adapter leaves the others untouched.

The store is not thread-safe by itself: the scheduler's worker thread is its only user once the server runs
(admin requests hand their loads to that thread too), so model calls and adapter changes never overlap.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model

from ...adapters.reader import AdapterError
from ...adapters.validation import load_adapter_safely, validate_adapter
from ...config import SoftPromptConfig
from ...peft_internals import CONFIG_NAME, encoder_prompt, prompt_weight
from .settings import DEFAULTS

ANCHOR = "__softprompt_serve_anchor__"  # a 1-row prompt that keeps the PeftModel alive with 0 adapters loaded


class UnknownAdapter(KeyError):
    """An adapter name the server does not know (HTTP 404)."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass
class AdapterSource:
    """Where an adapter comes from, and what the first validation found."""

    name: str
    source: str
    subfolder: str | None = None
    revision: str | None = None
    num_virtual_tokens: int = 0
    num_bytes: int = 0
    loads: int = 0  # how often it was read into the model (more than 1: reloaded after an eviction)
    created: int = field(default_factory=lambda: int(time.time()))
    local: str | None = None  # the directory of the validated files (for a Hub adapter, its downloaded copy)

    def hub_kwargs(self) -> dict:
        return {k: v for k, v in (("subfolder", self.subfolder), ("revision", self.revision)) if v}


def discover(spec: str) -> list[tuple[str, str]]:
    """`(name, source)` pairs of one `--adapter` argument.

    `NAME=SOURCE` names the adapter; a directory holding `adapter_config.json` is one adapter named after the
    directory; a directory without one is a folder of adapters (each subdirectory holding an
    `adapter_config.json`, named after it); anything else is a Hub repo id, named after its last part.
    """
    name, sep, source = spec.partition("=")
    if not sep or os.path.exists(spec):
        name, source = "", spec
    path = Path(source)
    if path.is_dir() and not (path / CONFIG_NAME).is_file() and not name:
        found = sorted(p for p in path.iterdir() if p.is_dir() and (p / CONFIG_NAME).is_file())
        if not found:
            raise ValueError(
                f"{source!r} is a directory without {CONFIG_NAME} and without adapter subdirectories; pass an "
                "adapter directory, a folder of adapter directories, or a Hub repo id."
            )
        return [(p.name, str(p)) for p in found]
    if not name:
        name = path.name if path.exists() else source.rstrip("/").split("/")[-1]
    return [(name, source)]


class AdapterRegistry:
    """Registered adapters (`sources`) and the LRU order of those loaded in `model`.

    Args:
        base_model: the frozen transformers model (seq2seq or causal LM).
        max_adapters: most prompt adapters resident at once (>= 1).
        max_bytes: most bytes of resident prompt weights (None: no byte budget).
    """

    def __init__(self, base_model: torch.nn.Module, *, max_adapters: int = DEFAULTS.max_adapters,
                 max_bytes: int | None = DEFAULTS.max_adapter_bytes):
        if max_adapters < 1:
            raise ValueError(f"max_adapters={max_adapters} must be >= 1.")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError(f"max_bytes={max_bytes} must be >= 1 or None.")
        self.base_model = base_model
        self.max_adapters = max_adapters
        self.max_bytes = max_bytes
        task = "SEQ_2_SEQ_LM" if getattr(base_model.config, "is_encoder_decoder", False) else "CAUSAL_LM"
        anchor = SoftPromptConfig(task_type=task, num_virtual_tokens=1, prompt_tuning_init="RANDOM_UNIFORM",
                                  init_seed=0, warn_if_not_lm_adapted=False)
        self.model: PeftModel = get_peft_model(base_model, anchor, adapter_name=ANCHOR).eval()
        self.sources: dict[str, AdapterSource] = {}
        self.loaded: OrderedDict[str, int] = OrderedDict()  # name -> bytes, least recently used first
        self.evictions = 0
        self.reloads = 0
        self.on_evict: list[Callable[[str], None]] = []  # called with the name of every evicted/unloaded adapter

    # ------------------------------------------------------------------------------------------ queries
    def __contains__(self, name: str) -> bool:
        return name in self.sources

    def require(self, name: str) -> AdapterSource:
        if name not in self.sources:
            raise UnknownAdapter(
                f"adapter {name!r} is not served; served adapters: {sorted(self.sources)} (GET /v1/models)."
            )
        return self.sources[name]

    @property
    def loaded_bytes(self) -> int:
        return sum(self.loaded.values())

    # ------------------------------------------------------------------------------------------ changes
    def register(self, name: str, source: str, *, subfolder: str | None = None, revision: str | None = None,
                 replace: bool = False) -> AdapterSource:
        """Validate `source` against the base model and load it; raises `AdapterError` naming the file.

        `read` then `add`: the adapter is registered only when it validated and loaded; a refusal changes
        nothing.
        """
        return self.add(self.read(name, source, subfolder=subfolder, revision=revision, replace=replace),
                        replace=replace)

    def read(self, name: str, source: str, *, subfolder: str | None = None, revision: str | None = None,
             replace: bool = False) -> AdapterSource:
        """The file-reading half of `register` (disk or Hub, through `validate_adapter`): the entry to `add`.

        Touches neither the model nor the store, so the server runs it in a thread beside the one that runs
        the model. Refuses an adapter that holds anything besides its prompt (`modules_to_save`): such a module
        replaces part of the shared base model, so it would change the answers of every row of a mixed batch,
        whichever adapter the row names.
        """
        if name == ANCHOR or not name:
            raise ValueError(f"adapter name {name!r} is reserved or empty; pick another name.")
        if name in self.sources and not replace:
            raise ValueError(f"adapter {name!r} is already served (from {self.sources[name].source!r}); "
                             f"unload it first (DELETE /admin/adapters/{name}) or pick another name.")
        entry = AdapterSource(name, source, subfolder, revision)
        hub = entry.hub_kwargs()
        report = validate_adapter(source, self.base_model, subfolder=hub.pop("subfolder", None), **hub)
        shared = report.config.modules_to_save
        if shared:
            raise AdapterError(
                f"adapter_config.json field modules_to_save={list(shared)!r}: the adapter replaces modules of the "
                "shared base model, which would change the answers of every adapter batched with it; the server "
                "serves prompt-only adapters. Save the adapter without modules_to_save.")
        prompt = encoder_prompt(report.prompt, report.config)  # [P, H]
        entry.num_virtual_tokens = int(prompt.shape[0])
        entry.num_bytes = _resident_bytes(report.prompt)
        entry.local = os.path.dirname(report.weights_file)  # a Hub adapter's files, downloaded by now
        if self.max_bytes is not None and entry.num_bytes > self.max_bytes:
            raise ValueError(f"adapter {name!r} needs {entry.num_bytes} bytes, more than the whole budget "
                             f"max_bytes={self.max_bytes}.")
        return entry

    def add(self, entry: AdapterSource, *, replace: bool = False) -> AdapterSource:
        """Register and load an entry `read` returned (the model-changing half of `register`)."""
        name = entry.name
        if name in self.sources and not replace:
            raise ValueError(f"adapter {name!r} is already served (from {self.sources[name].source!r}); "
                             f"unload it first (DELETE /admin/adapters/{name}) or pick another name.")
        previous = self.sources.get(name)
        if previous is not None:
            self.unload(name)
        self.sources[name] = entry
        try:
            self.ensure([name])
        except BaseException:
            del self.sources[name]
            self.loaded.pop(name, None)
            if name in self.model.peft_config:  # never leave a half-added adapter in the model
                self.model.set_adapter(ANCHOR)
                self.model.delete_adapter(name)
            if previous is not None:
                self.sources[name] = previous
            raise
        return entry

    def unload(self, name: str) -> AdapterSource:
        """Forget adapter `name` (and free its prompt)."""
        entry = self.require(name)
        try:
            if name in self.loaded:
                self._evict(name, counted=False)
        finally:
            del self.sources[name]  # a failed eviction never leaves the name half-registered
            self.loaded.pop(name, None)
        return entry

    def ensure(self, names: list[str]) -> None:
        """Make every adapter in `names` resident, evicting the least recently used others as needed.

        Raises `ValueError` when `names` alone do not fit the budget, `UnknownAdapter` for a name not served,
        and whatever `load_adapter_safely` raises when a source changed since it was registered.
        """
        wanted = list(dict.fromkeys(names))
        for name in wanted:
            self.require(name)
        need = sum(self.sources[n].num_bytes for n in wanted)
        if len(wanted) > self.max_adapters or (self.max_bytes is not None and need > self.max_bytes):
            raise ValueError(f"{len(wanted)} adapters ({need} bytes) do not fit the budget of "
                             f"{self.max_adapters} adapters / {self.max_bytes} bytes at once.")
        for name in wanted:
            if name in self.loaded:
                self.loaded.move_to_end(name)
                continue
            entry = self.sources[name]
            while self.loaded and (
                len(self.loaded) + 1 > self.max_adapters
                or (self.max_bytes is not None and self.loaded_bytes + entry.num_bytes > self.max_bytes)
            ):
                victim = next(n for n in self.loaded if n not in wanted)
                self._evict(victim)
            if entry.local is not None:  # the files `read` validated (a Hub adapter's downloaded copy)
                load_adapter_safely(self.model, entry.local, adapter_name=name)
            else:
                load_adapter_safely(self.model, entry.source, adapter_name=name, **entry.hub_kwargs())
            self.reloads += entry.loads > 0
            entry.loads += 1
            self.loaded[name] = _resident_bytes(prompt_weight(self.model, name))

    def _evict(self, name: str, counted: bool = True) -> None:
        self.model.set_adapter(ANCHOR)  # never delete the active adapter
        self.model.delete_adapter(name)
        del self.loaded[name]
        for callback in self.on_evict:
            callback(name)
        if counted:
            self.evictions += 1


def _resident_bytes(weight: torch.Tensor) -> int:
    return int(weight.numel() * weight.element_size())


__all__ = ["ANCHOR", "AdapterError", "AdapterRegistry", "AdapterSource", "UnknownAdapter", "discover"]
