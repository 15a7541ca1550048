"""Saved agents end to end: the launcher wires the blocks' own TOTP fields (Skyvern 1.0.56 reads
nothing else), against the simulator's saved agents, with codes strictly checked by its login page."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers_launch import (
    API_KEY,
    IDENTIFIER,
    PERIOD,
    REPO,
    SECRET,
    Env,
    Sim,
    agent_parameter,
    login_agent,
    make_env,
    service,
    simulator,
    wait_until,
)

from totp_service import attach_pusher, inspect_agent, launch_agent, totp_url
from totp_service.launcher.agents import AgentUnreadable, WiringRefused
from totp_service.launcher.client import SkyvernClient
from totp_service.launcher.pusher import Pusher, WindowCode
from totp_service.launcher.wiring import shown_url
from totp_service.service.servers import free_port

P = agent_parameter
AGENTS: dict[str, dict[str, Any]] = {
    "wpid_ident": login_agent([P("login_id")], totp_identifier="{{ login_id }}"),
    "wpid_url": login_agent([P("otp_url")], totp_verification_url="{{otp_url}}"),
    "wpid_both": login_agent([P("who"), P("otp")], totp_identifier="{{ who }}", totp_verification_url="{{ otp }}"),
    "wpid_nested": {"title": "loop", "workflow_definition": {
        "parameters": [P("login_id", "nobody@example.com"), P("accounts", [], "json")],
        "blocks": [{"block_type": "for_loop", "label": "each", "loop_over_parameter_key": "accounts",
                    "loop_blocks": [{"block_type": "navigation", "label": "sign_in", "navigation_goal": "log in",
                                     "totp_identifier": "{{ login_id | default('nobody@example.com') }}"}]}]}},
    "wpid_plain": login_agent([], navigation_goal="log in"),
    "wpid_static": login_agent([], totp_identifier="bob@example.com"),
    "wpid_static_url": login_agent([], totp_verification_url="https://totp.other.example/totp/bob"),
    "wpid_expr": login_agent([P("user"), P("domain")], totp_identifier="{{ user }}@{{ domain }}"),
    "wpid_needs_site": login_agent([P("login_id"), P("site")], totp_identifier="{{ login_id }}"),
}


@pytest.fixture
def sim() -> Iterator[Sim]:
    with simulator() as s:
        for agent_id, definition in AGENTS.items():
            s.state.define_agent(definition, agent_id)
            s.state.add_secret(SECRET, period=PERIOD, agent_id=agent_id)
        yield s


@pytest.fixture
def env(tmp_path: Path, sim: Sim, monkeypatch: pytest.MonkeyPatch) -> Env:
    made = make_env(tmp_path, sim)
    made.apply(monkeypatch)
    return made


def starts(sim: Sim) -> int:
    return len(sim.requests("/v1/run/agents"))


@pytest.mark.parametrize("agent_id, mode, request_parameters, filled, source", [
    ("wpid_ident", "push", {}, {"login_id": IDENTIFIER}, "pushed"),
    ("wpid_url", "url", {}, {"otp_url": "URL"}, "totp_url"),
    ("wpid_both", "push", {}, {"who": IDENTIFIER, "otp": ""}, "pushed"),
    ("wpid_both", "url", {}, {"who": IDENTIFIER, "otp": "URL"}, "totp_url"),
    ("wpid_nested", "push", {"accounts": ["a"]}, {"login_id": IDENTIFIER, "accounts": ["a"]}, "pushed"),
    ("wpid_ident", "push", {"login_id": " Alice@Example.com "}, {"login_id": " Alice@Example.com "}, "pushed"),
])
def test_saved_agents_complete_without_totp_param(env: Env, agent_id: str, mode: str,
                                                  request_parameters: dict[str, Any], filled: dict[str, Any],
                                                  source: str) -> None:
    events: list[str] = []
    url = totp_url(env.settings, IDENTIFIER)
    with service(env):
        outcome = launch_agent(env.settings, agent_id, IDENTIFIER, mode=mode, client=env.client(),
                               request={"parameters": request_parameters} if request_parameters else None,
                               on_event=lambda e: events.append(f"{e.kind}: {e.message}"))
    final = env.sim.state.run(outcome.run_id)
    assert outcome.status == "completed", final["failure_reason"]
    assert final["code_source"] == source
    expected = {k: (url if v == "URL" else v) for k, v in filled.items()}
    assert final["run_request"]["parameters"] == expected
    assert outcome.wiring is not None and events[0].startswith("wiring: block 'sign_in'")
    assert events.index(f"created: run {outcome.run_id} created ({mode} mode)") == len(outcome.wiring.lines())


REFUSALS = [
    ("wpid_plain", "push", {}, "no block will ever ask for a code"),
    ("wpid_url", "push", {}, "never reads pushed codes; use --mode url"),
    ("wpid_ident", "url", {}, "never pulls a URL; use --mode push"),
    ("wpid_static", "push", {}, "totp_identifier = 'bob@example.com' is fixed"),
    ("wpid_static_url", "url", {}, "is fixed and is not"),
    ("wpid_expr", "push", {}, "is an expression the launcher cannot fill"),
    ("wpid_needs_site", "push", {}, "needs a value for parameter(s) site (no default): pass --param site=VALUE"),
    ("wpid_ident", "push", {"login_id": "bob@example.com"}, "--param login_id=… disagrees"),
]


@pytest.mark.parametrize("agent_id, mode, request_parameters, words", REFUSALS)
def test_refusals_happen_before_any_run(env: Env, agent_id: str, mode: str, request_parameters: dict[str, Any],
                                        words: str) -> None:
    before = starts(env.sim)
    with service(env) if mode == "url" else _nothing():
        with pytest.raises(WiringRefused) as caught:
            launch_agent(env.settings, agent_id, IDENTIFIER, mode=mode, client=env.client(),
                         request={"parameters": request_parameters})
    message = str(caught.value)
    assert words in message and "\n" not in message
    assert starts(env.sim) == before
    with pytest.raises(WiringRefused, match="parameter|block"):  # the Python API says the same, nothing started
        inspect_agent(env.settings, agent_id, IDENTIFIER, mode=mode, parameters=request_parameters,
                      client=env.client())


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def test_unreadable_agent_is_one_line_naming_it(env: Env) -> None:
    before = starts(env.sim)
    with pytest.raises(AgentUnreadable, match=r"knows no agent wpid_missing \(404"):
        launch_agent(env.settings, "wpid_missing", IDENTIFIER, mode="push", client=env.client())
    with SkyvernClient(env.sim.base, "sk-wrong-key") as wrong, pytest.raises(AgentUnreadable, match=r"\(403\)"):
        launch_agent(env.settings, "wpid_ident", IDENTIFIER, mode="push", client=wrong)
    assert starts(env.sim) == before


def test_no_inspect_warns_and_starts(env: Env) -> None:
    events: list[str] = []
    outcome = launch_agent(env.settings, "wpid_ident", IDENTIFIER, mode="push", client=env.client(), inspect=False,
                           request={"parameters": {"login_id": IDENTIFIER}}, on_event=lambda e: events.append(e.message))
    assert outcome.status == "completed" and outcome.wiring is None
    assert any("--no-inspect" in event and "never from the run" in event for event in events)
    assert env.sim.requests("/v1/workflows") == []


def test_cli_launch_shows_the_wiring_and_refuses_in_one_line(env: Env, run_cli: Any) -> None:
    result = run_cli("launch", "wpid_ident", "--identifier", IDENTIFIER, "--mode", "push", "--json")
    assert result.code == 0, result.err
    assert f"block 'sign_in' (login): totp_identifier <- parameters.login_id = {IDENTIFIER}" in result.err
    assert json.loads(result.out)["wiring"]["steps"][0]["parameter"] == "login_id"
    before = starts(env.sim)
    refused = run_cli("launch", "wpid_static", "--identifier", IDENTIFIER, "--mode", "push")
    assert refused.code == 2 and refused.err.count("\n") == 1 and "bob@example.com" in refused.err
    missing = run_cli("launch", "wpid_missing", "--identifier", IDENTIFIER, "--mode", "push")
    assert missing.code == 1 and "wpid_missing" in missing.err and missing.err.count("\n") == 1
    assert starts(env.sim) == before
    runs = len(env.sim.state.list_runs())
    blind = run_cli("launch", "wpid_missing", "--identifier", IDENTIFIER, "--mode", "push", "--no-inspect")
    assert blind.code == 1 and blind.err.splitlines()[-1] == (  # the start itself: Skyvern's 404, no run
        "totp-service: error: POST /v1/run/agents: not found (Workflow not found. workflow_permanent_id=wpid_missing)")
    assert len(env.sim.state.list_runs()) == runs


def test_agent_show(env: Env, run_cli: Any) -> None:
    both = run_cli("agent", "show", "wpid_both", "--identifier", IDENTIFIER)
    assert both.code == 0, both.err
    url = totp_url(env.settings, IDENTIFIER)
    assert "  block 'sign_in' (login): totp_identifier = '{{ who }}', totp_verification_url = '{{ otp }}'" in both.out
    assert f"launch --mode push --identifier {IDENTIFIER}:\n  block 'sign_in' (login): totp_identifier <- " \
           f"parameters.who = {IDENTIFIER}\n" in both.out
    assert f"totp_verification_url <- parameters.otp = {shown_url(url)}" in both.out and "?k=***" in both.out
    nested = run_cli("agent", "show", "wpid_nested", "--json")
    report = json.loads(nested.out)
    assert report["blocks"][0]["inside"] == ["each"] and report["modes"]["push"]["ok"]
    assert "never pulls a URL" in report["modes"]["url"]["error"]
    for agent_id, words in (("wpid_plain", "no block will ever ask"), ("wpid_static", "is fixed"),
                            ("wpid_expr", "expression"), ("wpid_needs_site", "--param site=VALUE")):
        shown = run_cli("agent", "show", agent_id)
        assert shown.code == 2 and shown.out.count("refused:") == 2 and words in shown.out, shown.out
    assert run_cli("agent", "show", "wpid_needs_site", "--param", "site=x").code == 0
    assert run_cli("agent", "show", "wpid_missing").code == 1
    assert starts(env.sim) == 0  # agent show never starts anything


class _Source:
    identifier = "dan"

    def current(self, now: float) -> WindowCode:
        return WindowCode("123456", int(now // 30), (now // 30 + 1) * 30, 1.0)

    def claim(self, window: WindowCode, run_id: str, scope: str) -> bool:
        return False  # another run had this window's code

    def close(self) -> None:
        pass


@pytest.mark.parametrize("run_id, run_type, standalone", [
    ("tsk_1", "task_v1", True), ("tsk_v2_1", "task_v2", False), ("wr_1", "workflow_run", False)])
def test_pusher_states_the_standalone_task_limit(run_id: str, run_type: str, standalone: bool) -> None:
    events = []
    pusher = Pusher(SkyvernClient("http://127.0.0.1:9", API_KEY), _Source(), run_id, run_type,
                    on_event=events.append)
    pusher.tick({"status": "running", "started_at": "x"}, 1.0)
    assert len(events) == 1 and events[0].kind == "skipped"
    assert ("standalone task run take a code pushed for another run" in events[0].message) is standalone
    assert pusher.pushes == 0


def test_simulator_command_serves_saved_agents(tmp_path: Path) -> None:
    agent_file = tmp_path / "agent.json"
    agent_file.write_text(json.dumps({"workflow_permanent_id": "wpid_try", **AGENTS["wpid_ident"]}), "utf-8")
    (tmp_path / "secret.txt").write_text(SECRET + "\n", "utf-8")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOTP_SERVICE_", "SKYVERN_"))}
    env.update({"SKYVERN_API_KEY": API_KEY, "PYTHONPATH": str(REPO), "TOTP_SERVICE_DATA_DIR": str(tmp_path / "d")})
    proc = subprocess.Popen([sys.executable, "-m", "totp_service", "simulator", "--port", str(port), "--agent",
                             str(agent_file), "--secret-file", str(tmp_path / "secret.txt")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert f"Skyvern simulator on http://127.0.0.1:{port} (API key: from SKYVERN_API_KEY)" in first
        assert "agent wpid_try" in proc.stdout.readline()

        def read() -> httpx.Response | None:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/v1/workflows/wpid_try", headers={"x-api-key": API_KEY})
            except httpx.TransportError:
                return None

        answer = wait_until(read, what="the simulator to answer")
        assert answer.json()["workflow_definition"]["blocks"][0]["totp_identifier"] == "{{ login_id }}"
        other = httpx.post(f"http://127.0.0.1:{port}/v1/run/agents", headers={"x-api-key": API_KEY},
                           json={"agent_id": "wpid_other", "totp_identifier": IDENTIFIER})
        assert other.status_code == 404  # only the loaded agents exist
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def test_push_to_a_run_started_elsewhere_checks_its_blocks(env: Env) -> None:
    """`push RUN_ID` reads the agent: a run whose parameters give its block another identifier is named."""
    def attach(parameters: dict[str, Any]) -> tuple[str, list[str]]:
        started = env.client().run_agent({"agent_id": "wpid_ident", "parameters": parameters})
        notes: list[str] = []
        stop = threading.Event()

        def on_event(event: Any) -> None:
            if event.kind == "note":
                notes.append(event.message)
                stop.set()  # seen what we wanted: stop pushing (the run is left alone)

        outcome = attach_pusher(env.settings, started["run_id"], IDENTIFIER, client=env.client(), on_event=on_event,
                                stop=stop)
        return outcome.status, notes

    assert attach({"login_id": IDENTIFIER}) == ("completed", [])
    status, notes = attach({"login_id": "bob@example.com"})
    assert status != "completed" and len(notes) == 1 and "another totp_identifier" in notes[0]
