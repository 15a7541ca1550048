"""The encrypted store: AAD binding, wrong keys, modes, rotation, concurrency, migrations."""

from __future__ import annotations

import sqlite3
import stat
import threading
import time
from pathlib import Path

import pytest

from totp_service import imports, otp, store
from totp_service.config import load_settings
from totp_service.store import crypto, sqlite_schema
from totp_service.store.open import init_store, open_store
from totp_service.store.sqlite import SqliteStore

B32 = "JBSWY3DPEHPK3PXP"


def _settings(data_dir: Path, **env: str):
    return load_settings(environ={"TOTP_SERVICE_DATA_DIR": str(data_dir), **env})


def _spec(b32: str = B32) -> otp.TotpSpec:
    return imports.spec_from_base32(b32)


def _snapshot(data_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(data_dir.iterdir())}


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


def test_identifier_normalised_like_skyvern(opened) -> None:
    _, s = opened
    s.put_secret("  Alice@Example.COM ", _spec())
    assert s.has_secret("alice@example.com")
    assert s.get_meta("ALICE@example.com").identifier == "alice@example.com"
    s.put_secret("+1 555 0100", _spec())
    assert s.has_secret("+1 555 0100") and not s.has_secret("+15550100")


def test_row_copied_under_another_identifier_fails_to_open(opened) -> None:
    _, s = opened
    s.put_secret("alice", _spec())
    s.put_secret("mallory", _spec("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"))
    conn = sqlite3.connect(s.path)
    conn.execute("UPDATE secrets SET sealed = (SELECT sealed FROM secrets WHERE identifier='alice') "
                 "WHERE identifier='mallory'")
    conn.commit()
    conn.close()
    assert s.get_spec("alice").secret == imports.decode_base32(B32)
    with pytest.raises(crypto.DecryptionFailed, match="mallory"):
        s.get_spec("mallory")


def test_metadata_columns_cannot_change_codes(opened) -> None:
    _, s = opened
    s.put_secret("alice", _spec())
    conn = sqlite3.connect(s.path)
    conn.execute("UPDATE secrets SET digits = 8, algorithm = 'SHA512' WHERE identifier='alice'")
    conn.commit()
    conn.close()
    spec = s.get_spec("alice")
    assert (spec.digits, spec.algorithm) == (6, "SHA1")


def test_wrong_master_key_refused_and_store_unchanged(tmp_path: Path) -> None:
    settings = _settings(tmp_path / "d")
    init_store(settings)
    with open_store(settings) as s:
        s.put_secret("alice", _spec())
    before = _snapshot(settings.data_dir)
    wrong = _settings(tmp_path / "d", TOTP_SERVICE_MASTER_KEY=crypto.MasterKey.generate().to_base64())
    with pytest.raises(crypto.WrongMasterKey, match="TOTP_SERVICE_MASTER_KEY does not open the store"):
        open_store(wrong)
    assert _snapshot(settings.data_dir) == before


def test_passphrase_store_and_wrong_passphrase(tmp_path: Path) -> None:
    good = _settings(tmp_path / "d", TOTP_SERVICE_PASSPHRASE="correct horse battery staple")
    result = init_store(good)
    assert result.created_store and not result.created_key_file
    assert not good.key_file_path.exists()
    with open_store(good) as s:
        s.put_secret("alice", _spec())
    before = _snapshot(good.data_dir)
    bad = _settings(tmp_path / "d", TOTP_SERVICE_PASSPHRASE="wrong horse")
    with pytest.raises(crypto.WrongMasterKey):
        open_store(bad)
    assert _snapshot(good.data_dir) == before
    with open_store(good) as s:
        assert s.get_spec("alice").secret == imports.decode_base32(B32)


def test_init_twice_changes_nothing(tmp_path: Path) -> None:
    settings = _settings(tmp_path / "d")
    assert init_store(settings).created_store
    before = _snapshot(settings.data_dir)
    again = init_store(settings)
    assert not again.created_store and not again.created_key_file
    assert _snapshot(settings.data_dir) == before


def test_rotation_reencrypts_everything_and_old_key_opens_nothing(opened, tmp_path: Path) -> None:
    settings, s = opened
    old_key = crypto.load_key_file(settings.key_file_path)
    s.put_many([(f"user{i}", _spec()) for i in range(5)])
    new_key = crypto.MasterKey.generate()
    assert s.rotate_key(new_key) == 5
    assert s.get_spec("user3").secret == imports.decode_base32(B32)
    assert {m.key_id for m in s.list_meta()} == {new_key.key_id}
    with pytest.raises(crypto.WrongMasterKey):
        SqliteStore(settings.database_path, old_key)
    conn = sqlite3.connect(settings.database_path)
    sealed = conn.execute("SELECT sealed FROM secrets WHERE identifier='user1'").fetchone()[0]
    conn.close()
    with pytest.raises(crypto.DecryptionFailed):
        crypto.open_sealed(old_key, sealed, b"user1")
    with SqliteStore(settings.database_path, new_key) as reopened:
        assert reopened.count_secrets() == 5


def test_put_many_is_all_or_nothing(opened) -> None:
    _, s = opened
    s.put_secret("taken", _spec())
    with pytest.raises(store.SecretExists):
        s.put_many([("new1", _spec()), ("taken", _spec())])
    assert not s.has_secret("new1")
    with pytest.raises(store.SecretExists):
        s.put_secret("taken", _spec())
    s.put_secret("taken", _spec("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"), replace=True)
    assert s.get_spec("taken").secret == imports.decode_base32("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ")


def test_allow_list_and_bindings(opened) -> None:
    _, s = opened
    meta = s.put_secret("alice", _spec(), allowed_agents=["wpid_b", "wpid_a"])
    assert meta.allowed_agents == ["wpid_a", "wpid_b"]
    with pytest.raises(store.InvalidIdentifier):
        s.put_secret("bob", _spec(), allowed_agents=["w_123"])
    s.put_binding("run", "wr_1", "Alice@Example.com")
    assert s.find_binding("run", "wr_1").identifier == "alice@example.com"
    s.put_binding("agent", "wpid_x", "alice", expires_at=1.0)
    assert s.find_binding("agent", "wpid_x") is None
    assert s.remove_binding("run", "wr_1") and s.find_binding("run", "wr_1") is None


def test_single_use_claims_and_audit(opened) -> None:
    _, s = opened
    entry = store.AuditEntry(outcome="served", identifier="alice", workflow_run_id="wr_1", client="127.0.0.1")
    assert s.write_audit([(entry, ("alice", 100))]) == [True]
    assert s.write_audit([(entry, ("alice", 100)), (entry, ("alice", 101)), (entry, None)]) == [False, True, True]
    rows = s.read_audit(identifier="alice")
    assert [r.outcome for r in rows] == ["served", "served", "window_taken", "served"]
    assert rows[0].workflow_run_id == "wr_1"


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


def test_concurrent_writer_and_readers(tmp_path: Path) -> None:
    settings = _settings(tmp_path / "d")
    init_store(settings)
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            with open_store(settings) as s:
                for i in range(100):
                    s.put_secret(f"w{i}", _spec())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def reader() -> None:
        try:
            with open_store(settings) as s:
                for _ in range(100):
                    for meta in s.list_meta()[:5]:
                        s.get_spec(meta.identifier)
                    s.write_audit([(store.AuditEntry(outcome="served", identifier="w0"), None)])
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with open_store(settings) as s:
        assert s.count_secrets() == 100
        assert len(s.read_audit(limit=1000)) == 300


def test_newer_schema_is_refused(opened) -> None:
    settings, s = opened
    conn = sqlite3.connect(settings.database_path)
    conn.execute("UPDATE meta SET value = ? WHERE name = 'schema_version'", (b"99",))
    conn.commit()
    conn.close()
    with pytest.raises(store.SchemaTooNew):
        open_store(settings)


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


def _claims(path: Path) -> set[tuple[str, int]]:
    with sqlite3.connect(path) as conn:
        return set(conn.execute("SELECT identifier, counter FROM served").fetchall())


def _old_claim(path: Path, identifier: str, counter: int, at: float) -> None:
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("INSERT INTO served (identifier, counter, at) VALUES (?, ?, ?)", (identifier, counter, at))
    conn.close()


def test_prune_claims_drops_closed_windows_only(opened) -> None:
    settings, s = opened
    s.put_secret("alice", _spec())  # 30 s windows
    s.put_secret("hourly", imports.spec_from_base32(B32, period=3600))
    now = time.time()
    old = now - 2 * 86400
    _old_claim(settings.database_path, "alice", int(old // 30), old)
    # an old claim time but a window still open (as with a clock that jumped): kept, the window decides
    _old_claim(settings.database_path, "hourly", int(now // 3600), old)
    current = int(now // 30)
    assert s.write_audit([(store.AuditEntry("served", identifier="alice"), ("alice", current))]) == [True]

    assert s.prune_claims(now - store.CLAIM_RETENTION_SECONDS) == 1

    assert _claims(settings.database_path) == {("alice", current), ("hourly", int(now // 3600))}
    assert s.write_audit([(store.AuditEntry("served", identifier="alice"), ("alice", current))]) == [False]


def test_service_background_thread_prunes_old_claims(opened) -> None:
    settings, s = opened
    s.put_secret("alice", _spec())
    old = time.time() - 3 * 86400
    for counter in range(int(old // 30), int(old // 30) + 50):
        _old_claim(settings.database_path, "alice", counter, old)
    current = int(time.time() // 30)
    s.write_audit([(store.AuditEntry("served", identifier="alice"), ("alice", current))])
    s.start_background_checkpoints(interval=0.02, prune_every=0.05)
    try:
        deadline = time.monotonic() + 10
        while len(_claims(settings.database_path)) > 1 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        s.stop_background_checkpoints()
    assert _claims(settings.database_path) == {("alice", current)}
