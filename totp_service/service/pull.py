"""Skyvern's `POST /totp[/{identifier}]`: the answer to one pull, and its bare ASGI form.

`answer()` is the one place a pull is decided: signature, body, identifier, freshness, audit
row committed before the code goes out, and every refusal mapped to its status and JSON. Two
front ends feed it: serve's own HTTP protocol (pull_protocol.py) and `handle_pull`, the ASGI
form for any other ASGI server (a framework's routing and middleware would cost half the
throughput there). The rules themselves live in pull_rules.py.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

from totp_service import signing
from totp_service.identifiers import normalize_identifier
from totp_service.service.audit import AuditRow, AuditUnavailable
from totp_service.service.http import (
    ApiError,
    BadRequest,
    BodyTooLarge,
    Unauthorized,
    Unavailable,
)
from totp_service.service.pull_rules import (
    PullBody,
    UnknownIdentifier,
    check_agent,
    check_known_run,
    parse_pull_body,
    plan,
    resolve_identifier,
)
from totp_service.service.state import ServiceState
from totp_service.store import KeyRotated, SecretNotFound, StoreUnavailable
from totp_service.store.crypto import CryptoError

WINDOW_MARGIN_SECONDS = 0.002  # wake just after a window opens, never just before
JSON_HEADERS = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
SIGNATURE = signing.SIGNATURE_HEADER.encode("ascii")
TIMESTAMP = signing.TIMESTAMP_HEADER.encode("ascii")
_EMPTY = b'{"verification_code":""}'
_loads = json.loads


class ServerFault(ApiError):
    status, reason = 500, "server_error"


class BadSignature(Unauthorized):
    reason = "bad_signature"


class StaleTimestamp(Unauthorized):
    reason = "stale_timestamp"


class BadUrlToken(Unauthorized):
    reason = "bad_url_token"


class Throttled(ApiError):
    status, reason = 429, "throttled"


# refused before a valid signature: throttled per client and audited in aggregate (refusals.py)
UNAUTHENTICATED = (BadSignature, StaleTimestamp, BadUrlToken, BodyTooLarge)


class _ClientGone(Exception):
    """The client disconnected before its body arrived: there is no one to answer."""


class Trail:
    """What the audit row of one pull will say (slots: one small object per request)."""

    __slots__ = ("identifier", "client", "route", "path_identifier", "task_id", "workflow_run_id",
                 "workflow_permanent_id", "gone", "url_token")

    def __init__(self, identifier: str | None, client: str | None, route: str, path_identifier: str | None) -> None:
        self.identifier, self.client, self.route, self.path_identifier = identifier, client, route, path_identifier
        self.task_id = self.workflow_run_id = self.workflow_permanent_id = None
        self.gone: Callable[[], bool] | None = None  # True once the client has disconnected (set by the front end)
        self.url_token: bytes | None = None  # the URL's ?k=

    def forwarded_by(self, state: ServiceState, forwarded_for: list[bytes]) -> None:
        """Name the client behind a trusted proxy (ServiceState.forwarded_client, uvicorn's rules)."""
        if self.client is not None:
            address = state.forwarded_client(self.client, forwarded_for)
            if address:
                self.client = address

    def entry(self, outcome: str, detail: str | None = None) -> AuditRow:
        return AuditRow(time.time(), self.identifier, self.task_id, self.workflow_run_id,
                        self.workflow_permanent_id, self.client, self.route, outcome, detail)


def is_pull(scope: dict[str, Any]) -> bool:
    return scope["method"] == "POST" and is_pull_path(scope["path"])


def is_pull_path(path: str) -> bool:
    return path == "/totp" or path.startswith("/totp/")


def new_trail(path: str, client: str | None, query: bytes | None = None) -> Trail:
    """The audit trail of a pull to `path` (a decoded path for which is_pull_path holds)."""
    path_identifier = path[6:]
    trail = Trail(path_identifier[:512] if path_identifier else None, client,
                  "pull" if path_identifier else "pull_bound", path_identifier or None)
    if query:
        for part in query.split(b"&"):
            if part.startswith(b"k="):
                trail.url_token = part[2:]
    return trail


async def handle_pull(state: ServiceState, scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The ASGI form (any ASGI server; serve's own protocol answers pulls in pull_protocol.py)."""
    client = scope.get("client")
    trail = new_trail(scope["path"], client[0] if client else None, scope.get("query_string"))
    try:
        raw, signature, timestamp = await _read_body(state, scope, receive, state.settings.server.max_body_bytes,
                                                     trail)
    except _ClientGone:
        return
    except BodyTooLarge as exc:
        status, body, retry_after = await answer(state, trail, b"", None, None, refusal=exc)
    else:
        watcher = asyncio.create_task(_watch_disconnect(receive, trail))
        try:
            status, body, retry_after = await answer(state, trail, raw, signature, timestamp)
        except Exception:  # never a traceback or a default HTML page to Skyvern
            await _answer(send, ServerFault.status, SERVER_FAULT_BODY)
            state.metrics.request(trail.route, ServerFault.status)
            raise
        finally:
            watcher.cancel()
    await _answer(send, status, body, retry_after)
    state.metrics.request(trail.route, status)


async def _watch_disconnect(receive: Any, trail: Trail) -> None:
    """Mark the trail gone when the ASGI server says the client disconnected (during a hold)."""
    disconnected = False
    trail.gone = lambda: disconnected
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            disconnected = True
            return


async def answer(state: ServiceState, trail: Trail, raw: bytes, signature: bytes | None, timestamp: bytes | None,
                 *, refusal: ApiError | None = None) -> tuple[int, bytes, int | None]:
    """Status, JSON body and Retry-After seconds (or None) for one pull, after its audit row is committed.

    `refusal`: the request was refused before its body could be read (too large); it is
    audited like any other refusal. Refusals before a valid signature are throttled and audited
    in aggregate (refusals.py). Only an unexpected fault escapes (the caller answers 500).
    """
    try:
        try:
            if refusal is not None:
                raise refusal
            status, body = await _pull(state, trail, raw, signature, timestamp)
            return status, body, None
        except UNAUTHENTICATED as exc:
            state.metrics.refused(exc.reason)
            row, retry_after = state.refusals.refuse(trail.client, exc.reason, trail.identifier, trail.route,
                                                     exc.message[:200])
            if row is not None:
                await state.audit.submit(row)
            if retry_after is not None:
                return (Throttled.status, _error_body(Throttled.reason, "too many refused requests from this "
                                                      f"client; retry after {retry_after} s"), retry_after)
            return exc.status, _error_body(exc.reason, exc.message), None
        except ApiError as exc:
            state.metrics.refused(exc.reason)
            await state.audit.submit(trail.entry(f"refused:{exc.reason}", exc.message[:200]))
            return exc.status, _error_body(exc.reason, exc.message), None
    except AuditUnavailable as exc:
        state.metrics.refused("audit_unavailable")
        return Unavailable.status, _error_body(Unavailable.reason, str(exc)), None
    except StoreUnavailable as exc:  # a database server gone: no code, and no audit row can be written
        state.metrics.refused("store_unavailable")
        return Unavailable.status, _error_body(Unavailable.reason, str(exc)), None


def _error_body(reason: str, message: str) -> bytes:
    data = {"error": reason, "detail": message}
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


SERVER_FAULT_BODY = _error_body(ServerFault.reason, "internal error")


async def _answer(send: Any, status: int, body: bytes, retry_after: int | None = None) -> None:
    headers = [*JSON_HEADERS, (b"content-length", b"%d" % len(body))]
    if retry_after is not None:
        headers.append((b"retry-after", b"%d" % retry_after))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _read_body(state: ServiceState, scope: dict[str, Any], receive: Any, limit: int,
                     trail: Trail) -> tuple[bytes, bytes | None, bytes | None]:
    """The raw body (413 as soon as it passes `limit`), and the two Skyvern headers.

    `X-Forwarded-For` is collected in the same pass: from a trusted peer only, the audit row then
    names the client behind the proxy (ServiceState.forwarded_client, uvicorn's rules).
    """
    signature = timestamp = None
    forwarded: list[bytes] | None = None
    for name, value in scope["headers"]:
        if name == b"content-length":
            if value.isdigit() and int(value) > limit:
                raise BodyTooLarge(f"the body is larger than {limit} bytes")
        elif name == SIGNATURE:
            signature = value
        elif name == TIMESTAMP:
            timestamp = value
        elif name == b"x-forwarded-for":
            if forwarded is None:
                forwarded = [value]
            else:
                forwarded.append(value)
    if forwarded is not None:
        trail.forwarded_by(state, forwarded)
    message = await receive()
    if message["type"] != "http.request":
        raise _ClientGone()
    raw = message.get("body", b"")
    if len(raw) > limit:
        raise BodyTooLarge(f"the body is larger than {limit} bytes")
    if not message.get("more_body", False):
        return raw, signature, timestamp
    chunks = [raw]
    size = len(raw)
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
            return b"".join(chunks), signature, timestamp


def _check_signature(state: ServiceState, raw: bytes, given: bytes | None, timestamp: bytes | None) -> None:
    server = state.settings.server
    signature = given.decode("latin-1") if given else None
    if server.allow_unsigned and (not signature or not state.signatures):
        return
    if not signature:
        raise BadSignature(f"missing {signing.SIGNATURE_HEADER} header")
    if not state.signatures.verify(raw, signature):
        raise BadSignature(f"{signing.SIGNATURE_HEADER} does not match the body under any configured key")
    skew = server.max_timestamp_skew_seconds
    if skew is not None:
        try:
            off = abs(time.time() - float(timestamp or b""))
        except ValueError:
            raise StaleTimestamp(f"missing or malformed {signing.TIMESTAMP_HEADER} header") from None
        if not off <= skew:
            raise StaleTimestamp(f"{signing.TIMESTAMP_HEADER} is more than {skew:g} s off this server's clock")


def _check_url_token(state: ServiceState, trail: Trail) -> None:
    """The URL's ?k= must be the token of its identifier (or of the bound form): the signature
    covers only the body, so a body captured for one identifier must not open another's code."""
    path_identifier = trail.path_identifier
    expected = state.url_token(state.normalize(path_identifier) if path_identifier else None)
    given = trail.url_token
    if given is None or not hmac.compare_digest(expected, given):
        raise BadUrlToken("the URL's token (?k=) is missing or is not this identifier's: use the totp_url that "
                          "`totp-service url` prints")


def _parse_body(raw: bytes) -> PullBody:
    """parse_json_object + parse_pull_body in one step (same rules, same messages)."""
    try:
        data = _loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the body is not JSON") from None
    except RecursionError:
        raise BadRequest("the body's JSON is nested too deeply") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    return parse_pull_body(data)


async def _pull(state: ServiceState, trail: Trail, raw: bytes, signature: bytes | None,
                timestamp: bytes | None) -> tuple[int, bytes]:
    settings = state.settings
    path_identifier = trail.path_identifier
    _check_signature(state, raw, signature, timestamp)
    if settings.server.require_url_token:
        _check_url_token(state, trail)
    body = _parse_body(raw)
    trail.task_id, trail.workflow_run_id, trail.workflow_permanent_id = (
        body.task_id, body.workflow_run_id, body.workflow_permanent_id)
    if path_identifier:
        identifier = state.normalize(path_identifier)
    else:
        identifier = normalize_identifier(
            resolve_identifier(path_identifier, body, state.find_run, state.find_agent).identifier)
    trail.identifier = identifier
    if settings.codes.known_runs_only:
        check_known_run(body, identifier, state.find_run)
    try:
        cached = state.secret(identifier)
    except SecretNotFound:
        raise UnknownIdentifier(f"no secret for {identifier!r}") from None
    except KeyRotated as exc:
        raise Unavailable(str(exc)) from None
    except CryptoError as exc:
        raise ServerFault(str(exc)) from None
    meta, spec = cached.meta, cached.spec
    check_agent(meta.allowed_agents, body.workflow_permanent_id)

    codes = settings.codes
    min_validity = codes.min_validity_seconds if meta.min_validity_seconds is None else meta.min_validity_seconds
    clock = time.monotonic
    started = clock()
    while True:
        now = time.time()
        budget = max(0.0, codes.max_hold_seconds - (clock() - started))
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
        if trail.gone is not None and trail.gone():  # no one to hand the code to: the window stays free
            if claim:
                state.release(identifier, counter)
            await state.audit.submit(trail.entry("abandoned", "the client left before its code was ready"))
            return 200, _EMPTY
        try:
            fresh = await state.audit.submit(trail.entry("served", "window %d" % counter), claim)
        except AuditUnavailable:
            if claim:
                state.release(identifier, counter)
            raise
        if fresh:
            state.metrics.served(clock() - started)
            return 200, cached.pull_answer(counter)
        # the database says this window's code went out before (e.g. before a restart): take the next

