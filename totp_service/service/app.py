"""The app factory: Skyvern's signed pull endpoint, the admin API, health, metrics, OpenAPI.

`create_app(settings, store=None)` builds everything a running service holds (ServiceState) and
ties the audit writer to the app's lifespan. Under `serve`, pulls never reach the app: its own
HTTP protocol answers them (pull_protocol.py). Under any other ASGI server, or on a connection
that protocol handed to uvicorn, they go straight to a bare ASGI handler (pull.py): the
framework's routing and middleware would cost half the throughput there. Everything else is
ordinary Starlette routes.

Proxy headers: `serve` runs uvicorn with proxy_headers off, and the app applies uvicorn's rules
itself (X-Forwarded-For / -Proto from a peer in server.trusted_proxies, default 127.0.0.1): the pull
handler in its one pass over the headers, everything else through ProxyHeadersMiddleware. So the
audit trail still names the client behind a local TLS proxy, without a middleware layer around
every pull. Under a server that applies them too (uvicorn's default) the result is the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from totp_service.config import Settings
from totp_service.service.admin import admin_routes
from totp_service.service.audit import AuditRow, AuditUnavailable
from totp_service.service.http import (
    ApiError,
    Unavailable,
    error_response,
    json_response,
)
from totp_service.service.openapi import openapi_document
from totp_service.service.pull import ServerFault, handle_pull, is_pull
from totp_service.service.state import ServiceState
from totp_service.store import Store, StoreError, StoreUnavailable
from totp_service.store.open import open_store

Handler = Callable[[Request, ServiceState], Awaitable[Response]]


def endpoint(route: str, fn: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Map ApiError and audit failures to JSON answers and count every answer by route and status."""

    async def handler(request: Request) -> Response:
        state: ServiceState = request.app.state.service
        try:
            response = await fn(request, state)
        except ApiError as exc:
            state.metrics.refused(exc.reason)
            response = error_response(exc)
        except AuditUnavailable as exc:
            state.metrics.refused("audit_unavailable")
            response = error_response(Unavailable(str(exc)))
        except StoreUnavailable as exc:
            state.metrics.refused("store_unavailable")
            response = error_response(Unavailable(str(exc)))
        state.metrics.request(route, response.status_code)
        return response

    return handler


async def healthz(request: Request, state: ServiceState) -> Response:
    return json_response({"status": "ok"})


async def readyz(request: Request, state: ServiceState) -> Response:
    try:
        count = await asyncio.to_thread(state.store.count_secrets)
    except Exception as exc:  # any failure means: not ready
        raise Unavailable(f"the store cannot be read ({exc.__class__.__name__})") from None
    if not state.audit.running:
        raise Unavailable("the audit writer is not running")
    if state.audit.failing:
        raise Unavailable("the last audit write failed: pulls are refused until one succeeds")
    try:
        await asyncio.to_thread(state.store.check_key_current)
        await asyncio.to_thread(state.store.check_audit_writable)
    except StoreError as exc:
        raise Unavailable(str(exc)) from None
    return json_response({"status": "ready", "identifiers": count, "key_id": state.store.key_id})


async def metrics(request: Request, state: ServiceState) -> Response:
    extra = {
        "totp_audit_batches_total": state.audit.batches,
        "totp_audit_rows_total": state.audit.rows,
        "totp_refusals_throttled_total": state.refusals.throttled,
        "totp_refusals_aggregated_total": state.refusals.aggregated,
        "totp_uptime_seconds": round(time.time() - state.started_at, 3),
    }
    return Response(state.metrics.render(extra), media_type="text/plain; version=0.0.4; charset=utf-8")


async def openapi(request: Request, state: ServiceState) -> Response:
    return json_response(openapi_document())


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    error = ApiError(exc.detail, headers=dict(exc.headers or {}))
    error.status = exc.status_code
    error.reason = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "error")
    request.app.state.service.metrics.request("unmatched", exc.status_code)
    return error_response(error)


async def _server_error(request: Request, exc: Exception) -> Response:
    return error_response(ServerFault("internal error"))


async def _pull_via_router(request: Request) -> Response:  # pragma: no cover - TotpApp answers first
    raise HTTPException(404)


class TotpApp(Starlette):
    """Starlette, with Skyvern's pulls answered before the framework's stack."""

    behind_proxy: Any = None  # Starlette.__call__ inside ProxyHeadersMiddleware, set by create_app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and is_pull(scope):
            await handle_pull(self.state.service, scope, receive, send)
            return
        await self.behind_proxy(scope, receive, send)


REFUSAL_FLUSH_SECONDS = 1.0


async def _flush_refusals(state: ServiceState) -> None:
    """Write the aggregate rows of each refusal window once it has closed (refusals.py)."""
    while True:
        await asyncio.sleep(REFUSAL_FLUSH_SECONDS)
        await _write_refusal_rows(state, state.refusals.drain(time.time()))


async def _write_refusal_rows(state: ServiceState, rows: list[AuditRow]) -> None:
    for row in rows:
        with contextlib.suppress(AuditUnavailable):  # counted in the metrics all the same
            await state.audit.submit(row)


def create_app(settings: Settings, store: Store | None = None) -> Starlette:
    """The service. Opens the store with the configured master key when none is given (and then
    closes it on shutdown); a wrong key raises here, before anything listens."""
    state = ServiceState(settings, store or open_store(settings), owns_store=store is None)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await state.audit.start()
        retention = settings.audit.retention_days
        state.store.start_background_checkpoints(audit_retention_seconds=None if retention is None else retention * 86400)
        flusher = asyncio.create_task(_flush_refusals(state), name="refusal-rows")
        try:
            yield
        finally:
            flusher.cancel()
            await _write_refusal_rows(state, state.refusals.drain())
            await state.audit.stop()
            state.store.stop_background_checkpoints()
            if state.owns_store:
                state.store.close()

    routes = [
        # POSTs to these never reach the router (TotpApp answers them); listed for 405 and OpenAPI
        Route("/totp", _pull_via_router, methods=["POST"]),
        Route("/totp/{identifier:path}", _pull_via_router, methods=["POST"]),
        *[Route(path, endpoint(name, fn), methods=methods) for path, name, fn, methods in admin_routes()],
        Route("/healthz", endpoint("healthz", healthz), methods=["GET"]),
        Route("/readyz", endpoint("readyz", readyz), methods=["GET"]),
        Route("/metrics", endpoint("metrics", metrics), methods=["GET"]),
        Route("/openapi.json", endpoint("openapi", openapi), methods=["GET"]),
    ]
    app = TotpApp(routes=routes, lifespan=lifespan,
                  exception_handlers={HTTPException: _http_error, Exception: _server_error})
    app.router.redirect_slashes = False  # never redirect: Skyvern would drop the signature
    app.state.service = state
    app.behind_proxy = ProxyHeadersMiddleware(functools.partial(Starlette.__call__, app),
                                              state.forwarded_allow_ips)  # type: ignore[arg-type]
    return app
