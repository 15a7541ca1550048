"""Skyvern's `POST /totp[/{identifier}]` as a bare ASGI handler.

Why bare ASGI: this is the hot path the benchmark measures, and a framework's routing, request
objects and middleware would cost half the throughput. The rules themselves live in pull.py;
this module only reads the request (bounded), checks the signature, and writes the answer
after its audit row is committed.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

from totp_service import signing
from totp_service.audit_writer import AuditUnavailable
from totp_service.crypto import CryptoError
from totp_service.pull import UnknownIdentifier, check_agent, parse_pull_body, plan, resolve_identifier
from totp_service.state import ServiceState
from totp_service.store import AuditEntry, SecretNotFound, normalize_identifier
from totp_service.web import ApiError, BodyTooLarge, Unauthorized, Unavailable, parse_json_object

WINDOW_MARGIN_SECONDS = 0.002  # wake just after a window opens, never just before
_JSON_HEADERS = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
_SIGNATURE = signing.SIGNATURE_HEADER.encode("ascii")
_TIMESTAMP = signing.TIMESTAMP_HEADER.encode("ascii")
_EMPTY = b'{"verification_code":""}'


class ServerFault(ApiError):
    status, reason = 500, "server_error"


class BadSignature(Unauthorized):
    reason = "bad_signature"


class StaleTimestamp(Unauthorized):
    reason = "stale_timestamp"


class _ClientGone(Exception):
    """The client disconnected before its body arrived: there is no one to answer."""


@dataclass
class _Trail:
    """What the audit row of one pull will say."""

    identifier: str | None
    client: str | None
    route: str
    task_id: str | None = None
    workflow_run_id: str | None = None
    workflow_permanent_id: str | None = None

    def entry(self, outcome: str, detail: str | None = None) -> AuditEntry:
        return AuditEntry(outcome, self.identifier, self.task_id, self.workflow_run_id, self.workflow_permanent_id,
                          self.client, self.route, detail)


def is_pull(scope: dict[str, Any]) -> bool:
    path = scope["path"]
    return scope["method"] == "POST" and (path == "/totp" or path.startswith("/totp/"))


async def handle_pull(state: ServiceState, scope: dict[str, Any], receive: Any, send: Any) -> None:
    path_identifier = scope["path"][6:] or None
    client = scope.get("client")
    trail = _Trail(path_identifier[:512] if path_identifier else None, client[0] if client else None,
                   "pull" if path_identifier else "pull_bound")
    try:
        try:
            status, body = await _pull(state, scope, receive, path_identifier, trail)
        except ApiError as exc:
            state.metrics.refused(exc.reason)
            await state.audit.submit(trail.entry(f"refused:{exc.reason}", exc.message[:200]))
            status, body = exc.status, _error_body(exc.reason, exc.message)
    except _ClientGone:
        return
    except AuditUnavailable as exc:
        state.metrics.refused("audit_unavailable")
        status, body = Unavailable.status, _error_body(Unavailable.reason, str(exc))
    except Exception:  # never a traceback or a default HTML page to Skyvern
        status, body = ServerFault.status, _error_body(ServerFault.reason, "internal error")
        await _answer(send, status, body)
        state.metrics.request(trail.route, status)
        raise
    await _answer(send, status, body)
    state.metrics.request(trail.route, status)


def _error_body(reason: str, message: str) -> bytes:
    data = {"error": reason, "detail": message}
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


async def _answer(send: Any, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*_JSON_HEADERS, (b"content-length", str(len(body)).encode("ascii"))]})
    await send({"type": "http.response.body", "body": body})


async def _read_body(scope: dict[str, Any], receive: Any, limit: int) -> tuple[bytes, dict[bytes, bytes]]:
    """The raw body (413 as soon as it passes `limit`), and the two Skyvern headers."""
    wanted: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        if name == b"content-length":
            if value.isdigit() and int(value) > limit:
                raise BodyTooLarge(f"the body is larger than {limit} bytes")
        elif name == _SIGNATURE or name == _TIMESTAMP:
            wanted[name] = value
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise _ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"the body is larger than {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), wanted


def _check_signature(state: ServiceState, raw: bytes, headers: dict[bytes, bytes]) -> None:
    server = state.settings.server
    given = headers.get(_SIGNATURE)
    signature = given.decode("latin-1") if given else None
    if server.allow_unsigned and (not signature or not state.signing_keys):
        return
    if not signature:
        raise BadSignature(f"missing {signing.SIGNATURE_HEADER} header")
    if not signing.verify(raw, signature, state.signing_keys):
        raise BadSignature(f"{signing.SIGNATURE_HEADER} does not match the body under any configured key")
    skew = server.max_timestamp_skew_seconds
    if skew is not None:
        try:
            off = abs(time.time() - float(headers.get(_TIMESTAMP, b"")))
        except ValueError:
            raise StaleTimestamp(f"missing or malformed {signing.TIMESTAMP_HEADER} header") from None
        if not off <= skew:
            raise StaleTimestamp(f"{signing.TIMESTAMP_HEADER} is more than {skew:g} s off this server's clock")


async def _pull(state: ServiceState, scope: dict[str, Any], receive: Any, path_identifier: str | None,
                trail: _Trail) -> tuple[int, bytes]:
    settings = state.settings
    raw, headers = await _read_body(scope, receive, settings.server.max_body_bytes)
    _check_signature(state, raw, headers)
    body = parse_pull_body(parse_json_object(raw))
    trail.task_id, trail.workflow_run_id, trail.workflow_permanent_id = (
        body.task_id, body.workflow_run_id, body.workflow_permanent_id)
    resolution = resolve_identifier(path_identifier, body, state.find_run, state.find_agent)
    identifier = normalize_identifier(resolution.identifier)
    trail.identifier = identifier
    try:
        cached = state.secret(identifier)
    except SecretNotFound:
        raise UnknownIdentifier(f"no secret for {identifier!r}") from None
    except CryptoError as exc:
        raise ServerFault(str(exc)) from None
    meta, spec = cached.meta, cached.spec
    check_agent(meta.allowed_agents, body.workflow_permanent_id)

    codes = settings.codes
    min_validity = codes.min_validity_seconds if meta.min_validity_seconds is None else meta.min_validity_seconds
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:
        now = time.time()
        budget = max(0.0, codes.max_hold_seconds - (loop.time() - started))
        decision = plan(spec.period, now, min_validity, budget, state.taken(identifier) if codes.single_use else ())
        if decision.counter is None:
            await state.audit.submit(trail.entry("empty", f"no fresh code within {codes.max_hold_seconds:g} s"))
            state.metrics.empty_answers += 1
            return 200, _EMPTY
        counter = decision.counter
        claim = (identifier, counter) if codes.single_use else None
        if claim:
            state.reserve(identifier, counter, int(now) // spec.period)
        if decision.wait > 0:
            await asyncio.sleep(decision.wait + WINDOW_MARGIN_SECONDS)
        try:
            fresh = await state.audit.submit(trail.entry("served", f"window {counter}"), claim)
        except AuditUnavailable:
            if claim:
                state.release(identifier, counter)
            raise
        if fresh:
            state.metrics.served(loop.time() - started)
            return 200, cached.pull_answer(counter)
        # the database says this window's code went out before (e.g. before a restart): take the next
