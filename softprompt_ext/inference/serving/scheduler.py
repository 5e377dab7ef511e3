"""Dynamic batching for `softprompt serve`: one worker thread turns whatever is queued into mixed batches.

Lester et al. (2021), section 6: the examples of one batch may use different prompts, so the server need not
group requests by task. The worker takes the oldest queued job, waits at most `max_wait_s` (from that job's
arrival) for company, and runs every queued job of the same kind -- any mix of adapters -- in one call, bounded
by `max_batch_size` rows, `max_batch_tokens` (input tokens plus the tokens to generate, summed over rows) and
`max_adapters` distinct adapters (the registry's resident budget). Jobs that do not fit wait for the next
batch, in order. Each job gets exactly its own row back through its `Future`.

* Back-pressure: at most `max_queue` jobs wait; `submit` raises `QueueFull` beyond that (HTTP 429).
* Deadlines: a job whose deadline passed before it was batched is dropped with `TimeoutError`; a cancelled
  job (its client gave up) is skipped.
* Failure isolation: when a batch raises, each of its jobs is run alone, so one bad row fails only itself.
* Control calls (`call(fn)`: loading and unloading adapters) run on the same thread between batches, so the
  model is never changed while it runs.
* `stop(drain=True)` refuses new jobs (`ShuttingDown`, HTTP 503) and returns once every accepted job is done.

With a `stepper` (the engine under continuous batching), generation is iteration-level: the worker keeps a
running batch, admits queued "generate" jobs before every decoding step (up to `max_batch_size` rows and
`max_batch_tokens` in the running batch; the `max_wait_s` window applies only when nothing is running),
resolves each job as soon as its row finishes, and drops rows whose client gave up. "classify" jobs still run
as whole batches between steps.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

from .sampling import RowOptions
from .settings import DEFAULTS


class QueueFull(RuntimeError):
    """The queue holds `max_queue` jobs (HTTP 429 with Retry-After)."""


class ShuttingDown(RuntimeError):
    """The server is draining and accepts no new work (HTTP 503)."""


@dataclass
class Job:
    """One row of work: `kind` is "generate" or "classify"; `cost` counts its tokens for the batch bound."""

    kind: str
    adapter: str
    input_ids: list[int]
    max_new_tokens: int = 0
    label_ids: list[list[int]] | None = None
    options: RowOptions | None = None  # a generate row's sampling, log-probabilities, echo and stop strings
    deadline: float = float("inf")
    enqueued: float = field(default_factory=time.monotonic)
    future: Future = field(default_factory=Future)
    on_tokens: Callable[[list[int]], None] | None = None  # streaming: the row's tokens after every step
    on_abandon: Callable[[], None] | None = None  # an engine in another process: tell it (engine_process.py)
    abandoned: bool = False

    def abandon(self) -> None:
        """The client gave up (timeout, disconnect): the job is skipped if queued, its row dropped if running."""
        self.abandoned = True
        self.future.cancel()  # succeeds only while queued; a running job is dropped through `abandoned`
        if self.on_abandon is not None:
            self.on_abandon()

    @property
    def cost(self) -> int:
        labels = sum(len(ids) for ids in self.label_ids) if self.label_ids else 0
        return len(self.input_ids) + self.max_new_tokens + labels


Runner = Callable[[str, list[Job]], list[Any]]


class Stepper(Protocol):
    """Iteration-level generation (`Engine` under continuous batching)."""

    @property
    def active(self) -> int: ...
    @property
    def active_tokens(self) -> int: ...
    @property
    def running_jobs(self) -> list[Job]: ...

    def admit(self, jobs: list[Job]) -> list[tuple[Job, Any]]: ...
    def step(self) -> list[tuple[Job, Any]]: ...
    def drop(self, keep: Callable[[Job], bool]) -> list[Job]: ...
    def reset(self) -> list[Job]: ...


class Scheduler:
    """The queue and its worker. `runner(kind, jobs)` returns one result per job, in order."""

    def __init__(self, runner: Runner, *, max_queue: int = DEFAULTS.max_queue,
                 max_batch_size: int = DEFAULTS.max_batch_size,
                 max_batch_tokens: int = DEFAULTS.max_batch_tokens, max_wait_s: float = DEFAULTS.max_wait_ms / 1000,
                 max_adapters: int = DEFAULTS.max_adapters,
                 on_batch: Callable[[str, list[Job], float], None] | None = None, stepper: Stepper | None = None):
        for name, value in (("max_queue", max_queue), ("max_batch_size", max_batch_size),
                            ("max_batch_tokens", max_batch_tokens), ("max_adapters", max_adapters)):
            if value < 1:
                raise ValueError(f"{name}={value} must be >= 1.")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s={max_wait_s} must be >= 0.")
        self.runner = runner
        self.max_queue, self.max_batch_size = max_queue, max_batch_size
        self.max_batch_tokens, self.max_wait_s, self.max_adapters = max_batch_tokens, max_wait_s, max_adapters
        self.on_batch = on_batch
        self.stepper = stepper
        self._jobs: deque[Job] = deque()
        self._control: deque[tuple[Callable[[], Any], Future]] = deque()
        self._cond = threading.Condition()
        self._accepting = True
        self._stopping = False
        self._busy = False
        self._thread = threading.Thread(target=self._loop, name="softprompt-serve-worker", daemon=True)

    # ------------------------------------------------------------------------------------------ client side
    @property
    def depth(self) -> int:
        """Jobs waiting (not yet in a batch)."""
        return len(self._jobs)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def submit(self, jobs: list[Job]) -> list[Future]:
        """Queue all of `jobs` or none (one request's rows): `QueueFull` / `ShuttingDown` otherwise."""
        with self._cond:
            if not self._accepting:
                raise ShuttingDown("the server is shutting down and accepts no new requests; retry on another replica.")
            if len(self._jobs) + len(jobs) > self.max_queue:
                raise QueueFull(f"the queue is full ({len(self._jobs)} of {self.max_queue} rows waiting, this "
                                f"request adds {len(jobs)}); retry later.")
            self._jobs.extend(jobs)
            self._cond.notify_all()
        return [job.future for job in jobs]

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run `fn()` on the worker thread between batches; its result or exception comes back in the Future."""
        future: Future = Future()
        with self._cond:
            if self._stopping:
                raise ShuttingDown("the server is shutting down.")
            self._control.append((fn, future))
            self._cond.notify_all()
        return future

    def stop(self, drain: bool = True, timeout: float | None = None) -> None:
        """Refuse new jobs; with `drain`, finish every accepted job first, else fail them with `ShuttingDown`."""
        with self._cond:
            self._accepting = False
            if not drain:
                while self._jobs:
                    self._jobs.popleft().future.set_exception(ShuttingDown("the server stopped."))
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ------------------------------------------------------------------------------------------ worker side
    def _loop(self) -> None:
        if self.stepper is not None:
            return self._continuous_loop(self.stepper)
        while True:
            with self._cond:
                while not self._jobs and not self._control and not self._stopping:
                    self._cond.wait()
                control = self._control.popleft() if self._control else None
                if control is None and not self._jobs:  # stopping and nothing left
                    return
            if control is not None:
                _run_into(control[1], control[0])
                continue
            batch = self._form_batch()
            if batch:
                self._run(batch)

    def _continuous_loop(self, stepper: Stepper) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._control and not self._stopping and not stepper.active:
                    self._cond.wait()
                control = self._control.popleft() if self._control else None
                if control is None and not self._jobs and not stepper.active:  # stopping and nothing left
                    return
            if control is not None:
                _run_into(control[1], control[0])
                continue
            if self._jobs:
                room = self.max_batch_size - stepper.active
                batch = self._form_batch(wait=not stepper.active, room=room, tokens=stepper.active_tokens)
                if batch and batch[0].kind == "generate":
                    self._admit(stepper, batch)
                elif batch:
                    self._run(batch)
            stepper.drop(lambda job: not job.abandoned)  # a client that gave up: its row leaves the batch
            if stepper.active:
                start = time.perf_counter()
                running = stepper.running_jobs
                try:
                    finished = stepper.step()
                except BaseException as exc:  # noqa: BLE001 -- fail the running rows, keep serving
                    for job in stepper.reset():
                        _settle(job, exception=exc)
                    continue
                for job, result in finished:
                    _settle(job, result=result)
                if self.on_batch is not None:
                    self.on_batch("generate", running, time.perf_counter() - start)

    def _admit(self, stepper: Stepper, batch: list[Job]) -> None:
        start = time.perf_counter()
        try:
            finished = stepper.admit(batch)
        except BaseException as exc:  # noqa: BLE001 -- isolate the failing row(s)
            if len(batch) == 1:
                batch[0].future.set_exception(exc)
            else:
                for job in batch:
                    self._admit(stepper, [job])
            return
        for job, result in finished:
            _settle(job, result=result)
        if self.on_batch is not None:
            self.on_batch("prefill", batch, time.perf_counter() - start)

    def _form_batch(self, wait: bool = True, room: int | None = None, tokens: int = 0) -> list[Job]:
        """Take the next batch off the queue: jobs of one kind, in order, within the bounds. `room`: most
        "generate" rows (continuous batching: the free rows of the running batch); `tokens`: tokens already
        running."""
        room = self.max_batch_size if room is None else room
        with self._cond:
            first = self._jobs[0]
            wait_until = first.enqueued + self.max_wait_s if wait else 0.0
            while (not self._stopping and not self._control and len(self._jobs) < self.max_batch_size
                   and time.monotonic() < wait_until):
                self._cond.wait(max(0.0, wait_until - time.monotonic()))
            now = time.monotonic()
            batch: list[Job] = []
            kept: deque[Job] = deque()
            kind, batch_tokens, adapters = None, 0, set[str]()
            while self._jobs:
                job = self._jobs.popleft()
                if job.abandoned or job.future.cancelled():  # its client gave up
                    continue
                if now > job.deadline:
                    if job.future.set_running_or_notify_cancel():
                        job.future.set_exception(TimeoutError("the request timed out in the queue."))
                    continue
                used = batch_tokens + (tokens if job.kind == "generate" else 0)  # running rows count for generate
                fits = (
                    len(batch) < (room if job.kind == "generate" else self.max_batch_size)
                    and (kind is None or job.kind == kind)
                    and (used == 0 or used + job.cost <= self.max_batch_tokens)
                    and (job.adapter in adapters or len(adapters) < self.max_adapters)
                )
                if not fits:
                    kept.append(job)  # waits for the next batch, in order
                    continue
                if not job.future.set_running_or_notify_cancel():
                    continue
                batch.append(job)
                kind, batch_tokens = job.kind, batch_tokens + job.cost
                adapters.add(job.adapter)
            kept.extend(self._jobs)
            self._jobs = kept
            return batch

    def _run(self, batch: list[Job]) -> None:
        start = time.perf_counter()
        try:
            results = self.runner(batch[0].kind, batch)
        except BaseException as exc:  # noqa: BLE001 -- isolate the failing row(s)
            if len(batch) == 1:
                batch[0].future.set_exception(exc)
            else:
                for job in batch:
                    self._run([job])
            return
        for job, result in zip(batch, results, strict=True):
            job.future.set_result(result)
        if self.on_batch is not None:
            self.on_batch(batch[0].kind, batch, time.perf_counter() - start)


def _settle(job: Job, result: Any = None, exception: BaseException | None = None) -> None:
    """Give `job` its result (or exception) unless its client already gave up."""
    if job.future.done():
        return
    if exception is not None:
        job.future.set_exception(exception)
    else:
        job.future.set_result(result)


def _run_into(future: Future, fn: Callable[[], Any]) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(fn())
    except BaseException as exc:  # noqa: BLE001 -- handed to the caller
        future.set_exception(exc)
