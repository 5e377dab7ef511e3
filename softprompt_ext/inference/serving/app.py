"""The HTTP face of `softprompt serve`: `create_app` assembles a FastAPI app over an engine backend
(`backend.EngineBackend`: the `Engine` and its `Scheduler` in this process, or in a process of their own).

Endpoints (OpenAI-compatible where OpenAI has one), one router module per group:

* `routes_completions.py` -- `POST /v1/completions` (OpenAI's completion schema: sampling, stop strings,
  log-probabilities, echo, token-id prompts, `stream: true` as server-sent events), `POST /v1/classify` (rank
  classification: the log-likelihood of each given label, the best one).
* `routes_chat.py` -- `POST /v1/chat/completions` for bases whose tokenizer has a chat template.
* `routes_tokens.py` -- `POST /tokenize`, `POST /detokenize`, `GET /tokenizer_info` (what lm-eval's remote
  tokenizer calls).
* `routes_admin.py` -- `GET /v1/models`, `GET /health`, `GET /metrics`, `POST /admin/adapters`,
  `DELETE /admin/adapters/{name}`.

The request logic lives in `service.CompletionService` (testable without HTTP) and every bound in
`validation.py`. Every error is OpenAI's error object `{"error": {"message", "type", "param", "code"}}`
(`errors.py`): 400 a bound or limit, 401 a missing/wrong admin token, 404 an unknown adapter or route, 405 a
wrong method, 409 a name already served, 422 a malformed body (a field of the wrong type or unknown to the
endpoint) or an adapter whose files were refused, 429 the queue is full (with `Retry-After`), 503 shutting
down or the engine process gone, 504 the request timed out.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from .adapter_roots import parse_roots
from .backend import LocalBackend
from .engine import Engine
from .errors import ApiError, error_body, one_line
from .limits import BodyLimit
from .metrics import RequestMetrics
from .service import CompletionService
from .settings import ServeSettings


class RefusedLoads(dict):
    """`GET /health`'s `refused`: adapter name -> the refusal, of bounded size (it is public): the newest
    `MAX_REFUSED` names, each message cut to `MAX_REFUSED_CHARS` characters."""

    MAX_REFUSED = 32
    MAX_REFUSED_CHARS = 300

    def __init__(self, initial: dict[str, str]):
        super().__init__()
        for name, message in initial.items():
            self[name] = message

    def __setitem__(self, name: str, message: str) -> None:
        self.pop(name, None)
        if len(message) > self.MAX_REFUSED_CHARS:
            message = message[: self.MAX_REFUSED_CHARS] + "..."
        super().__setitem__(name, message)
        while len(self) > self.MAX_REFUSED:
            del self[next(iter(self))]


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


MAX_VALIDATION_ERRORS = 5  # problems named in one 422 message


def _validation_error(exc: RequestValidationError) -> ApiError:
    """One message for every problem pydantic found; `param` is the first field at fault."""
    parts, param = [], None
    errors = exc.errors()
    for err in errors[:MAX_VALIDATION_ERRORS]:  # one error per list element would echo the whole input
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        where = ".".join(loc) or "body"
        param = param or (loc[0] if loc else None)
        if err.get("type") == "extra_forbidden":
            parts.append(f"{where}: this endpoint has no field {where!r}; remove it (the serving guide lists "
                         "every field and what the server does with it)")
        else:
            parts.append(f"{where}: {err.get('msg', 'invalid')}".replace("Value error, ", ""))
    if len(errors) > MAX_VALIDATION_ERRORS:
        parts.append(f"and {len(errors) - MAX_VALIDATION_ERRORS} more")
    return ApiError(422, "; ".join(parts), param=param)


def create_app(backend, settings: ServeSettings | None = None, *, base_model: str = "embedded",
               refused: dict[str, str] | None = None, on_shutdown: Sequence[Callable[[], object]] = ()) -> FastAPI:
    """The app over `backend` (an `Engine`, run in this process, or a `backend.EngineBackend`:
    `LocalBackend` / `engine_process.EngineProcess`); its lifespan starts the engine and, at shutdown, drains
    it. `base_model` and `refused` (adapters refused at start-up) are what `GET /health` reports; `on_shutdown`
    runs once the engine stopped."""
    from . import routes_admin, routes_chat, routes_completions, routes_tokens

    settings = settings or ServeSettings()
    if isinstance(backend, Engine):
        backend = LocalBackend(backend, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await backend.start()
        yield
        app.state.draining = True
        try:
            await backend.stop(True)  # finish every accepted request
        finally:
            for callback in on_shutdown:  # e.g. the demo's temporary folder (before uvicorn re-raises SIGTERM)
                callback()

    app = FastAPI(title="softprompt-ext serve", lifespan=lifespan)
    state = app.state
    state.backend, state.settings, state.metrics = backend, settings, RequestMetrics()
    state.service = CompletionService(backend, settings)
    state.adapter_roots = parse_roots(settings.adapter_root)  # where admin loads may read (none: Hub ids only)
    state.base_model, state.refused, state.draining = base_model, RefusedLoads(refused or {}), False

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        error = _validation_error(exc)
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):  # unknown routes (404), wrong methods (405)
        message = (f"no route {request.method} {request.url.path}; see the serving guide for the endpoints."
                   if exc.status_code == 404 else
                   f"{request.method} is not allowed on {request.url.path}." if exc.status_code == 405 else
                   str(exc.detail))
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(exc.status_code, message, kind), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):  # a bug: still OpenAI's error shape, no traceback
        error = ApiError(500, one_line(f"{type(exc).__name__}: {exc}"), "server_error")
        return JSONResponse(error.body(), status_code=500)

    # plain ASGI middlewares (no per-request task); the body limit runs inside the metrics, so 413s are counted
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes, read_timeout_s=settings.read_timeout_s)
    app.add_middleware(_ObserveRequests, metrics=state.metrics)
    for module in (routes_completions, routes_chat, routes_tokens, routes_admin):
        app.include_router(module.router)
    return app


__all__ = ["create_app"]
