"""The admin API: secrets (write-only), bindings, codes for local clients, the audit trail.

Bearer tokens: role `admin` manages everything; role `reader` may only read codes. Store and
parser errors are mapped here to one-line JSON errors; no answer ever holds a secret or a URI.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from totp_service import imports, otp
from totp_service.identifiers import check_identifier, normalize_identifier
from totp_service.service.http import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    Unauthorized,
    Unavailable,
    check_time,
    client_address,
    iso_utc,
    json_response,
    parse_json_object,
    parse_time,
    read_body,
)
from totp_service.service.state import ServiceState
from totp_service.store import (
    STORE_INPUT_ERRORS,
    AuditEntry,
    InvalidIdentifier,
    KeyRotated,
    SecretExists,
    SecretNotFound,
    StoreUnavailable,
)

Handler = Callable[[Request, ServiceState], Awaitable[Response]]
ADMIN_BODY_LIMIT = 64 * 1024
MAX_SECONDS = 86400  # bound of a per-secret min_validity_seconds
MAX_TTL_SECONDS = 10 * 366 * 86400  # a binding's ttl_seconds: ten years at most
_SECRET_FIELDS = {"uri", "secret", "algorithm", "digits", "period", "issuer", "account",
                  "allowed_agents", "min_validity_seconds", "replace"}
_BINDING_FIELDS = {"kind", "ref", "identifier", "expires_at", "ttl_seconds"}
_AUTH_HEADERS = {"WWW-Authenticate": 'Bearer realm="totp-service"'}


def require(request: Request, state: ServiceState, *roles: str) -> str:
    role = state.role_of(request.headers.get("authorization"))
    if role is None:
        raise Unauthorized("a valid bearer token is required", headers=_AUTH_HEADERS)
    if role not in roles:
        raise Forbidden(f"a {role} token may not do this")
    return role


async def _json_body(request: Request, state: ServiceState) -> dict[str, Any]:
    return parse_json_object(await read_body(request, min(ADMIN_BODY_LIMIT, state.settings.server.max_body_bytes)))


def _path_identifier(request: Request) -> str:
    try:
        return check_identifier(request.path_params["identifier"])
    except InvalidIdentifier as exc:
        raise BadRequest(str(exc)) from None


@contextlib.contextmanager
def _store_errors(identifier: str | None = None) -> Iterator[None]:
    """Turn store and parser errors into API errors with safe one-line messages."""
    try:
        yield
    except SecretNotFound as exc:
        raise NotFound(str(exc)) from None
    except SecretExists:
        raise Conflict(f'a secret for {identifier!r} already exists (send "replace": true)') from None
    except StoreUnavailable:
        raise  # 503, from the endpoint wrapper
    except KeyRotated as exc:
        raise Unavailable(str(exc)) from None
    except (otp.OtpFormatError, *STORE_INPUT_ERRORS) as exc:
        raise BadRequest(str(exc)) from None


# --- secrets ---------------------------------------------------------------------------------


def _spec_from_body(data: dict[str, Any]) -> otp.TotpSpec:
    unknown = set(data) - _SECRET_FIELDS
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
    uri, secret = data.get("uri"), data.get("secret")
    if (uri is None) == (secret is None):
        raise BadRequest('give exactly one of "uri" or "secret"')
    if uri is not None:
        if not isinstance(uri, str):
            raise BadRequest('"uri" must be a string')
        specs = imports.parse_line(uri)
        if len(specs) != 1:
            raise BadRequest(f"the export holds {len(specs)} accounts; send one secret per identifier")
        return specs[0]
    if not isinstance(secret, str):
        raise BadRequest('"secret" must be a base32 string')
    params: dict[str, Any] = {}
    for name, kind in (("algorithm", str), ("digits", int), ("period", int), ("issuer", str), ("account", str)):
        value = data.get(name)
        if value is None:
            continue
        if not isinstance(value, kind) or isinstance(value, bool):
            raise BadRequest(f'"{name}" must be {"a string" if kind is str else "a whole number"}')
        params[name] = value
    return imports.spec_from_base32(secret, **params)


async def put_secret(request: Request, state: ServiceState) -> Response:
    require(request, state, "admin")
    identifier = _path_identifier(request)
    data = await _json_body(request, state)
    agents = data.get("allowed_agents") or []
    if not isinstance(agents, list) or not all(isinstance(a, str) for a in agents):
        raise BadRequest('"allowed_agents" must be a list of agent ids (wpid_…)')
    min_validity = data.get("min_validity_seconds")
    if min_validity is not None and not (_is_number(min_validity) and 0 <= min_validity <= MAX_SECONDS):
        raise BadRequest(f'"min_validity_seconds" must be a number from 0 to {MAX_SECONDS}')
    replace = data.get("replace", False)
    if not isinstance(replace, bool):
        raise BadRequest('"replace" must be true or false')
    with _store_errors(identifier):
        spec = _spec_from_body(data)
        existed = replace and await asyncio.to_thread(state.store.has_secret, identifier)
        meta = await asyncio.to_thread(
            lambda: state.store.put_secret(identifier, spec, allowed_agents=agents,
                                           min_validity_seconds=None if min_validity is None else float(min_validity),
                                           replace=replace))
    state.forget(identifier)
    return json_response(meta.to_dict(), 200 if existed else 201)


async def get_secret(request: Request, state: ServiceState) -> Response:
    require(request, state, "admin")
    identifier = _path_identifier(request)
    with _store_errors(identifier):
        meta = state.store.get_meta(identifier)
    return json_response(meta.to_dict())


async def delete_secret(request: Request, state: ServiceState) -> Response:
    require(request, state, "admin")
    identifier = _path_identifier(request)
    with _store_errors(identifier):
        await asyncio.to_thread(state.store.remove_secret, identifier)
    state.forget(identifier)
    return json_response({"deleted": identifier})


async def list_secrets(request: Request, state: ServiceState) -> Response:
    require(request, state, "admin")
    metas = await asyncio.to_thread(state.store.list_meta)
    return json_response({"secrets": [m.to_dict() for m in metas]})


# --- bindings --------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    """A JSON number we can compute with (1e999 parses as infinity: not one)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _expiry(data: dict[str, Any]) -> float | None:
    expires_at, ttl = data.get("expires_at"), data.get("ttl_seconds")
    if expires_at is not None and ttl is not None:
        raise BadRequest('give "expires_at" or "ttl_seconds", not both')
    if ttl is not None:
        if not (_is_number(ttl) and 0 < ttl <= MAX_TTL_SECONDS):
            raise BadRequest(f'"ttl_seconds" must be a positive number of seconds, at most {MAX_TTL_SECONDS}')
        return time.time() + float(ttl)
    if expires_at is None:
        return None
    if _is_number(expires_at):
        return check_time(float(expires_at), '"expires_at"')
    if isinstance(expires_at, str):
        return parse_time(expires_at, '"expires_at"')
    raise BadRequest('"expires_at" must be unix seconds or an ISO 8601 time')


async def post_binding(request: Request, state: ServiceState) -> Response:
    require(request, state, "admin")
    data = await _json_body(request, state)
    unknown = set(data) - _BINDING_FIELDS
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
    kind, ref, identifier = data.get("kind"), data.get("ref"), data.get("identifier")
    if kind not in ("run", "agent"):
        raise BadRequest('"kind" must be "run" (task or workflow run id) or "agent" (wpid_…)')
    if not isinstance(ref, str) or not isinstance(identifier, str):
        raise BadRequest('"ref" and "identifier" must be strings')
    expires_at = _expiry(data)
    with _store_errors():
        identifier = check_identifier(identifier)
        if not state.store.has_secret(identifier):
            raise SecretNotFound(normalize_identifier(identifier))
        binding = await asyncio.to_thread(state.store.put_binding, kind, ref, identifier, expires_at)
    return json_response(binding.to_dict(), 201)


async def list_bindings(request: Request, state: ServiceState) -> Response:
    require(request, state, "admin")
    bindings = await asyncio.to_thread(state.store.list_bindings)
    now = time.time()
    return json_response({
        "bindings": [b.to_dict() for b in bindings if b.expires_at is None or b.expires_at > now],
        "config_agents": dict(state.settings.bindings.agents),
    })


async def delete_binding(request: Request, state: ServiceState) -> Response:
    require(request, state, "admin")
    kind, ref = request.query_params.get("kind"), request.query_params.get("ref")
    if kind not in ("run", "agent") or not ref:
        raise BadRequest("give ?kind=run|agent&ref=ID")
    removed = await asyncio.to_thread(state.store.remove_binding, kind, ref)
    if not removed:
        raise NotFound(f"no {kind} binding for {ref!r}")
    return json_response({"deleted": {"kind": kind, "ref": ref}})


# --- codes for local clients, and the audit trail -------------------------------------------


async def get_code(request: Request, state: ServiceState) -> Response:
    """The current code as is (no hold, no single-use claim: the caller sees how long it lasts)."""
    role = require(request, state, "admin", "reader")
    identifier = _path_identifier(request)
    with _store_errors(identifier):
        spec = state.secret(identifier).spec
    now = time.time()
    end = otp.window_start(spec, now) + spec.period
    await state.audit.submit(AuditEntry("served", identifier, client=client_address(request), route="codes",
                                        detail=f"{role} token"))
    return json_response({
        "identifier": identifier,
        "code": otp.code_at(spec, now),
        "seconds_left": round(end - now, 3),
        "expires_at": iso_utc(end),
        "period": spec.period,
    })


async def get_audit(request: Request, state: ServiceState) -> Response:
    require(request, state, "admin")
    query = request.query_params
    since = parse_time(query["since"], "since") if query.get("since") else None
    try:
        limit = int(query.get("limit", "100"))
    except ValueError:
        raise BadRequest("limit must be a whole number") from None
    if not 1 <= limit <= 10000:
        raise BadRequest("limit must be between 1 and 10000")
    entries = await asyncio.to_thread(state.store.read_audit, query.get("identifier") or None, since, limit)
    return json_response({"entries": [e.to_dict() for e in entries]})


def admin_routes() -> list[tuple[str, str, Handler, list[str]]]:
    """(path, metrics route name, handler, methods) for every admin route."""
    return [
        ("/v1/secrets", "secrets", list_secrets, ["GET"]),
        ("/v1/secrets/{identifier:path}", "secret", put_secret, ["PUT"]),
        ("/v1/secrets/{identifier:path}", "secret", get_secret, ["GET"]),
        ("/v1/secrets/{identifier:path}", "secret", delete_secret, ["DELETE"]),
        ("/v1/bindings", "bindings", post_binding, ["POST"]),
        ("/v1/bindings", "bindings", list_bindings, ["GET"]),
        ("/v1/bindings", "bindings", delete_binding, ["DELETE"]),
        ("/v1/codes/{identifier:path}", "codes", get_code, ["GET"]),
        ("/v1/audit", "audit", get_audit, ["GET"]),
    ]
