"""What the HTTP side of `softprompt serve` talks to: an engine in this process, or in a process of its own.

`create_app` needs only the calls of `EngineBackend` (a `typing.Protocol`), so the two placements are
interchangeable:

* `codec` -- tokenise requests, decode answers (`tokens.TextCodec`; always in the HTTP process).
* `serves(name)`, `adapters` -- whether an adapter is served (404s); the served adapters (`AdapterView`).
* `await submit(jobs)` -- queue one request's rows, all or none (`QueueFull`, `ShuttingDown`); their futures.
* `await register(...)`, `await unload(name)` -- adapter changes: the files are read (disk or Hub) in a thread
  beside the engine's, the model changes between its model calls.
* `await snapshot()` -- a fresh `AdapterView` plus queue depth (health, `/v1/models`).
* `await engine_metrics()` -- the engine's half of `/metrics` (Prometheus text).
* `await start()`, `await stop(drain)` -- the app's lifespan.
* `batching`, `placement`, `alive` -- how rows are batched ("continuous", ...), where the engine runs ("thread"
  or "process"), whether it still runs.

`LocalBackend` (this module) runs the `Engine` and its `Scheduler` worker thread in the HTTP process: simple,
and what tests and embedding in another ASGI server use. `engine_process.EngineProcess` runs them in a child
process, so that the event loop and the model never take turns for one interpreter lock.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

from .engine import Engine
from .metrics import EngineMetrics, stable_copy
from .registry import AdapterSource
from .scheduler import Job, Scheduler
from .settings import ServeSettings
from .tokens import TextCodec


@dataclass
class AdapterView:
    """The adapter store as the HTTP side sees it: every served adapter's source, the resident ones, the queue."""

    sources: dict[str, AdapterSource] = field(default_factory=dict)
    loaded: dict[str, int] = field(default_factory=dict)  # name -> bytes of its resident prompt
    queue_depth: int = 0

    def __contains__(self, name: str) -> bool:
        return name in self.sources


class EngineBackend(Protocol):
    """What the HTTP side calls: `LocalBackend` (this process) and `engine_process.EngineProcess` implement it."""

    codec: TextCodec
    batching: str
    placement: str

    @property
    def adapters(self) -> AdapterView: ...
    @property
    def alive(self) -> bool: ...

    def serves(self, name: str) -> bool: ...
    async def submit(self, jobs: list[Job]) -> list[Future]: ...
    async def register(self, name: str, source: str, subfolder: str | None = None,
                       revision: str | None = None) -> AdapterSource: ...
    async def unload(self, name: str) -> AdapterSource: ...
    async def snapshot(self) -> AdapterView: ...
    async def engine_metrics(self) -> bytes: ...
    async def start(self) -> None: ...
    async def stop(self, drain: bool = True) -> None: ...


def engine_scheduler(engine: Engine, settings: ServeSettings) -> tuple[Scheduler, EngineMetrics]:
    """The scheduler that feeds `engine` (its worker thread not started yet) and the engine-side metrics."""
    scheduler = Scheduler(engine.run, max_queue=settings.max_queue, max_batch_size=settings.max_batch_size,
                          max_batch_tokens=settings.max_batch_tokens, max_wait_s=settings.max_wait_ms / 1000,
                          max_adapters=1 if engine.batching == "per_adapter" else engine.registry.max_adapters,
                          stepper=engine if engine.batching == "continuous" else None)
    metrics = EngineMetrics(scheduler, engine.registry, engine.prefix_cache, engine.running)
    scheduler.on_batch = metrics.observe_batch
    return scheduler, metrics


def view_of(engine: Engine, scheduler: Scheduler) -> AdapterView:
    """A copy of the store's state (safe while the worker thread runs)."""
    registry = engine.registry
    return AdapterView(sources=stable_copy(registry.sources), loaded=stable_copy(registry.loaded),
                       queue_depth=scheduler.depth)


class LocalBackend:
    """The engine and its scheduler's worker thread in this process."""

    placement = "thread"  # `GET /health`'s "engine"

    def __init__(self, engine: Engine, settings: ServeSettings | None = None):
        self.engine = engine
        self.codec = engine.codec
        self.batching = engine.batching
        self.scheduler, self.metrics = engine_scheduler(engine, settings or ServeSettings())

    @property
    def adapters(self) -> AdapterView:
        return view_of(self.engine, self.scheduler)

    def serves(self, name: str) -> bool:
        return name in self.engine.registry

    async def start(self) -> None:
        self.scheduler.start()

    async def stop(self, drain: bool = True) -> None:
        await asyncio.to_thread(self.scheduler.stop, drain)

    async def submit(self, jobs: list[Job]) -> list[Future]:
        return self.scheduler.submit(jobs)

    async def register(self, name: str, source: str, subfolder: str | None = None,
                       revision: str | None = None) -> AdapterSource:
        registry = self.engine.registry
        # the files are read beside the worker thread; only the load into the model runs between its steps
        entry = await asyncio.to_thread(registry.read, name, source, subfolder=subfolder, revision=revision)
        return await asyncio.wrap_future(self.scheduler.call(lambda: registry.add(entry)))

    async def unload(self, name: str) -> AdapterSource:
        registry = self.engine.registry
        return await asyncio.wrap_future(self.scheduler.call(lambda: registry.unload(name)))

    async def snapshot(self) -> AdapterView:
        return self.adapters

    async def engine_metrics(self) -> bytes:
        return self.metrics.render()

    @property
    def alive(self) -> bool:
        return True
