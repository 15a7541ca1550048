"""The simulator's saved agents: Skyvern 1.0.56's block templating and parameter rules."""

from __future__ import annotations

import time
from typing import Any

import pytest

from totp_service.simulator.agents import (
    DefinitionInvalid,
    MissingValue,
    RenderFailed,
    asking_blocks,
    block_sources,
    make_workflow,
    parameter_values,
    render,
)


def definition(blocks: list[dict[str, Any]], parameters: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"title": "t", "workflow_definition": {"parameters": parameters or [], "blocks": blocks}}


def test_templating_is_lax_and_knows_default() -> None:
    values = {"login_id": "alice@example.com", "n": 3}
    assert render("{{ login_id }}", values) == "alice@example.com"
    assert render("{{undeclared}}", values) == ""
    assert render("{{ nope | default('x@example.com') }}", values) == "x@example.com"
    assert render("id-{{ n }}", values) == "id-3"
    with pytest.raises(RenderFailed):
        render("{{ login_id | lower }}", values)


def test_block_sources_bare_key_and_scheme() -> None:
    values = {"who": "bob", "otp": "totp.example/totp/bob"}
    sources = block_sources({"label": "a", "block_type": "login", "totp_identifier": "who",
                             "totp_verification_url": "{{ otp }}"}, values)
    assert (sources.identifier, sources.url) == ("bob", "https://totp.example/totp/bob")
    empty = block_sources({"label": "a", "block_type": "login", "totp_identifier": "{{ missing }}"}, values)
    assert (empty.identifier, empty.url) == (None, None)
    with pytest.raises(RenderFailed, match="Failed to render totp_identifier: evaluation."):
        block_sources({"label": "a", "block_type": "login", "totp_identifier": "{% if x %}y{% endif %}"}, values)


def test_parameters_missing_default_and_credential() -> None:
    workflow = make_workflow(definition([], [
        {"key": "a", "workflow_parameter_type": "string"},
        {"key": "b", "workflow_parameter_type": "string", "default_value": "B"},
        {"key": "c", "workflow_parameter_type": "credential_id"},
        {"key": "out", "parameter_type": "output"},
    ]))
    assert workflow["workflow_permanent_id"].startswith("wpid_") and workflow["workflow_id"].startswith("w_")
    assert parameter_values(workflow, {"a": ""}) == {"a": "", "b": "B"}  # an empty string is a value
    with pytest.raises(MissingValue, match=r"Missing value for parameter a in workflow wpid_"):
        parameter_values(workflow, {"b": "x"})


def test_asking_blocks_walks_loops_and_validates() -> None:
    workflow = make_workflow(definition([
        {"block_type": "navigation", "label": "home"},
        {"block_type": "for_loop", "label": "each", "loop_blocks": [
            {"block_type": "navigation", "label": "inner", "totp_identifier": "{{ who }}"}]},
        {"block_type": "login", "label": "plain"},
        {"block_type": "code", "label": "c", "totp_identifier": "x"},
    ]))
    assert [b["label"] for b in asking_blocks(workflow)] == ["inner", "plain"]
    for bad in (definition([{"label": "x"}]), definition([{"block_type": "login", "label": "x"}] * 2),
                {"workflow_definition": {}}, definition([{"block_type": "login", "label": "x", "totp_identifier": 5}])):
        with pytest.raises(DefinitionInvalid):
            make_workflow(bad)


# --- over HTTP: saved agents and the 1.0.56 rules for pushed codes --------------------------------

from collections.abc import Iterator  # noqa: E402
from datetime import timedelta  # noqa: E402

import httpx  # noqa: E402
import pyotp  # noqa: E402

from totp_service.service.servers import running_server  # noqa: E402
from totp_service.simulator.app import SimulatorState, create_simulator_app  # noqa: E402

API_KEY = "sk-agents-test-key"
SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
PERIOD = 4
FAST = dict(poll_interval=0.1, first_poll_delay=0.05, queue_delay=0.05, typing_delay=0.05, code_wait_timeout=3.0)  # 1 s timed out in CI under load
LOGIN = {"title": "sign in", "workflow_definition": {
    "parameters": [{"key": "login_id", "parameter_type": "workflow", "workflow_parameter_type": "string"}],
    "blocks": [{"block_type": "login", "label": "sign_in", "totp_identifier": "{{ login_id }}"}]}}


@pytest.fixture()
def sim() -> Iterator[tuple[str, SimulatorState]]:
    app = create_simulator_app([API_KEY], **FAST)
    with running_server(app) as base:
        yield base, app.state.simulator


def call(base: str, method: str, path: str, **kw: Any) -> httpx.Response:
    headers = {"x-api-key": API_KEY, **kw.pop("headers", {})}
    return httpx.request(method, f"{base}{path}", headers=headers, **kw)


def save_login(base: str) -> str:
    """POST /v1/workflows with LOGIN; its wpid_."""
    return call(base, "POST", "/v1/workflows", json={"json_definition": LOGIN}).json()["workflow_permanent_id"]


def push(base: str, identifier: str, **scope: Any) -> None:
    """Push the current code, with at least 2.5 s of its window left (the run types it within ~1 s)."""
    left = PERIOD - time.time() % PERIOD
    if left < 2.5:
        time.sleep(left + 0.05)
    code = pyotp.TOTP(SECRET, interval=PERIOD).now()
    call(base, "POST", "/v1/credentials/totp", json={"totp_identifier": identifier, "content": code, **scope}
         ).raise_for_status()


def test_define_read_back_and_run_level_fields_ignored(sim: tuple[str, SimulatorState]) -> None:
    base, state = sim
    created = call(base, "POST", "/v1/workflows", json={"json_definition": LOGIN}).json()
    wpid = created["workflow_permanent_id"]
    state.add_secret(SECRET, period=PERIOD, agent_id=wpid)
    for path in (f"/v1/workflows/{wpid}", f"/v1/workflows/{wpid}/"):
        read = call(base, "GET", path).json()
        assert read["workflow_definition"]["blocks"][0]["totp_identifier"] == "{{ login_id }}"
    missing = call(base, "GET", "/v1/workflows/wpid_nope")
    assert missing.status_code == 404
    assert missing.json() == {"detail": "Workflow not found. workflow_permanent_id=wpid_nope"}
    assert call(base, "POST", "/v1/workflows", json={"yaml": 1}).status_code == 422
    run_level = {"totp_identifier": "alice@example.com", "totp_url": "http://127.0.0.1:9/totp"}
    run = call(base, "POST", "/v1/run/agents", json={"agent_id": wpid, "parameters": {"login_id": ""},
                                                      **run_level}).json()
    final = state.wait_for_run(run["run_id"])
    assert final["status"] == "failed" and "Block sign_in" in final["failure_reason"]
    assert "no totp_verification_url and no totp_identifier" in final["failure_reason"]
    assert final["block_tasks"][0]["totp_identifier"] is None and final["block_tasks"][0]["totp_url"] is None
    assert state.totp_polls() == [] and final["run_request"]["totp_url"] == run_level["totp_url"]  # only echoed


def test_missing_parameter_is_400_before_any_run(sim: tuple[str, SimulatorState]) -> None:
    base, state = sim
    wpid = save_login(base)
    answer = call(base, "POST", "/v1/run/agents", json={"agent_id": wpid})
    assert answer.status_code == 400 and answer.json()["detail"].startswith("Missing value for parameter login_id")
    assert state.list_runs() == []


def test_templated_block_takes_codes_pushed_after_started_at(sim: tuple[str, SimulatorState]) -> None:
    base, state = sim
    wpid = save_login(base)
    state.add_secret(SECRET, period=PERIOD, agent_id=wpid)
    push(base, "bob@example.com")  # before the run exists: never taken (started_at anchor)
    run = call(base, "POST", "/v1/run/agents", json={"agent_id": wpid, "parameters": {"login_id": "Bob@Example.com"}})
    run_id = run.json()["run_id"]
    state.wait_for_run(run_id, {"running"})
    time.sleep(0.3)
    assert state.run(run_id)["status"] == "running"
    push(base, "bob@example.com", workflow_run_id=run_id)
    final = state.wait_for_run(run_id)
    assert final["status"] == "completed" and final["code_source"] == "pushed", final["failure_reason"]
    assert final["block_tasks"][0]["totp_identifier"] == "Bob@Example.com"


def _task(base: str, state: SimulatorState) -> str:
    run_id = call(base, "POST", "/v1/run/tasks", json={"prompt": "log in", "totp_identifier": "dan"}).json()["run_id"]
    assert run_id.startswith("tsk_") and not run_id.startswith("tsk_v2_")
    state.wait_for_run(run_id, {"running"})
    return run_id


def test_lifespan_and_standalone_task_scoping(sim: tuple[str, SimulatorState]) -> None:
    base, state = sim
    state.add_secret(SECRET, period=PERIOD, totp_identifier="dan")
    wpid = save_login(base)
    other = call(base, "POST", "/v1/run/agents", json={"agent_id": wpid, "parameters": {"login_id": ""}}
                 ).json()["run_id"]
    push(base, "dan", workflow_run_id=other)  # pushed for another run, before this task exists
    with state.lock:
        state.codes[-1].created_at -= timedelta(minutes=11)  # past TOTP_LIFESPAN_MINUTES
    assert state.wait_for_run(_task(base, state))["status"] == "timed_out"
    push(base, "dan", workflow_run_id=other)
    with state.lock:
        state.codes[-1].created_at -= timedelta(minutes=9)  # inside the lifespan
    final = state.wait_for_run(_task(base, state))  # no started_at anchor, no run scoping: it takes it
    assert final["status"] == "completed" and final["code_source"] == "pushed", final["failure_reason"]


def test_new_request_fields(sim: tuple[str, SimulatorState]) -> None:
    base, state = sim
    wpid = save_login(base)
    good = call(base, "POST", "/v1/run/agents", json={"agent_id": wpid, "parameters": {"login_id": ""},
                                                       "browser_type": "chrome", "file_ids": ["file_1"]})
    assert good.status_code == 200 and good.json()["run_request"]["browser_type"] == "chrome"
    for bad in ({"browser_type": "firefox"}, {"browser_type": "msedge", "browser_session_id": "pbs_1"},
                {"file_ids": [f"file_{n}" for n in range(51)]}):
        assert call(base, "POST", "/v1/run/agents", json={"agent_id": wpid, **bad}).status_code == 422, bad
    task = call(base, "POST", "/v1/run/tasks", json={"prompt": "p", "max_steps": 7},
                headers={"x-max-steps-override": "3"}).json()
    assert state.run(task["run_id"])["max_steps"] == 7  # /v1/run/tasks reads the body field, not the header
