"""Connections that cannot be held open for nothing: uvicorn's HTTP protocols with a deadline for the request
line and headers.

uvicorn closes an idle keep-alive connection after `timeout_keep_alive` seconds, but only once a response has
been sent: a client that connects and never finishes its headers is held forever, one file descriptor each.
`HeaderDeadline` arms a timer when the connection opens and after every response, and closes the connection
when the next request's headers have not arrived within `read_timeout_s` (`--read-timeout`). The body then
has its own deadline (`limits.BodyLimit`, 408). `protocol()` picks the parser uvicorn's "auto" would
(httptools when installed, else h11) and adds the deadline to it.
"""

from __future__ import annotations

import asyncio


class HeaderDeadline:
    """Mixin for uvicorn's `H11Protocol` / `HttpToolsProtocol`: close a connection whose request line and
    headers take longer than `read_timeout_s`."""

    read_timeout_s: float = 30.0
    cycle: object
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport

    def connection_made(self, transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.read_timeout_s, self._headers_late)

    def _disarm(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def _request_open(self) -> bool:
        cycle = getattr(self, "cycle", None)
        return cycle is not None and not getattr(cycle, "response_complete", True)

    def _headers_late(self) -> None:
        self._header_timer = None
        if not self._request_open() and not self.transport.is_closing():  # no request under way: nothing to answer
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        if self._request_open():  # a request's headers arrived
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]


def protocol(read_timeout_s: float) -> type:
    """uvicorn's HTTP protocol class ("auto": httptools when installed, else h11) with the header deadline."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as Base
    except ImportError:  # httptools is not installed
        from uvicorn.protocols.http.h11_impl import H11Protocol as Base  # type: ignore[assignment]
    return type(f"Timed{Base.__name__}", (HeaderDeadline, Base), {"read_timeout_s": read_timeout_s})


__all__ = ["HeaderDeadline", "protocol"]
