"""`store copy` SQLite -> PostgreSQL -> SQLite with every row and code compared; `store verify`; every
store command on PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers_app import BASE32, OTHER_BASE32
from totp_service import otp
from totp_service.config import load_settings
from totp_service.imports.otpauth import spec_from_base32
from totp_service.store import AuditEntry
from totp_service.store.open import open_location, open_store


def _fill(data_dir: Path) -> None:
    with open_store(load_settings(environ={"TOTP_SERVICE_DATA_DIR": str(data_dir)})) as s:
        s.put_many([("alice@example.com", spec_from_base32(BASE32)), ("bob", spec_from_base32(OTHER_BASE32, period=60))],
                   allowed_agents=["wpid_1"])
        s.put_binding("run", "wr_1", "bob")
        s.write_audit([(AuditEntry("served", identifier="bob", at=100.0 + i), ("bob", i)) for i in range(5)])


def test_copy_round_trip_sqlite_postgres_sqlite(run_cli, data_dir: Path, tmp_path: Path, pg_url: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    assert run_cli("init").code == 0
    _fill(data_dir)
    key_file = data_dir / "master.key"

    out = run_cli("store", "copy", "--to", pg_url)
    assert out.code == 0, out.err
    assert "copied 2 secret(s), 1 binding(s), 5 claim(s) and 5 audit row(s)" in out.out and "(created)" in out.out
    assert "every secret opens and gives the same code" in out.out
    assert run_cli("store", "copy", "--to", pg_url).code == 1  # never into a store that holds rows

    # a second machine: the same key file, the store on PostgreSQL
    monkeypatch.setenv("TOTP_SERVICE_DATABASE_URL", pg_url)
    monkeypatch.setenv("TOTP_SERVICE_DATA_DIR", str(tmp_path / "second"))
    (tmp_path / "second").mkdir(mode=0o700)
    (tmp_path / "second" / "master.key").write_bytes(key_file.read_bytes())
    assert run_cli("store", "verify").out.strip() == "2 secret(s) open with this key"
    code = run_cli("code", "bob", "--at", "1000", "--json")
    assert code.code == 0 and otp.code_at(spec_from_base32(OTHER_BASE32, period=60), 1000) in code.out

    back = tmp_path / "back.db"
    out = run_cli("store", "copy", "--to", str(back))
    assert out.code == 0, out.err
    with open_location(str(data_dir / "totp.db"), _key(key_file)) as first, open_location(str(back), _key(key_file)) as last:
        assert first.dump_rows() == last.dump_rows()  # every row, sealed bytes included, as it was
        assert last.write_audit([(AuditEntry("served", identifier="bob"), ("bob", 3))]) == [False]  # claims moved
        assert [m.allowed_agents for m in last.list_meta()] == [["wpid_1"], ["wpid_1"]]
    monkeypatch.delenv("TOTP_SERVICE_DATABASE_URL")
    monkeypatch.setenv("TOTP_SERVICE_DATA_DIR", str(data_dir))
    same = run_cli("store", "verify", "--against", pg_url)
    assert same.code == 0 and "2 secret(s) open and agree with postgresql://" in same.out


def test_verify_finds_a_tampered_row_and_a_diverging_copy(run_cli, data_dir: Path, tmp_path: Path) -> None:
    assert run_cli("init").code == 0
    _fill(data_dir)
    other = tmp_path / "other.db"
    assert run_cli("store", "copy", "--to", str(other)).code == 0
    with open_location(str(other), _key(data_dir / "master.key")) as s:
        s.put_secret("bob", spec_from_base32(BASE32, period=60), replace=True)
        s.put_secret("carol", spec_from_base32(BASE32))
    diverged = run_cli("store", "verify", "--against", str(other))
    assert diverged.code == 1
    assert "'bob': the two stores give different codes" in diverged.out
    assert "the other store holds 1 identifier(s) this one does not" in diverged.out
    import sqlite3

    with sqlite3.connect(data_dir / "totp.db") as conn:
        conn.execute("UPDATE secrets SET sealed = (SELECT sealed FROM secrets WHERE identifier = 'bob') "
                     "WHERE identifier = 'alice@example.com'")
    tampered = run_cli("store", "verify")
    assert tampered.code == 1 and "alice@example.com" in tampered.out and "1 problem(s) found" in tampered.out
    for text in (BASE32, OTHER_BASE32):
        assert text not in tampered.out + tampered.err + diverged.out


def test_copy_refuses_nonsense(run_cli, data_dir: Path) -> None:
    assert run_cli("init").code == 0
    same = run_cli("store", "copy", "--to", str(data_dir / "totp.db"))
    assert same.code == 2 and "the same store" in same.err
    missing = run_cli("store", "copy", "--from", str(data_dir / "nope.db"))
    assert missing.code == 1 and "no store at" in missing.err
    assert run_cli("store", "copy").code == 2


def _key(path: Path):
    from totp_service.store import crypto

    return crypto.load_key_file(path)




def test_every_store_command_on_postgresql(run_cli, data_dir: Path, tmp_path: Path, pg_url: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOTP_SERVICE_DATABASE_URL", pg_url)
    init = run_cli("init")
    assert init.code == 0 and "created store postgresql://" in init.out, init.err
    assert run_cli("init").code == 0  # again: nothing changes
    assert run_cli("secret", "add", "alice@example.com", "--stdin", stdin=BASE32 + "\n").code == 0
    assert "alice@example.com" in run_cli("secret", "list").out
    assert run_cli("secret", "show", "alice@example.com").code == 0
    code = run_cli("code", "alice@example.com", "--at", "1000", "--json")
    assert code.code == 0 and otp.code_at(spec_from_base32(BASE32), 1000) in code.out
    rotated = run_cli("rotate-key", "--new-key-file", str(tmp_path / "new.key"))
    assert rotated.code == 0, rotated.err
    monkeypatch.setenv("TOTP_SERVICE_MASTER_KEY", (tmp_path / "new.key").read_text().strip())
    assert otp.code_at(spec_from_base32(BASE32), 1000) in run_cli("code", "alice@example.com", "--at", "1000").out
    assert run_cli("audit", "--json").code == 0
    assert run_cli("audit", "export").code == 0
    assert run_cli("secret", "remove", "alice@example.com").code == 0
    assert "no secrets stored" in run_cli("secret", "list").out
    for text in (BASE32, "hunter"):
        assert text not in init.out + code.out + rotated.out
