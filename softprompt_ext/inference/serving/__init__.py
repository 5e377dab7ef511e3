"""`softprompt serve`: an HTTP server for one frozen base model and many soft prompts, batched across adapters.

    softprompt serve --adapter sst2=./sst2-prompt --adapter ./prompts/ --port 8000     # embedded T5 by default

    from softprompt_ext import serve
    serve(adapters=["./sst2-prompt"], port=8000)                                      # the same, from Python

Lester et al. (2021), section 6: a task is only its prompt, so one frozen model serves every task and one
batch may mix them. The server queues requests and decodes them in one running batch that rows of any adapter join and
leave between decoding steps (`scheduler.py`, `decoding.py`; classification runs `score_label_ids` on mixed
batches, `engine.py`); adapters live in an LRU store with a memory budget
(`registry.py`), each read through `validate_adapter` / `load_adapter_safely`. `serve` runs the model in a
process of its own (`engine_process.py`) so that HTTP work never waits for it; `build_app` keeps it in this
process unless asked (`backend.py` holds the interface both placements share, a `typing.Protocol`). Modules:
`settings.py` (every setting, from which the CLI flags and these functions' keywords come), `schemas.py`
(request and response bodies), `validation.py` (every bound of a request), `service.py` (the completion logic,
without HTTP), `sampling.py` (each row's next token), `output.py` (stop strings, log-probabilities),
`tokens.py` (tokenising), `app.py` and `routes_*.py` (FastAPI endpoints), `errors.py` (OpenAI's error
object), `metrics.py` (Prometheus). Needs the `serve` extra: `pip install "softprompt-ext[serve]"` (FastAPI, uvicorn,
prometheus_client).

The server keeps no per-client state: every replica started with the same base model and adapters answers
every request the same, so replicas scale out behind any HTTP load balancer (`GET /health` for its checks).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Sequence

ADMIN_TOKEN_ENV = "SOFTPROMPT_ADMIN_TOKEN"
HEADER_BYTES = 16 * 1024  # h11's bound on a request line plus headers (httptools keeps llhttp's own bound)
_log = logging.getLogger("softprompt_ext.serve")


def build_app(base: str | None = None, adapters: Sequence[str] = (), *, engine_process: bool = False,
              on_shutdown: Sequence[Callable[[], object]] = (), **settings):
    """The FastAPI app `serve` runs (for tests, or to run it under your own ASGI server).

    Args:
        base: base model, a Hub id or directory; None: the embedded LM-adapted T5 (no network).
        adapters: `--adapter` values: adapter directories, folders of adapter directories, Hub ids, each
            optionally `NAME=SOURCE`.
        engine_process: run the model, adapter store and scheduler in a child process (`serve`'s default);
            False (here the default): a worker thread in this process.
        on_shutdown: callables run once the engine stopped (the app's lifespan end).
        **settings: `ServeSettings` fields (`settings.py`, the `softprompt serve` flags of the same names):
            `device` (default CUDA when available), `admin_token` (default the `SOFTPROMPT_ADMIN_TOKEN`
            variable; none: the admin endpoints are open, for a server on 127.0.0.1), `max_adapters` /
            `max_adapter_bytes` (the resident-prompt budget, LRU beyond), `strict` (raise when an adapter is
            refused at start-up instead of listing it under `refused` in `GET /health`), `precision`,
            `batching` ("continuous", "mixed" or "per_adapter"), `prefix_cache`, `max_batch_size`,
            `max_wait_ms`, `max_queue`, `max_input_tokens`, `max_tokens`, `max_n`, `request_timeout_s`, ...
            An unknown name raises a `TypeError` listing them.
    """
    import torch

    from .adapter_roots import default_roots
    from .app import create_app
    from .backend import LocalBackend
    from .engine_process import EngineOptions, EngineProcess, build_engine
    from .registry import discover
    from .settings import ServeSettings

    config = ServeSettings.from_kwargs(**settings)
    config.device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if config.admin_token is None:
        config.admin_token = os.environ.get(ADMIN_TOKEN_ENV) or None
    if config.adapter_root is None:  # admin loads may read where the start-up adapters came from
        config.adapter_root = os.pathsep.join(default_roots(adapters))
    options = EngineOptions(base=base, adapters=[pair for spec in adapters for pair in discover(spec)],
                            settings=dataclasses.replace(config, admin_token=None))  # the engine needs no secret
    backend: EngineProcess | LocalBackend
    if engine_process:
        backend = EngineProcess(options)
        refused = dict(backend.refused)
    else:
        engine, refused = build_engine(options)
        backend = LocalBackend(engine, config)
    return create_app(backend, config, base_model=base or "embedded", refused=refused, on_shutdown=on_shutdown)


def serve(base: str | None = None, adapters: Sequence[str] = (), *, engine_process: bool = True,
          on_shutdown: Sequence[Callable[[], object]] = (), **settings) -> None:
    """Load `base` and `adapters` and serve them over HTTP until SIGINT/SIGTERM (then finish accepted requests).

    Arguments as in `build_app` (but the engine runs in its own process unless `engine_process=False`); the
    settings `host`, `port` and `log_level` (uvicorn's) say where and how it listens.
    """
    import uvicorn

    app = build_app(base, adapters, engine_process=engine_process, on_shutdown=on_shutdown, **settings)
    config = app.state.settings
    if config.admin_token is None and config.host not in ("127.0.0.1", "localhost", "::1"):
        _log.warning("serving on %s without an admin token: anyone who reaches it can load and unload adapters; "
                     "pass --admin-token or set %s.", config.host, ADMIN_TOKEN_ENV)
    from .connections import protocol

    uvicorn.run(app, host=config.host, port=config.port, log_level=config.log_level,
                http=protocol(config.read_timeout_s), timeout_keep_alive=config.timeout_keep_alive_s,
                h11_max_incomplete_event_size=HEADER_BYTES)


__all__ = ["ADMIN_TOKEN_ENV", "build_app", "serve"]
