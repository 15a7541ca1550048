"""The command line as a user drives it: every import form, refusals, reading, keys, no leaks."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from test_otp import RFC_SECRETS, RFC_VECTORS, migration_uri

B32 = "JBSWY3DPEHPK3PXP"
B32_LONG = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
SECRET_MARKERS = (B32, B32.lower(), B32_LONG, B32_LONG.lower())


def _no_secret(*texts: str) -> None:
    for text in texts:
        for marker in SECRET_MARKERS:
            assert marker not in text


@pytest.fixture
def store_ready(data_dir: Path, run_cli) -> Path:
    result = run_cli("init")
    assert result.code == 0, result.err
    return data_dir


def test_init_creates_private_files_and_is_idempotent(data_dir: Path, run_cli) -> None:
    first = run_cli("init")
    assert first.code == 0 and "created store" in first.out and "created key file" in first.out
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    for name in ("master.key", "totp.db"):
        assert stat.S_IMODE((data_dir / name).stat().st_mode) == 0o600
    key_before = (data_dir / "master.key").read_bytes()
    second = run_cli("init")
    assert second.code == 0 and "nothing changed" in second.out
    assert (data_dir / "master.key").read_bytes() == key_before


def test_default_data_dir_is_outside_the_source_tree(run_cli, tmp_path: Path) -> None:
    assert run_cli("init").code == 0
    assert (tmp_path / "xdg" / "totp-service" / "totp.db").exists()


@pytest.mark.parametrize("algorithm,index", [("SHA1", 0), ("SHA256", 1), ("SHA512", 2)])
def test_rfc6238_vectors_through_code_at(store_ready: Path, run_cli, algorithm: str, index: int) -> None:
    import base64

    b32 = base64.b32encode(RFC_SECRETS[algorithm]).decode()
    added = run_cli("secret", "add", f"rfc-{algorithm}", "--stdin", "--algorithm", algorithm, "--digits", "8", stdin=b32)
    assert added.code == 0, added.err
    for when, codes in RFC_VECTORS.items():
        result = run_cli("code", f"rfc-{algorithm}", "--at", str(when), "--json")
        assert result.code == 0
        data = json.loads(result.out)
        assert data["code"] == codes[index]
        assert 0 < data["seconds_left"] <= 30


def test_each_add_form(store_ready: Path, run_cli) -> None:
    uri = f"otpauth://totp/ACME:Alice%40Example.com?secret={B32.lower()}&issuer=ACME"
    assert run_cli("secret", "add", "alice@example.com", "--uri", uri).code == 0
    assert run_cli("secret", "add", "bob", "--secret", "jbsw y3dp ehpk 3pxp", "--period", "60").code == 0
    assert run_cli("secret", "add", "carol", "--stdin", stdin=uri + "\n").code == 0
    assert run_cli("secret", "add", "dave", "--stdin", "--digits", "8", stdin=B32_LONG).code == 0
    listing = run_cli("secret", "list", "--json")
    metas = {m["identifier"]: m for m in json.loads(listing.out)}
    assert set(metas) == {"alice@example.com", "bob", "carol", "dave"}
    assert metas["alice@example.com"]["issuer"] == "ACME" and metas["bob"]["period"] == 60
    assert metas["dave"]["digits"] == 8
    a = json.loads(run_cli("code", "ALICE@example.com", "--at", "1000", "--json").out)["code"]
    c = json.loads(run_cli("code", "carol", "--at", "1000", "--json").out)["code"]
    assert a == c and len(a) == 6
    _no_secret(listing.out, run_cli("secret", "show", "bob").out)


def test_qr_image(store_ready: Path, run_cli, tmp_path: Path) -> None:
    zxingcpp = pytest.importorskip("zxingcpp")
    from PIL import Image

    barcode = zxingcpp.create_barcode(f"otpauth://totp/Site:qr?secret={B32}", zxingcpp.BarcodeFormat.QRCode)
    raw = barcode.to_image(scale=4)
    height, width = raw.shape[:2]
    image_path = tmp_path / "qr.png"
    Image.frombytes("L", (width, height), bytes(memoryview(raw))).save(image_path)
    result = run_cli("secret", "add", "qr-user", "--qr", str(image_path))
    assert result.code == 0, result.err
    assert run_cli("secret", "show", "qr-user", "--json").out.count('"issuer": "Site"') == 1
    missing = run_cli("secret", "add", "x", "--qr", str(tmp_path / "nope.png"))
    assert missing.code == 1 and "does not exist" in missing.err


def test_add_refuses_with_specific_messages(store_ready: Path, run_cli) -> None:
    cases = [
        (["--uri", f"otpauth://hotp/x?secret={B32}&counter=0"], "HOTP"),
        (["--secret", "!!!!"], "not valid base32"),
        (["--secret", ""], "exactly one of"),
        (["--stdin"], "the secret is empty"),
        (["--secret", B32, "--algorithm", "MD5"], "unknown algorithm"),
        (["--secret", B32, "--digits", "9"], "digits must be 6, 7 or 8"),
        (["--secret", B32, "--period", "0"], "period must be"),
        (["--secret", B32, "--uri", f"otpauth://totp/x?secret={B32}"], "exactly one of"),
        (["--secret", B32, "--allow-agent", "not-an-agent"], "is not an agent id"),
        (["--uri", f"otpauth://totp/x?secret={B32}", "--digits", "8"], "--digits only apply to a bare base32"),
        (["--stdin", "--period", "60", "--algorithm", "SHA256"], "--algorithm and --period only apply"),
    ]
    for extra, message in cases:
        stdin = f"otpauth://totp/x?secret={B32}\n" if "--period" in extra and "--stdin" in extra else ""
        result = run_cli("secret", "add", "someone", *extra, stdin=stdin)
        assert result.code != 0, extra
        assert message in result.err, (extra, result.err)
        assert result.err.count("\n") == 1 and "Traceback" not in result.err
        _no_secret(result.out, result.err)
    assert json.loads(run_cli("secret", "list", "--json").out) == []
    assert run_cli("secret", "add", "dup", "--secret", B32).code == 0
    again = run_cli("secret", "add", "dup", "--secret", B32)
    assert again.code == 1 and "already exists" in again.err
    assert run_cli("secret", "add", "dup", "--secret", B32_LONG, "--replace").code == 0


def test_import_file_with_uris_and_google_export(store_ready: Path, run_cli, tmp_path: Path) -> None:
    export = migration_uri([
        {"secret": b"A" * 20, "name": "ga-one@example.com", "issuer": "G"},
        {"secret": b"B" * 20, "name": "ga-two"},
    ])
    lines = [
        "# my accounts",
        f"otpauth://totp/Shop:shopper%40example.com?secret={B32}&issuer=Shop",
        "",
        export,
    ]
    path = tmp_path / "accounts.txt"
    path.write_text("\n".join(lines))
    result = run_cli("secret", "import", str(path), "--map", "ga-two=second-identifier")
    assert result.code == 0, result.err
    assert "imported 3" in result.out
    ids = {m["identifier"] for m in json.loads(run_cli("secret", "list", "--json").out)}
    assert ids == {"shopper@example.com", "ga-one@example.com", "second-identifier"}


def test_import_with_bad_last_line_stores_nothing(store_ready: Path, run_cli, tmp_path: Path) -> None:
    before = (store_ready / "totp.db").read_bytes()
    good = [f"otpauth://totp/S:user{i}?secret={B32}" for i in range(5)]
    bad = f"otpauth://totp/S:user5?secret={B32}&digits=12"
    result = run_cli("secret", "import", "-", stdin="\n".join(good + [bad]) + "\n")
    assert result.code != 0
    assert "line 6" in result.err and "digits" in result.err and "nothing was imported" in result.err
    assert json.loads(run_cli("secret", "list", "--json").out) == []
    assert (store_ready / "totp.db").read_bytes() == before


def test_show_remove_and_unknown(store_ready: Path, run_cli) -> None:
    run_cli("secret", "add", "erin", "--secret", B32, "--allow-agent", "wpid_123")
    shown = json.loads(run_cli("secret", "show", "erin", "--json").out)
    assert shown["allowed_agents"] == ["wpid_123"] and "secret" not in shown
    assert run_cli("secret", "remove", "erin").code == 0
    run_cli("secret", "add", "Erin@Example.com", "--secret", B32)
    assert run_cli("secret", "remove", " ERIN@example.COM").out == "removed erin@example.com\n"
    gone = run_cli("code", "erin")
    assert gone.code == 1 and gone.err.strip() == "totp-service: error: no secret for 'erin'"


def test_wrong_master_key_one_line_and_unchanged(store_ready: Path, run_cli, monkeypatch) -> None:
    run_cli("secret", "add", "frank", "--secret", B32)
    before = {p.name: p.read_bytes() for p in store_ready.iterdir()}
    import base64

    monkeypatch.setenv("TOTP_SERVICE_MASTER_KEY", base64.b64encode(os.urandom(32)).decode())
    for args in (["secret", "list"], ["secret", "add", "g", "--secret", B32], ["code", "frank"], ["init"]):
        result = run_cli(*args)
        assert result.code == 1
        assert result.err.startswith("totp-service: error: TOTP_SERVICE_MASTER_KEY does not open the store")
        assert result.err.count("\n") == 1
    assert {p.name: p.read_bytes() for p in store_ready.iterdir()} == before


def test_rotate_key_command(store_ready: Path, run_cli, tmp_path: Path) -> None:
    run_cli("secret", "add", "gina", "--secret", B32)
    code_before = run_cli("code", "gina", "--at", "5000").out
    old_key = (store_ready / "master.key").read_bytes()
    new_file = tmp_path / "new.key"
    result = run_cli("rotate-key", "--new-key-file", str(new_file))
    assert result.code == 0, result.err
    assert stat.S_IMODE(new_file.stat().st_mode) == 0o600
    assert (store_ready / "master.key").read_bytes() == new_file.read_bytes() != old_key
    assert stat.S_IMODE((store_ready / "master.key").stat().st_mode) == 0o600
    assert run_cli("code", "gina", "--at", "5000").out == code_before


def test_config_errors_name_key_and_file(data_dir: Path, run_cli, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("codes:\n  min_validity_secs: 10\n")
    result = run_cli("--config", str(config), "init")
    assert result.code == 1 and str(config) in result.err and "codes.min_validity_secs" in result.err
    config.write_text("codes:\n  single_use: maybe\n")
    assert "codes.single_use must be true or false" in run_cli("--config", str(config), "init").err
    config.write_text("master_key: abc\n")
    assert "may not be written in a config file" in run_cli("--config", str(config), "init").err


def test_no_secret_or_code_in_any_output_or_log(store_ready: Path, run_cli, caplog, tmp_path: Path) -> None:
    caplog.set_level(logging.DEBUG)
    outputs = []
    for args, stdin in [
        (("secret", "add", "h1", "--stdin"), B32),
        (("secret", "add", "h2", "--uri", f"otpauth://totp/X:h2?secret={B32_LONG}"), None),
        (("secret", "list"), None), (("secret", "list", "--json"), None),
        (("secret", "show", "h1", "--json"), None), (("secret", "show", "h2"), None),
        (("secret", "add", "h1", "--secret", B32_LONG), None),
        (("secret", "import", "-"), f"otpauth://totp/X:h3?secret={B32}\notpauth://totp/X:h4?secret={B32}&digits=3"),
        (("rotate-key", "--new-key-file", str(tmp_path / "k2")), None),
    ]:
        result = run_cli(*args, stdin=stdin)
        outputs += [result.out, result.err]
    _no_secret(*outputs, caplog.text)
    key_text = (store_ready / "master.key").read_text().strip()
    assert all(key_text not in text for text in outputs)


def test_module_entry_point_runs_as_a_subprocess(tmp_path: Path) -> None:
    env = {**os.environ, "TOTP_SERVICE_DATA_DIR": str(tmp_path / "sub")}
    run = lambda *a, **kw: subprocess.run([sys.executable, "-m", "totp_service", *a], env=env,  # noqa: E731
                                          capture_output=True, text=True, timeout=60, **kw)
    assert run("init").returncode == 0
    assert run("secret", "add", "ivan", "--stdin", input=B32).returncode == 0
    result = run("code", "ivan")
    assert result.returncode == 0 and len(result.stdout.split()[0]) == 6 and result.stdout.split()[0].isdigit()
    bad = run("secret", "add", "x", "--uri", "otpauth://totp/x?secret=***")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and bad.stderr.count("\n") == 1


def test_audit_command_filters(store_ready: Path, run_cli) -> None:
    from totp_service.config import load_settings
    from totp_service.store import AuditEntry
    from totp_service.store.open import open_store

    with open_store(load_settings()) as store:
        store.write_audit([
            (AuditEntry("served", identifier="alice@example.com", task_id="tsk_old", at=1_000_000.0), None),
            (AuditEntry("served", identifier="alice@example.com", task_id="tsk_new", at=2_000_000.0), None),
            (AuditEntry("refused:agent_not_allowed", identifier="bob", workflow_permanent_id="wpid_x",
                        at=2_000_001.0), None),
        ])
    since_iso = "1970-01-12T00:00:00Z"  # before the oldest row (1,000,000 s is 1970-01-12T13:46:40Z)
    rows = json.loads(run_cli("audit", "--identifier", " ALICE@example.com", "--json").out)
    assert [r["task_id"] for r in rows] == ["tsk_new", "tsk_old"] and rows[0]["at_iso"] == "1970-01-24T03:33:20Z"
    rows = json.loads(run_cli("audit", "--since", "1970-01-20T00:00:00", "--json").out)  # no zone: UTC
    assert [r["task_id"] or r["identifier"] for r in rows] == ["bob", "tsk_new"]
    assert len(json.loads(run_cli("audit", "--since", since_iso, "--json").out)) == 3
    assert len(json.loads(run_cli("audit", "--since", "1500000", "--limit", "1", "--json").out)) == 1
    text = run_cli("audit", "--identifier", "bob").out.splitlines()
    assert text == ["1970-01-24T03:33:21Z  refused:agent_not_allowed    bob  agent=wpid_x"]
    assert run_cli("audit", "--identifier", "nobody").out == "no audit entries\n"
    bad = run_cli("audit", "--limit", "0")
    assert bad.code == 2 and bad.err == "totp-service: error: --limit must be between 1 and 100000\n"
