"""The HTTP protocol `serve` runs: Skyvern's pulls answered without the ASGI machinery.

Why: measured on the benchmark's machine, uvicorn's per-request work (the ASGI scope, the
request/response cycle object, its events and task, the ASGI messages, the response-header
checks) cost as much time as the pull itself: a bare protocol on the same parser answers a
constant ~4x as fast as uvicorn answers it through ASGI. A pull needs none of that.

How: every connection starts here and is parsed by httptools, the parser uvicorn uses. A
`POST /totp[/...]` is answered by `pull.answer` (service/pull.py: the same rules, audit and errors as the
ASGI form) and its response written in one piece. At the first request that is anything else,
the connection is handed to uvicorn's own HttpToolsProtocol with the bytes read since that
request began, the way uvicorn hands a connection to its WebSocket protocol; from then on
uvicorn and the Starlette app serve it. Requests on one connection are answered in order.
One case is refused rather than guessed at: a request other than a pull pipelined behind a
pull in the same read (its first byte cannot be found again) gets a 400 and the connection
closes; no HTTP client we know of sends that.
"""

from __future__ import annotations

import asyncio
import http
import logging
import urllib.parse
from collections import deque
from typing import Any, NamedTuple

import httptools
from uvicorn.config import Config
from uvicorn.server import ServerState

from totp_service.service.http import BodyTooLarge
from totp_service.service.connections import HeadTimer, TimedHttpToolsProtocol, over_limit, refuse_overloaded
from totp_service.service.pull import (
    JSON_HEADERS,
    SERVER_FAULT_BODY,
    SIGNATURE,
    TIMESTAMP,
    Trail,
    answer,
    is_pull_path,
    new_trail,
)
from totp_service.service.state import ServiceState

MAX_HEAD_BYTES = 65536  # request line and headers; more is refused (400) and the connection closed
MAX_QUEUED_PULLS = 16  # pipelined pulls waiting on one connection before reading pauses
_STATUS_LINES = {status.value: b"HTTP/1.1 %d %s\r\n" % (status.value, status.phrase.encode("ascii"))
                 for status in http.HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_INVALID_REQUEST = (b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 30\r\n"
                    b"connection: close\r\n\r\nInvalid HTTP request received.")  # uvicorn's words
_JSON_HEAD = b"".join(b"%s: %s\r\n" % header for header in JSON_HEADERS) + b"content-length: "
_PIPELINED_BODY = (b'{"error":"bad_request","detail":"a request other than a pull cannot be pipelined '
                   b'behind a pull on one connection"}')

log = logging.getLogger("totp_service.service.pull_rules")
access_log = logging.getLogger("uvicorn.access")

class QueuedPull(NamedTuple):
    """A pull read in full (or refused while reading), waiting for its turn on the connection."""

    trail: Trail
    body: bytes
    signature: bytes | None
    timestamp: bytes | None
    refusal: BodyTooLarge | None
    keep_alive: bool
    target: bytes  # the request target as sent, for the access log


class PullProtocol(asyncio.Protocol):
    """An asyncio protocol with uvicorn's constructor, so `uvicorn.Config(http=PullProtocol)` runs it.

    The app must be the service's (create_app): its state answers the pulls.
    """

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        if not config.loaded:
            config.load()
        self._config, self._server_state, self._app_state = config, server_state, app_state
        self._loop = _loop or asyncio.get_event_loop()
        self._service: ServiceState = config.app.state.service  # type: ignore[union-attr]
        server = self._service.settings.server
        self._limit = server.max_body_bytes
        self._max_connections = server.max_connections
        self._head_timer = HeadTimer(self._loop, server.header_timeout_seconds)
        self._access_log = config.access_log and access_log.hasHandlers()
        self._parser = httptools.HttpRequestParser(self)
        self._parser.set_dangerous_leniencies(lenient_data_after_close=True)  # as uvicorn
        self._transport: asyncio.Transport | None = None
        self._client: str | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        # the request being parsed
        self._chunks: list[bytes] = []  # everything read since it began (for a hand-off)
        self._in_message = False
        self._in_head = False
        self._head_bytes = 0  # of its head, parsed so far
        self._unparsed_head_bytes = 0  # read since the parser last reported part of the head
        self._next_starts_chunk = True
        self._starts_chunk = True
        self._url = b""
        self._path = ""
        self._query: bytes | None = None
        self._pull = False
        self._signature: bytes | None = None
        self._timestamp: bytes | None = None
        self._forwarded: list[bytes] | None = None
        self._content_length = -1
        self._expect_continue = False
        self._continue_owed = False  # 100 Continue to send once the answers ahead of it are out
        self._keep_alive = True
        self._body: list[bytes] = []
        self._body_size = 0
        self._discarding = False  # the rest of this connection's input is ignored
        # answering
        self._queue: deque[QueuedPull] = deque()
        self._busy = False
        self._handoff: bytes | None = None  # a non-pull request waiting for the pulls before it
        self._refuse_pipelined = False
        self._closing = False
        self._write_paused = False
        self._read_paused = False

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport
        if over_limit(self._server_state, self._max_connections):
            self._discarding = True
            refuse_overloaded(transport)
            return
        self._server_state.connections.add(self)  # type: ignore[arg-type]
        self._head_timer.start(transport)  # a connection that never sends a head is closed
        peer = transport.get_extra_info("peername")
        self._client = str(peer[0]) if isinstance(peer, (tuple, list)) and peer else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._server_state.connections.discard(self)  # type: ignore[arg-type]
        self._cancel_idle_timer()
        self._head_timer.stop()
        self._queue.clear()
        self._discarding = True

    def data_received(self, data: bytes) -> None:
        if self._idle_timer is not None:
            self._cancel_idle_timer()
        if self._discarding:
            return
        if self._handoff is not None:  # waiting for the answers ahead of it: all of it is uvicorn's
            self._handoff += data
            return
        if not self._in_message:
            self._chunks = [data]
            self._next_starts_chunk = True
        elif self._in_head:
            if self._starts_chunk:  # kept for a hand-off
                self._chunks.append(data)
            self._unparsed_head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # an Upgrade request is not a pull: on_headers_complete asked for the hand-off
        except httptools.HttpParserError:
            if self._handoff is None:
                self._bad_request()
                return
        if self._handoff is not None:
            if not self._busy:
                self._hand_off()
        elif self._in_head and self._unparsed_head_bytes > MAX_HEAD_BYTES:  # e.g. one endless header
            self._bad_request()

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()

    def shutdown(self) -> None:
        """Called by uvicorn's server on exit: finish what was asked, then close."""
        self._closing = True
        if not self._busy and self._transport is not None:
            self._transport.close()

    # --- parser callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._discarding or self._handoff is not None:
            return
        self._in_message = self._in_head = True
        self._head_timer.start(self._transport)
        self._head_bytes = self._unparsed_head_bytes = 0
        self._starts_chunk, self._next_starts_chunk = self._next_starts_chunk, False
        if not self._starts_chunk:
            self._chunks = []  # where it began in this read is unknown: nothing to hand off
        self._url = b""
        self._path = ""
        self._query = None
        self._pull = False
        self._signature = self._timestamp = None
        self._forwarded = None
        self._content_length = -1
        self._expect_continue = False
        self._body = []
        self._body_size = 0

    def on_url(self, url: bytes) -> None:
        if self._discarding or self._handoff is not None:
            return
        self._url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._discarding or self._handoff is not None:
            return
        self._count_head(len(name) + len(value) + 4)
        name = name.lower()
        if name == SIGNATURE:
            self._signature = value
        elif name == TIMESTAMP:
            self._timestamp = value
        elif name == b"content-length":
            self._content_length = int(value) if value.isdigit() else -1
        elif name == b"x-forwarded-for":
            if self._forwarded is None:
                self._forwarded = [value]
            elif len(self._forwarded) < 64:
                self._forwarded.append(value)
        elif name == b"expect":
            self._expect_continue = value.lower() == b"100-continue"

    def on_headers_complete(self) -> None:
        if self._discarding or self._handoff is not None:
            return
        self._in_head = False
        self._head_timer.stop()
        parser = self._parser
        self._keep_alive = parser.get_http_version() != "1.0" and parser.should_keep_alive()  # as uvicorn
        if parser.get_method() == b"POST" and not parser.should_upgrade():
            url = httptools.parse_url(self._url)
            path = url.path.decode("ascii")  # decoded as uvicorn does
            self._query = url.query
            if "%" in path:
                path = urllib.parse.unquote(path)
            self._path = path
            self._pull = is_pull_path(path)
        if not self._pull:
            self._request_hand_off()
            return
        if self._content_length > self._limit:
            self._refuse_too_large()
        elif self._expect_continue:
            if self._busy:  # never ahead of an earlier answer
                self._continue_owed = True
            else:
                self._write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        if not self._pull or self._discarding:
            return
        self._body_size += len(body)
        if self._body_size > self._limit:
            self._refuse_too_large()
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._discarding or self._handoff is not None:
            return
        self._in_message = False
        self._continue_owed = False
        if self._pull:
            body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
            self._enqueue(body, None, self._keep_alive)

    # --- answering pulls -------------------------------------------------------------------

    def _enqueue(self, body: bytes, refusal: BodyTooLarge | None, keep_alive: bool) -> None:
        trail = new_trail(self._path, self._client, self._query)
        trail.gone = self._gone
        if self._forwarded is not None:
            trail.forwarded_by(self._service, self._forwarded)
        self._queue.append(QueuedPull(trail, body, self._signature, self._timestamp, refusal, keep_alive, self._url))
        if self._busy:
            self._update_reading()
        else:
            self._start_next()

    def _refuse_too_large(self) -> None:
        """413 at once; the rest of the body (and of the connection) is not read."""
        self._discarding = True
        self._enqueue(b"", BodyTooLarge(f"the body is larger than {self._limit} bytes"), False)

    def _start_next(self) -> None:
        self._busy = True
        task = self._loop.create_task(self._answer(self._queue.popleft()))
        tasks = self._server_state.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _answer(self, pull: QueuedPull) -> None:
        try:
            status, payload, retry_after = await answer(self._service, pull.trail, pull.body, pull.signature,
                                                        pull.timestamp, refusal=pull.refusal)
        except Exception:  # never a traceback to Skyvern; the log has it
            log.exception("pull failed")
            status, payload, retry_after = 500, SERVER_FAULT_BODY, None
        self._service.metrics.request(pull.trail.route, status)
        self._respond(status, payload, pull.keep_alive and not (self._closing and not self._queue), pull.target,
                      retry_after)
        self._busy = False
        if self._transport is None or self._transport.is_closing():
            self._queue.clear()  # nobody to answer: the pulls behind it are not started (nor audited)
        elif self._queue:
            self._start_next()
        elif self._refuse_pipelined:
            self._respond(400, _PIPELINED_BODY, False, b"")
        elif self._handoff is not None:
            self._hand_off()
        elif self._closing:
            self._close()
        else:
            self._update_reading()
            if self._continue_owed:
                self._continue_owed = False
                self._write(_CONTINUE)
            if not self._transport.is_closing():  # also a request stalled half-way is closed
                self._idle_timer = self._loop.call_later(self._config.timeout_keep_alive, self._close)

    def _respond(self, status: int, payload: bytes, keep_alive: bool, target: bytes,
                 retry_after: int | None = None) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        head = [_STATUS_LINES[status]]
        for name, value in self._server_state.default_headers:
            head += (name, b": ", value, b"\r\n")
        if retry_after is not None:
            head.append(b"retry-after: %d\r\n" % retry_after)
        head += (_JSON_HEAD, b"%d" % len(payload), b"\r\n" if keep_alive else b"\r\nconnection: close\r\n",
                 b"\r\n", payload)
        transport.write(b"".join(head))
        if self._access_log:
            access_log.info('%s - "POST %s HTTP/1.1" %d', self._client, target.decode("latin-1"), status)
        if not keep_alive:
            self._close()

    # --- everything else: uvicorn ----------------------------------------------------------

    def _request_hand_off(self) -> None:
        if not self._starts_chunk:  # pipelined behind a pull in one read: its bytes are gone
            self._discarding = True
            if self._busy or self._queue:
                self._refuse_pipelined = True
            else:
                self._respond(400, _PIPELINED_BODY, False, b"")
            return
        self._handoff = b"".join(self._chunks)
        self._update_reading()

    def _hand_off(self) -> None:
        """uvicorn's protocol takes the connection, starting with the bytes of the request it must answer."""
        data, self._handoff = self._handoff or b"", None
        transport = self._transport
        self._discarding = True
        self._server_state.connections.discard(self)  # type: ignore[arg-type]
        if transport is None or transport.is_closing():
            return
        self._head_timer.stop()
        protocol = TimedHttpToolsProtocol(config=self._config, server_state=self._server_state,
                                          app_state=self._app_state, _loop=self._loop)
        protocol.time_heads(self._service.settings.server.header_timeout_seconds)
        protocol.connection_made(transport)
        transport.set_protocol(protocol)
        if self._read_paused:
            transport.resume_reading()
        if self._closing:
            protocol.shutdown()
        protocol.data_received(data)

    # --- connection state ------------------------------------------------------------------

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        pause = self._write_paused or self._handoff is not None or len(self._queue) >= MAX_QUEUED_PULLS
        if pause != self._read_paused:
            self._read_paused = pause
            if pause:
                transport.pause_reading()
            else:
                transport.resume_reading()

    def _bad_request(self) -> None:
        log.warning("invalid HTTP request received from %s", self._client)  # as uvicorn warns
        self._write(_INVALID_REQUEST)
        self._close()

    def _count_head(self, size: int) -> None:
        self._unparsed_head_bytes = 0
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            raise ValueError("request head too large")  # -> HttpParserCallbackError -> 400

    def _gone(self) -> bool:
        """The client has disconnected (or we closed): nobody would read an answer."""
        return self._transport is None or self._transport.is_closing()

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _cancel_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _close(self) -> None:
        self._discarding = True
        self._cancel_idle_timer()
        self._head_timer.stop()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()
