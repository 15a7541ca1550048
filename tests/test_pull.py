"""The pull endpoint end to end: real store, real uvicorn on 127.0.0.1, requests signed like Skyvern's."""

from __future__ import annotations

import sqlite3
import threading
import time
from datetime import datetime

import pytest

from totp_service.store.open import open_store
from tests import helpers_app
from tests.helpers_app import (
    ADMIN_TOKEN,
    BASE32,
    OTHER_BASE32,
    OTHER_KEY,
    SKYVERN_KEY,
    add_secret,
    bearer,
    expected_code,
    make_settings,
    running_service,
    wait_for_window_phase,
)
from tests.helpers_app import (
    pull as signed_pull,
)
from totp_service import signing
from totp_service.service import pull_rules as pull
from totp_service.service.pull_rules import Plan, plan


def _codes_around(base32: str, before: float, after: float, period: int = 30) -> set[str]:
    return {expected_code(base32, before, period), expected_code(base32, after, period)}


@pytest.fixture(autouse=True, params=["pull_protocol", "asgi"])
def server_protocol(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every end-to-end test twice: as `serve` answers pulls, and through the ASGI handler."""
    if request.param == "asgi":
        monkeypatch.setattr(helpers_app, "SERVER_PROTOCOL", "httptools")
    return str(request.param)


# --- pure rules (fake clock) --------------------------------------------------------------------


def test_plan_serves_current_window_when_enough_is_left() -> None:
    assert plan(30, 1000 * 30 + 5.0, 20, 25) == Plan(1000, 0.0)


def test_plan_holds_until_next_window_when_too_little_is_left() -> None:
    decision = plan(30, 1000 * 30 + 12.5, 20, 25)
    assert decision.counter == 1001 and decision.wait == pytest.approx(17.5)


def test_plan_answers_empty_when_the_hold_would_be_too_long() -> None:
    assert plan(30, 1000 * 30 + 12.5, 20, 10).counter is None


def test_plan_skips_windows_already_served() -> None:
    assert plan(30, 1000 * 30 + 1, 20, 29.5, taken={1000}) == Plan(1001, 29.0)
    assert plan(30, 1000 * 30 + 1, 20, 25, taken={1000}).counter is None


def test_min_validity_at_or_over_the_period_means_a_window_just_opened() -> None:
    assert pull.effective_min_validity(45, 30) == 30
    decision = plan(30, 1000 * 30 + 0.5, 45, 29.9)
    assert decision.counter == 1001 and decision.wait == pytest.approx(29.5)


def test_resolution_order_path_then_run_then_agent() -> None:
    runs = {"tsk_1": "run-user"}.get
    agents = {"wpid_a": "agent-user"}.get
    body = pull.PullBody("tsk_1", None, "wpid_a")
    assert pull.resolve_identifier("path-user", body, runs, agents).identifier == "path-user"
    assert pull.resolve_identifier(None, body, runs, agents).via == "run"
    assert pull.resolve_identifier(None, pull.PullBody("tsk_x", None, "wpid_a"), runs, agents).via == "agent"
    with pytest.raises(pull.NoBinding):
        pull.resolve_identifier(None, pull.PullBody("tsk_x"), runs, agents)


# --- end to end ---------------------------------------------------------------------------------


def test_signed_pull_answers_the_code_pyotp_computes(tmp_path) -> None:
    settings = make_settings(tmp_path)
    add_secret(settings, "alice@example.com")
    with running_service(settings) as svc, svc.client() as client:
        before = time.time()
        response = signed_pull(client, "/totp/alice%40example.com", {"task_id": "tsk_1", "workflow_run_id": "wr_1"})
        after = time.time()
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        data = response.json()
        assert set(data) == {"verification_code", "expires_at"}
        assert isinstance(data["verification_code"], str)
        assert data["verification_code"] in _codes_around(BASE32, before, after)
        expires = datetime.fromisoformat(data["expires_at"].replace("Z", "+00:00")).timestamp()
        assert expires % 30 == 0 and before < expires <= after + 30
        # the identifier is case-folded like Skyvern does for emails
        again = signed_pull(client, "/totp/Alice@Example.COM", {"task_id": "tsk_1"})
        assert again.status_code == 200
        rows = svc.store.read_audit(identifier="alice@example.com")
        assert [r.outcome for r in rows] == ["served", "served"]
        assert rows[1].task_id == "tsk_1" and rows[1].workflow_run_id == "wr_1" and rows[1].client == "127.0.0.1"


def test_every_error_is_json_with_the_right_status_and_audited(tmp_path) -> None:
    settings = make_settings(tmp_path)
    settings.server.max_body_bytes = 1024
    add_secret(settings, "alice@example.com")
    with running_service(settings) as svc, svc.client() as client:
        cases = [
            (signed_pull(client, "/totp/alice%40example.com", {"task_id": "t"}, key=None), 401, "bad_signature"),
            (signed_pull(client, "/totp/alice%40example.com", {"task_id": "t"}, key="not-our-key"), 401,
             "bad_signature"),
            (signed_pull(client, "/totp/alice%40example.com", raw=b"[1,2]"), 400, "bad_request"),
            (signed_pull(client, "/totp/alice%40example.com", raw=b"not json"), 400, "bad_request"),
            (signed_pull(client, "/totp/alice%40example.com", raw=b'{"task_id":5}'), 400, "bad_request"),
            (signed_pull(client, "/totp/alice%40example.com", raw=b"{" + b" " * 2000 + b"}"), 413, "body_too_large"),
            (signed_pull(client, "/totp/nobody", {"task_id": "t"}), 404, "unknown_identifier"),
            (signed_pull(client, "/totp", {"task_id": "tsk_unbound"}), 404, "no_binding"),
            (signed_pull(client, "/totp/", {"task_id": "tsk_unbound"}), 404, "no_binding"),
        ]
        # a chunked body (no content-length) is cut off while it streams in
        chunks = (b"{" + b" " * 512 for _ in range(4))
        cases.append((client.post("/totp/alice%40example.com", content=chunks,
                                  headers={"x-skyvern-signature": "00"}), 413, "body_too_large"))
        for response, status, reason in cases:
            assert response.status_code == status, (status, response.text)
            assert response.headers["content-type"] == "application/json"
            assert response.json()["error"] == reason
            assert "verification_code" not in response.json()
        not_allowed = client.get("/totp/alice%40example.com")
        assert not_allowed.status_code == 405 and not_allowed.headers["content-type"] == "application/json"
        rows = svc.store.read_audit(limit=100)  # the first refusal of each kind is written at once
        assert {r.outcome for r in rows} >= {"refused:bad_signature", "refused:bad_request", "refused:no_binding",
                                           "refused:body_too_large", "refused:unknown_identifier"}
    with open_store(settings) as store:  # ... the repeats of unauthenticated ones at shutdown
        rows = store.read_audit(limit=100)
    assert sum(r.count for r in rows if r.outcome.startswith("refused:")) == len(cases)


def test_rotating_skyvern_keys_accepts_every_configured_key(tmp_path) -> None:
    settings = make_settings(tmp_path)
    settings.skyvern.api_keys = [OTHER_KEY]
    add_secret(settings, "alice@example.com")
    with running_service(settings) as svc, svc.client() as client:
        assert signed_pull(client, "/totp/alice%40example.com", {"task_id": "t"}).status_code == 200
        assert signed_pull(client, "/totp/alice%40example.com", {"task_id": "t"}, key=OTHER_KEY).status_code == 200
        assert signed_pull(client, "/totp/alice%40example.com", {"task_id": "t"}, key="retired").status_code == 401


def test_unsigned_requests_only_with_allow_unsigned(tmp_path) -> None:
    settings = make_settings(tmp_path)
    settings.server.allow_unsigned = True
    add_secret(settings, "alice@example.com")
    with running_service(settings) as svc, svc.client() as client:
        assert signed_pull(client, "/totp/alice%40example.com", {}, key=None).status_code == 200
        # a signature that is given is still checked
        assert signed_pull(client, "/totp/alice%40example.com", {}, key="wrong").status_code == 401


def test_run_and_agent_bindings(tmp_path) -> None:
    settings = make_settings(tmp_path)
    settings.bindings.agents = {"wpid_fromconfig": "carol"}
    add_secret(settings, "bob")
    add_secret(settings, "carol", OTHER_BASE32)
    with running_service(settings) as svc, svc.client() as client:
        admin = bearer(ADMIN_TOKEN)
        for binding in ({"kind": "run", "ref": "tsk_9", "identifier": "bob"},
                        {"kind": "run", "ref": "wr_9", "identifier": "carol"},
                        {"kind": "agent", "ref": "wpid_api", "identifier": "bob"},
                        {"kind": "run", "ref": "wr_old", "identifier": "bob", "expires_at": time.time() - 1}):
            assert client.post("/v1/bindings", json=binding, headers=admin).status_code == 201
        cases = [({"task_id": "tsk_9"}, BASE32), ({"workflow_run_id": "wr_9"}, OTHER_BASE32),
                 ({"workflow_run_id": "wr_x", "workflow_permanent_id": "wpid_api"}, BASE32),
                 ({"workflow_run_id": "wr_x", "workflow_permanent_id": "wpid_fromconfig"}, OTHER_BASE32)]
        for body, base32 in cases:
            before = time.time()
            response = signed_pull(client, "/totp", body)
            assert response.status_code == 200, response.text
            assert response.json()["verification_code"] in _codes_around(base32, before, time.time())
        assert signed_pull(client, "/totp", {"workflow_run_id": "wr_old"}).status_code == 404  # expired
        rows = svc.store.read_audit(limit=10)
        assert rows[1].identifier == "carol" and rows[1].workflow_permanent_id == "wpid_fromconfig"


def test_allow_list_refuses_other_agents_and_requests_naming_none(tmp_path) -> None:
    settings = make_settings(tmp_path)
    add_secret(settings, "alice@example.com", allowed_agents=["wpid_ok"])
    with running_service(settings) as svc, svc.client() as client:
        path = "/totp/alice%40example.com"
        assert signed_pull(client, path, {"workflow_run_id": "wr_1", "workflow_permanent_id": "wpid_ok"}).status_code == 200
        other = signed_pull(client, path, {"workflow_run_id": "wr_1", "workflow_permanent_id": "wpid_bad"})
        assert other.status_code == 403 and other.json()["error"] == "agent_not_allowed"
        assert signed_pull(client, path, {"task_id": "tsk_1"}).status_code == 403
        outcomes = [r.outcome for r in svc.store.read_audit(limit=3)]
        assert outcomes == ["refused:agent_not_allowed", "refused:agent_not_allowed", "served"]


def test_no_audit_row_no_code(tmp_path) -> None:
    settings = make_settings(tmp_path, single_use=True, max_hold_seconds=20)
    add_secret(settings, "alice@example.com")
    with running_service(settings) as svc, svc.client() as client:
        other = sqlite3.connect(settings.database_path, isolation_level=None)
        other.execute("CREATE TRIGGER no_audit BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'disk full'); END")
        response = signed_pull(client, "/totp/alice%40example.com", {"task_id": "t"})
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/json"
        assert "verification_code" not in response.json()
        assert other.execute("SELECT count(*) FROM served").fetchone()[0] == 0  # the claim rolled back too
        other.execute("DROP TRIGGER no_audit")
        other.close()
        assert signed_pull(client, "/totp/alice%40example.com", {"task_id": "t"}).status_code == 200


def test_a_code_with_too_little_left_is_held_until_the_next_window(tmp_path) -> None:
    period = 4
    settings = make_settings(tmp_path, min_validity_seconds=2, max_hold_seconds=3)
    add_secret(settings, "alice@example.com", period=period)
    with running_service(settings) as svc, svc.client() as client:
        sent = wait_for_window_phase(period, 2.4, 3.0)  # 1.0-1.6 s left: too little
        response = signed_pull(client, "/totp/alice%40example.com", {"task_id": "t"})
        answered = time.time()
        next_window = (int(sent) // period + 1) * period
        assert response.status_code == 200
        assert answered >= next_window  # held until the new window opened
        assert response.json()["verification_code"] == expected_code(BASE32, next_window, period)
        assert response.json()["verification_code"] != expected_code(BASE32, sent, period)
        # right after, the new code has (almost) the whole window left: no hold
        quick = time.monotonic()
        again = signed_pull(client, "/totp/alice%40example.com", {"task_id": "t"})
        assert again.json()["verification_code"] == response.json()["verification_code"]
        assert time.monotonic() - quick < 1.0


def test_past_max_hold_the_answer_is_an_empty_code(tmp_path) -> None:
    period = 4
    settings = make_settings(tmp_path, min_validity_seconds=20, max_hold_seconds=1)  # clamped to the period
    add_secret(settings, "alice@example.com", period=period)
    with running_service(settings) as svc, svc.client() as client:
        wait_for_window_phase(period, 0.5, 2.5)  # the next window is 1.5-3.5 s away: more than max_hold
        response = signed_pull(client, "/totp/alice%40example.com", {"task_id": "t"})
        assert response.status_code == 200
        assert response.json() == {"verification_code": ""}
        assert svc.store.read_audit(limit=1)[0].outcome == "empty"


def test_single_use_gives_a_second_login_the_next_code(tmp_path) -> None:
    period = 4
    settings = make_settings(tmp_path, min_validity_seconds=0, max_hold_seconds=6, single_use=True)
    add_secret(settings, "alice@example.com", period=period)
    with running_service(settings) as svc:
        sent = wait_for_window_phase(period, 0.2, 1.2)
        window = int(sent) // period
        results: list[tuple[str, float]] = []

        def login() -> None:
            with svc.client() as client:
                response = signed_pull(client, "/totp/alice%40example.com", {"task_id": "t"})
                results.append((response.json()["verification_code"], time.time()))

        threads = [threading.Thread(target=login) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        codes = sorted(results, key=lambda r: r[1])
        assert codes[0][0] == expected_code(BASE32, window * period, period)
        assert codes[1][0] == expected_code(BASE32, (window + 1) * period, period)
        assert codes[1][1] >= (window + 1) * period  # the second login waited for the next window
        with sqlite3.connect(svc.settings.database_path) as db:
            claimed = [c for (c,) in db.execute("SELECT counter FROM served ORDER BY counter")]
        assert claimed == [window, window + 1]


def test_optional_timestamp_window(tmp_path) -> None:
    settings = make_settings(tmp_path)
    add_secret(settings, "alice@example.com")
    with running_service(settings) as svc, svc.client() as client:
        body = b'{"task_id":"t"}'
        stale = {"x-skyvern-signature": signing.sign(body, SKYVERN_KEY), "x-skyvern-timestamp": "1000"}
        assert client.post("/totp/alice%40example.com", content=body, headers=stale).status_code == 200  # default off
    settings.server.max_timestamp_skew_seconds = 300
    with running_service(settings) as svc, svc.client() as client:
        refused = client.post("/totp/alice%40example.com", content=body, headers=stale)
        assert refused.status_code == 401 and refused.json()["error"] == "stale_timestamp"
        assert signed_pull(client, "/totp/alice%40example.com", {"task_id": "t"}).status_code == 200


def test_x_forwarded_for_names_the_client_only_from_a_trusted_proxy(tmp_path) -> None:
    settings = make_settings(tmp_path)
    add_secret(settings, "alice@example.com")
    body = signing.compact_json({"task_id": "t"})
    spoofed = {**helpers_app.signed_headers(body), "x-forwarded-for": "198.51.100.9, 203.0.113.7"}
    with running_service(settings) as svc, svc.client() as client:  # 127.0.0.1 is trusted by default
        assert client.post("/totp/alice%40example.com", content=body, headers=spoofed).status_code == 200
        assert svc.store.read_audit(limit=1)[0].client == "203.0.113.7"  # the nearest address the proxy saw
    settings.server.trusted_proxies = ["10.0.0.0/8"]
    with running_service(settings) as svc, svc.client() as client:
        assert client.post("/totp/alice%40example.com", content=body, headers=spoofed).status_code == 200
        assert svc.store.read_audit(limit=1)[0].client == "127.0.0.1"  # the header is ignored
