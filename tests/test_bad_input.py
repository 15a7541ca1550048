"""Bad input gets a 400 or a one-line error that names the problem: never a 500, never a traceback
(issue 11, item 6). Through HTTP and the CLI as a subprocess, as users and attackers meet them."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from totp_service import imports, otp
from tests.helpers_app import (
    ADMIN_TOKEN,
    BASE32,
    add_secret,
    bearer,
    make_settings,
    running_service,
    signed_headers,
)

REPO = Path(__file__).resolve().parent.parent
NESTED = b"[" * 1000 + b"]" * 1000


def test_deeply_nested_signed_pull_is_a_400_with_an_audit_row(tmp_path) -> None:
    settings = make_settings(tmp_path)
    add_secret(settings, "alice@example.com")
    with running_service(settings) as svc, svc.client() as client:
        for body in (NESTED, b'{"task_id":' + NESTED + b"}", b'{"a":' * 5000 + b"1" + b"}" * 5000):
            response = client.post("/totp/alice%40example.com", content=body, headers=signed_headers(body))
            assert response.status_code == 400, response.text
            assert response.json()["error"] == "bad_request"
        rows = svc.store.read_audit(limit=10)
        assert [r.outcome for r in rows] == ["refused:bad_request"] * 3


def _secret_body(**fields: object) -> dict[str, object]:
    return {"secret": BASE32, **fields}


@pytest.mark.parametrize("path, raw", [
    ("/v1/secrets/alice", b'{"secret":"JBSWY3DPEHPK3PXP","min_validity_seconds":NaN}'),
    ("/v1/secrets/alice", b'{"secret":"JBSWY3DPEHPK3PXP","min_validity_seconds":Infinity}'),
    ("/v1/secrets/alice", b'{"secret":"JBSWY3DPEHPK3PXP","min_validity_seconds":1e999}'),
    ("/v1/secrets/alice", b'{"secret":"JBSWY3DPEHPK3PXP","issuer":"\\ud800"}'),
    ("/v1/secrets/alice", b'{"secret":"JBSWY3DPEHPK3PXP","account":"a\\udfffb"}'),
    ("/v1/secrets/alice", b'{"uri":"otpauth://[totp/x?secret=JBSWY3DPEHPK3PXP"}'),
    ("/v1/secrets/alice", b'{"uri":"otpauth://totp/x?secret=JBSWY3DPEHPK3PXP&period=99999999999999999999"}'),
    ("/v1/secrets/alice", b'{"uri":"otpauth-migration://[offline?data=AAAA"}'),
    ("/v1/secrets/alice", b'{"secret":"JBSWY3DPEHPK3PXP","digits":1e999}'),
    ("/v1/secrets/alice", NESTED),
    ("/v1/secrets/%ED%A0%80", b'{"secret":"JBSWY3DPEHPK3PXP"}'),
    ("/v1/bindings", b'{"kind":"run","ref":"wr_1","identifier":"bob","expires_at":NaN}'),
    ("/v1/bindings", b'{"kind":"run","ref":"wr_1","identifier":"bob","ttl_seconds":Infinity}'),
    ("/v1/bindings", b'{"kind":"run","ref":"wr_1","identifier":"bob","expires_at":1e999}'),
    ("/v1/bindings", b'{"kind":"run","ref":"wr_1","identifier":"bob","ttl_seconds":1e308}'),
    ("/v1/bindings", b'{"kind":"run","ref":"wr_1","identifier":"bob","expires_at":"9999999-01-01"}'),
    ("/v1/bindings", b'{"kind":"run","ref":"wr_1","identifier":"bob","expires_at":"1e999"}'),
    ("/v1/bindings", b'{"kind":"run","ref":"\\ud800","identifier":"bob"}'),
    ("/v1/bindings", b'{"kind":"run","ref":"wr_1","identifier":"bob\\ud800"}'),
    ("/v1/bindings", b'{"kind":"agent","ref":"wpid_\\ud800","identifier":"bob"}'),
])
def test_admin_input_that_cannot_be_stored_is_a_400_and_nothing_changes(tmp_path, path: str, raw: bytes) -> None:
    settings = make_settings(tmp_path)
    add_secret(settings, "bob")
    with running_service(settings) as svc, svc.client() as client:
        method = client.put if path.startswith("/v1/secrets") else client.post
        response = method(path, content=raw, headers={**bearer(ADMIN_TOKEN), "content-type": "application/json"})
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "bad_request" and len(response.json()["detail"]) < 200
        for listing in ("/v1/secrets", "/v1/bindings"):
            answer = client.get(listing, headers=bearer(ADMIN_TOKEN))
            assert answer.status_code == 200
        assert [m["identifier"] for m in client.get("/v1/secrets", headers=bearer(ADMIN_TOKEN)).json()["secrets"]] == ["bob"]
        assert client.get("/v1/bindings", headers=bearer(ADMIN_TOKEN)).json()["bindings"] == []


@pytest.mark.parametrize("uri", [
    "otpauth://[totp/x?secret=JBSWY3DPEHPK3PXP",
    "otpauth://totp/x?secret=JBSWY3DPEHPK3PXP&digits=%00",
    "otpauth://totp/%ED%A0%80?secret=JBSWY3DPEHPK3PXP&issuer=%ff",
    "otpauth-migration://[offline?data=AAAA",
    "otpauth-migration://offline?data=" + base64.b64encode(b"\x0a\x04\x20\x05\x28\x01").decode(),
    "otpauth-migration://offline?data=" + base64.b64encode(b"\x0a\x06\x22\x02ab\x2a\x01x").decode(),
    "otpauth-migration://offline?data=" + base64.b64encode(b"\x0a\x05\x0d\x01\x02\x03\x04").decode(),
    "otpauth-migration://offline?data=" + base64.b64encode(b"\x08\x01").decode(),
    "otpauth-migration://offline?data=" + base64.b64encode(b"\x0a\x03\x0a\x01\xff").decode(),
    "otpauth-migration://offline?data=" + base64.b64encode(b"\x0a\x02\x08\xff").decode(),
])
def test_importer_errors_are_format_errors(uri: str) -> None:
    try:
        specs = imports.parse_line(uri)
    except otp.OtpFormatError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 200
    else:  # what parses must be a valid, storable spec
        for spec in specs:
            otp.validate(spec)
            for text in (spec.issuer, spec.account):
                assert text is None or text.encode("utf-8")


def _cli(env: dict[str, str], *args: str | bytes, stdin: str | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "totp_service", *args], env=env, capture_output=True, timeout=60,
                          input=stdin.encode() if stdin is not None else None)


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOTP_SERVICE_", "SKYVERN_"))}
    env.update(TOTP_SERVICE_DATA_DIR=str(tmp_path / "data"), PYTHONPATH=str(REPO), LC_ALL="C.UTF-8")
    assert _cli(env, "init").returncode == 0
    return env


@pytest.mark.parametrize("args", [
    ("secret", "add", "x", "--uri", "otpauth://[totp/x?secret=JBSWY3DPEHPK3PXP"),
    ("secret", "add", "x", "--uri", "otpauth-migration://offline?data=" + base64.b64encode(b"\x0a\x04\x20\x05\x28\x01").decode()),
    ("secret", "add", "x", "--uri", "otpauth://totp/x?secret=JBSWY3DPEHPK3PXP&period=1e999"),
    ("secret", "add", b"caf\xff", "--secret", "JBSWY3DPEHPK3PXP"),
    ("secret", "add", "x", "--secret", "JBSWY3DPEHPK3PXP", "--issuer", b"\xff\xfe"),
    ("secret", "add", "x", "--secret", "JBSWY3DPEHPK3PXP", "--min-validity", "nan"),
    ("secret", "add", "x", "--secret", "JBSWY3DPEHPK3PXP", "--min-validity", "inf"),
    ("secret", "show", b"\xff"),
    ("secret", "remove", b"\xc3"),
    ("audit", "--identifier", b"\xff"),
    ("audit", "--since", "1e999"),
    ("audit", "export", "--since", "nan"),
])
def test_cli_bad_input_is_one_line_and_no_traceback(cli_env: dict[str, str], args: tuple[str | bytes, ...]) -> None:
    result = _cli(cli_env, *args)
    err = result.stderr.decode("utf-8", "replace")
    assert result.returncode in (1, 2), (result.returncode, err)
    assert "Traceback" not in err and err.strip(), err
    assert "error: " in err.strip().splitlines()[-1], err  # one line that names the problem (after argparse's usage)
    listing = _cli(cli_env, "secret", "list", "--json")
    assert json.loads(listing.stdout) == []
