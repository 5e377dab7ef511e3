"""Connections that cannot be held open for nothing: uvicorn's h11 protocol with a deadline for the request
line and headers.

uvicorn closes an idle keep-alive connection after `timeout_keep_alive` seconds, but only once a response has
been sent: a client that connects and never finishes its headers is held forever, one file descriptor each.
`TimedH11Protocol` arms a timer when the connection opens and after every response, and closes the
connection when the next request's headers have not arrived within `read_timeout_s` (`--read-timeout`).
The body then has its own deadline (`limits.BodyLimit`, 408).
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol


class TimedH11Protocol(H11Protocol):
    """`H11Protocol` that closes a connection whose request headers take longer than `read_timeout_s`."""

    read_timeout_s: float = 30.0

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
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

    def _headers_late(self) -> None:
        self._header_timer = None
        idle = self.cycle is None or self.cycle.response_complete  # no request under way: nothing to answer
        if idle and not self.transport.is_closing():
            self.transport.close()

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not None and not self.cycle.response_complete:  # a request's headers arrived
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)


__all__ = ["TimedH11Protocol"]
