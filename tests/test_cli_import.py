"""`secret import` as a user drives it: every format end to end, review, refusals, passwords, no leaks."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import pytest

import import_fixtures as fx
from test_import_detect import BUILDERS

IDENTIFIERS = ["alice@example.com", "ops-bot", "+15550100"]
ENCRYPTED = {"aegis", "2fas", "andotp"}


@pytest.fixture
def store_ready(data_dir: Path, run_cli) -> Path:
    assert run_cli("init").code == 0
    return data_dir


def _files(data_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(data_dir.iterdir())}


def _stored(run_cli) -> list[str]:
    return sorted(m["identifier"] for m in json.loads(run_cli("secret", "list", "--json").out))


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_every_format_imports_and_serves_pyotp_codes(name: str, store_ready: Path, run_cli, tmp_path: Path) -> None:
    path = tmp_path / f"export.{name}"
    path.write_bytes(BUILDERS[name]())
    args = ["secret", "import", str(path)] + (["--password-stdin"] if name in ENCRYPTED else [])
    result = run_cli(*args, stdin=fx.PASSWORD + "\n")
    assert result.code == 0, result.err
    assert result.out.splitlines() == [f"stored {i}" for i in IDENTIFIERS] + [
        f"imported 3 secret(s) from the {name} export"]
    for identifier, account in zip(IDENTIFIERS, fx.ACCOUNTS):
        for at in fx.CHECK_TIMES:
            code = run_cli("code", identifier, "--at", str(at))
            assert code.out.split()[0] == account.code(at)
    fx.assert_no_secret(result.out + result.err)


def test_export_on_standard_input(store_ready: Path, run_cli) -> None:
    result = run_cli("secret", "import", "-", stdin=fx.twofauth_json().decode())
    assert result.code == 0, result.err
    assert _stored(run_cli) == sorted(IDENTIFIERS)


def test_dry_run_reviews_and_stores_nothing(store_ready: Path, run_cli, tmp_path: Path) -> None:
    assert run_cli("secret", "add", "ops-bot", "--secret", fx.ACCOUNTS[0].secret).code == 0
    path = tmp_path / "backup.2fas"
    path.write_bytes(fx.twofas_encrypted(hotp=True))
    before = _files(store_ready)
    result = run_cli("secret", "import", str(path), "--dry-run", "--password-stdin", stdin=fx.PASSWORD + "\n")
    assert result.code == 0, result.err
    assert _files(store_ready) == before
    lines = [line.split("\t") for line in result.out.splitlines()]
    assert lines[:4] == [
        ["service 1", "alice@example.com", "GitHub", "SHA1 6 digits 30s", "new"],
        ["service 2", "ops-bot", "AWS", "SHA256 8 digits 60s", "duplicate of a stored identifier"],
        ["service 3", "+15550100", "Bank", "SHA512 8 digits 30s", "new"],
        ["service 4", "-", "Counter", "hotp", "unsupported: HOTP (counter-based) is not supported, only TOTP"],
    ]
    assert result.out.splitlines()[-1] == (
        "dry run of the 2fas export: 2 new, 1 duplicate of a stored identifier, 1 unsupported; nothing was stored")
    fx.assert_no_secret(result.out + result.err)


def test_hotp_is_refused_by_name_or_skipped(store_ready: Path, run_cli, tmp_path: Path) -> None:
    path = tmp_path / "aegis.json"
    path.write_bytes(fx.aegis_plain(hotp=True))
    before = _files(store_ready)
    refused = run_cli("secret", "import", str(path))
    assert refused.code == 1 and refused.err.count("\n") == 1
    assert "entry 4 (Counter:dave): HOTP" in refused.err and "nothing was imported" in refused.err
    assert "--skip-unsupported" in refused.err
    assert _files(store_ready) == before
    skipped = run_cli("secret", "import", str(path), "--skip-unsupported")
    assert skipped.code == 0, skipped.err
    assert "skipped entry 4 (Counter:dave): HOTP (counter-based) is not supported, only TOTP" in skipped.out
    assert _stored(run_cli) == sorted(IDENTIFIERS)


@pytest.mark.parametrize("name", sorted(ENCRYPTED))
def test_wrong_password_is_one_line_and_stores_nothing(name: str, store_ready: Path, run_cli, tmp_path: Path) -> None:
    path = tmp_path / "export"
    path.write_bytes(BUILDERS[name]())
    before = _files(store_ready)
    result = run_cli("secret", "import", str(path), "--password-stdin", stdin="guess-again-42\n")
    assert result.code == 1 and result.err.count("\n") == 1
    assert "wrong password" in result.err and "nothing was imported" in result.err
    assert "guess-again-42" not in result.out + result.err
    assert _files(store_ready) == before


def test_encrypted_export_without_a_terminal_asks_for_password_stdin(store_ready: Path, run_cli, tmp_path) -> None:
    path = tmp_path / "vault.json"
    path.write_bytes(fx.aegis_encrypted(n=2**10))
    result = run_cli("secret", "import", str(path), stdin="")
    assert result.code == 1 and "--password-stdin" in result.err
    clash = run_cli("secret", "import", "-", "--password-stdin", stdin="x")
    assert clash.code == 1 and "give the export as a FILE" in clash.err


def test_password_is_asked_for_without_echo_on_a_terminal(store_ready: Path, tmp_path: Path) -> None:
    path = tmp_path / "vault.json"
    path.write_bytes(fx.aegis_encrypted(n=2**10))
    pid, fd = pty.fork()
    if pid == 0:  # the child: the command on a real terminal
        os.execvpe(sys.executable, [sys.executable, "-m", "totp_service", "secret", "import", str(path)],
                   {**os.environ, "TOTP_SERVICE_DATA_DIR": str(store_ready)})
    output = b""
    password_sent = False
    while True:
        ready, _, _ = select.select([fd], [], [], 60)
        assert ready, f"no answer from the command; so far: {output!r}"
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the terminal closes when the command ends
            break
        if not chunk:
            break
        output += chunk
        if not password_sent and b"password for the export:" in output:
            os.write(fd, fx.PASSWORD.encode() + b"\n")
            password_sent = True
    _, status = os.waitpid(pid, 0)
    text = output.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert password_sent and "imported 3 secret(s)" in text
    fx.assert_no_secret(text)


def test_identifier_rules_and_map(store_ready: Path, run_cli, tmp_path: Path) -> None:
    path = tmp_path / "andotp.json"
    path.write_bytes(fx.andotp_plain())
    unmatched = run_cli("secret", "import", str(path), "--map", "nobody=x", "--dry-run")
    assert unmatched.code == 1 and "--map 'nobody' matches no entry's account" in unmatched.err
    by_issuer = run_cli("secret", "import", str(path), "--identifier-from", "issuer", "--map", "AWS=aws-prod",
                        "--dry-run")
    assert [line.split("\t")[1] for line in by_issuer.out.splitlines()[:3]] == ["GitHub", "aws-prod", "Bank"]
    by_label = run_cli("secret", "import", str(path), "--identifier-from", "label")
    assert by_label.code == 0, by_label.err
    assert _stored(run_cli) == sorted(["AWS:ops-bot", "Bank:+15550100", "GitHub:alice@example.com"])


def test_duplicates_within_the_file_and_in_the_store(store_ready: Path, run_cli, tmp_path: Path) -> None:
    path = tmp_path / "lines.txt"
    path.write_bytes(fx.otpauth_lines(fx.ACCOUNTS + fx.ACCOUNTS[:1]))
    twice = run_cli("secret", "import", str(path))
    assert twice.code == 1 and "line 3 (GitHub:alice@example.com) and line 6" in twice.err
    path.write_bytes(fx.otpauth_lines())
    assert run_cli("secret", "import", str(path)).code == 0
    before = _files(store_ready)
    again = run_cli("secret", "import", str(path))
    assert again.code == 1 and "'alice@example.com' is already stored" in again.err
    assert _files(store_ready) == before
    assert run_cli("secret", "import", str(path), "--replace").code == 0


@pytest.mark.parametrize("damage", ["truncate", "tamper"])
def test_damaged_files_store_nothing(damage: str, store_ready: Path, run_cli, tmp_path: Path) -> None:
    # line-based text stays valid when cut at a line end or changed inside a name; JSON and
    # ciphertext may not
    must_refuse = set(BUILDERS) - {"otpauth", "bitwarden-csv"} if damage == "truncate" else ENCRYPTED
    for name, build in sorted(BUILDERS.items()):
        data = bytearray(build())
        if damage == "truncate":
            data = data[: len(data) * 2 // 3]
        else:
            data[len(data) // 2] ^= 0x08  # one flipped bit in the middle
        path = tmp_path / f"damaged.{name}"
        path.write_bytes(bytes(data))
        before = _files(store_ready)
        result = run_cli("secret", "import", str(path), "--format", name, "--password-stdin",
                         stdin=fx.PASSWORD + "\n")
        fx.assert_no_secret(result.out + result.err)
        if result.code == 0 and name not in must_refuse:
            for identifier in _stored(run_cli):
                run_cli("secret", "remove", identifier)
            continue
        assert result.code == 1 and result.err.count("\n") == 1, (name, result.err)
        assert "nothing was imported" in result.err and "Traceback" not in result.err
        assert _files(store_ready) == before, name


def test_module_entry_point_reports_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "TOTP_SERVICE_DATA_DIR": str(tmp_path / "d")}
    run = lambda *a, **kw: subprocess.run([sys.executable, "-m", "totp_service", *a], env=env,  # noqa: E731
                                          capture_output=True, text=True, timeout=60, **kw)
    assert run("init").returncode == 0
    (tmp_path / "x.json").write_text('{"hello": "world"}')
    bad = run("secret", "import", str(tmp_path / "x.json"))
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "give --format" in bad.stderr


def test_import_into_postgresql_all_or_nothing(pg_url: str, run_cli, monkeypatch, tmp_path: Path) -> None:
    import base64 as b64

    import psycopg

    monkeypatch.setenv("TOTP_SERVICE_DATABASE_URL", pg_url)
    monkeypatch.setenv("TOTP_SERVICE_MASTER_KEY", b64.b64encode(os.urandom(32)).decode())
    monkeypatch.setenv("TOTP_SERVICE_DATA_DIR", str(tmp_path / "data"))
    assert run_cli("init").code == 0
    path = tmp_path / "backup.2fas"
    path.write_bytes(fx.twofas_encrypted(hotp=True))
    refused = run_cli("secret", "import", str(path), "--password-stdin", stdin=fx.PASSWORD + "\n")
    assert refused.code == 1 and "service 4 (Counter:dave): HOTP" in refused.err
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM secrets").fetchone()[0] == 0
    result = run_cli("secret", "import", str(path), "--password-stdin", "--skip-unsupported",
                     stdin=fx.PASSWORD + "\n")
    assert result.code == 0, result.err
    for identifier, account in zip(IDENTIFIERS, fx.ACCOUNTS):
        assert run_cli("code", identifier, "--at", "1700000015").out.split()[0] == account.code(1700000015)
