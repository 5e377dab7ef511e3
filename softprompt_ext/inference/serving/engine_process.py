"""The engine in a process of its own (`softprompt serve`'s default): the HTTP process never runs the model.

In one Python process the event loop (HTTP parsing, validation, tokenising, JSON) and the worker thread that
runs the model take turns for one interpreter lock: under load py-spy put 21% of the server's samples in the
event loop, and every model call waited for it. Here the HTTP process keeps only the tokenizer; a child
process (started with "spawn": no forked torch or thread state) loads the base model, the adapter store and
the scheduler, and the two talk over a `multiprocessing` pipe, as vLLM's API server and engine core do.

Messages (pickled tuples; `jid` / `sid` / `cid` are the HTTP side's ids for a job / submission / call):

    HTTP -> engine   ("submit", sid, rows)    one request's rows, all queued or none
                     ("abandon", jid)         the client gave up: skip the job, or drop its running row
                     ("call", cid, op, args)  "register" / "unload" (run between model calls), "snapshot", "metrics"
                     ("stop", drain)          refuse new work; with drain, finish what was accepted first
    engine -> HTTP   ("ready", info) or ("failed", exc)       once, after loading
                     ("accepted", sid, exc)   exc is None, `QueueFull` or `ShuttingDown`
                     ("tokens", jid, ids)     a streaming row's tokens after a decoding step
                     ("done", jid, result, exc)
                     ("called", cid, result, exc)
                     ("stopped", None)

The child ignores SIGINT (Ctrl-C reaches the whole process group; the HTTP process decides when to stop),
drains on SIGTERM and exits once stopped; it also exits when the pipe closes, so it never outlives the HTTP
process. If it dies, every
waiting request fails with a clear error and `/health` answers 503.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import multiprocessing
import os
import pickle
import signal
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from .backend import AdapterView, engine_scheduler, view_of
from .registry import AdapterSource
from .scheduler import Job, ShuttingDown
from .settings import ServeSettings
from .tokens import TextCodec, load_tokenizer

_log = logging.getLogger("softprompt_ext.serve")


class EngineGone(RuntimeError):
    """The engine process exited (HTTP 503)."""


@dataclass
class EngineOptions:
    """Everything the child needs to build the engine (all plain values: they cross the process boundary)."""

    base: str | None = None
    adapters: list[tuple[str, str]] = field(default_factory=list)  # (name, source), registered at start
    settings: ServeSettings = field(default_factory=ServeSettings)  # device resolved, batching, store, scheduler


def build_engine(options: EngineOptions):
    """`(engine, refused)`: the base model and every adapter of `options` that the strict reader accepts;
    `refused` maps the others' names to the reader's one-line message (with `strict`, the first one raises)."""
    from ...adapters.reader import AdapterError
    from .engine import Engine, load_base

    settings = options.settings
    model, tokenizer = load_base(options.base, settings.device or "cpu")
    engine = Engine.from_settings(model, tokenizer, settings)
    refused: dict[str, str] = {}
    for name, source in options.adapters:
        try:
            engine.registry.register(name, source)
        except (AdapterError, ValueError, TypeError, OSError) as exc:
            if settings.strict:
                raise ValueError(f"adapter {name!r} from {source!r} was refused: {exc}") from exc
            refused[name] = " ".join(str(exc).split())
            _log.error("adapter %r from %r refused: %s", name, source, refused[name])
    return engine, refused


def _portable(exc: BaseException | None) -> BaseException | None:
    """`exc` if it survives pickling (it crosses the pipe), else a RuntimeError carrying its type and message."""
    if exc is None:
        return None
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 -- an exception type that does not pickle
        return RuntimeError(f"{type(exc).__name__}: {exc}")


# ---------------------------------------------------------------------------------------------- child side
def _engine_main(conn, options: EngineOptions) -> None:
    """The child process: build the engine, answer the pipe until it closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: engine: %(message)s")
    try:
        engine, refused = build_engine(options)
        scheduler, metrics = engine_scheduler(engine, options.settings)
    except BaseException as exc:  # noqa: BLE001 -- reported to the HTTP process, which raises it
        conn.send(("failed", _portable(exc)))
        conn.close()
        return
    _EngineServer(conn, engine, scheduler, metrics, refused).serve()


class _EngineServer:
    """The child's pipe reader (main thread) in front of the scheduler's worker thread."""

    def __init__(self, conn, engine, scheduler, metrics, refused: dict[str, str]):
        self.conn, self.engine, self.scheduler, self.metrics = conn, engine, scheduler, metrics
        self.refused = refused
        self.jobs: dict[int, Job] = {}
        self._send_lock = threading.Lock()
        self._stopping: threading.Thread | None = None
        self._finished = threading.Event()  # the reader saw the pipe close

    def send(self, message: tuple) -> None:
        with self._send_lock:
            try:
                self.conn.send(message)
            except (OSError, ValueError):  # the HTTP process is gone; the reader sees EOF and stops
                pass

    def serve(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self._stop(True))
        self.scheduler.start()
        engine = self.engine
        self.send(("ready", {"eos": engine.eos, "pad": engine.pad, "encoder_decoder": engine.encoder_decoder,
                             "batching": engine.batching, "refused": self.refused,
                             "view": view_of(engine, self.scheduler)}))
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):  # the HTTP process closed the pipe or died: nobody waits for answers
                self._finished.set()
                self.scheduler.stop(drain=False)
                return
            kind = message[0]
            if kind == "submit":
                self._submit(message[1], message[2])
            elif kind == "abandon":
                job = self.jobs.get(message[1])
                if job is not None:
                    job.abandon()
            elif kind == "call":
                self._call(*message[1:])
            elif kind == "stop":
                self._stop(message[1])

    def _stop(self, drain: bool) -> None:
        if self._stopping is not None:
            return

        def stop() -> None:
            self.scheduler.stop(drain=drain)
            self.send(("stopped", None))
            # The HTTP process now closes the pipe, and the reader returns. If it does not (a SIGTERM from
            # multiprocessing's exit handler, while the HTTP process holds its end and waits for this one to
            # exit), leave anyway.
            if not self._finished.wait(10):
                os._exit(0)

        self._stopping = threading.Thread(target=stop, name="softprompt-engine-stop", daemon=True)
        self._stopping.start()  # the reader keeps reading: abandoned rows still leave while draining

    def _submit(self, sid: int, rows: list[tuple]) -> None:
        jobs = []
        for jid, kind, adapter, input_ids, max_new_tokens, label_ids, options, deadline, streaming in rows:
            job = Job(kind, adapter, input_ids, max_new_tokens=max_new_tokens, label_ids=label_ids, options=options,
                      deadline=deadline)
            if streaming:
                job.on_tokens = self._streamer(jid)
            self.jobs[jid] = job
            jobs.append((jid, job))
        try:
            self.scheduler.submit([job for _, job in jobs])
        except Exception as exc:  # noqa: BLE001 -- QueueFull / ShuttingDown: the HTTP side answers 429 / 503
            for jid, _ in jobs:
                self.jobs.pop(jid, None)
            self.send(("accepted", sid, _portable(exc)))
            return
        for jid, job in jobs:
            job.future.add_done_callback(functools.partial(self._done, jid))
        self.send(("accepted", sid, None))

    def _streamer(self, jid: int):
        def on_tokens(ids: list[int]) -> None:
            self.send(("tokens", jid, ids))

        return on_tokens

    def _done(self, jid: int, future: Future) -> None:
        self.jobs.pop(jid, None)
        if future.cancelled():  # abandoned by its client: the HTTP side no longer waits for it
            self.send(("done", jid, None, TimeoutError("the request was abandoned.")))
            return
        exc = future.exception()
        self.send(("done", jid, None if exc is not None else future.result(), _portable(exc)))

    def _call(self, cid: int, op: str, args: dict) -> None:
        registry = self.engine.registry
        if op == "snapshot":
            self.send(("called", cid, view_of(self.engine, self.scheduler), None))
            return
        if op == "metrics":
            self.send(("called", cid, self.metrics.render(), None))
            return
        if op == "register":  # read the files in a thread of their own, then load between model calls
            threading.Thread(target=self._register, args=(cid, args), name="softprompt-adapter-read",
                             daemon=True).start()
            return
        if op == "unload":
            def change() -> Any:
                return registry.unload(args["name"])
        else:
            self.send(("called", cid, None, ValueError(f"unknown engine call {op!r}")))
            return
        self._change(cid, change)

    def _register(self, cid: int, args: dict) -> None:
        """An admin load: the adapter's files (disk or Hub) are read here, beside the worker thread, which
        only adds the read prompt to the model between two steps."""
        registry = self.engine.registry
        try:
            entry = registry.read(args["name"], args["source"], subfolder=args.get("subfolder"),
                                  revision=args.get("revision"))
        except Exception as exc:  # noqa: BLE001 -- a refused adapter: the HTTP side answers 422
            self.send(("called", cid, None, _portable(exc)))
            return
        self._change(cid, lambda: registry.add(entry))

    def _change(self, cid: int, change) -> None:
        try:
            future = self.scheduler.call(change)
        except Exception as exc:  # noqa: BLE001 -- ShuttingDown
            self.send(("called", cid, None, _portable(exc)))
            return

        def answer(f: Future) -> None:
            exc = f.exception()
            result = None if exc is not None else (f.result(), view_of(self.engine, self.scheduler))
            self.send(("called", cid, result, _portable(exc)))

        future.add_done_callback(answer)


# ---------------------------------------------------------------------------------------------- HTTP side
class EngineProcess:
    """The HTTP side's handle on an engine in a child process (the `backend.LocalBackend` calls, over a pipe).

    Construction starts the child and returns once it has loaded the model and adapters; it raises what the
    child raised (a missing model, with `strict` a refused adapter).

    Args:
        options: what the child builds.
        start_timeout_s: longest wait for the child to load.
    """

    placement = "process"  # `GET /health`'s "engine"

    def __init__(self, options: EngineOptions, start_timeout_s: float = 600.0):
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self.process = context.Process(target=_engine_main, args=(child, options), name="softprompt-engine",
                                       daemon=True)
        self.process.start()
        child.close()
        try:
            tokenizer = load_tokenizer(options.base)  # while the child loads the model
        except BaseException:
            self.process.kill()
            raise
        if not self._conn.poll(start_timeout_s):
            self.process.kill()
            raise RuntimeError(f"the engine process did not load the model within {start_timeout_s:g} s.")
        try:
            kind, info = self._conn.recv()
        except EOFError:
            self.process.join(5)
            raise RuntimeError(f"the engine process {exit_status(self.process.exitcode)} while loading; "
                               "see the log above.") from None
        if kind == "failed":
            self.process.join(5)
            raise info
        self.codec = TextCodec(tokenizer, info["eos"], info["encoder_decoder"])
        self.batching: str = info["batching"]
        self.refused: dict[str, str] = info["refused"]
        self._view: AdapterView = info["view"]
        self._jobs: dict[int, Job] = {}
        self._waiting: dict[int, Future] = {}  # submissions and calls awaiting their answer
        self._ids = itertools.count()
        self._send_lock = threading.Lock()
        self._stopped = threading.Event()
        self._gone: str | None = None
        self._reader = threading.Thread(target=self._read, name="softprompt-engine-reader", daemon=True)
        self._reader.start()

    # ------------------------------------------------------------------------------------------ backend calls
    @property
    def adapters(self) -> AdapterView:
        """The last known state (adapter names are exact: every change passes through this process)."""
        return self._view

    def serves(self, name: str) -> bool:
        return name in self._view.sources

    @property
    def alive(self) -> bool:
        return self._gone is None

    async def start(self) -> None:
        return None

    async def submit(self, jobs: list[Job]) -> list[Future]:
        sid = next(self._ids)
        accepted: Future = Future()
        self._waiting[sid] = accepted
        rows = []
        for job in jobs:
            jid = next(self._ids)
            job.on_abandon = lambda jid=jid: self._send(("abandon", jid), quiet=True)
            self._jobs[jid] = job
            rows.append((jid, job.kind, job.adapter, job.input_ids, job.max_new_tokens, job.label_ids, job.options,
                         job.deadline, job.on_tokens is not None))
        try:
            self._send(("submit", sid, rows))
            refusal = await asyncio.wrap_future(accepted)
        except BaseException:
            for jid, *_ in rows:
                self._jobs.pop(jid, None)
            raise
        if refusal is not None:
            for jid, *_ in rows:
                self._jobs.pop(jid, None)
            raise refusal
        return [job.future for job in jobs]

    async def register(self, name: str, source: str, subfolder: str | None = None,
                       revision: str | None = None) -> AdapterSource:
        entry, self._view = await self._call("register", name=name, source=source, subfolder=subfolder,
                                             revision=revision)
        return entry

    async def unload(self, name: str) -> AdapterSource:
        entry, self._view = await self._call("unload", name=name)
        return entry

    async def snapshot(self) -> AdapterView:
        if self.alive:
            self._view = await self._call("snapshot")
        return self._view

    async def engine_metrics(self) -> bytes:
        return await self._call("metrics") if self.alive else b""

    async def stop(self, drain: bool = True, timeout_s: float = 300.0) -> None:
        """Stop the engine (with `drain`, after every accepted job), then the child process."""
        if self.alive:
            self._send(("stop", drain), quiet=True)
            await asyncio.to_thread(self._stopped.wait, timeout_s)
        await asyncio.to_thread(self._reader.join, 5)
        self._conn.close()  # the child sees EOF and exits
        await asyncio.to_thread(self.process.join, 30)
        if self.process.is_alive():
            self.process.kill()

    # ------------------------------------------------------------------------------------------ the pipe
    def _send(self, message: tuple, quiet: bool = False) -> None:
        with self._send_lock:
            if self._gone is None:
                try:
                    self._conn.send(message)
                    return
                except (OSError, ValueError):
                    pass
        if not quiet:
            raise EngineGone(self._gone or "the engine process is not running.")

    async def _call(self, op: str, **args) -> Any:
        cid = next(self._ids)
        answer: Future = Future()
        self._waiting[cid] = answer
        try:
            self._send(("call", cid, op, args))
        except BaseException:
            self._waiting.pop(cid, None)
            raise
        return await asyncio.wrap_future(answer)

    def _exit_status(self) -> str:
        self.process.join(2)  # the pipe closes as the process ends: wait for its status
        return exit_status(self.process.exitcode)

    def _read(self) -> None:
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                break
            kind = message[0]
            if kind == "done":
                _, jid, result, exc = message
                job = self._jobs.pop(jid, None)
                if job is not None:
                    _settle(job.future, result, exc)
            elif kind == "tokens":
                job = self._jobs.get(message[1])
                if job is not None and job.on_tokens is not None:
                    job.on_tokens(message[2])
            elif kind == "accepted":
                _settle(self._waiting.pop(message[1], None), message[2], None)
            elif kind == "called":
                _, cid, result, exc = message
                _settle(self._waiting.pop(cid, None), result, exc)
            elif kind == "stopped":  # the last message: stop reading, so that closing the pipe reaches the child
                self._stopped.set()
                break
        stopping = self._stopped.is_set()
        self._gone = "the engine stopped." if stopping else f"the engine process exited: it {self._exit_status()}; see the server log."
        self._stopped.set()
        failure: BaseException = ShuttingDown(self._gone) if stopping else EngineGone(self._gone)
        for future in list(self._waiting.values()):
            _settle(future, None, failure)
        for job in list(self._jobs.values()):
            _settle(job.future, None, failure)
        self._waiting.clear()
        self._jobs.clear()


def exit_status(code: int | None) -> str:
    """How a process ended, in words: "exited with status 1", "was killed by signal 9 (SIGKILL)"."""
    if code is None:
        return "ended (its exit status is not known yet)"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown signal"
        return f"was killed by signal {-code} ({name})"
    return f"exited with status {code}"


def _settle(future: Future | None, result: Any, exc: BaseException | None) -> None:
    """Resolve `future` unless it is gone, done or cancelled (a client that gave up)."""
    if future is None or future.done() or not future.set_running_or_notify_cancel():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
