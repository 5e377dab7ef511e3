"""`softprompt serve`: an HTTP server for one frozen base model and many soft prompts, batched across adapters.

    softprompt serve --adapter sst2=./sst2-prompt --adapter ./prompts/ --port 8000     # embedded T5 by default

    from softprompt_ext import serve
    serve(adapters=["./sst2-prompt"], port=8000)                                      # the same, from Python

Lester et al. (2021), section 6: a task is only its prompt, so one frozen model serves every task and one
batch may mix them. The server queues requests and decodes them in one running batch that rows of any adapter join and
leave between decoding steps (`scheduler.py`, `decoding.py`; classification runs `score_label_ids` on mixed
batches, `engine.py`); adapters live in an LRU store with a memory budget
(`registry.py`), each read through `validate_adapter` / `load_adapter_safely`. Modules: `schemas.py`
(request and response bodies), `app.py` (FastAPI endpoints), `metrics.py` (Prometheus). Needs the `serve`
extra: `pip install "softprompt-ext[serve]"` (FastAPI, uvicorn, prometheus_client).

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
              **settings):
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
        **settings: `ServeSettings` fields (`max_batch_size`, `max_wait_ms`, `max_queue`, `max_input_tokens`,
            `max_tokens`, `request_timeout_s`, ...).
    """
    import torch

    from ...adapters.reader import AdapterError
    from .app import ServeSettings, create_app
    from .engine import Engine, load_base
    from .registry import discover

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    token = admin_token if admin_token is not None else os.environ.get(ADMIN_TOKEN_ENV) or None
    specs = [pair for spec in adapters for pair in discover(spec)]
    model, tokenizer = load_base(base, device)
    engine = Engine(model, tokenizer, max_adapters=max_adapters, max_bytes=max_adapter_bytes, precision=precision,
                    batching=batching, prefix_cache=prefix_cache)
    refused: dict[str, str] = {}
    for name, source in specs:
        try:
            engine.registry.register(name, source)
        except (AdapterError, ValueError, TypeError, OSError) as exc:
            if strict:
                raise ValueError(f"adapter {name!r} from {source!r} was refused: {exc}") from exc
            refused[name] = " ".join(str(exc).split())
            _log.error("adapter %r from %r refused: %s", name, source, refused[name])
    config = ServeSettings(admin_token=token, base_model=base or "embedded", refused=refused, **settings)
    return create_app(engine, config)


def serve(base: str | None = None, adapters: Sequence[str] = (), *, host: str = "127.0.0.1", port: int = 8000,
          log_level: str = "info", **options) -> None:
    """Load `base` and `adapters` and serve them over HTTP until SIGINT/SIGTERM (then finish accepted requests).

    Arguments as in `build_app`, plus `host`, `port` and uvicorn's `log_level`.
    """
    import uvicorn

    app = build_app(base, adapters, **options)
    if app.state.settings.admin_token is None and host not in ("127.0.0.1", "localhost", "::1"):
        _log.warning("serving on %s without an admin token: anyone who reaches it can load and unload adapters; "
                     "pass --admin-token or set %s.", host, ADMIN_TOKEN_ENV)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


__all__ = ["ADMIN_TOKEN_ENV", "build_app", "serve"]
