"""The HTTP face of `softprompt serve`: a FastAPI app over an engine backend (`backend.py`): the `Engine` and its
`Scheduler` in this process, or in a process of their own (`engine_process.py`).

Endpoints (OpenAI-compatible where OpenAI has one):

* `POST /v1/completions` -- greedy completion; `model` is the adapter name, `prompt` a string or a list;
  `stream: true` answers with server-sent events (OpenAI's chunks, then `data: [DONE]`), a chunk per
  decoding step under continuous batching.
* `POST /v1/classify` -- rank classification: the log-likelihood of each given label, the best one.
* `GET /v1/models` -- the served adapters.  `GET /health` -- 200 while serving, 503 while draining or when the
  engine process exited (`status`; `engine` says where the model runs: "process" or "thread").
* `GET /metrics` -- Prometheus text format (see `metrics.py`).
* `POST /admin/adapters`, `DELETE /admin/adapters/{name}` -- load / unload an adapter; with an admin token
  (`--admin-token` or `SOFTPROMPT_ADMIN_TOKEN`) they need `Authorization: Bearer <token>`.

Every error is one JSON object `{"error": {"message", "type", "code"}}` with one clear message: 400 a limit
exceeded, 401 a missing/wrong admin token, 404 an unknown adapter, 409 a name already served, 422 a malformed
body or an adapter whose files were refused (the reader's message, naming the file), 429 the queue is full
(with `Retry-After`), 503 shutting down or the engine process gone, 504 the request timed out.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal

from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ...adapters.reader import AdapterError
from .backend import LocalBackend, SchedulerSettings
from .engine import Engine
from .engine_process import EngineGone
from .metrics import CONTENT_TYPE, RequestMetrics
from .registry import UnknownAdapter
from .scheduler import Job, QueueFull, ShuttingDown
from .schemas import (
    AdapterLoadRequest,
    Classification,
    ClassifyRequest,
    ClassifyResponse,
    CompletionChoice,
    CompletionChunk,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
    StreamChoice,
    Usage,
)


@dataclass
class ServeSettings:
    """Limits and batching knobs (the `softprompt serve` flags of the same names)."""

    max_batch_size: int = 32
    max_batch_tokens: int = 16384
    max_wait_ms: float = 5.0
    max_queue: int = 256
    max_input_tokens: int = 512
    max_tokens: int = 256
    request_timeout_s: float = 60.0
    retry_after_s: int = 1
    admin_token: str | None = None
    base_model: str = "embedded"
    refused: dict[str, str] = field(default_factory=dict)

    @property
    def scheduler(self) -> SchedulerSettings:
        return SchedulerSettings(max_queue=self.max_queue, max_batch_size=self.max_batch_size,
                                 max_batch_tokens=self.max_batch_tokens, max_wait_ms=self.max_wait_ms)


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", headers=None):
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, headers or {}


def _error(status: int, message: str, kind: str, headers=None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status,
                        headers=headers)


class _ObserveRequests:
    """ASGI middleware: every HTTP response's route, status and latency into the metrics (for a stream, the
    latency runs to the end of its body)."""

    def __init__(self, app, metrics: RequestMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def observed_send(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            route = scope.get("route")
            self.metrics.observe_request(getattr(route, "path", "other"), status[0], time.perf_counter() - start)


def _event_error(status: int, message: str, kind: str) -> str:
    """An error inside a started event stream: one `error` event (the JSON body of `_error`), then `[DONE]`."""
    body = json.dumps({"error": {"message": message, "type": kind, "code": status}})
    return f"data: {body}\n\ndata: [DONE]\n\n"


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def create_app(backend, settings: ServeSettings | None = None) -> FastAPI:
    """The app over `backend` (an `Engine`, run in this process, or a `backend.LocalBackend` /
    `engine_process.EngineProcess`); its lifespan starts the engine and, at shutdown, drains it."""
    settings = settings or ServeSettings()
    if isinstance(backend, Engine):
        backend = LocalBackend(backend, settings.scheduler)
    codec = backend.codec
    metrics = RequestMetrics()
    state = {"draining": False}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await backend.start()
        yield
        state["draining"] = True
        await backend.stop(True)  # finish every accepted request

    app = FastAPI(title="softprompt-ext serve", lifespan=lifespan)
    app.state.backend, app.state.metrics, app.state.settings = backend, metrics, settings

    # ------------------------------------------------------------------------------------------ errors
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return _error(exc.status, exc.message, exc.kind, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            parts.append(f"{where}: {err.get('msg', 'invalid')}".replace("Value error, ", ""))
        return _error(422, "; ".join(parts), "invalid_request_error")

    app.add_middleware(_ObserveRequests, metrics=metrics)  # a plain ASGI middleware: no per-request task

    def admin(authorization: str | None = Header(default=None)) -> None:
        token = settings.admin_token
        if token is None:
            return
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise ApiError(401, "this endpoint needs 'Authorization: Bearer <admin token>' (the server's "
                           "--admin-token / SOFTPROMPT_ADMIN_TOKEN); the header was missing or wrong.",
                           "authentication_error", {"WWW-Authenticate": "Bearer"})

    # ------------------------------------------------------------------------------------------ helpers
    def known(name: str) -> None:
        if not backend.serves(name):
            raise ApiError(404, f"adapter {name!r} is not served; served adapters: "
                           f"{sorted(backend.adapters.sources)} (GET /v1/models).", "not_found_error")

    def encode_inputs(texts: list[str], field_name: str) -> list[list[int]]:
        ids = codec.encode(texts)
        for i, row in enumerate(ids):
            if len(row) > settings.max_input_tokens:
                where = field_name if len(ids) == 1 else f"{field_name}[{i}]"
                raise ApiError(400, f"{where} has {len(row)} tokens, more than this server's limit of "
                               f"{settings.max_input_tokens} (--max-input-tokens); shorten it.")
        return ids

    async def submit(jobs: list[Job]) -> list:
        """Queue `jobs` (all or none) with the request's deadline; their futures. Raises the ApiError."""
        if len(jobs) > settings.max_queue:
            raise ApiError(400, f"the request holds {len(jobs)} prompts, more than this server queues at once "
                           f"({settings.max_queue}, --max-queue); split it.")
        deadline = time.monotonic() + settings.request_timeout_s
        for job in jobs:
            job.deadline = deadline
        try:
            return await backend.submit(jobs)
        except QueueFull as exc:
            raise ApiError(429, str(exc), "rate_limit_error", {"Retry-After": str(settings.retry_after_s)}) from None
        except (ShuttingDown, EngineGone) as exc:
            raise ApiError(503, str(exc), "server_error") from None

    def failure(exc: BaseException) -> ApiError:
        """The ApiError for a job's exception."""
        if isinstance(exc, UnknownAdapter):
            return ApiError(404, str(exc), "not_found_error")
        if isinstance(exc, (ShuttingDown, EngineGone)):
            return ApiError(503, str(exc), "server_error")
        if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
            return ApiError(504, f"the request did not finish within {settings.request_timeout_s:g} s "
                            "(--request-timeout); retry, or send fewer or shorter prompts.", "timeout_error")
        if isinstance(exc, (ValueError, TypeError)):
            return ApiError(400, _one_line(exc))
        raise exc

    async def run(jobs: list[Job]) -> list:
        futures = await submit(jobs)
        waiting = [asyncio.wrap_future(f) for f in futures]
        try:
            return await asyncio.wait_for(asyncio.gather(*waiting), settings.request_timeout_s)
        except BaseException as exc:
            for job in jobs:  # timed out, failed or disconnected: nothing keeps computing for this request
                job.abandon()
            if isinstance(exc, (UnknownAdapter, ShuttingDown, EngineGone, TimeoutError, asyncio.TimeoutError,
                                ValueError, TypeError)):
                raise failure(exc) from None
            raise

    async def stream(body: CompletionRequest, jobs: list[Job]) -> StreamingResponse:
        """`stream: true`: server-sent events, one chunk per choice whenever its decoded text grows (every
        decoding step under continuous batching; once at the end otherwise), the finish reason on its last
        chunk, then `data: [DONE]`. An error after the stream started is an `{"error": ...}` event."""
        loop = asyncio.get_running_loop()
        updates: asyncio.Queue = asyncio.Queue()

        def post(i: int, tokens: list[int] | None) -> None:
            loop.call_soon_threadsafe(updates.put_nowait, (i, tokens))

        for i, job in enumerate(jobs):
            job.on_tokens = lambda tokens, i=i: post(i, tokens)
        futures = await submit(jobs)  # refusals (429, 503, 400) are plain error responses: nothing was sent yet
        for i, f in enumerate(futures):
            f.add_done_callback(lambda _, i=i: post(i, None))
        ident, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def event(i: int, text: str, finish: Literal["stop", "length"] | None) -> str:
            chunk = CompletionChunk(id=ident, created=created, model=body.model,
                                    choices=[StreamChoice(text=text, index=i, finish_reason=finish)])
            return f"data: {chunk.model_dump_json()}\n\n"

        async def events():
            sent, left = [""] * len(jobs), len(jobs)
            deadline = time.monotonic() + settings.request_timeout_s
            try:
                while left:
                    try:
                        i, tokens = await asyncio.wait_for(updates.get(), max(0.0, deadline - time.monotonic()))
                    except (TimeoutError, asyncio.TimeoutError):
                        raise failure(TimeoutError()) from None
                    if tokens is None:  # the row is done
                        left -= 1
                        if futures[i].cancelled():
                            raise failure(TimeoutError())
                        if futures[i].exception() is not None:
                            raise failure(futures[i].exception())
                        result = futures[i].result()
                        text = codec.decode(result.token_ids)
                        rest = text[len(sent[i]):] if text.startswith(sent[i]) else text
                        yield event(i, rest, "stop" if result.finished else "length")
                        continue
                    if futures[i].done():
                        continue
                    text = codec.decode(tokens)
                    # a text that is not an extension of what was sent (or ends in half a character) waits
                    if len(text) > len(sent[i]) and text.startswith(sent[i]) and not text.endswith("\ufffd"):
                        yield event(i, text[len(sent[i]):], None)
                        sent[i] = text
                yield "data: [DONE]\n\n"
            except ApiError as exc:
                yield _event_error(exc.status, exc.message, exc.kind)
            except Exception as exc:  # noqa: BLE001 -- the stream has started: report it in the stream
                yield _event_error(500, _one_line(f"{type(exc).__name__}: {exc}"), "server_error")
            finally:
                for job in jobs:
                    if not job.future.done():
                        job.abandon()

        return StreamingResponse(events(), media_type="text/event-stream")

    def card(name: str, view) -> ModelCard:
        entry = view.sources[name]
        return ModelCard(id=name, created=entry.created, source=entry.source,
                         num_virtual_tokens=entry.num_virtual_tokens, loaded=name in view.loaded)

    # ------------------------------------------------------------------------------------------ endpoints
    @app.post("/v1/completions", response_model=CompletionResponse)
    async def completions(body: CompletionRequest):
        known(body.model)
        if body.max_tokens > settings.max_tokens:
            raise ApiError(400, f"max_tokens={body.max_tokens} is more than this server's limit of "
                           f"{settings.max_tokens} (--max-tokens).")
        ids = encode_inputs(body.texts, "prompt")
        jobs = [Job("generate", body.model, row, max_new_tokens=body.max_tokens) for row in ids]
        if body.stream:
            return await stream(body, jobs)
        results = await run(jobs)
        choices = [CompletionChoice(text=codec.decode(r.token_ids), index=i,
                                    finish_reason="stop" if r.finished else "length")
                   for i, r in enumerate(results)]
        prompt_tokens, completion_tokens = sum(map(len, ids)), sum(r.num_tokens for r in results)
        return CompletionResponse(id=f"cmpl-{uuid.uuid4().hex}", created=int(time.time()), model=body.model,
                                  choices=choices, usage=Usage(prompt_tokens=prompt_tokens,
                                                               completion_tokens=completion_tokens,
                                                               total_tokens=prompt_tokens + completion_tokens))

    @app.post("/v1/classify", response_model=ClassifyResponse)
    async def classify(body: ClassifyRequest):
        known(body.model)
        try:
            label_ids = codec.encode_labels(body.labels)
        except ValueError as exc:
            raise ApiError(422, _one_line(exc)) from None
        ids = encode_inputs(body.texts, "input")
        jobs = [Job("classify", body.model, row, label_ids=label_ids) for row in ids]
        results = await run(jobs)
        lengths = [len(x) for x in label_ids]
        data = []
        for i, scores in enumerate(results):
            rank = [s / n for s, n in zip(scores, lengths, strict=True)] if body.length_normalize else scores
            best = max(range(len(rank)), key=rank.__getitem__)
            data.append(Classification(index=i, label=body.labels[best], scores=scores))
        prompt_tokens, label_tokens = sum(map(len, ids)), sum(lengths) * len(ids)
        return ClassifyResponse(model=body.model, data=data,
                                usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=label_tokens,
                                            total_tokens=prompt_tokens + label_tokens))

    @app.get("/v1/models", response_model=ModelList)
    async def models():
        view = await backend.snapshot()
        return ModelList(data=[card(name, view) for name in sorted(view.sources)])

    @app.get("/health")
    async def health():
        view = await backend.snapshot()
        status = "ok" if backend.alive and not state["draining"] else "draining" if backend.alive else "engine_exited"
        body = {"status": status, "engine": backend.placement, "base_model": settings.base_model,
                "adapters": len(view.sources),
                "adapters_loaded": len(view.loaded), "queue_depth": view.queue_depth, "refused": settings.refused}
        return JSONResponse(body, status_code=200 if status == "ok" else 503)

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render() + await backend.engine_metrics(), media_type=CONTENT_TYPE)

    @app.post("/admin/adapters", status_code=201, response_model=ModelCard, dependencies=[Depends(admin)])
    async def load_adapter(body: AdapterLoadRequest):
        if backend.serves(body.name):
            raise ApiError(409, f"adapter {body.name!r} is already served (from "
                           f"{backend.adapters.sources[body.name].source!r}); DELETE /admin/adapters/{body.name} "
                           "first.", "conflict_error")
        try:
            await backend.register(body.name, body.source, subfolder=body.subfolder, revision=body.revision)
        except (ShuttingDown, EngineGone) as exc:
            raise ApiError(503, str(exc), "server_error") from None
        except (AdapterError, ValueError, TypeError, OSError) as exc:
            settings.refused[body.name] = _one_line(exc)
            raise ApiError(422, f"adapter {body.name!r} from {body.source!r} was refused: {_one_line(exc)}",
                           "invalid_adapter_error") from None
        settings.refused.pop(body.name, None)
        return card(body.name, backend.adapters)

    @app.delete("/admin/adapters/{name}", dependencies=[Depends(admin)])
    async def unload_adapter(name: str):
        known(name)
        try:
            await backend.unload(name)
        except UnknownAdapter as exc:
            raise ApiError(404, str(exc), "not_found_error") from None
        except (ShuttingDown, EngineGone) as exc:
            raise ApiError(503, str(exc), "server_error") from None
        return {"id": name, "object": "model", "deleted": True}

    return app
