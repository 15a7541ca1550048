"""SkyvernClient against the simulator over real HTTP: calls, retries, run-start safety, errors."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
from helpers_launch import AGENT, API_KEY, simulator

from totp_service.launcher.client import (
    FINAL_STATUSES,
    SkyvernAuthError,
    SkyvernBlockedHost,
    SkyvernClient,
    SkyvernConfigError,
    SkyvernNotFound,
    SkyvernRunStartUnknown,
    SkyvernUnavailable,
    SkyvernValidationError,
)
from totp_service.service.servers import free_port
from totp_service.simulator.app import SimulatorState

FAST = dict(poll_interval=0.1, first_poll_delay=0.05, queue_delay=0.05, typing_delay=0.1, code_wait_timeout=30.0)


@pytest.fixture()
def sim() -> Iterator[tuple[str, SimulatorState]]:
    with simulator(**FAST) as s:  # AGENT is a saved agent there (runs of any other wpid_ are 404)
        yield s.base, s.state


@pytest.fixture()
def client(sim: tuple[str, SimulatorState]) -> Iterator[SkyvernClient]:
    with SkyvernClient(sim[0], API_KEY, timeout=5.0, max_retries=3, backoff=0.02) as skyvern:
        yield skyvern


def test_run_get_cancel(client: SkyvernClient, sim: tuple[str, SimulatorState]) -> None:
    _, state = sim
    seed = {"agent_id": AGENT, "parameters": {"email": "a@b.c"}, "title": "t", "proxy_location": "RESIDENTIAL",
            "totp_identifier": "a@b.c", "run_metadata": {"k": "v"}, "max_elapsed_time_minutes": 5}
    run = client.run_agent(seed, max_steps=7)
    assert run["run_id"].startswith("wr_")
    created = state.requests("/v1/run/agents")
    assert len(created) == 1 and created[0]["json"] == seed
    assert created[0]["headers"]["x-max-steps-override"] == "7"
    assert created[0]["headers"]["x-api-key"] == API_KEY
    assert client.get_run(run["run_id"])["run_id"] == run["run_id"]
    client.cancel_run(run["run_id"])
    assert client.get_run(run["run_id"])["status"] == "canceled" in FINAL_STATUSES
    task = client.run_task({"prompt": "log in", "url": "https://example.com"})
    assert task["run_id"].startswith("tsk_") and task["run_type"] == "task_v1"  # engine skyvern-1.0
    assert "x-max-steps-override" not in state.requests("/v1/run/tasks")[0]["headers"]


def test_push_and_list(client: SkyvernClient, sim: tuple[str, SimulatorState]) -> None:
    _, state = sim
    run = client.run_agent({"agent_id": AGENT})
    expires = datetime(2030, 1, 1, 12, 0, 30, tzinfo=timezone(timedelta(hours=2)))
    row = client.push_code("Bob@Example.com", "012345", expired_at=expires, workflow_run_id=run["run_id"])
    assert row["code"] == "012345" and row["totp_identifier"] == "bob@example.com"
    sent = state.requests("/v1/credentials/totp", "POST")[0]["json"]
    assert sent == {"totp_identifier": "Bob@Example.com", "content": "012345", "source": "totp-service",
                    "expired_at": "2030-01-01T10:00:30.000Z", "workflow_run_id": run["run_id"]}
    listed = client.list_codes("bob@example.com", workflow_run_id=run["run_id"], limit=5)
    assert [r["code"] for r in listed] == ["012345"]


def test_empty_code_refused_locally(client: SkyvernClient, sim: tuple[str, SimulatorState]) -> None:
    with pytest.raises(SkyvernValidationError):
        client.push_code("bob", "  ", expired_at=None)
    assert sim[1].requests() == []


def test_429_with_retry_after_and_5xx_survived(client: SkyvernClient, sim: tuple[str, SimulatorState]) -> None:
    _, state = sim
    run = client.run_agent({"agent_id": AGENT})
    state.add_fault("/v1/runs/", 429, 1, retry_after=1)
    state.add_fault("/v1/runs/", 503, 1)
    started = time.monotonic()
    assert client.get_run(run["run_id"])["run_id"] == run["run_id"]
    assert time.monotonic() - started >= 1.0
    assert len(state.requests("/v1/runs/")) == 3
    state.add_fault("/v1/credentials/totp", 500, 2, method="POST")
    client.push_code("bob", "123456", expired_at=None)
    assert len(state.requests("/v1/credentials/totp")) == 3 and len(state.pushed_codes()) == 1


def test_read_timeout_on_reads_is_retried(sim: tuple[str, SimulatorState]) -> None:
    base, state = sim
    with SkyvernClient(base, API_KEY, timeout=0.3, backoff=0.01) as skyvern:
        run = skyvern.run_agent({"agent_id": AGENT})
        state.add_fault("/v1/runs/", None, 1, delay=1.0)
        assert skyvern.get_run(run["run_id"])["run_id"] == run["run_id"]


def test_run_start_not_retried_on_5xx(client: SkyvernClient, sim: tuple[str, SimulatorState]) -> None:
    _, state = sim
    state.add_fault("/v1/run/agents", 500, 1, after=True)
    with pytest.raises(SkyvernRunStartUnknown) as caught:
        client.run_agent({"agent_id": AGENT})
    assert caught.value.status_code == 500
    assert len(state.requests("/v1/run/agents")) == 1 and len(state.list_runs()) == 1


def test_run_start_not_retried_on_read_timeout(sim: tuple[str, SimulatorState]) -> None:
    base, state = sim
    state.add_fault("/v1/run/agents", None, 1, delay=1.0, after=True)
    with SkyvernClient(base, API_KEY, timeout=0.3, backoff=0.01) as skyvern:
        with pytest.raises(SkyvernRunStartUnknown):
            skyvern.run_agent({"agent_id": AGENT})
    time.sleep(0.8)
    assert len(state.requests("/v1/run/agents")) == 1 and len(state.list_runs()) == 1


def test_run_start_retried_on_429(client: SkyvernClient, sim: tuple[str, SimulatorState]) -> None:
    _, state = sim
    state.add_fault("/v1/run/agents", 429, 1, retry_after=0)
    client.run_agent({"agent_id": AGENT})
    assert len(state.requests("/v1/run/agents")) == 2 and len(state.list_runs()) == 1


def test_connection_refused_retried_then_unavailable() -> None:
    with SkyvernClient(f"http://127.0.0.1:{free_port()}", API_KEY, max_retries=2, backoff=0.01) as skyvern:
        with pytest.raises(SkyvernUnavailable) as caught:
            skyvern.run_agent({"agent_id": AGENT})
    assert "3 attempts" in str(caught.value) and not isinstance(caught.value, SkyvernRunStartUnknown)


def test_retries_exhausted(client: SkyvernClient, sim: tuple[str, SimulatorState]) -> None:
    _, state = sim
    state.add_fault("/v1/credentials/totp", 503, -1)
    with pytest.raises(SkyvernUnavailable) as caught:
        client.push_code("bob", "987654", expired_at=None)
    assert "987654" not in str(caught.value) and caught.value.status_code == 503
    assert len(state.requests("/v1/credentials/totp")) == 4


def test_errors_are_typed_and_clean(sim: tuple[str, SimulatorState], client: SkyvernClient) -> None:
    base, _ = sim
    with SkyvernClient(base, "sk-wrong-key") as wrong:
        with pytest.raises(SkyvernAuthError) as caught:
            wrong.get_run("wr_1")
    assert str(caught.value) == "Skyvern rejected the API key (403 Invalid credentials)"
    assert "sk-wrong-key" not in repr(wrong) and API_KEY not in repr(client)
    with pytest.raises(SkyvernNotFound):
        client.get_run("wr_missing")
    with pytest.raises(SkyvernNotFound) as unknown_agent:  # never saved: Skyvern's 404, and no run
        client.run_agent({"agent_id": "wpid_nope", "totp_identifier": "bob"})
    assert str(unknown_agent.value) == ("POST /v1/run/agents: not found "
                                        "(Workflow not found. workflow_permanent_id=wpid_nope)")
    assert sim[1].list_runs() == []
    with pytest.raises(SkyvernValidationError) as invalid:
        client.run_agent({"agent_id": AGENT, "proxy_location": "MARS", "max_elapsed_time_minutes": 999})
    assert "proxy_location" in str(invalid.value) and "max_elapsed_time_minutes" in str(invalid.value)
    assert "MARS" not in str(invalid.value) and "\n" not in str(invalid.value)
    with pytest.raises(SkyvernValidationError) as bad_run:
        client.push_code("bob", "123456", expired_at=None, workflow_run_id="wr_nope")
    assert bad_run.value.detail == "Invalid workflow run id: wr_nope"
    assert "123456" not in str(bad_run.value)


def test_blocked_host() -> None:
    with simulator(block_private_totp_url=True, **FAST) as sim, SkyvernClient(sim.base, API_KEY) as skyvern:
        with pytest.raises(SkyvernBlockedHost) as caught:
            skyvern.run_agent({"agent_id": AGENT, "totp_url": "http://localhost:8000/totp/x"})
    assert "Invalid totp_url: blocked host." in str(caught.value)


def test_from_env() -> None:
    with pytest.raises(SkyvernConfigError):
        SkyvernClient.from_env({})
    with SkyvernClient.from_env({"SKYVERN_API_KEY": "k", "SKYVERN_BASE_URL": "http://localhost:8000/"}) as c:
        assert c.base_url == "http://localhost:8000"
    with SkyvernClient.from_env({"SKYVERN_API_KEY": "k"}) as c:
        assert c.base_url == "https://api.skyvern.com"
