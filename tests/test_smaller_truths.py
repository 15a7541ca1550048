"""Readiness includes the audit; claims outlive a removed secret; an abandoned hold releases its
window (issue 11, item 8)."""

from __future__ import annotations

import socket
import sqlite3
import time
from urllib.parse import urlsplit

import pytest

from totp_service import signing
from tests.helpers_app import (
    ADMIN_TOKEN,
    BASE32,
    add_secret,
    bearer,
    expected_code,
    make_settings,
    pull,
    running_service,
    signed_headers,
    wait_for_window_phase,
)


pytestmark = pytest.mark.usefixtures("front_end")


def test_readyz_says_not_ready_when_no_audit_row_can_be_written(tmp_path) -> None:
    settings = make_settings(tmp_path)
    add_secret(settings, "alice@example.com")
    with running_service(settings) as svc, svc.client() as client:
        assert client.get("/readyz").status_code == 200
        other = sqlite3.connect(settings.database_path, isolation_level=None)
        other.execute("CREATE TRIGGER no_audit BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'disk full'); END")
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "audit" in ready.json()["detail"]
        assert pull(client, "/totp/alice%40example.com", {"task_id": "t"}).status_code == 503
        other.execute("DROP TRIGGER no_audit")
        other.close()
        assert client.get("/readyz").status_code == 503  # the last write failed ...
        assert pull(client, "/totp/alice%40example.com", {"task_id": "t"}).status_code == 200
        assert client.get("/readyz").status_code == 200  # ... until one succeeds
        rows = svc.store.read_audit(limit=100)
        assert all(r.outcome != "readiness probe" for r in rows)  # the probe is rolled back


def test_a_code_served_before_a_secret_was_removed_is_not_served_again(tmp_path) -> None:
    settings = make_settings(tmp_path, single_use=True, max_hold_seconds=0)
    add_secret(settings, "bob")
    with running_service(settings) as svc, svc.client() as client:
        wait_for_window_phase(30, 0, 25)
        first = pull(client, "/totp/bob", {"task_id": "t"}).json()["verification_code"]
        assert first
        admin = bearer(ADMIN_TOKEN)
        assert client.delete("/v1/secrets/bob", headers=admin).status_code == 200
        assert client.put("/v1/secrets/bob", headers=admin, json={"secret": BASE32}).status_code == 201
        again = pull(client, "/totp/bob", {"task_id": "t"}).json()["verification_code"]
        assert again == ""  # the window's code went out already; the next window is not open yet


def _send_and_leave(url: str, path: str, body: bytes) -> None:
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        head = f"POST {path} HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        for name, value in signed_headers(body).items():
            head += f"{name}: {value}\r\n"
        sock.sendall(head.encode() + b"\r\n" + body)
        time.sleep(0.3)  # the pull is held by now; the client gives up


def test_a_held_pull_whose_client_left_is_audited_abandoned_and_frees_its_window(tmp_path) -> None:
    settings = make_settings(tmp_path, single_use=True, max_hold_seconds=5, min_validity_seconds=3)
    spec = add_secret(settings, "carol", period=3)
    with running_service(settings) as svc, svc.client() as client:
        wait_for_window_phase(3, 0.5, 1.0)  # under 3 s left: the answer waits for the next window
        body = signing.compact_json({"task_id": "tsk_gone"})
        _send_and_leave(svc.url, "/totp/carol", body)
        time.sleep(3)
        rows = svc.store.read_audit(identifier="carol")
        assert [r.outcome for r in rows] == ["abandoned"]
        served = svc.store.is_claimed("carol", int(time.time()) // 3)
        assert not served
        response = pull(client, "/totp/carol", {"task_id": "tsk_here"})
        assert response.json()["verification_code"] == expected_code(BASE32, time.time(), 3) or \
            response.json()["verification_code"] == expected_code(BASE32, time.time() + 3, 3)
