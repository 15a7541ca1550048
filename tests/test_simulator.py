"""The Skyvern simulator over real HTTP: pull (signed totp_url polls), push, strict code checks.

Runs are of AGENT, saved as `login_agent()`: its login block reads {{ totp_url }} / {{ totp_identifier }},
so each test's TOTP source goes in the run's parameters (a run-level field reaches no block)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pyotp
import pytest
from helpers_launch import AGENT, API_KEY, simulator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from totp_service.service.servers import running_server
from totp_service.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from totp_service.simulator.app import SimulatorState

SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
FAST = dict(poll_interval=0.1, first_poll_delay=0.05, queue_delay=0.05, typing_delay=0.1, code_wait_timeout=3.0)


def fresh_code(secret: str = SECRET, min_left: float = 2.0) -> str:
    """The current code, waiting for the next window when too little of this one is left."""
    totp = pyotp.TOTP(secret)
    left = totp.interval - time.time() % totp.interval
    if left < min_left:
        time.sleep(left + 0.05)
    return totp.now()


def totp_endpoint(answers: list[Any] | None = None) -> tuple[Starlette, list[dict[str, Any]]]:
    """A tiny pull endpoint: checks Skyvern's signature, then answers from `answers` or the code."""
    seen: list[dict[str, Any]] = []
    script = list(answers or [])

    async def handle(request: Request) -> JSONResponse:
        body = await request.body()
        ok = verify(body, request.headers.get(SIGNATURE_HEADER), [API_KEY])
        seen.append({"body": body, "signed": ok, "headers": dict(request.headers)})
        if not ok:
            return JSONResponse({"detail": "bad signature"}, status_code=401)
        if script:
            status, payload = script.pop(0)
            return JSONResponse(payload, status_code=status)
        await asyncio.sleep(0)
        return JSONResponse({"verification_code": fresh_code()})

    return Starlette(routes=[Route("/totp", handle, methods=["POST"])]), seen


@pytest.fixture()
def sim() -> Iterator[tuple[str, SimulatorState]]:
    with simulator(**FAST) as s:
        yield s.base, s.state


def headers(key: str = API_KEY) -> dict[str, str]:
    return {"x-api-key": key}


def start_agent(base: str, **parameters: Any) -> dict[str, Any]:
    """A run of AGENT whose login block gets `parameters` (totp_url, totp_identifier)."""
    response = httpx.post(f"{base}/v1/run/agents", json={"agent_id": AGENT, "parameters": parameters},
                          headers=headers())
    assert response.status_code == 200, response.text
    return response.json()


def test_pull_flow_signed_and_completed(sim: tuple[str, SimulatorState]) -> None:
    base, state = sim
    state.add_secret(SECRET, agent_id=AGENT)
    endpoint, seen = totp_endpoint([(200, {"verification_code": ""})])
    with running_server(endpoint) as totp_base:
        run = start_agent(base, totp_url=f"{totp_base}/totp")
        assert run["run_id"].startswith("wr_") and run["status"] == "created"
        final = state.wait_for_run(run["run_id"], timeout=10)
    assert final["status"] == "completed", final["failure_reason"]
    assert final["code_source"] == "totp_url"
    assert final["started_at"] and final["finished_at"]
    task_id = final["block_tasks"][0]["task_id"]  # the block's task, not the run
    assert task_id.startswith("tsk_")
    expected = json.dumps({"task_id": task_id, "workflow_run_id": run["run_id"], "workflow_permanent_id": AGENT},
                          separators=(",", ":")).encode()
    assert len(seen) == 2 and all(s["signed"] and s["body"] == expected for s in seen)
    assert seen[0]["headers"]["content-type"] == "application/json"
    assert seen[0]["headers"][TIMESTAMP_HEADER].isdigit()
    assert "totp_identifier" not in seen[0]["body"].decode()


def test_pull_timeout_lists_statuses(sim: tuple[str, SimulatorState]) -> None:
    base, state = sim
    state.add_secret(SECRET, agent_id=AGENT)
    endpoint, _ = totp_endpoint([(401, {"detail": "no"})] * 3 + [(200, {"verification_code": ""})] * 100)
    with running_server(endpoint) as totp_base:
        run = start_agent(base, totp_url=f"{totp_base}/totp")
        final = state.wait_for_run(run["run_id"], timeout=10)
    assert final["status"] == "timed_out"
    assert "401 x3" in final["failure_reason"] and "200 (no code yet)" in final["failure_reason"]


def test_pull_number_code_fails_the_run(sim: tuple[str, SimulatorState]) -> None:
    base, state = sim
    state.add_secret(SECRET, agent_id=AGENT)
    endpoint, _ = totp_endpoint([(200, {"verification_code": 123456})])
    with running_server(endpoint) as totp_base:
        final = state.wait_for_run(start_agent(base, totp_url=f"{totp_base}/totp")["run_id"], timeout=10)
    assert final["status"] == "failed" and "not a string" in final["failure_reason"]


def test_strict_verification_rejects_wrong_code(sim: tuple[str, SimulatorState]) -> None:
    base, state = sim
    state.add_secret(SECRET, agent_id=AGENT)
    totp = pyotp.TOTP(SECRET)
    stale = totp.at(time.time() - 60)
    endpoint, _ = totp_endpoint([(200, {"verification_code": stale})])
    with running_server(endpoint) as totp_base:
        final = state.wait_for_run(start_agent(base, totp_url=f"{totp_base}/totp")["run_id"], timeout=10)
    assert final["status"] == "failed" and "wrong or expired" in final["failure_reason"]


def test_push_only_counts_codes_after_started_at() -> None:
    # queue 2 s: the early push must land before started_at even on a loaded machine
    with simulator(**{**FAST, "queue_delay": 2.0, "code_wait_timeout": 3.0}) as sim:
        base, state = sim.base, sim.state
        state.add_secret(SECRET, totp_identifier="Alice@Example.com")
        early_code = fresh_code()  # before the run: waiting for a window here once pushed after started_at
        early = start_agent(base, totp_identifier="alice@example.com")
        pushed = httpx.post(f"{base}/v1/credentials/totp", headers=headers(),
                            json={"totp_identifier": " ALICE@example.com ", "content": early_code})
        assert pushed.status_code == 200 and pushed.json()["totp_identifier"] == "alice@example.com"
        assert state.wait_for_run(early["run_id"])["status"] == "timed_out"

        fresh_code(min_left=10)  # so the push below never waits past the 3 s code_wait_timeout
        late = start_agent(base, totp_identifier="alice@example.com")
        state.wait_for_run(late["run_id"], {"running"})
        code = fresh_code()
        httpx.post(f"{base}/v1/credentials/totp", headers=headers(),
                   json={"totp_identifier": "alice@example.com", "content": code,
                         "workflow_run_id": late["run_id"]}).raise_for_status()
        final = state.wait_for_run(late["run_id"])
    assert final["status"] == "completed", final["failure_reason"]
    assert final["code_source"] == "pushed"


def test_push_wrong_code_fails(sim: tuple[str, SimulatorState]) -> None:
    base, state = sim
    state.add_secret(SECRET, totp_identifier="+15550001")
    run = start_agent(base, totp_identifier="+15550001")
    state.wait_for_run(run["run_id"], {"running"})
    wrong = pyotp.TOTP(SECRET).at(time.time() + 90)
    httpx.post(f"{base}/v1/credentials/totp", headers=headers(),
               json={"totp_identifier": "+15550001", "content": wrong}).raise_for_status()
    final = state.wait_for_run(run["run_id"])
    assert final["status"] == "failed" and "wrong or expired" in final["failure_reason"]


def test_push_endpoint_semantics(sim: tuple[str, SimulatorState]) -> None:
    base, state = sim
    url = f"{base}/v1/credentials/totp"
    bad_run = httpx.post(url, headers=headers(), json={"totp_identifier": "u1", "content": "1", "workflow_run_id": "wr_x"})
    assert bad_run.status_code == 400 and bad_run.json()["detail"] == "Invalid workflow run id: wr_x"
    wpid = httpx.post(url, headers=headers(), json={"totp_identifier": "u1", "content": "1", "workflow_id": "wpid_1"})
    assert wpid.status_code == 400
    for stamp in ("2030-01-01T00:00:00Z", "2030-01-01T02:00:00+02:00", "2030-01-01T00:00:00"):
        row = httpx.post(url, headers=headers(),
                         json={"totp_identifier": "u1", "content": "111111", "expired_at": stamp, "extra": 1})
        assert row.status_code == 200 and row.json()["expired_at"] == "2030-01-01T00:00:00"
    listed = httpx.get(url, headers=headers(), params={"totp_identifier": "u1", "limit": 2})
    assert len(listed.json()) == 2 and len(state.pushed_codes()) == 3
    assert httpx.post(url, headers={"x-api-key": "wrong"}, json={}).json() == {
        "detail": "Could not validate credentials"}
    bearer = httpx.post(url, headers={"authorization": f"Bearer {API_KEY}"}, json={})
    assert bearer.status_code == 403 and bearer.json() == {"detail": "Invalid credentials"}


def test_run_auth_and_validation(sim: tuple[str, SimulatorState]) -> None:
    base, state = sim
    agents = f"{base}/v1/run/agents"
    assert httpx.post(agents, json={"agent_id": AGENT}).json() == {"detail": "Invalid credentials"}
    assert httpx.post(agents, json={"agent_id": AGENT}, headers=headers("nope")).status_code == 403
    for bad in ({"proxy_location": "MARS"}, {"max_elapsed_time_minutes": 0}, {"max_elapsed_time_minutes": 241},
                {"proxy_location": {"country": "usa"}}, {"run_with": "magic"}, {"parameters": []}):
        response = httpx.post(agents, json={"agent_id": AGENT, **bad}, headers=headers())
        assert response.status_code == 422, bad
        assert response.json()["detail"][0]["loc"][1] == next(iter(bad))
    for good in ({"proxy_location": "RESIDENTIAL_GB"}, {"proxy_location": {"url": "http://u:p@h:3128"}},
                 {"proxy_location": {"country": "US", "subdivision": "CA", "city": "San Francisco"}},
                 {"max_elapsed_time_minutes": 240}):
        assert httpx.post(agents, json={"agent_id": AGENT, **good}, headers=headers()).status_code == 200
    alias = httpx.post(f"{base}/v1/run/workflows", json={"workflow_id": AGENT}, headers=headers())
    assert alias.json()["run_request"]["agent_id"] == AGENT
    runs = len(state.list_runs())
    for path in ("/v1/run/agents", "/v1/run/workflows"):  # an agent never saved: Skyvern's WorkflowNotFound
        unknown = httpx.post(f"{base}{path}", headers=headers(),
                             json={"workflow_id": "wpid_nope", "totp_identifier": "bob", "totp_url": "https://x/t"})
        assert unknown.status_code == 404, unknown.text
        assert unknown.json() == {"detail": "Workflow not found. workflow_permanent_id=wpid_nope"}
    assert len(state.list_runs()) == runs
    task = httpx.post(f"{base}/v1/run/tasks", json={"prompt": "log in"}, headers=headers())
    assert task.json()["run_id"].startswith("tsk_") and task.json()["run_type"] == "task_v1"  # skyvern-1.0
    v2 = httpx.post(f"{base}/v1/run/tasks", json={"prompt": "log in", "engine": "skyvern-2.0"}, headers=headers())
    assert v2.json()["run_id"].startswith("tsk_v2_") and v2.json()["run_type"] == "task_v2"
    assert httpx.post(f"{base}/v1/run/tasks", json={"url": "https://x"}, headers=headers()).status_code == 422


def test_blocked_host_like_cloud() -> None:
    with simulator(block_private_totp_url=True, **FAST) as sim:
        # the run-level field reaches no block, but Skyvern's request schema still checks it
        response = httpx.post(f"{sim.base}/v1/run/agents", headers=headers(),
                              json={"agent_id": AGENT, "totp_url": "http://127.0.0.1:9/totp"})
        assert response.status_code == 400 and response.json() == {"detail": "Invalid totp_url: blocked host."}
        assert sim.state.list_runs() == []


def test_cancel_and_control_endpoints(sim: tuple[str, SimulatorState]) -> None:
    base, state = sim
    secret = httpx.post(f"{base}/_sim/secrets", json={"secret": SECRET, "totp_identifier": "bob"})
    assert secret.status_code == 201 and "secret" not in secret.json()
    run = start_agent(base, totp_identifier="bob")
    assert httpx.post(f"{base}/v1/runs/{run['run_id']}/cancel", headers=headers()).status_code == 200
    got = httpx.get(f"{base}/v1/runs/{run['run_id']}", headers=headers()).json()
    assert got["status"] == "canceled" and got["finished_at"]
    assert httpx.get(f"{base}/v1/runs/wr_missing", headers=headers()).status_code == 404
    httpx.post(f"{base}/_sim/faults", json={"path_prefix": "/v1/runs/", "status": 503, "count": 1}).raise_for_status()
    assert httpx.get(f"{base}/v1/runs/{run['run_id']}", headers=headers()).status_code == 503
    assert httpx.get(f"{base}/v1/runs/{run['run_id']}", headers=headers()).status_code == 200
    recorded = httpx.get(f"{base}/_sim/requests", params={"path_prefix": "/v1/run/agents"}).json()
    assert len(recorded) == 1 and recorded[0]["json"] == {"agent_id": AGENT, "parameters": {"totp_identifier": "bob"}}
    assert httpx.get(f"{base}/_sim/runs/{run['run_id']}").json()["status"] == "canceled"


def test_pull_non_json_keeps_polling_and_is_reported(sim: tuple[str, SimulatorState]) -> None:
    base, state = sim
    state.add_secret(SECRET, agent_id=AGENT)

    async def plain(request: Request) -> PlainTextResponse:
        return PlainTextResponse("code 123456")

    with running_server(Starlette(routes=[Route("/totp", plain, methods=["POST"])])) as totp_base:
        final = state.wait_for_run(start_agent(base, totp_url=f"{totp_base}/totp")["run_id"], timeout=10)
    assert final["status"] == "timed_out" and "200 (not JSON)" in final["failure_reason"]


def test_url_first_then_pushed_codes() -> None:
    endpoint, seen = totp_endpoint([(200, {"verification_code": ""})] * 100)
    with simulator(**{**FAST, "code_wait_timeout": 1.5}) as sim, running_server(endpoint) as totp_base:
        base, state = sim.base, sim.state
        state.add_secret(SECRET, agent_id=AGENT)
        code = fresh_code(min_left=4.0)  # before the run: waiting for a window must not eat its 1.5 s
        run = start_agent(base, totp_url=f"{totp_base}/totp", totp_identifier="carol")
        state.wait_for_run(run["run_id"], {"running"})
        httpx.post(f"{base}/v1/credentials/totp", headers=headers(),
                   json={"totp_identifier": "carol", "content": code}).raise_for_status()
        final = state.wait_for_run(run["run_id"])
    assert final["status"] == "completed" and final["code_source"] == "pushed", final["failure_reason"]
    assert seen  # the URL was asked first on each poll


def test_url_failing_outright_skips_the_pushed_codes() -> None:
    with simulator(**{**FAST, "code_wait_timeout": 1.0, "totp_attempts": 1}) as sim:
        base, state = sim.base, sim.state
        state.add_secret(SECRET, agent_id=AGENT)
        run = start_agent(base, totp_url="http://127.0.0.1:9/totp", totp_identifier="carol")
        state.wait_for_run(run["run_id"], {"running"})
        httpx.post(f"{base}/v1/credentials/totp", headers=headers(),
                   json={"totp_identifier": "carol", "content": fresh_code()}).raise_for_status()
        final = state.wait_for_run(run["run_id"])
    assert final["status"] == "timed_out" and "connection error" in final["failure_reason"]
