"""Known-runs mode (`codes.known_runs_only`, issue 11 item 2): a pull is answered only for a run
the service knows to be live for the identifier asked for, so a replay is useless once its run
is over. Both pull front ends, both store backends, and the url-mode launcher that registers runs."""

from __future__ import annotations

import base64
import os
import threading
import time
from pathlib import Path

import pytest

from totp_service.config import AdminToken, Settings
from totp_service.launcher import runs
from totp_service.launcher.run_bindings import DEFAULT_RUN_SECONDS, QUEUE_MARGIN_SECONDS, run_expiry
from totp_service.store.open import init_store, open_store
from tests.helpers_app import (
    ADMIN_TOKEN,
    BASE32,
    OTHER_BASE32,
    SKYVERN_KEY,
    add_secret,
    bearer,
    expected_code,
    make_settings,
    pull,
    running_service,
)
from tests.helpers_launch import AGENT, IDENTIFIER, PERIOD, READER_TOKEN, SECRET, make_env, service, simulator

ALICE, BOB = "alice@example.com", "bob@example.com"
ALICE_PATH = "/totp/alice%40example.com"


def _known_runs_settings(tmp_path: Path, pg_url: str | None = None) -> Settings:
    if pg_url is None:
        settings = make_settings(tmp_path)
    else:
        settings = Settings(data_dir=tmp_path / "data")
        settings.master_key = base64.b64encode(os.urandom(32)).decode()
        settings.skyvern.api_key = SKYVERN_KEY
        settings.admin.tokens = [AdminToken(ADMIN_TOKEN, "admin")]
        settings.codes.min_validity_seconds = settings.codes.max_hold_seconds = 0.0
        settings.codes.single_use = False
        settings.server.require_url_token = False
        settings.store.url = pg_url
        init_store(settings)
    settings.codes.known_runs_only = True
    add_secret(settings, ALICE)
    add_secret(settings, BOB, OTHER_BASE32)
    return settings


def _check_known_runs(settings: Settings) -> None:
    with running_service(settings) as svc, svc.client() as client:
        admin = bearer(ADMIN_TOKEN)
        for ref, identifier in (("wr_live", ALICE), ("tsk_plain", ALICE), ("wr_bob", BOB)):
            assert client.post("/v1/bindings", headers=admin,
                               json={"kind": "run", "ref": ref, "identifier": identifier}).status_code == 201
        svc.store.put_binding("run", "wr_over", ALICE, expires_at=time.time() - 1)  # lapsed
        svc.store.put_binding("agent", "wpid_login", ALICE)

        served = [  # an agent run names its run in workflow_run_id; a plain task run in task_id
            (ALICE_PATH, {"task_id": "tsk_block", "workflow_run_id": "wr_live", "workflow_permanent_id": "wpid_login"}),
            (ALICE_PATH, {"task_id": "tsk_plain"}),
            ("/totp", {"task_id": "tsk_block", "workflow_run_id": "wr_live"}),  # the bound form
        ]
        for path, body in served:
            before = time.time()
            answer = pull(client, path, body)
            assert answer.status_code == 200, (path, body, answer.text)
            assert answer.json()["verification_code"] in {expected_code(BASE32, before),
                                                          expected_code(BASE32, time.time())}
        refused = [
            (ALICE_PATH, {"workflow_run_id": "wr_unknown"}, "not registered"),
            (ALICE_PATH, {"task_id": "tsk_unknown"}, "not registered"),
            (ALICE_PATH, {"workflow_run_id": "wr_bob"}, "another identifier"),
            # workflow_run_id names the run: a task id bound to alice does not lend its binding
            (ALICE_PATH, {"task_id": "tsk_plain", "workflow_run_id": "wr_bob"}, "another identifier"),
            (ALICE_PATH, {"workflow_run_id": "wr_over"}, "not registered or is over"),
            (ALICE_PATH, {}, "names no run"),
            ("/totp", {"workflow_permanent_id": "wpid_login"}, "names no run"),  # an agent binding is no run
        ]
        for path, body, why in refused:
            answer = pull(client, path, body)
            assert answer.status_code == 403, (path, body, answer.text)
            assert answer.json()["error"] == "unknown_run" and why in answer.json()["detail"], answer.json()
            assert "verification_code" not in answer.json()
        # the run ends (the launcher or another client removes its binding): its captured pull is useless
        assert client.delete("/v1/bindings", headers=admin, params={"kind": "run", "ref": "wr_live"}).status_code == 200
        replay = pull(client, ALICE_PATH, served[0][1])
        assert replay.status_code == 403 and replay.json()["error"] == "unknown_run"

        rows = svc.store.read_audit(limit=100)
        refusals = [r for r in rows if r.outcome == "refused:unknown_run"]
        assert len(refusals) == len(refused) + 1  # one row per authenticated refusal, as for served codes
        assert sum(r.outcome == "served" for r in rows) == len(served)
        assert {r.workflow_run_id for r in refusals} >= {"wr_unknown", "wr_bob", "wr_over", "wr_live"}
        assert all(r.identifier == ALICE for r in refusals)


@pytest.mark.usefixtures("front_end")
def test_only_pulls_naming_a_live_run_of_the_identifier_are_served(tmp_path: Path) -> None:
    _check_known_runs(_known_runs_settings(tmp_path))


def test_known_runs_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    _check_known_runs(_known_runs_settings(tmp_path, pg_url))


def test_off_by_default_any_signed_pull_is_served(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    assert settings.codes.known_runs_only is False
    add_secret(settings, ALICE)
    with running_service(settings) as svc, svc.client() as client:
        assert pull(client, ALICE_PATH, {"workflow_run_id": "wr_unknown"}).status_code == 200


def test_the_config_key_loads_from_yaml(tmp_path: Path) -> None:
    from totp_service.config import load_settings

    config = tmp_path / "config.yaml"
    config.write_text("codes: {known_runs_only: true}\n", "utf-8")
    assert load_settings(config, environ={}).codes.known_runs_only is True


def test_binding_expiry_follows_the_runs_time_limit() -> None:
    assert run_expiry({"max_elapsed_time_minutes": 30}, 1000.0) == 1000.0 + 1800 + QUEUE_MARGIN_SECONDS
    for request in ({}, {"max_elapsed_time_minutes": None}, {"max_elapsed_time_minutes": True},
                    {"max_elapsed_time_minutes": 0}, {"max_elapsed_time_minutes": "30"}):
        assert run_expiry(request, 1000.0) == 1000.0 + DEFAULT_RUN_SECONDS


def test_url_mode_launch_registers_its_run_while_it_runs(tmp_path: Path) -> None:
    with simulator() as sim:
        sim.state.add_secret(SECRET, period=PERIOD, agent_id=AGENT)  # the agent's login page checks our codes
        env = make_env(tmp_path, sim)
        env.settings.codes.known_runs_only = True
        seen: dict[str, object] = {}
        notes: list[str] = []
        with open_store(env.settings) as store, service(env):

            def on_event(event: runs.LaunchEvent) -> None:
                if event.kind == "note":
                    notes.append(event.message)
                if event.kind == "status" and event.status == "running" and event.run_id:
                    seen["during"] = store.find_binding("run", event.run_id)

            outcome = runs.launch_agent(env.settings, AGENT, IDENTIFIER, mode="url", client=env.client(),
                                        store=store, on_event=on_event,
                                        request={"max_elapsed_time_minutes": 20})
            assert outcome.status == "completed", sim.state.run(outcome.run_id)["failure_reason"]
            during = seen["during"]
            assert during is not None and during.identifier == IDENTIFIER  # type: ignore[attr-defined]
            assert during.expires_at > time.time() + 19 * 60  # type: ignore[attr-defined]
            assert store.find_binding("run", outcome.run_id) is None  # gone with the run
            assert any(f"known-runs mode: run {outcome.run_id} registered" in n for n in notes)
            served = [r for r in store.read_audit(limit=50) if r.outcome == "served"]
            assert served and all(r.workflow_run_id == outcome.run_id for r in served)  # its pulls got codes

            # a stopped launch cancels its run and removes the binding too
            stop = threading.Event()
            stopped = runs.launch_agent(env.settings, AGENT, IDENTIFIER, mode="url", client=env.client(),
                                        store=store, stop=stop,
                                        on_event=lambda e: stop.set() if e.kind == "note" else None)
            assert stopped.interrupted and stopped.status == "canceled"
            assert store.find_binding("run", stopped.run_id) is None
        assert outcome.run_id != stopped.run_id


def test_remote_code_source_says_to_register_through_the_admin_api(tmp_path: Path) -> None:
    with simulator() as sim:
        env = make_env(tmp_path, sim)
        env.settings.codes.known_runs_only = True
        notes: list[str] = []
        with service(env) as base:
            env.settings.launcher.code_source = "remote"
            env.settings.launcher.remote_url = base
            env.settings.launcher.reader_token = READER_TOKEN
            outcome = runs.launch_agent(env.settings, AGENT, IDENTIFIER, mode="url", client=env.client(), wait=False,
                                        on_event=lambda e: notes.append(e.message) if e.kind == "note" else None)
    assert any("POST /v1/bindings" in n and outcome.run_id in n for n in notes), notes


def test_startup_line_says_known_runs_mode_is_on(tmp_path: Path) -> None:
    from totp_service.cli.serve import startup_line

    settings = make_settings(tmp_path)
    assert "known-runs mode" not in startup_line(settings, 1)
    settings.codes.known_runs_only = True
    assert "known-runs mode" in startup_line(settings, 1)
