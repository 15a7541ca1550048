"""Connection limits for serve: a request head must arrive in time, and connections are bounded.

Why: 300 connections that sent nothing, or dribbled a head a byte at a time, all stayed open
(uvicorn times out only idle keep-alive connections, after an answer). `HeadTimer` closes a
connection whose request head has not arrived within `server.header_timeout_seconds` of the
connection opening or of the request's first byte; both of serve's protocols use it (the pull
protocol, and uvicorn's own for the connections handed to it: `TimedHttpToolsProtocol`). At
`server.max_connections` open connections a new one is answered 503 and closed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("totp_service.connections")
OVERLOADED = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n"
              b"retry-after: 1\r\ncontent-length: 70\r\n\r\n"
              b'{"error":"unavailable","detail":"too many open connections; try again"}')


class HeadTimer:
    """Closes `transport` unless `stop()` is called within `seconds` of `start()`."""

    __slots__ = ("_loop", "_seconds", "_handle", "_transport")

    def __init__(self, loop: asyncio.AbstractEventLoop, seconds: float) -> None:
        self._loop, self._seconds = loop, seconds
        self._handle: asyncio.TimerHandle | None = None
        self._transport: Any = None

    def start(self, transport: Any) -> None:
        if self._handle is None and transport is not None:
            self._transport = transport
            self._handle = self._loop.call_later(self._seconds, self._expire)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _expire(self) -> None:
        self._handle = None
        transport = self._transport
        if transport is not None and not transport.is_closing():
            peer = transport.get_extra_info("peername")
            log.info("closed a connection from %s: no request head within %g s", peer[0] if peer else "?",
                     self._seconds)
            transport.close()


def over_limit(server_state: Any, limit: int) -> bool:
    return len(server_state.connections) >= limit


def refuse_overloaded(transport: Any) -> None:
    transport.write(OVERLOADED)
    transport.close()


class TimedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's protocol with a request-head timeout (for the connections serve hands to uvicorn)."""

    head_timer: HeadTimer | None = None

    def time_heads(self, seconds: float) -> None:
        """From the next request on (the one it was handed has its head already)."""
        self.head_timer = HeadTimer(self.loop, seconds)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.head_timer is not None:
            self.head_timer.start(self.transport)

    def on_headers_complete(self) -> None:
        if self.head_timer is not None:
            self.head_timer.stop()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.head_timer is not None:
            self.head_timer.stop()
        super().connection_lost(exc)
