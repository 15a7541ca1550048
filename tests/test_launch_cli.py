"""`totp-service launch | launch-task | push | url` over real HTTP against the simulator."""

from __future__ import annotations

import io
import json
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers_launch import (
    AGENT,
    API_KEY,
    IDENTIFIER,
    PERIOD,
    SECRET,
    Env,
    Sim,
    cli_process,
    login_agent,
    make_env,
    service,
    simulator,
    wait_until,
)

from totp_service.launcher.urls import url_token
from totp_service.cli.launch import StatusPrinter
from totp_service.launcher.runs import LaunchEvent

OTHER_SECRET = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"


@pytest.fixture
def sim() -> Iterator[Sim]:
    with simulator() as s:
        s.state.add_secret(SECRET, period=PERIOD, totp_identifier=IDENTIFIER)
        s.state.add_secret(SECRET, period=PERIOD, agent_id=AGENT)
        yield s


@pytest.fixture
def env(tmp_path: Path, sim: Sim, monkeypatch: pytest.MonkeyPatch) -> Env:
    made = make_env(tmp_path, sim)
    made.apply(monkeypatch)
    return made


def test_every_seed_flag_arrives_exactly(env: Env, run_cli: Any, tmp_path: Path) -> None:
    params_file = tmp_path / "params.json"
    params_file.write_text(json.dumps({"a": 0, "d": "from file"}), "utf-8")
    result = run_cli(
        "launch", AGENT, "--identifier", IDENTIFIER, "--mode", "push",
        "--param", "a=1", "--param", "b=text", "--param", 'c={"x": [1, 2]}', "--params-file", str(params_file),
        "--title", "Nightly login", "--geo", "us/ca/San Francisco", "--webhook-url", "https://hooks.example/done",
        "--browser-session-id", "pbs_123", "--browser-profile-id", "bp_456", "--max-screenshot-scrolls", "3",
        "--max-minutes", "30", "--header", "X-Trace: abc", "--header", "Accept-Language:fr",
        "--cdp-header", "Authorization: Bearer cdp", "--browser-address", "http://127.0.0.1:9222",
        "--no-ai-fallback", "--run-with", "code", "--metadata", "team=qa", "--metadata", "ticket=42",
        "--max-steps", "7", "--totp-param", "who", "--json",
    )
    assert result.code == 0, result.err
    assert json.loads(result.out)["status"] == "completed"
    recorded = env.sim.requests("/v1/run/agents")
    assert len(recorded) == 1
    assert recorded[0]["json"] == {
        "agent_id": AGENT,
        "parameters": {"a": 1, "d": "from file", "b": "text", "c": {"x": [1, 2]}, "who": IDENTIFIER,
                       "totp_identifier": IDENTIFIER},  # what the block reads, and --totp-param's NAME
        "title": "Nightly login",
        "proxy_location": {"country": "US", "subdivision": "CA", "city": "San Francisco"},
        "webhook_url": "https://hooks.example/done",
        "browser_session_id": "pbs_123",
        "browser_profile_id": "bp_456",
        "max_screenshot_scrolls": 3,
        "max_elapsed_time_minutes": 30,
        "extra_http_headers": {"X-Trace": "abc", "Accept-Language": "fr"},
        "cdp_connect_headers": {"Authorization": "Bearer cdp"},
        "browser_address": "http://127.0.0.1:9222",
        "ai_fallback": False,
        "run_with": "code",
        "run_metadata": {"team": "qa", "ticket": "42"},
        "totp_identifier": IDENTIFIER,
    }
    assert recorded[0]["headers"]["x-max-steps-override"] == "7"

    for flags, proxy in ((["--proxy-location", "RESIDENTIAL_GB", "--ai-fallback"], "RESIDENTIAL_GB"),
                         (["--proxy-url", "http://u:p@proxy.example:3128"], {"url": "http://u:p@proxy.example:3128"})):
        assert run_cli("launch", AGENT, "--identifier", IDENTIFIER, "--mode", "push", *flags).code == 0
        body = env.sim.requests("/v1/run/agents")[-1]["json"]
        assert body["proxy_location"] == proxy
    assert body == {"agent_id": AGENT, "proxy_location": proxy, "totp_identifier": IDENTIFIER,
                    "parameters": {"totp_identifier": IDENTIFIER}}
    assert run_cli("launch", AGENT, "--identifier", IDENTIFIER, "--mode", "push", "--browser-type", "msedge",
                   "--file-id", "file_1", "--file-id", "file_2").code == 0
    body = env.sim.requests("/v1/run/agents")[-1]["json"]
    assert body["browser_type"] == "msedge" and body["file_ids"] == ["file_1", "file_2"]


def test_task_flags_arrive_exactly(env: Env, run_cli: Any) -> None:
    result = run_cli("launch-task", "--prompt", "Log in", "--url", "https://bank.example", "--identifier", IDENTIFIER,
                     "--mode", "push", "--engine", "skyvern-1.0", "--data-extraction-schema", '{"type": "object"}',
                     "--error-code", "LOCKED=account locked", "--title", "T", "--header", "X-A: 1", "--max-steps", "3")
    assert result.code == 0, result.err
    recorded = env.sim.requests("/v1/run/tasks")[0]
    assert recorded["json"] == {"prompt": "Log in", "url": "https://bank.example", "engine": "skyvern-1.0",
                                "data_extraction_schema": {"type": "object"},
                                "error_code_mapping": {"LOCKED": "account locked"}, "title": "T",
                                "extra_http_headers": {"X-A": "1"}, "totp_identifier": IDENTIFIER, "max_steps": 3}
    assert "x-max-steps-override" not in recorded["headers"]  # /v1/run/tasks reads max_steps from the body
    assert "completed" in result.out


BAD_COMMANDS = [
    (["launch", "agent-1"], 2, "not an agent id"),
    (["launch", AGENT, "--proxy-location", "MARS"], 2, "unknown proxy location"),
    (["launch", AGENT, "--max-minutes", "0"], 2, "between 1 and 240"),
    (["launch", AGENT, "--max-minutes", "241"], 2, "between 1 and 240"),
    (["launch", AGENT, "--param", "novalue"], 2, "--param takes"),
    (["launch", AGENT, "--header", "NoColon"], 2, "--header takes"),
    (["launch", AGENT, "--metadata", "=x"], 2, "--metadata takes"),
    (["launch", AGENT, "--geo", "USA"], 2, "two-letter"),
    (["launch", AGENT, "--proxy-location", "NONE", "--geo", "US"], 2, "only one of"),
    (["launch", AGENT, "--browser-session-id", "sess_1"], 2, "pbs_"),
    (["launch", AGENT, "--params-file", "/nonexistent/params.json"], 2, "cannot read"),
    (["launch", AGENT, "--max-steps", "0"], 2, "--max-steps"),
    (["launch", AGENT, "--webhook-url", "not a url"], 2, "webhook_url"),
    (["launch", AGENT, "--no-wait"], 2, "url mode only"),
    (["launch", AGENT, "--browser-type", "msedge", "--browser-session-id", "pbs_1"], 2, "cannot be combined"),
    (["launch", AGENT, *[f"--file-id=f{n}" for n in range(51)]], 2, "at most 50"),
    (["launch-task", "--prompt", "x", "--url", "ftp://x"], 2, "url"),
    (["launch", AGENT, "--identifier", "nobody@example.com"], 1, "no secret for 'nobody@example.com'"),
    (["launch", AGENT, "--mode", "url"], 1, "does not answer"),
]


@pytest.mark.parametrize("argv, code, message", BAD_COMMANDS, ids=[" ".join(c[0][1:3]) for c in BAD_COMMANDS])
def test_local_errors_before_any_request(env: Env, run_cli: Any, argv: list[str], code: int, message: str) -> None:
    if "--identifier" not in argv:
        argv = [*argv, "--identifier", IDENTIFIER]
    if "--mode" not in argv:
        argv = [*argv, "--mode", "push"]
    result = run_cli(*argv)
    assert result.code == code, result.err
    assert message in result.err and result.err.count("\n") == 1
    assert env.sim.requests() == []


def test_cloud_with_loopback_url_suggests_push(env: Env, run_cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKYVERN_BASE_URL", "https://api.skyvern.com")
    result = run_cli("launch", AGENT, "--identifier", IDENTIFIER, "--mode", "url")
    assert result.code == 2 and "--mode push" in result.err and "blocked host" in result.err


def test_url_mode_and_no_wait(env: Env, run_cli: Any) -> None:
    with service(env):
        waited = run_cli("launch", AGENT, "--identifier", IDENTIFIER, "--mode", "url")
        assert waited.code == 0, waited.err
        assert "completed" in waited.out
        started = run_cli("launch", AGENT, "--identifier", IDENTIFIER, "--no-wait")  # url is the default mode
        assert started.code == 0, started.err
        run_id = started.out.strip()
        assert run_id.startswith("wr_")
        assert env.sim.state.wait_for_run(run_id, timeout=15)["status"] == "completed"
    assert "totp-service: [" in waited.err and "\r" not in waited.err  # plain log lines off a TTY


def test_push_attaches_to_a_run_started_elsewhere(env: Env, run_cli: Any) -> None:
    started = httpx.post(f"{env.sim.base}/v1/run/agents", headers={"x-api-key": API_KEY},
                         json={"agent_id": AGENT, "parameters": {"totp_identifier": IDENTIFIER}}).json()
    result = run_cli("push", started["run_id"], "--identifier", IDENTIFIER, "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["status"] == "completed"
    assert len(env.sim.requests("/v1/run/agents")) == 1


def test_faults_survived_from_the_command_line(env: Env, run_cli: Any) -> None:
    env.sim.fault("/v1/credentials/totp", 429, 1, retry_after=0.1)
    env.sim.fault("/v1/credentials/totp", 500, 1)
    env.sim.fault("/v1/runs/", 503, 1)
    env.sim.fault("/v1/runs/", 429, 1, retry_after=0.1)
    result = run_cli("launch", AGENT, "--identifier", IDENTIFIER, "--mode", "push")
    assert result.code == 0, result.err
    assert all(f["count"] == 0 for f in env.sim.state.faults)
    assert len(env.sim.state.list_runs()) == 1


def test_failed_run_exits_3(env: Env, run_cli: Any) -> None:
    env.sim.state.add_secret(OTHER_SECRET, period=PERIOD, agent_id="wpid_other_site")
    env.sim.state.define_agent(login_agent(), "wpid_other_site")
    result = run_cli("launch", "wpid_other_site", "--identifier", IDENTIFIER, "--mode", "push")
    assert result.code == 3
    assert "failed" in result.out and "wrong or expired" in result.out


def test_url_command(env: Env, run_cli: Any) -> None:
    result = run_cli("url", "Alice@Example.com")
    assert result.code == 0
    token = url_token(env.settings, "alice@example.com")  # the URL's ?k= (server.require_url_token)
    assert result.out.strip() == f"{env.settings.server.effective_public_url}/totp/alice%40example.com?k={token}"
    as_json = json.loads(run_cli("url", "alice@example.com", "--json").out)
    assert as_json["token"] == token and as_json["bound_url"].endswith(f"/totp?k={url_token(env.settings, None)}")
    unknown = run_cli("url", "Nobody@Example.com")
    assert unknown.code == 1 and unknown.out == ""
    assert unknown.err == "totp-service: error: no secret for 'nobody@example.com'\n"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupt_cancels_the_run_and_exits_130(tmp_path: Path, sig: signal.Signals) -> None:
    with simulator(queue_delay=60) as sim:
        sim.state.add_secret(SECRET, period=PERIOD, agent_id=AGENT)
        env = make_env(tmp_path, sim)
        # the run exists and the follower has started (it pushed at creation, or read the status)
        err = _interrupt_push_launch(env, sig, lambda: sim.state.list_runs() and sim.requests("/v1/runs/"))
        runs = sim.state.list_runs()
        assert len(runs) == 1 and runs[0]["status"] == "canceled"
        assert len(sim.requests(f"/v1/runs/{runs[0]['run_id']}/cancel")) == 1
    assert "canceled" in err and "Traceback" not in err


def _interrupt_push_launch(env: dict[str, str], sig: signal.Signals, ready: Callable[[], object]) -> str:
    """Start `launch --mode push`, send `sig` once `ready()` holds, expect exit 130; return stderr."""
    proc = cli_process(env, "launch", AGENT, "--identifier", IDENTIFIER, "--mode", "push")
    try:
        wait_until(ready, timeout=20, what="the launch to reach the point of interruption")
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    return err


def test_live_status_line_on_a_tty() -> None:
    stream = io.StringIO()
    printer = StatusPrinter(stream, live=True)
    printer(LaunchEvent("tick", "", "wr_1", "running", 2, 12.3))
    printer(LaunchEvent("push_failed", "push failed, will retry", "wr_1", "running", 2, 13.0))
    printer.done()
    text = stream.getvalue()
    assert text.startswith("\r\x1b[2Kwr_1  running     12s  codes pushed: 2")
    assert "totp-service: push failed, will retry\n" in text and text.endswith("\n")


def test_interrupt_while_the_run_is_being_created_still_cancels_it(tmp_path: Path) -> None:
    with simulator(queue_delay=60) as sim:
        sim.state.add_secret(SECRET, period=PERIOD, agent_id=AGENT)
        sim.state.add_fault("/v1/run/agents", None, 1, delay=1.5)  # a slow start request
        env = make_env(tmp_path, sim)
        err = _interrupt_push_launch(env, signal.SIGINT, lambda: sim.requests("/v1/run/agents"))
        runs = sim.state.list_runs()
        assert len(runs) == 1 and runs[0]["status"] == "canceled"
    assert "as soon as the run id is known" in err
