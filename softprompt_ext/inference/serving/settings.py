"""Every setting of `softprompt serve` in one dataclass: the CLI flags, `build_app` / `serve` keywords and the
engine's options are all generated from `ServeSettings`, so a default and its help text live in one place
(as vLLM generates its flags from its engine-argument dataclass).

    parser = argparse.ArgumentParser(); add_cli_args(parser)      # --max-adapters, --max-batch-size, ...
    settings = settings_from_cli(parser.parse_args())             # the dataclass, validated
    settings = ServeSettings.from_kwargs(max_adapters=2)          # `build_app(..., max_adapters=2)`

A field's metadata says how it appears on the command line: `flag` (default `--<name with dashes>`), `choices`,
`negate` (a True-by-default switch written `--no-...`), `cli=False` (Python only). Bounds checked once the
request is tokenised live in `validation.py`; the checks here are the server's own configuration.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any

BATCHING = ("continuous", "mixed", "per_adapter")
PRECISIONS = ("auto", "fp32", "bf16")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def _opt(default: Any, help: str, **meta: Any) -> Any:
    return field(default=default, metadata={"help": help, **meta})


@dataclass
class ServeSettings:
    """What `softprompt serve` runs with (each field is the flag of the same name with dashes)."""

    # where it listens (`serve` only; `build_app` leaves listening to the ASGI server)
    host: str = _opt("127.0.0.1", "address to bind")
    port: int = _opt(8000, "port")
    log_level: str = _opt("info", "uvicorn's log level (info logs every request)", choices=LOG_LEVELS)
    # the model
    device: str | None = _opt(None, "cpu, cuda, cuda:1, ... (default: cuda when available)")
    precision: str = _opt("auto", "auto: bf16 only where the hardware has bf16 units", choices=PRECISIONS)
    admin_token: str | None = _opt(None, "bearer token of the admin endpoints (default: $SOFTPROMPT_ADMIN_TOKEN)")
    strict: bool = _opt(False, "exit when an adapter is refused at start-up")
    # the adapter store
    max_adapters: int = _opt(64, "resident adapters, LRU beyond")
    max_adapter_bytes: int | None = _opt(None, "bytes of resident prompts, LRU beyond (default: no byte budget)")
    # batching
    batching: str = _opt("continuous", "continuous: rows of any adapters join and leave the running batch "
                         "between decoding steps; mixed: one batch at a time, any adapters; per_adapter: one "
                         "adapter per batch via PEFT's set_adapter (the benchmark baseline)", choices=BATCHING)
    prefix_cache: bool = _opt(True, "decoder-only bases compute each adapter's prompt keys/values once and reuse "
                              "them; --no-prefix-cache recomputes them per request (the benchmark's comparison)",
                              negate=True)
    max_batch_size: int = _opt(32, "rows per model call")
    max_batch_tokens: int = _opt(16384, "input + new tokens per model call")
    max_wait_ms: float = _opt(5.0, "longest wait for a batch to fill, in milliseconds")
    max_queue: int = _opt(256, "queued rows before 429")
    # request limits
    max_input_tokens: int = _opt(512, "tokens per prompt")
    max_tokens: int = _opt(256, "largest max_tokens")
    max_n: int = _opt(8, "most completions per prompt (n, best_of)")
    request_timeout_s: float = _opt(60.0, "seconds per request", flag="--request-timeout")
    retry_after_s: int = _opt(1, "the Retry-After header of a 429, in seconds")
    # bounds before a request is parsed or tokenised (limits.py, validation.check_cheap)
    max_request_bytes: int = _opt(2 * 1024 * 1024, "bytes of a request body; a larger one is answered 413 and "
                                  "read no further")
    max_input_chars: int = _opt(65536, "characters per prompt, input text or label, checked before tokenising")
    max_labels: int = _opt(256, "labels of one /v1/classify request")
    read_timeout_s: float = _opt(30.0, "seconds a client may take to send its request line and headers, and "
                                 "again its body (408 / connection closed beyond)", flag="--read-timeout")
    timeout_keep_alive_s: float = _opt(5.0, "seconds an idle keep-alive connection stays open",
                                       flag="--timeout-keep-alive")
    # where admin loads may read
    adapter_root: str | None = _opt(None, "folders (separated by ':') that POST /admin/adapters may load from; "
                                    "default: the folders of the --adapter values given at start")

    def __post_init__(self) -> None:
        for name in ("port", "max_adapters", "max_batch_size", "max_batch_tokens", "max_queue", "max_input_tokens",
                     "max_tokens", "max_n", "retry_after_s", "max_request_bytes", "max_input_chars", "max_labels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if name == "port" else 1):
                raise ValueError(f"{name}={value!r} must be a positive integer.")
        if self.max_adapter_bytes is not None and self.max_adapter_bytes < 1:
            raise ValueError(f"max_adapter_bytes={self.max_adapter_bytes!r} must be >= 1, or None for no byte budget.")
        for name in ("max_wait_ms", "request_timeout_s", "read_timeout_s", "timeout_keep_alive_s"):
            if getattr(self, name) < 0 or (name != "max_wait_ms" and getattr(self, name) == 0):
                raise ValueError(f"{name}={getattr(self, name)!r} must be {'>' if name != 'max_wait_ms' else '>='} 0.")
        for name, allowed in (("batching", BATCHING), ("precision", PRECISIONS), ("log_level", LOG_LEVELS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}: use one of {', '.join(allowed)}.")

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> ServeSettings:
        """The settings with `kwargs` set; an unknown keyword raises a `TypeError` listing the known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"unknown serve setting(s) {unknown}; the settings are: {', '.join(sorted(known))}.")
        return cls(**kwargs)


DEFAULTS = ServeSettings()


def _flag(f: dataclasses.Field) -> str:
    if f.metadata.get("negate"):
        return "--no-" + f.name.replace("_", "-")
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    """Add one flag per `ServeSettings` field to `parser` (its default and help text from the field)."""
    for f in dataclasses.fields(ServeSettings):
        if f.metadata.get("cli") is False:
            continue
        help_text, default = f.metadata["help"], f.default
        if isinstance(default, bool) or f.type in ("bool",):
            action = "store_true"
            parser.add_argument(_flag(f), dest=f.name, action="store_false" if f.metadata.get("negate") else action,
                                help=help_text)
            continue
        kind: Any = {"int": int, "float": float}.get(str(f.type).split(" |")[0], str)
        choices = f.metadata.get("choices")
        metavar = None if choices else {int: "N", float: "X"}.get(kind, "TEXT")
        if kind is int:
            kind = _positive(kind)
        elif choices and any("_" in c for c in choices):  # per-adapter or per_adapter on the command line
            kind = _underscored
        shown = f" ({default})" if default is not None else ""
        parser.add_argument(_flag(f), dest=f.name, type=kind, default=default, choices=choices, metavar=metavar,
                            help=help_text + shown)


def settings_from_cli(args: argparse.Namespace, **override: Any) -> ServeSettings:
    """The `ServeSettings` of parsed `args` (the fields `add_cli_args` added), with `override` on top."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(ServeSettings) if hasattr(args, f.name)}
    return ServeSettings.from_kwargs(**{**values, **override})


def _underscored(text: str) -> str:
    return text.replace("-", "_")


def _positive(kind):
    def parse(text: str) -> int:
        value = kind(text)
        if value < 1:
            raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
        return value

    parse.__name__ = "positive integer"
    return parse


__all__ = ["BATCHING", "DEFAULTS", "ServeSettings", "add_cli_args", "settings_from_cli"]
