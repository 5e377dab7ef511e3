"""Errors of `softprompt serve`: one exception type, one JSON shape (OpenAI's error object), one mapping from the
engine's exceptions to HTTP statuses.

    {"error": {"message": "...", "type": "invalid_request_error", "param": "temperature", "code": 400}}

`message` names the field, the value and the fix; `param` is the request field at fault (None when no single
field is); `code` repeats the HTTP status. Every error takes this shape: request validation, unknown routes
and methods, engine failures, and errors inside a started event stream (one `data: {"error": ...}` event).
"""

from __future__ import annotations

import asyncio
import json


class ApiError(Exception):
    """An error answer: HTTP `status`, a one-line `message`, OpenAI's error `kind` (`type`), the field `param`."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", headers=None,
                 param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.headers, self.param = status, message, kind, headers or {}, param

    def body(self) -> dict:
        return error_body(self.status, self.message, self.kind, self.param)


MAX_MESSAGE_CHARS = 1000  # an error message never grows with the request that caused it


def error_body(status: int, message: str, kind: str, param: str | None = None) -> dict:
    """OpenAI's error object; the message cut to `MAX_MESSAGE_CHARS` (with an ellipsis) and encodable as UTF-8."""
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS] + "..."
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    if param is not None:
        param = param[:64].encode("utf-8", "backslashreplace").decode("utf-8")
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


def event_error(error: ApiError) -> str:
    """An error inside a started event stream: one `error` event (the JSON body of the error), then `[DONE]`."""
    return f"data: {json.dumps(error.body())}\n\ndata: [DONE]\n\n"


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def engine_failure(exc: BaseException, request_timeout_s: float, retry_after_s: int) -> ApiError:
    """The `ApiError` of an exception from the engine side (queue full, shutting down, timed out, ...)."""
    from .engine_process import EngineGone
    from .registry import UnknownAdapter
    from .scheduler import QueueFull, ShuttingDown

    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, UnknownAdapter):
        return ApiError(404, str(exc), "not_found_error", param="model")
    if isinstance(exc, QueueFull):
        return ApiError(429, str(exc), "rate_limit_error", {"Retry-After": str(retry_after_s)})
    if isinstance(exc, (ShuttingDown, EngineGone)):
        return ApiError(503, str(exc), "server_error")
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return ApiError(504, f"the request did not finish within {request_timeout_s:g} s (--request-timeout); "
                        "retry, or send fewer or shorter prompts.", "timeout_error")
    if isinstance(exc, (ValueError, TypeError)):
        return ApiError(400, one_line(exc))
    return ApiError(500, one_line(f"{type(exc).__name__}: {exc}"), "server_error")


__all__ = ["MAX_MESSAGE_CHARS", "ApiError", "engine_failure", "error_body", "event_error", "one_line"]
