"""Small HTTP pieces shared by the pull endpoint and the admin API.

Why: every answer must be strict JSON with the right status, request bodies must be bounded
while they are read, and error messages must be chosen here (never an exception's repr).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

JSON_TYPE = "application/json"


class ApiError(Exception):
    """An answer other than success: HTTP status, a short machine reason and a safe message."""

    status: int = 400
    reason: str = "bad_request"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(ApiError):
    status, reason = 400, "bad_request"


class Unauthorized(ApiError):
    status, reason = 401, "unauthorized"


class Forbidden(ApiError):
    status, reason = 403, "forbidden"


class NotFound(ApiError):
    status, reason = 404, "not_found"


class Conflict(ApiError):
    status, reason = 409, "conflict"


class BodyTooLarge(ApiError):
    status, reason = 413, "body_too_large"


class Unavailable(ApiError):
    status, reason = 503, "unavailable"


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
    return Response(body, status_code=status, headers=headers, media_type=JSON_TYPE)


def error_response(error: ApiError) -> Response:
    return json_response({"error": error.reason, "detail": error.message}, error.status, error.headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refused with 413 as soon as it passes `limit` (never buffered past it)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"the body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"the body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _no_constant(name: str) -> float:
    raise BadRequest(f"the body holds {name}, which is not a JSON number")


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """A JSON object, strictly: no NaN / Infinity, no nesting deeper than Python can parse."""
    try:
        data = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the body is not JSON") from None
    except RecursionError:
        raise BadRequest("the body's JSON is nested too deeply") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    return data


def iso_utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


MAX_TIME = 253402300799.0  # 9999-12-31T23:59:59Z: the last time every tool can print


def check_time(value: float, what: str) -> float:
    """A unix time that can be stored and shown: finite, from 1970 to the year 9999."""
    if not 0 <= value <= MAX_TIME:  # also NaN
        raise BadRequest(f"{what} must be a time between 1970 and the year 9999")
    return value


def parse_time(value: str, what: str) -> float:
    """Unix seconds or an ISO 8601 time (no zone = UTC)."""
    text = value.strip()
    try:
        return check_time(float(text), what)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        stamp = parsed.timestamp()
    except (ValueError, OverflowError):
        raise BadRequest(f"{what} must be unix seconds or an ISO 8601 time") from None
    return check_time(stamp, what)


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None
