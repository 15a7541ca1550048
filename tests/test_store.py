"""The SQLite backend only: file modes, what reaches the file, WAL checkpoints, its migrations.

The contract every backend keeps (sealing, keys, rotation, claims, audit, pruning) is
test_store_contract.py, run against SQLite and PostgreSQL alike."""

from __future__ import annotations

import sqlite3
import stat
import time
from pathlib import Path

import pytest

from totp_service import imports, otp, store
from totp_service.config import load_settings
from totp_service.store import crypto, sqlite_schema
from totp_service.store.open import init_store, open_store

B32 = "JBSWY3DPEHPK3PXP"


def _settings(data_dir: Path, **env: str):
    return load_settings(environ={"TOTP_SERVICE_DATA_DIR": str(data_dir), **env})


def _spec(b32: str = B32) -> otp.TotpSpec:
    return imports.spec_from_base32(b32)


@pytest.fixture
def opened(tmp_path: Path):
    settings = _settings(tmp_path / "d")
    init_store(settings)
    with open_store(settings) as s:
        yield settings, s


def test_files_are_private(tmp_path: Path) -> None:
    settings = _settings(tmp_path / "d")
    init_store(settings)
    assert stat.S_IMODE(settings.data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(settings.key_file_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(settings.database_path.stat().st_mode) == 0o600


def test_only_ciphertext_is_stored(opened) -> None:
    settings, s = opened
    s.put_secret("alice@example.com", _spec())
    raw = settings.database_path.read_bytes() + Path(str(settings.database_path) + "-wal").read_bytes()
    assert imports.decode_base32(B32) not in raw
    assert B32.encode() not in raw


def test_background_checkpoints_keep_the_wal_small(opened) -> None:
    _, s = opened
    s.start_background_checkpoints(interval=0.02)
    assert s._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0  # commits no longer checkpoint
    entry = store.AuditEntry(outcome="served", identifier="alice")
    for _ in range(3000):
        s.write_audit([(entry, None)])
    time.sleep(0.2)
    s.write_audit([(entry, None)])  # the WAL restarts from its start once everything was copied back
    frames = s._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()[0][1]
    s.stop_background_checkpoints()
    assert frames < 1000
    assert s._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
    assert len(s.read_audit(limit=10000)) == 3001


def test_repr_of_keys_hides_them() -> None:
    key = crypto.MasterKey.generate()
    assert key.to_base64() not in repr(key) and repr(key.key) not in repr(key)


def test_version_1_store_migrates_forward(opened) -> None:
    settings, s = opened
    s.put_secret("alice", _spec())
    s.close()
    conn = sqlite3.connect(settings.database_path)
    for event in ("insert", "update", "delete"):
        conn.execute(f"DROP TRIGGER secrets_version_{event}")
    conn.execute("CREATE INDEX audit_identifier_at ON audit (identifier, at)")
    conn.execute("DELETE FROM meta WHERE name = 'secrets_version'")
    conn.execute("ALTER TABLE audit DROP COLUMN count")
    conn.execute("UPDATE meta SET value = ? WHERE name = 'schema_version'", (b"1",))
    conn.commit()
    conn.close()
    with open_store(settings) as migrated:
        assert migrated.get_spec("alice").secret == imports.decode_base32(B32)
        before = migrated.secrets_version()
        migrated.put_secret("bob", _spec())
        migrated.remove_secret("alice")
        assert migrated.secrets_version() == before + 2
    conn = sqlite3.connect(settings.database_path)
    names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    version = conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()[0]
    conn.close()
    assert "audit_identifier_at" not in names and version == str(sqlite_schema.SCHEMA_VERSION).encode()
