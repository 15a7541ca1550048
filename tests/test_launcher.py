"""The launcher's Python API end to end: real simulator, real service, real SQLite, real HTTP."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyotp
import pytest
from helpers_launch import (
    AGENT,
    API_KEY,
    IDENTIFIER,
    MIN_VALIDITY,
    PERIOD,
    READER_TOKEN,
    SECRET,
    Env,
    Sim,
    agent_parameter,
    login_agent,
    make_env,
    parse_utc,
    service,
    simulator,
    wait_until,
)

from totp_service import attach_pusher, launch_agent, launch_task, totp_url
from totp_service.launcher.client import SkyvernRunStartUnknown
from totp_service.launcher.pusher import CodeSourceError
from totp_service.launcher.request import RequestError
from totp_service.launcher.runs import CloudNeedsPush, RunOutcome, ServiceNotReady, url_token


@pytest.fixture
def sim() -> Iterator[Sim]:
    with simulator() as s:
        s.state.add_secret(SECRET, period=PERIOD, totp_identifier=IDENTIFIER)  # task runs, push mode
        s.state.add_secret(SECRET, period=PERIOD, agent_id=AGENT)  # the agent's login, either mode
        yield s


@pytest.fixture
def env(tmp_path: Path, sim: Sim) -> Env:
    return make_env(tmp_path, sim)


def test_push_mode_repushes_once_running_and_completes(tmp_path: Path) -> None:
    # a long queue: the push made at creation lands before started_at, so Skyvern ignores it
    with simulator(queue_delay=2.0) as sim:  # 1 s: a slow creation push (loaded CI) landed after started_at
        sim.state.add_secret(SECRET, period=PERIOD, totp_identifier=IDENTIFIER)
        env = make_env(tmp_path, sim)
        with env.client() as client:
            outcome = launch_agent(env.settings, AGENT, IDENTIFIER, mode="push", client=client)
        final = sim.state.run(outcome.run_id)
        body = sim.requests("/v1/run/agents")[0]["json"]
    assert outcome.status == "completed" and outcome.exit_code == 0, final["failure_reason"]
    assert final["code_source"] == "pushed"
    started = parse_utc(final["started_at"])
    rows = sim.push_rows()
    before = [r for r in rows if parse_utc(r["created_at"]) < started]
    after = [r for r in rows if parse_utc(r["created_at"]) >= started]
    assert before and after, "expected one push at creation and one once the run was seen running"
    assert outcome.pushes == len(rows)
    for row in rows:
        assert row["workflow_run_id"] == outcome.run_id and row["task_id"] is None
        assert row["content"] and row["source"] == "totp-service"
        # expired_at = end of the code's window - min_validity_seconds
        end = parse_utc(row["expired_at"]) + MIN_VALIDITY
        assert abs(end / PERIOD - round(end / PERIOD)) < 1e-3
        assert parse_utc(row["created_at"]) < parse_utc(row["expired_at"])
    assert body == {"agent_id": AGENT, "totp_identifier": IDENTIFIER, "parameters": {"totp_identifier": IDENTIFIER}}
    assert outcome.wiring is not None and outcome.wiring.lines() == [
        f"block 'sign_in' (login): totp_identifier <- parameters.totp_identifier = {IDENTIFIER}"]


def test_code_pushed_before_start_does_not_complete_the_run(tmp_path: Path) -> None:
    """Without the re-push on `running`, the creation push alone never completes the run."""
    with simulator(queue_delay=0.8, code_wait_timeout=1.5) as sim:
        sim.state.add_secret(SECRET, period=PERIOD, totp_identifier=IDENTIFIER)
        env = make_env(tmp_path, sim)
        with env.client() as client:
            run = client.run_agent({"agent_id": AGENT, "parameters": {"totp_identifier": IDENTIFIER}})
            code = pyotp.TOTP(SECRET, interval=PERIOD).now()
            client.push_code(IDENTIFIER, code, expired_at=None, workflow_run_id=run["run_id"])
        final = sim.state.wait_for_run(run["run_id"], timeout=10)
    assert final["status"] == "timed_out"


def test_url_mode_completes_with_signed_pull(env: Env) -> None:
    with service(env) as base:
        outcome = launch_agent(env.settings, AGENT, IDENTIFIER, mode="url", client=env.client())
        final = env.sim.state.run(outcome.run_id)
    assert outcome.status == "completed", final["failure_reason"]
    assert final["code_source"] == "totp_url" and "200 (code)" in final["totp_answers"]
    token = url_token(env.settings, IDENTIFIER)  # the URL's ?k=: the pull carried it (require_url_token)
    assert final["run_request"]["totp_url"] == f"{base}/totp/alice%40example.com?k={token}" \
        == totp_url(env.settings, IDENTIFIER)
    assert final["run_request"]["parameters"] == {"totp_url": totp_url(env.settings, IDENTIFIER)}
    assert final["block_tasks"][0]["totp_url"] == totp_url(env.settings, IDENTIFIER)
    assert "totp_identifier" not in final["run_request"]
    assert env.sim.push_rows() == []


def test_totp_param_carries_url_and_identifier_to_blocks(tmp_path: Path) -> None:
    with simulator() as sim:
        # the login blocks read their TOTP source only from a workflow parameter
        sim.state.define_agent(login_agent([agent_parameter("otp"), agent_parameter("plan")],
                                           totp_verification_url="{{ otp }}"), "wpid_url_block")
        sim.state.define_agent(login_agent([agent_parameter("who")], totp_identifier="{{who}}"), "wpid_push_block")
        sim.state.add_secret(SECRET, period=PERIOD, agent_id="wpid_url_block")
        sim.state.add_secret(SECRET, period=PERIOD, agent_id="wpid_push_block")
        env = make_env(tmp_path, sim)
        with service(env):
            url_run = launch_agent(env.settings, "wpid_url_block", IDENTIFIER, mode="url", totp_param="otp",
                                   request={"parameters": {"plan": "pro"}}, client=env.client())
        push_run = launch_agent(env.settings, "wpid_push_block", IDENTIFIER, mode="push", totp_param="who",
                                client=env.client())
    assert url_run.status == "completed" and push_run.status == "completed"
    assert url_run.run["run_request"]["parameters"] == {"plan": "pro", "otp": totp_url(env.settings, IDENTIFIER)}
    assert push_run.run["run_request"]["parameters"] == {"who": IDENTIFIER}


def test_attach_to_run_started_with_plain_httpx(env: Env) -> None:
    started = httpx.post(f"{env.sim.base}/v1/run/agents", headers={"x-api-key": API_KEY},
                         json={"agent_id": AGENT, "totp_identifier": IDENTIFIER,
                               "parameters": {"totp_identifier": IDENTIFIER}}).json()
    outcome = attach_pusher(env.settings, started["run_id"], IDENTIFIER, client=env.client())
    assert outcome.status == "completed", outcome.run["failure_reason"]
    assert outcome.pushes >= 1
    assert all(r["workflow_run_id"] == started["run_id"] for r in env.sim.push_rows())
    assert len(env.sim.state.list_runs()) == 1


def test_task_run_pushes_scoped_by_task_id(env: Env) -> None:
    outcome = launch_task(env.settings, "log in and read the balance", IDENTIFIER, url="https://bank.example",
                          mode="push", request={"engine": "skyvern-2.0"}, max_steps=5, client=env.client())
    assert outcome.status == "completed", outcome.run["failure_reason"]
    rows = env.sim.push_rows()
    assert rows and all(r["task_id"] == outcome.run_id and r["workflow_run_id"] is None for r in rows)
    recorded = env.sim.requests("/v1/run/tasks")
    assert recorded[0]["json"] == {"prompt": "log in and read the balance", "url": "https://bank.example",
                                   "engine": "skyvern-2.0", "totp_identifier": IDENTIFIER, "max_steps": 5}
    assert "x-max-steps-override" not in recorded[0]["headers"]  # /v1/run/tasks reads the body field


def test_429_and_5xx_on_pushes_and_status_reads_are_survived(env: Env) -> None:
    sim = env.sim
    sim.fault("/v1/credentials/totp", 429, 2, retry_after=0.1)
    sim.fault("/v1/credentials/totp", 503, 2)
    sim.fault("/v1/runs/", 502, 2)
    sim.fault("/v1/runs/", 429, 1, retry_after=0.1)
    events = []
    # a client that gives up quickly: one push fails outright and must be retried at the next tick
    with env.client(max_retries=1) as client:
        outcome = launch_agent(env.settings, AGENT, IDENTIFIER, mode="push", client=client, on_event=events.append)
    assert outcome.status == "completed", outcome.run["failure_reason"]
    statuses = [r["path"] for r in sim.requests()]
    assert statuses.count("/v1/run/agents") == 1
    assert any(e.kind in ("push_failed", "status_failed") for e in events)
    assert all(f["count"] == 0 for f in sim.state.faults), "every injected fault was hit"
    assert len(sim.state.list_runs()) == 1


def test_run_start_is_never_sent_twice(env: Env) -> None:
    sim = env.sim
    # the run is created but the answer is lost (5xx after the work): never retried
    sim.fault("/v1/run/agents", 503, 1, after=True)
    with pytest.raises(SkyvernRunStartUnknown):
        launch_agent(env.settings, AGENT, IDENTIFIER, mode="push", client=env.client())
    assert len(sim.requests("/v1/run/agents")) == 1 and len(sim.state.list_runs()) == 1
    # a 429 is refused before any handler runs: retried, and still one more run only
    sim.fault("/v1/run/agents", 429, 1, retry_after=0.05)
    outcome = launch_agent(env.settings, AGENT, IDENTIFIER, mode="push", client=env.client())
    assert outcome.status == "completed"
    assert len(sim.requests("/v1/run/agents")) == 3 and len(sim.state.list_runs()) == 2


def test_stop_event_cancels_the_run(tmp_path: Path) -> None:
    with simulator(queue_delay=30) as sim:
        sim.state.add_secret(SECRET, period=PERIOD, totp_identifier=IDENTIFIER)
        env = make_env(tmp_path, sim)
        stop = threading.Event()
        results: list[RunOutcome] = []
        worker = threading.Thread(target=lambda: results.append(
            launch_agent(env.settings, AGENT, IDENTIFIER, mode="push", client=env.client(), stop=stop)))
        worker.start()
        wait_until(lambda: sim.state.list_runs(), what="the run")
        stop.set()
        worker.join(10)
        run_id = sim.state.list_runs()[0]["run_id"]
        assert sim.state.run(run_id)["status"] == "canceled"
    assert results[0].interrupted and results[0].exit_code == 130 and results[0].status == "canceled"


def test_remote_code_source(tmp_path: Path, sim: Sim) -> None:
    env = make_env(tmp_path, sim)
    with service(env) as base:
        env.settings.launcher.code_source = "remote"
        env.settings.launcher.remote_url = base
        env.settings.launcher.reader_token = READER_TOKEN
        outcome = launch_agent(env.settings, AGENT, IDENTIFIER, mode="push", client=env.client())
        assert outcome.status == "completed", outcome.run["failure_reason"]
        with pytest.raises(CodeSourceError, match="no secret"):
            launch_agent(env.settings, AGENT, "bob@example.com", mode="push", client=env.client())
        env.settings.launcher.reader_token = "x" * 32
        with pytest.raises(CodeSourceError, match="refused the reader token"):
            launch_agent(env.settings, AGENT, IDENTIFIER, mode="push", client=env.client())
    assert len(sim.state.list_runs()) == 1


def test_local_checks_fail_before_any_request(env: Env) -> None:
    settings = env.settings
    cases = [
        (RequestError, dict(agent_id="agent-1")),
        (RequestError, dict(request={"proxy_location": "MARS"})),
        (RequestError, dict(request={"max_elapsed_time_minutes": 241})),
        (RequestError, dict(request={"totp_url": "http://elsewhere/totp"})),
        (RequestError, dict(request={"unknown_field": 1})),
        (RequestError, dict(mode="url", wait=False, request={"run_with": "magic"})),
        (RequestError, dict(mode="push", wait=False)),
        (RequestError, dict(max_steps=0)),
        (CodeSourceError, dict(identifier="nobody@example.com")),
        (ServiceNotReady, dict(mode="url")),  # the service is not running
    ]
    for error, options in cases:
        kwargs = {"mode": "push", **options}
        agent_id = kwargs.pop("agent_id", AGENT)
        identifier = kwargs.pop("identifier", IDENTIFIER)
        with pytest.raises(error):
            launch_agent(settings, agent_id, identifier, client=env.client(), **kwargs)
    settings.skyvern.base_url = "https://api.skyvern.com"
    with pytest.raises(CloudNeedsPush, match="push"):
        launch_agent(settings, AGENT, IDENTIFIER, mode="url")
    assert env.sim.requests() == []


def test_exit_codes_per_final_status() -> None:
    codes = {s: RunOutcome({"status": s}).exit_code
             for s in ("completed", "failed", "terminated", "canceled", "timed_out", "running")}
    assert codes == {"completed": 0, "failed": 3, "terminated": 4, "canceled": 5, "timed_out": 6, "running": 1}


def test_code_too_close_to_expiry_waits_for_the_next_window(env: Env) -> None:
    from totp_service.launcher.pusher import LocalCodeSource, Pusher
    from totp_service.store.open import open_store

    env.sim.state.define_agent(login_agent([], navigation_goal="sign in"), "wpid_no_login")  # asks for no code
    started = httpx.post(f"{env.sim.base}/v1/run/agents", headers={"x-api-key": API_KEY},
                         json={"agent_id": "wpid_no_login"}).json()
    base = (int(time.time()) // PERIOD + 1000) * PERIOD  # a window well in the future
    now = [base + PERIOD - MIN_VALIDITY / 2]  # half of min_validity left: too late for this code
    events = []
    running = {"run_id": started["run_id"], "status": "running", "started_at": "2030-01-01T00:00:00"}
    with open_store(env.settings) as store, env.client() as client:
        source = LocalCodeSource(store, IDENTIFIER, min_validity=MIN_VALIDITY)
        pusher = Pusher(client, source, started["run_id"], "workflow_run", on_event=events.append, clock=lambda: now[0])
        wait = pusher.tick(running, 0.1)
        assert pusher.pushes == 0 and [e.kind for e in events] == ["waiting"]
        assert MIN_VALIDITY / 2 < wait < MIN_VALIDITY / 2 + 0.1
        now[0] = base + PERIOD + 0.01  # the next window opens
        wait = pusher.tick(running, 0.1)
        assert pusher.pushes == 1 and PERIOD - 0.1 < wait < PERIOD + 0.1
        now[0] += 0.5  # same window: nothing new to push
        pusher.tick(running, 0.1)
        assert pusher.pushes == 1
        now[0] = base + 2 * PERIOD + 0.01  # each new window: a new push
        pusher.tick(running, 0.1)
        assert pusher.pushes == 2
    rows = env.sim.push_rows()
    assert [parse_utc(r["expired_at"]) for r in rows] == [base + 2 * PERIOD - MIN_VALIDITY,
                                                          base + 3 * PERIOD - MIN_VALIDITY]
    assert all(r["content"] for r in rows)


def test_a_local_code_source_prunes_old_single_use_claims(env: Env) -> None:
    from totp_service.launcher.pusher import LocalCodeSource
    from totp_service.store import CLAIM_RETENTION_SECONDS, AuditEntry
    from totp_service.store.open import open_store

    with open_store(env.settings) as store:
        entry = AuditEntry(outcome="pushed", identifier=IDENTIFIER, route="push")
        old_window = int((time.time() - CLAIM_RETENTION_SECONDS - 3600) // PERIOD)
        current = int(time.time() // PERIOD)
        assert store.write_audit([(entry, (IDENTIFIER, old_window)), (entry, (IDENTIFIER, current))]) == [True, True]
        store._conn.execute("UPDATE served SET at = ? WHERE counter = ?",  # claimed two days ago
                            (time.time() - 2 * CLAIM_RETENTION_SECONDS, old_window))
        LocalCodeSource(store, IDENTIFIER, min_validity=MIN_VALIDITY)
        assert not store.is_claimed(IDENTIFIER, old_window)
        assert store.is_claimed(IDENTIFIER, current)  # a window that can still come round is kept
