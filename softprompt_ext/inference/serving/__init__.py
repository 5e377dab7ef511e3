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
process unless asked (`backend.py` holds the interface both placements share). Modules: `schemas.py`
(request and response bodies), `tokens.py` (tokenising), `app.py` (FastAPI endpoints), `metrics.py`
(Prometheus). Needs the `serve` extra: `pip install "softprompt-ext[serve]"` (FastAPI, uvicorn,
prometheus_client).

The server keeps no per-client state: every replica started with the same base model and adapters answers
every request the same, so replicas scale out behind any HTTP load balancer (`GET /health` for its checks).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

ADMIN_TOKEN_ENV = "SOFTPROMPT_ADMIN_TOKEN"
_log = logging.getLogger("softprompt_ext.serve")


def build_app(base: str | None = None, adapters: Sequence[str] = (), *, device: str | None = None,
              admin_token: str | None = None, max_adapters: int = 64, max_adapter_bytes: int | None = None,
              strict: bool = False, precision: str = "auto", batching: str = "continuous", prefix_cache: bool = True,
              engine_process: bool = False, **settings):
    """The FastAPI app `serve` runs (for tests, or to run it under your own ASGI server).

    Args:
        base: base model, a Hub id or directory; None: the embedded LM-adapted T5 (no network).
        adapters: `--adapter` values: adapter directories, folders of adapter directories, Hub ids, each
            optionally `NAME=SOURCE`.
        device: "cpu", "cuda", ...; default CUDA when available.
        admin_token: bearer token for the admin endpoints; default the `SOFTPROMPT_ADMIN_TOKEN` variable
            (none: the admin endpoints are open, for a server on 127.0.0.1).
        max_adapters, max_adapter_bytes: the resident-prompt budget (LRU eviction beyond it).
        strict: raise when an adapter is refused at start-up (default: log it, serve the others, and list it
            under `refused` in `GET /health`).
        batching: "continuous" (the default: rows of any adapters join and leave the running batch between
            decoding steps; decoder-only bases reuse each adapter's prompt keys/values), "mixed" (one batch at
            a time, any adapters) or "per_adapter" (one adapter per batch through PEFT's `set_adapter` path:
            the benchmark's baseline).
        prefix_cache: decoder-only bases under continuous batching: compute each adapter's prompt keys and
            values once and reuse them for every request (default); False recomputes them per request.
        engine_process: run the model, adapter store and scheduler in a child process (`serve`'s default);
            False (here the default): a worker thread in this process.
        **settings: `ServeSettings` fields (`max_batch_size`, `max_wait_ms`, `max_queue`, `max_input_tokens`,
            `max_tokens`, `request_timeout_s`, ...).
    """
    import torch

    from .app import ServeSettings, create_app
    from .backend import LocalBackend
    from .engine import BATCHING
    from .engine_process import EngineOptions, EngineProcess, build_engine
    from .registry import discover

    if batching not in BATCHING:
        raise ValueError(f"batching={batching!r}: use 'continuous' (rows join and leave the running batch between "
                         "decoding steps, the default), 'mixed' (one batch at a time, any adapters) or 'per_adapter'.")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    token = admin_token if admin_token is not None else os.environ.get(ADMIN_TOKEN_ENV) or None
    config = ServeSettings(admin_token=token, base_model=base or "embedded", **settings)
    options = EngineOptions(base=base, device=device, adapters=[pair for spec in adapters for pair in discover(spec)],
                            strict=strict, max_adapters=max_adapters, max_adapter_bytes=max_adapter_bytes,
                            precision=precision, batching=batching, prefix_cache=prefix_cache,
                            scheduler=config.scheduler)
    backend: EngineProcess | LocalBackend
    if engine_process:
        backend = EngineProcess(options)
        config.refused = dict(backend.refused)
    else:
        engine, config.refused = build_engine(options)
        backend = LocalBackend(engine, config.scheduler)
    return create_app(backend, config)


def serve(base: str | None = None, adapters: Sequence[str] = (), *, host: str = "127.0.0.1", port: int = 8000,
          log_level: str = "info", engine_process: bool = True, **options) -> None:
    """Load `base` and `adapters` and serve them over HTTP until SIGINT/SIGTERM (then finish accepted requests).

    Arguments as in `build_app` (but the engine runs in its own process unless `engine_process=False`), plus
    `host`, `port` and uvicorn's `log_level`.
    """
    import uvicorn

    app = build_app(base, adapters, engine_process=engine_process, **options)
    if app.state.settings.admin_token is None and host not in ("127.0.0.1", "localhost", "::1"):
        _log.warning("serving on %s without an admin token: anyone who reaches it can load and unload adapters; "
                     "pass --admin-token or set %s.", host, ADMIN_TOKEN_ENV)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


__all__ = ["ADMIN_TOKEN_ENV", "build_app", "serve"]
