"""Bounds that hold before a request is parsed or tokenised: the body's size and read time, text that is not
valid Unicode, and error messages that never echo a large input.

* `BodyLimit` -- a pure ASGI middleware: a body larger than `--max-request-bytes` is answered 413 as soon as its
  `Content-Length` (or the bytes read so far) says so, and nothing more of it is read; a body that does not
  arrive within `--read-timeout` is answered 408. The app sees the body only once it is whole and within
  bounds, so JSON parsing and validation never start on an oversized one.
* `check_unicode(value, param)` -- a string holding a lone surrogate (`"\\ud800"`, which JSON can carry but
  UTF-8 cannot) is a 400 naming the field, before any tokenizer sees it.
* `clip(text)` -- a value shown in an error message, cut to a few dozen characters with an ellipsis.
"""

from __future__ import annotations

import asyncio
import json

from .errors import ApiError, error_body

CLIP_CHARS = 64  # characters of a request value an error message shows


def clip(value: object, limit: int = CLIP_CHARS) -> str:
    """`repr(value)`, cut to `limit` characters with an ellipsis, and safe to encode as UTF-8."""
    text = value if isinstance(value, str) else repr(value)
    if isinstance(value, str):
        text = repr(text[: limit + 1])
    if len(text) > limit:
        text = text[:limit] + "..."
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def check_unicode(value: object, param: str) -> None:
    """Raise a 400 naming `param` (e.g. `prompt[3]`) when a string in `value` (nested lists and dicts too) is
    not valid Unicode text (a lone surrogate)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ApiError(400, f"{param} holds {value[exc.start]!r} at character {exc.start}, a lone surrogate "
                           "that is not valid Unicode text; send UTF-8 text (a surrogate pair, or the character "
                           "itself).", param=param.split("[")[0].split(".")[0].split(" ")[0]) from None
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            if isinstance(item, str | list | tuple | dict):
                check_unicode(item, f"{param}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_unicode(key, f"{param} key")
            check_unicode(item, f"{param}.{key}" if isinstance(key, str) and key.isidentifier() else param)


class BodyLimit:
    """ASGI middleware: read each request body whole, at most `max_bytes` of it, within `read_timeout_s`."""

    def __init__(self, app, max_bytes: int, read_timeout_s: float):
        self.app, self.max_bytes, self.read_timeout_s = app, max_bytes, read_timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send, 413, self._too_large(int(declared)))
        chunks, size = [], 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.read_timeout_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except (TimeoutError, asyncio.TimeoutError):
                return await self._refuse(send, 408, f"the request body did not arrive within "
                                          f"{self.read_timeout_s:g} s (--read-timeout); send it at once.")
            if message["type"] == "http.disconnect":
                return None  # the client left before its body arrived: nothing to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await self._refuse(send, 413, self._too_large(size, at_least=True))
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the disconnect, when the client leaves

        return await self.app(scope, replay, send)

    def _too_large(self, size: int, at_least: bool = False) -> str:
        return (f"the request body is {'more than ' if at_least else ''}{size} bytes, more than this server's limit "
                f"of {self.max_bytes} (--max-request-bytes); send fewer or shorter prompts per request.")

    @staticmethod
    async def _refuse(send, status: int, message: str) -> None:
        kind = "invalid_request_error" if status == 413 else "timeout_error"
        payload = json.dumps(error_body(status, message, kind)).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})


__all__ = ["BodyLimit", "CLIP_CHARS", "check_unicode", "clip"]
