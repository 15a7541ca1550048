"""The admin API end to end: tokens and roles, write-only secrets, bindings, codes, audit, health."""

from __future__ import annotations

import time
from urllib.parse import quote

from tests.helpers_app import (
    ADMIN_TOKEN,
    BASE32,
    OTHER_BASE32,
    READER_TOKEN,
    bearer,
    expected_code,
    make_settings,
    pull,
    running_service,
)
from totp_service import imports
from totp_service.service.state import REVALIDATE_SECONDS
from totp_service.store.open import open_store

ADMIN_ROUTES = [
    ("GET", "/v1/secrets"),
    ("PUT", "/v1/secrets/alice"),
    ("GET", "/v1/secrets/alice"),
    ("DELETE", "/v1/secrets/alice"),
    ("POST", "/v1/bindings"),
    ("GET", "/v1/bindings"),
    ("DELETE", "/v1/bindings?kind=run&ref=x"),
    ("GET", "/v1/audit"),
]


def test_tokens_are_required_and_readers_may_only_read_codes(tmp_path) -> None:
    settings = make_settings(tmp_path)
    with running_service(settings) as svc, svc.client() as client:
        for method, path in ADMIN_ROUTES + [("GET", "/v1/codes/alice")]:
            for headers in ({}, bearer("wrong-token-0123456789"), {"authorization": "Basic eDp5"}):
                response = client.request(method, path, headers=headers, json={})
                assert response.status_code == 401, (method, path)
                assert response.json()["error"] == "unauthorized"
                assert response.headers["www-authenticate"].startswith("Bearer")
        for method, path in ADMIN_ROUTES:
            response = client.request(method, path, headers=bearer(READER_TOKEN), json={})
            assert response.status_code == 403, (method, path)
            assert response.headers["content-type"] == "application/json"


def test_secrets_are_write_only(tmp_path) -> None:
    settings = make_settings(tmp_path)
    admin = bearer(ADMIN_TOKEN)
    with running_service(settings) as svc, svc.client() as client:
        uri = f"otpauth://totp/Example:alice@example.com?secret={BASE32}&issuer=Example"
        created = client.put("/v1/secrets/alice%40example.com", headers=admin,
                             json={"uri": uri, "allowed_agents": ["wpid_1"], "min_validity_seconds": 12})
        assert created.status_code == 201, created.text
        meta = created.json()
        assert meta["identifier"] == "alice@example.com" and meta["issuer"] == "Example"
        assert meta["allowed_agents"] == ["wpid_1"] and meta["min_validity_seconds"] == 12
        assert BASE32 not in created.text and "otpauth" not in created.text
        for response in (client.get("/v1/secrets/alice%40example.com", headers=admin),
                         client.get("/v1/secrets", headers=admin)):
            assert response.status_code == 200
            assert BASE32 not in response.text and "secret" not in response.json()
        assert client.get("/v1/secrets", headers=admin).json()["secrets"][0]["identifier"] == "alice@example.com"

        again = client.put("/v1/secrets/alice%40example.com", headers=admin, json={"secret": OTHER_BASE32})
        assert again.status_code == 409
        replaced = client.put("/v1/secrets/alice%40example.com", headers=admin,
                              json={"secret": OTHER_BASE32, "digits": 8, "algorithm": "sha256", "replace": True})
        assert replaced.status_code == 200 and replaced.json()["digits"] == 8

        bad = [
            ({"secret": "not base32!"}, "base32"),
            ({"uri": "otpauth://hotp/x?secret=" + BASE32}, "HOTP"),
            ({"uri": "https://example.com"}, "otpauth"),
            ({"secret": BASE32, "digits": 9}, "digits"),
            ({"secret": BASE32, "uri": uri}, "exactly one"),
            ({"secret": BASE32, "colour": "red"}, "unknown field"),
            ({"secret": BASE32, "allowed_agents": ["not-an-agent"]}, "agent id"),
        ]
        for body, words in bad:
            response = client.put("/v1/secrets/bob", headers=admin, json=body)
            assert response.status_code == 400, body
            assert words in response.json()["detail"]
            assert BASE32 not in response.text and "not base32" not in response.text
        assert client.put("/v1/secrets/bob", headers=admin, content=b"[]").status_code == 400

        assert client.delete("/v1/secrets/alice%40example.com", headers=admin).status_code == 200
        assert client.get("/v1/secrets/alice%40example.com", headers=admin).status_code == 404
        assert client.delete("/v1/secrets/alice%40example.com", headers=admin).status_code == 404


def test_a_replaced_secret_is_served_at_once(tmp_path) -> None:
    settings = make_settings(tmp_path)
    admin = bearer(ADMIN_TOKEN)
    with running_service(settings) as svc, svc.client() as client:
        assert client.put("/v1/secrets/alice", headers=admin, json={"secret": BASE32}).status_code == 201
        before = time.time()
        first = pull(client, "/totp/alice", {"task_id": "t"}).json()["verification_code"]
        assert first in {expected_code(BASE32, before), expected_code(BASE32, time.time())}
        assert client.put("/v1/secrets/alice", headers=admin,
                          json={"secret": OTHER_BASE32, "replace": True}).status_code == 200
        before = time.time()
        second = pull(client, "/totp/alice", {"task_id": "t"}).json()["verification_code"]
        assert second in {expected_code(OTHER_BASE32, before), expected_code(OTHER_BASE32, time.time())}
        # a change made by another process (the CLI) is seen within REVALIDATE_SECONDS
        with open_store(settings) as other:
            other.put_secret("alice", imports.spec_from_base32(BASE32), replace=True)
        time.sleep(REVALIDATE_SECONDS + 0.01)
        before = time.time()
        third = pull(client, "/totp/alice", {"task_id": "t"}).json()["verification_code"]
        assert third in {expected_code(BASE32, before), expected_code(BASE32, time.time())}
        with open_store(settings) as other:
            other.remove_secret("alice")
        time.sleep(REVALIDATE_SECONDS + 0.01)
        assert pull(client, "/totp/alice", {"task_id": "t"}).status_code == 404


def test_bindings_crud(tmp_path) -> None:
    settings = make_settings(tmp_path)
    settings.bindings.agents = {"wpid_cfg": "alice"}
    admin = bearer(ADMIN_TOKEN)
    with running_service(settings) as svc, svc.client() as client:
        client.put("/v1/secrets/alice", headers=admin, json={"secret": BASE32})
        made = client.post("/v1/bindings", headers=admin,
                           json={"kind": "run", "ref": "wr_1", "identifier": "alice", "ttl_seconds": 600})
        assert made.status_code == 201 and made.json()["expires_at"] > time.time() + 500
        assert client.post("/v1/bindings", headers=admin,
                           json={"kind": "agent", "ref": "wpid_a", "identifier": "alice",
                                 "expires_at": "2999-01-01T00:00:00Z"}).status_code == 201
        assert client.post("/v1/bindings", headers=admin,
                           json={"kind": "run", "ref": "wr_2", "identifier": "nobody"}).status_code == 404
        assert client.post("/v1/bindings", headers=admin,
                           json={"kind": "agent", "ref": "not-wpid", "identifier": "alice"}).status_code == 400
        assert client.post("/v1/bindings", headers=admin,
                           json={"kind": "vm", "ref": "x", "identifier": "alice"}).status_code == 400
        listed = client.get("/v1/bindings", headers=admin).json()
        assert sorted(b["ref"] for b in listed["bindings"]) == ["wpid_a", "wr_1"]
        assert listed["config_agents"] == {"wpid_cfg": "alice"}
        assert client.delete("/v1/bindings?kind=run&ref=wr_1", headers=admin).status_code == 200
        assert client.delete("/v1/bindings?kind=run&ref=wr_1", headers=admin).status_code == 404
        assert pull(client, "/totp", {"workflow_run_id": "wr_1"}).status_code == 404


def test_codes_for_local_clients_are_audited(tmp_path) -> None:
    settings = make_settings(tmp_path)
    with running_service(settings) as svc, svc.client() as client:
        client.put("/v1/secrets/alice%40example.com", headers=bearer(ADMIN_TOKEN), json={"secret": BASE32})
        before = time.time()
        response = client.get("/v1/codes/alice%40example.com", headers=bearer(READER_TOKEN))
        assert response.status_code == 200
        data = response.json()
        assert data["code"] in {expected_code(BASE32, before), expected_code(BASE32, time.time())}
        assert 0 < data["seconds_left"] <= 30 and data["expires_at"].endswith("Z") and data["period"] == 30
        assert client.get("/v1/codes/nobody", headers=bearer(READER_TOKEN)).status_code == 404
        row = svc.store.read_audit(identifier="alice@example.com", limit=1)[0]
        assert (row.outcome, row.route, row.detail) == ("served", "codes", "reader token")


def test_audit_endpoint_filters(tmp_path) -> None:
    settings = make_settings(tmp_path)
    admin = bearer(ADMIN_TOKEN)
    with running_service(settings) as svc, svc.client() as client:
        client.put("/v1/secrets/alice", headers=admin, json={"secret": BASE32})
        client.put("/v1/secrets/bob", headers=admin, json={"secret": OTHER_BASE32})
        for path in ("/totp/alice", "/totp/bob", "/totp/bob"):
            assert pull(client, path, {"task_id": "t"}).status_code == 200
        middle = time.time()
        assert pull(client, "/totp/alice", {"task_id": "t2"}).status_code == 200
        entries = client.get("/v1/audit", headers=admin).json()["entries"]
        assert len(entries) == 4 and entries[0]["task_id"] == "t2"
        assert len(client.get("/v1/audit?identifier=bob", headers=admin).json()["entries"]) == 2
        assert len(client.get("/v1/audit?limit=1", headers=admin).json()["entries"]) == 1
        since = client.get("/v1/audit", headers=admin, params={"since": str(middle)}).json()["entries"]
        assert [e["task_id"] for e in since] == ["t2"]
        assert client.get("/v1/audit?since=yesterday", headers=admin).status_code == 400
        assert client.get("/v1/audit?limit=0", headers=admin).status_code == 400


def test_health_ready_metrics_openapi(tmp_path) -> None:
    settings = make_settings(tmp_path)
    with running_service(settings) as svc, svc.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz").json()
        assert ready["status"] == "ready" and ready["identifiers"] == 0
        pull(client, "/totp/nobody", {"task_id": "t"})
        pull(client, "/totp/nobody", {"task_id": "t"}, key=None)
        text = client.get("/metrics").text
        assert 'totp_requests_total{route="pull",status="404"} 1' in text
        assert 'totp_refusals_total{reason="bad_signature"} 1' in text
        assert "totp_hold_seconds_count 0" in text and "totp_codes_served_total 0" in text
        doc = client.get("/openapi.json").json()
        assert doc["openapi"].startswith("3.")
        for path in ("/totp", "/totp/{identifier}", "/v1/secrets", "/v1/secrets/{identifier}", "/v1/bindings",
                     "/v1/codes/{identifier}", "/v1/audit", "/healthz", "/readyz", "/metrics", "/openapi.json"):
            assert path in doc["paths"]
        for path in ("/nowhere", "/v1/secrets/", "/healthz/"):
            response = client.get(path)
            assert response.status_code in (401, 404) and response.headers["content-type"] == "application/json"
            assert "location" not in response.headers
        assert quote("a@b", safe="") == "a%40b"
