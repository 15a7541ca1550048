"""A captured signed pull does not work for another identifier: the URL token (issue 11, item 2)."""

from __future__ import annotations

import time

import pytest

from totp_service.launcher.urls import totp_url, url_token
from tests.helpers_app import (
    ADMIN_TOKEN,
    BASE32,
    OTHER_BASE32,
    add_secret,
    bearer,
    expected_code,
    make_settings,
    pull,
    running_service,
)


pytestmark = pytest.mark.usefixtures("front_end")


def _path(url: str) -> str:
    return url[url.index("/totp"):]


def test_a_body_signed_for_alice_gets_nothing_on_bobs_path(tmp_path) -> None:
    settings = make_settings(tmp_path, require_url_token=True)
    add_secret(settings, "alice@example.com")
    add_secret(settings, "bob@example.com", OTHER_BASE32)
    with running_service(settings) as svc, svc.client() as client:
        settings.server.public_url = svc.url
        alice, bob = _path(totp_url(settings, "alice@example.com")), _path(totp_url(settings, "bob@example.com"))
        body = {"task_id": "tsk_alice"}
        before = time.time()
        ok = pull(client, alice, body)
        assert ok.status_code == 200
        assert ok.json()["verification_code"] in {expected_code(BASE32, before), expected_code(BASE32, time.time())}
        alice_token = alice.split("?k=")[1]
        for path in ("/totp/bob%40example.com",  # no token
                     f"/totp/bob%40example.com?k={alice_token}",  # alice's token on bob's path
                     f"/totp/bob%40example.com?k={alice_token[:-1]}x", "/totp/bob%40example.com?k=",
                     f"/totp?k={alice_token}"):  # the bound form has a token of its own
            refused = pull(client, path, body)
            assert refused.status_code == 401 and refused.json()["error"] == "bad_url_token", path
            assert "verification_code" not in refused.json()
        assert pull(client, bob, body).status_code == 200  # bob's own URL works
        assert pull(client, f"/totp/BOB%40example.com?x=1&k={bob.split('?k=')[1]}", body).status_code == 200
        # the bound form: a binding plus the bound URL's token
        assert client.post("/v1/bindings", headers=bearer(ADMIN_TOKEN),
                           json={"kind": "run", "ref": "wr_7", "identifier": "bob@example.com"}).status_code == 201
        bound = _path(totp_url(settings, None))
        assert bound == f"/totp?k={url_token(settings, None)}"
        assert pull(client, bound, {"workflow_run_id": "wr_7"}).status_code == 200
        assert pull(client, "/totp", {"workflow_run_id": "wr_7"}).status_code == 401
        rows = svc.store.read_audit(limit=100)
        assert any(r.outcome == "refused:bad_url_token" for r in rows)


def test_tokens_differ_per_identifier_and_per_master_key(tmp_path) -> None:
    settings = make_settings(tmp_path)
    other = make_settings(tmp_path / "other")
    tokens = {url_token(settings, "alice@example.com"), url_token(settings, "Alice@Example.com "),
              url_token(settings, "bob"), url_token(settings, None), url_token(other, "alice@example.com")}
    assert len(tokens) == 4  # the two spellings of alice's address are one identifier
    assert all(len(t) == 22 and t.replace("-", "").replace("_", "").isalnum() for t in tokens)
    assert totp_url("http://h:1", "bob") == "http://h:1/totp/bob"  # a bare base has no key: no token
