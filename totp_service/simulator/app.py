"""A Skyvern simulator (Starlette app) for tests and the offline demo: see shared/SKYVERN.md.

Why: end-to-end tests and ``totp-service demo`` need a Skyvern that signs its totp_url polls,
picks pushed codes the way Skyvern does, checks the typed code strictly against a registered
secret, and can be told to fail (429/5xx, slowness) — without a network or an account.

Public API: ``create_simulator_app(api_keys, **options)`` (its state is ``app.state.simulator``),
``SimulatorState`` (Python control: ``add_secret``, ``add_fault``, ``requests``, ``run``,
``wait_for_run`` …) and the loopback-only control endpoints under ``/_sim/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import re
import secrets as _secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import fields
from datetime import datetime, timezone
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from totp_service.simulator.options import (
    FINAL_STATUSES,
    SimulatorOptions,
    normalize_identifier,
    parse_timestamp,
)
from totp_service.simulator.agents import DefinitionInvalid, MissingValue, parameter_values
from totp_service.simulator.lifecycle import run_lifecycle
from totp_service.simulator.requests import RequestInvalid, validate_run_request
from totp_service.simulator.runs import (
    PushedCode,
    SimSecret,
    SimulatorState,
)

__all__ = ["FINAL_STATUSES", "SimulatorOptions", "SimulatorState", "create_simulator_app"]

_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost", "testclient"})
_Handler = Callable[[SimulatorState, Request, bytes], Awaitable[Response]]


def _detail(status: int, detail: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _auth_failure(state: SimulatorState, request: Request, *, credentials_route: bool) -> Response | None:
    """Skyvern: missing key 403 Invalid credentials; a wrong key on /v1/credentials/totp says
    'Could not validate credentials'. ``Authorization: Bearer`` is not accepted."""
    key = request.headers.get("x-api-key")
    if not key:
        return _detail(403, "Invalid credentials")
    matched = False
    for known in state.api_keys:
        matched |= hmac.compare_digest(known.encode(), key.encode())
    if matched:
        return None
    return _detail(403, "Could not validate credentials" if credentials_route else "Invalid credentials")


def _endpoint(state: SimulatorState, handler: _Handler) -> Callable[[Request], Awaitable[Response]]:
    """Record the request, apply any injected fault, then run the handler."""

    async def endpoint(request: Request) -> Response:
        body = await request.body()
        try:
            parsed: Any = json.loads(body) if body else None
        except ValueError:
            parsed = None
        state.record({
            "method": request.method, "path": request.url.path, "query": dict(request.query_params),
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "body": body.decode("utf-8", "replace"), "json": parsed,
            "at": datetime.now(timezone.utc).isoformat(),
        })
        fault = state.take_fault(request.method, request.url.path)
        if fault and fault["delay"] and not fault["after"]:
            await asyncio.sleep(fault["delay"])
        if fault and fault["status"] and not fault["after"]:
            return _fault_response(fault)
        response = await handler(state, request, body)
        if fault and fault["after"]:
            if fault["delay"]:
                await asyncio.sleep(fault["delay"])
            if fault["status"]:
                return _fault_response(fault)
        return response

    return endpoint


def _fault_response(fault: dict[str, Any]) -> Response:
    headers = {"retry-after": f"{fault['retry_after']:g}"} if fault["retry_after"] is not None else None
    return _detail(int(fault["status"]), "Simulated fault", headers)


def _json_body(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except ValueError:
        raise RequestInvalid(422, [{"type": "json_invalid", "loc": ["body"], "msg": "JSON decode error",
                                    "input": {}}]) from None


# -- Skyvern API -----------------------------------------------------------------------------


def _saved_agent(state: SimulatorState, agent_id: str) -> dict[str, Any]:
    """A wpid_ defined with POST /v1/workflows; any other is Skyvern's 404 (WorkflowNotFound)."""
    workflow = state.agent(agent_id)
    if workflow is None:
        raise RequestInvalid(404, f"Workflow not found. workflow_permanent_id={agent_id}")
    return workflow


async def _start_run(state: SimulatorState, request: Request, body: bytes, kind: str) -> Response:
    if failure := _auth_failure(state, request, credentials_route=False):
        return failure
    workflow, values = None, None
    try:
        run_request = validate_run_request(_json_body(body), kind, state.options)
        if kind == "agent":  # /v1/run/agents takes the header; /v1/run/tasks only the body field
            max_steps_header = request.headers.get("x-max-steps-override")
            try:
                max_steps = int(max_steps_header) if max_steps_header is not None else None
            except ValueError:
                raise RequestInvalid(422, "Invalid x-max-steps-override header") from None
            workflow = _saved_agent(state, run_request["agent_id"])
            values = parameter_values(workflow, run_request.get("parameters"))
        else:
            max_steps = run_request.get("max_steps")
    except RequestInvalid as exc:
        return _detail(exc.status, exc.detail)
    except MissingValue as exc:  # before any run exists, as Skyvern 1.0.56 does
        return _detail(400, str(exc))
    sim_run = state.create_run(kind, run_request, request.headers["x-api-key"], max_steps, workflow, values)
    task = asyncio.get_running_loop().create_task(run_lifecycle(state, sim_run))
    with state.lock:
        state.tasks[sim_run.run_id] = task
        response = sim_run.to_response(state.options.app_url)
    return JSONResponse(response)


async def _create_agent(state: SimulatorState, request: Request, body: bytes) -> Response:
    if failure := _auth_failure(state, request, credentials_route=False):
        return failure
    try:
        payload = _json_body(body)
        if not isinstance(payload, dict) or "json_definition" not in payload:
            raise DefinitionInvalid("Invalid workflow definition. Workflow should be provided in either yaml or "
                                    "json format.")
        return JSONResponse(state.define_agent(payload["json_definition"]))
    except RequestInvalid as exc:
        return _detail(exc.status, exc.detail)
    except DefinitionInvalid as exc:
        return _detail(422, str(exc))


async def _get_agent(state: SimulatorState, request: Request, body: bytes) -> Response:
    if failure := _auth_failure(state, request, credentials_route=False):
        return failure
    agent_id = request.path_params["agent_id"]
    try:
        return JSONResponse(_saved_agent(state, agent_id))
    except RequestInvalid as exc:
        return _detail(exc.status, exc.detail)


async def _run_agent(state: SimulatorState, request: Request, body: bytes) -> Response:
    return await _start_run(state, request, body, "agent")


async def _run_task(state: SimulatorState, request: Request, body: bytes) -> Response:
    return await _start_run(state, request, body, "task")


async def _get_run(state: SimulatorState, request: Request, body: bytes) -> Response:
    if failure := _auth_failure(state, request, credentials_route=False):
        return failure
    run_id = request.path_params["run_id"]
    with state.lock:
        sim_run = state.runs.get(run_id)
        if sim_run is None:
            return _detail(404, f"Run not found {run_id}")
        return JSONResponse(sim_run.to_response(state.options.app_url))


async def _cancel_run(state: SimulatorState, request: Request, body: bytes) -> Response:
    if failure := _auth_failure(state, request, credentials_route=False):
        return failure
    run_id = request.path_params["run_id"]
    if run_id not in state.runs:
        return _detail(404, f"Run not found {run_id}")
    state.cancel(run_id)
    return JSONResponse(None)


def _optional_str(payload: dict[str, Any], name: str) -> str | None:
    value = payload.get(name)
    if value is not None and not isinstance(value, str):
        raise RequestInvalid(422, [{"type": "string_type", "loc": ["body", name],
                                    "msg": "Input should be a valid string", "input": None}])
    return value


def _code_from_content(content: str) -> str:
    """≤ 10 characters is the code as is; longer text stands in for Skyvern's LLM extraction."""
    if len(content) <= 10:
        return content
    match = re.search(r"(?<!\d)\d{4,10}(?!\d)", content)
    return match.group(0) if match else ""


async def _push_code(state: SimulatorState, request: Request, body: bytes) -> Response:
    if failure := _auth_failure(state, request, credentials_route=True):
        return failure
    try:
        payload = _json_body(body)
        if not isinstance(payload, dict):
            raise RequestInvalid(422, [{"type": "model_attributes_type", "loc": ["body"],
                                        "msg": "Input should be a valid dictionary or object", "input": None}])
        missing = [n for n in ("totp_identifier", "content") if not isinstance(payload.get(n), str)]
        if missing:
            raise RequestInvalid(422, [{"type": "missing", "loc": ["body", n], "msg": "Field required",
                                        "input": None} for n in missing])
        run_id, task_id = _optional_str(payload, "workflow_run_id"), _optional_str(payload, "task_id")
        workflow_id, source = _optional_str(payload, "workflow_id"), _optional_str(payload, "source")
        expired_text = _optional_str(payload, "expired_at")
        try:
            expired_at = parse_timestamp(expired_text) if expired_text else None
        except ValueError:
            raise RequestInvalid(422, [{"type": "datetime_from_date_parsing", "loc": ["body", "expired_at"],
                                        "msg": "Input should be a valid datetime", "input": None}]) from None
        with state.lock:
            known = dict(state.runs)
        if run_id and (run_id not in known or known[run_id].run_type != "workflow_run"):
            raise RequestInvalid(400, f"Invalid workflow run id: {run_id}")
        if task_id and (task_id not in known or known[task_id].run_type == "workflow_run"):
            raise RequestInvalid(400, f"Invalid task id: {task_id}")
        if workflow_id:  # the simulator has no w_ version ids; a wpid_ is refused as on real Skyvern
            raise RequestInvalid(400, f"Invalid workflow id: {workflow_id}")
    except RequestInvalid as exc:
        return _detail(exc.status, exc.detail)
    identifier: str = payload["totp_identifier"]
    content: str = payload["content"]
    code = PushedCode(
        totp_code_id=f"totp_{_secrets.token_hex(8)}", totp_identifier=normalize_identifier(identifier),
        content=content, code=_code_from_content(content), created_at=datetime.now(timezone.utc),
        expired_at=expired_at, workflow_run_id=run_id, task_id=task_id, workflow_id=workflow_id, source=source,
    )
    state.add_code(code)
    return JSONResponse(code.to_json())


async def _list_codes(state: SimulatorState, request: Request, body: bytes) -> Response:
    if failure := _auth_failure(state, request, credentials_route=True):
        return failure
    query = request.query_params
    identifier, run_id = query.get("totp_identifier"), query.get("workflow_run_id")
    try:
        limit = int(query.get("limit", "50"))
    except ValueError:
        return _detail(422, [{"type": "int_parsing", "loc": ["query", "limit"],
                              "msg": "Input should be a valid integer", "input": None}])
    with state.lock:
        rows = [
            c for c in state.codes
            if (identifier is None or c.totp_identifier == normalize_identifier(identifier))
            and (run_id is None or c.workflow_run_id == run_id)
        ]
    rows.sort(key=lambda c: c.created_at, reverse=True)
    return JSONResponse([c.to_json() for c in rows[: max(limit, 0)]])


# -- /_sim control (loopback only, no API key) ----------------------------------------------


def _control(handler: Callable[[SimulatorState, Request], Awaitable[Response]], state: SimulatorState
             ) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        if request.client is None or request.client.host not in _LOOPBACK:
            return _detail(403, "simulator control is loopback only")
        try:
            return await handler(state, request)
        except (ValueError, TypeError) as exc:  # bad control input; never echo a secret
            return _detail(400, f"bad control request ({type(exc).__name__})")
        except KeyError:
            return _detail(404, "not found")

    return endpoint


async def _sim_add_secret(state: SimulatorState, request: Request) -> Response:
    payload = await request.json()
    allowed = {f.name for f in fields(SimSecret)}
    if not isinstance(payload, dict) or not set(payload) <= allowed or "secret" not in payload:
        raise ValueError("fields")
    entry = state.add_secret(**payload)
    return JSONResponse(entry.describe(), status_code=201)


async def _sim_list_secrets(state: SimulatorState, request: Request) -> Response:
    with state.lock:
        return JSONResponse([s.describe() for s in state.secrets])


async def _sim_add_fault(state: SimulatorState, request: Request) -> Response:
    payload = await request.json()
    if not isinstance(payload, dict) or "path_prefix" not in payload:
        raise ValueError("fields")
    state.add_fault(**payload)
    return JSONResponse({"ok": True}, status_code=201)


async def _sim_clear_faults(state: SimulatorState, request: Request) -> Response:
    state.clear_faults()
    return JSONResponse({"ok": True})


async def _sim_requests(state: SimulatorState, request: Request) -> Response:
    query = request.query_params
    return JSONResponse(state.requests(query.get("path_prefix"), query.get("method")))


async def _sim_clear_requests(state: SimulatorState, request: Request) -> Response:
    with state.lock:
        state.recorded.clear()
    return JSONResponse({"ok": True})


async def _sim_runs(state: SimulatorState, request: Request) -> Response:
    return JSONResponse(state.list_runs())


async def _sim_run(state: SimulatorState, request: Request) -> Response:
    return JSONResponse(state.run(request.path_params["run_id"]))


async def _sim_codes(state: SimulatorState, request: Request) -> Response:
    return JSONResponse(state.pushed_codes())


async def _sim_polls(state: SimulatorState, request: Request) -> Response:
    return JSONResponse(state.totp_polls())


# -- app -------------------------------------------------------------------------------------


def create_simulator_app(
    api_keys: list[str], *, state: SimulatorState | None = None, **options: Any
) -> Starlette:
    """Build the simulator; ``options`` are ``SimulatorOptions`` fields (timings in seconds)."""
    if state is None:
        state = SimulatorState(api_keys, SimulatorOptions(**options))

    def api(handler: _Handler) -> Callable[[Request], Awaitable[Response]]:
        return _endpoint(state, handler)

    def ctl(handler: Callable[[SimulatorState, Request], Awaitable[Response]]
            ) -> Callable[[Request], Awaitable[Response]]:
        return _control(handler, state)

    routes = [
        Route("/v1/run/agents", api(_run_agent), methods=["POST"]),
        Route("/v1/run/workflows", api(_run_agent), methods=["POST"]),
        Route("/v1/run/tasks", api(_run_task), methods=["POST"]),
        Route("/v1/workflows", api(_create_agent), methods=["POST"]),
        Route("/v1/workflows/", api(_create_agent), methods=["POST"]),
        Route("/v1/workflows/{agent_id}", api(_get_agent), methods=["GET"]),
        Route("/v1/workflows/{agent_id}/", api(_get_agent), methods=["GET"]),
        Route("/v1/runs/{run_id}", api(_get_run), methods=["GET"]),
        Route("/v1/runs/{run_id}/cancel", api(_cancel_run), methods=["POST"]),
        Route("/v1/credentials/totp", api(_push_code), methods=["POST"]),
        Route("/v1/credentials/totp", api(_list_codes), methods=["GET"]),
        Route("/_sim/secrets", ctl(_sim_add_secret), methods=["POST"]),
        Route("/_sim/secrets", ctl(_sim_list_secrets), methods=["GET"]),
        Route("/_sim/faults", ctl(_sim_add_fault), methods=["POST"]),
        Route("/_sim/faults", ctl(_sim_clear_faults), methods=["DELETE"]),
        Route("/_sim/requests", ctl(_sim_requests), methods=["GET"]),
        Route("/_sim/requests", ctl(_sim_clear_requests), methods=["DELETE"]),
        Route("/_sim/runs", ctl(_sim_runs), methods=["GET"]),
        Route("/_sim/runs/{run_id}", ctl(_sim_run), methods=["GET"]),
        Route("/_sim/codes", ctl(_sim_codes), methods=["GET"]),
        Route("/_sim/polls", ctl(_sim_polls), methods=["GET"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        with state.lock:
            tasks = list(state.tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.simulator = state
    return app
