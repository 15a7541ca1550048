"""The store's contract, one suite run against every backend (SQLite file, PostgreSQL server).

What the service, the CLI and the launcher rely on must hold the same on both: sealing bound to
the identifier, wrong keys refused with nothing written, all-or-nothing writes, single-use claims
taken once across store instances (processes, replicas), the audit trail, pruning, versions.
Backend-only behaviour (SQLite's WAL and file modes, PostgreSQL's LISTEN and reconnects) is tested
in test_store.py and test_postgres.py.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from totp_service import store
from totp_service.config import Settings, load_settings
from totp_service.imports.otpauth import decode_base32, spec_from_base32
from totp_service.store import crypto
from totp_service.store.open import init_store, open_store

B32 = "JBSWY3DPEHPK3PXP"
OTHER_B32 = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
TABLES = ("meta", "secrets", "bindings", "audit", "served")


@dataclass
class Backend:
    name: str
    data_dir: Path
    url: str | None = None

    def settings(self, **env: str) -> Settings:
        base = {"TOTP_SERVICE_DATA_DIR": str(self.data_dir)}
        if self.url:
            base["TOTP_SERVICE_DATABASE_URL"] = self.url
        return load_settings(environ={**base, **env})

    def execute(self, query: str, *args: Any) -> list[tuple[Any, ...]]:
        """Raw SQL behind the store's back (`?` placeholders), for tampering and inspection."""
        if self.url:
            import psycopg

            with psycopg.connect(self.url, autocommit=True) as conn:
                cur = conn.execute(query.replace("?", "%s"), args)  # type: ignore[arg-type]
                return cur.fetchall() if cur.description else []
        conn = sqlite3.connect(self.data_dir / "totp.db")
        try:
            with conn:
                return conn.execute(query, args).fetchall()
        finally:
            conn.close()

    def snapshot(self) -> dict[str, Any]:
        """Every row and every file: what 'nothing changed' is checked against."""
        rows = {t: sorted(map(repr, self.execute(f"SELECT * FROM {t}"))) for t in TABLES}
        files = {p.name: p.read_bytes() for p in sorted(self.data_dir.iterdir())}
        return {"rows": rows, "files": files}


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    return Backend(request.param, tmp_path / "data", url)


@pytest.fixture
def opened(backend: Backend) -> Iterator[tuple[Backend, store.Store]]:
    init_store(backend.settings())
    with open_store(backend.settings()) as s:
        yield backend, s


def _spec(b32: str = B32):
    return spec_from_base32(b32)


def _served(identifier: str = "alice") -> store.AuditEntry:
    return store.AuditEntry(outcome="served", identifier=identifier, workflow_run_id="wr_1", client="127.0.0.1")


def test_identifier_normalised_like_skyvern(opened) -> None:
    _, s = opened
    s.put_secret("  Alice@Example.COM ", _spec())
    assert s.has_secret("alice@example.com")
    assert s.get_meta("ALICE@example.com").identifier == "alice@example.com"
    s.put_secret("+1 555 0100", _spec())
    assert s.has_secret("+1 555 0100") and not s.has_secret("+15550100")
    with pytest.raises(store.InvalidIdentifier):
        s.put_secret(" ", _spec())


def test_only_ciphertext_reaches_the_backend(opened) -> None:
    backend, s = opened
    s.put_secret("alice", _spec())
    (sealed,) = backend.execute("SELECT sealed FROM secrets WHERE identifier = 'alice'")[0]
    assert decode_base32(B32) not in bytes(sealed) and B32.encode() not in bytes(sealed)


def test_row_copied_under_another_identifier_fails_to_open(opened) -> None:
    backend, s = opened
    s.put_secret("alice", _spec())
    s.put_secret("mallory", _spec(OTHER_B32))
    backend.execute("UPDATE secrets SET sealed = (SELECT sealed FROM secrets WHERE identifier = 'alice') "
                    "WHERE identifier = 'mallory'")
    assert s.get_spec("alice").secret == decode_base32(B32)
    with pytest.raises(crypto.DecryptionFailed, match="mallory"):
        s.get_spec("mallory")


def test_metadata_columns_cannot_change_codes(opened) -> None:
    backend, s = opened
    s.put_secret("alice", _spec())
    backend.execute("UPDATE secrets SET digits = 8, algorithm = 'SHA512' WHERE identifier = 'alice'")
    spec = s.get_spec("alice")
    assert (spec.digits, spec.algorithm) == (6, "SHA1")


def test_wrong_master_key_refused_and_store_unchanged(backend: Backend) -> None:
    init_store(backend.settings())
    with open_store(backend.settings()) as s:
        s.put_secret("alice", _spec())
        s.write_audit([(_served(), ("alice", 7))])
    before = backend.snapshot()
    wrong = backend.settings(TOTP_SERVICE_MASTER_KEY=crypto.MasterKey.generate().to_base64())
    with pytest.raises(crypto.WrongMasterKey, match="TOTP_SERVICE_MASTER_KEY does not open the store"):
        open_store(wrong)
    assert backend.snapshot() == before


def test_passphrase_store_and_wrong_passphrase(backend: Backend) -> None:
    good = backend.settings(TOTP_SERVICE_PASSPHRASE="correct horse battery staple")
    result = init_store(good)
    assert result.created_store and not result.created_key_file
    assert not good.key_file_path.exists()
    with open_store(good) as s:
        s.put_secret("alice", _spec())
    before = backend.snapshot()
    with pytest.raises(crypto.WrongMasterKey):
        open_store(backend.settings(TOTP_SERVICE_PASSPHRASE="wrong horse"))
    assert backend.snapshot() == before
    with open_store(good) as s:
        assert s.get_spec("alice").secret == decode_base32(B32)


def test_init_twice_changes_nothing(backend: Backend) -> None:
    assert init_store(backend.settings()).created_store
    before = backend.snapshot()
    again = init_store(backend.settings())
    assert not again.created_store and not again.created_key_file
    assert backend.snapshot() == before


def test_opening_before_init_says_so(backend: Backend) -> None:
    with pytest.raises(store.StoreMissing, match="totp-service init"):
        open_store(backend.settings(TOTP_SERVICE_MASTER_KEY=crypto.MasterKey.generate().to_base64()))


def test_rotation_reencrypts_everything_and_old_key_opens_nothing(opened) -> None:
    backend, s = opened
    old_key = crypto.load_key_file(backend.settings().key_file_path)
    s.put_many([(f"user{i}", _spec()) for i in range(5)])
    new_key = crypto.MasterKey.generate()
    assert s.rotate_key(new_key) == 5
    assert s.get_spec("user3").secret == decode_base32(B32)
    assert {m.key_id for m in s.list_meta()} == {new_key.key_id}
    with pytest.raises(crypto.WrongMasterKey):
        open_store(backend.settings(), old_key)
    (sealed,) = backend.execute("SELECT sealed FROM secrets WHERE identifier = 'user1'")[0]
    with pytest.raises(crypto.DecryptionFailed):
        crypto.open_sealed(old_key, bytes(sealed), b"user1")
    with open_store(backend.settings(), new_key) as reopened:
        assert reopened.count_secrets() == 5


def test_put_many_is_all_or_nothing(opened) -> None:
    _, s = opened
    s.put_secret("taken", _spec())
    with pytest.raises(store.SecretExists):
        s.put_many([("new1", _spec()), ("taken", _spec())])
    assert not s.has_secret("new1")
    with pytest.raises(store.SecretExists):
        s.put_many([("twice", _spec()), ("twice", _spec())])
    assert not s.has_secret("twice")
    with pytest.raises(store.SecretExists):
        s.put_secret("taken", _spec())
    s.put_secret("taken", _spec(OTHER_B32), replace=True)
    assert s.get_spec("taken").secret == decode_base32(OTHER_B32)
    assert s.count_secrets() == 1 and [m.identifier for m in s.list_meta()] == ["taken"]


def test_remove_secret(opened) -> None:
    _, s = opened
    s.put_secret("alice", _spec())
    s.remove_secret("alice")
    assert not s.has_secret("alice")
    with pytest.raises(store.SecretNotFound):
        s.remove_secret("alice")
    with pytest.raises(store.SecretNotFound):
        s.get_spec("alice")


def test_allow_list_and_bindings(opened) -> None:
    _, s = opened
    meta = s.put_secret("alice", _spec(), allowed_agents=["wpid_b", "wpid_a"], min_validity_seconds=12.5)
    assert meta.allowed_agents == ["wpid_a", "wpid_b"] and meta.min_validity_seconds == 12.5
    with pytest.raises(store.InvalidIdentifier):
        s.put_secret("bob", _spec(), allowed_agents=["w_123"])
    s.put_binding("run", "wr_1", "Alice@Example.com")
    assert s.find_binding("run", "wr_1").identifier == "alice@example.com"
    s.put_binding("agent", "wpid_x", "alice", expires_at=1.0)
    assert s.find_binding("agent", "wpid_x") is None
    assert [(b.kind, b.ref) for b in s.list_bindings()] == [("agent", "wpid_x"), ("run", "wr_1")]
    assert s.remove_binding("run", "wr_1") and s.find_binding("run", "wr_1") is None
    assert not s.remove_binding("run", "wr_1")
    with pytest.raises(store.StoreError):
        s.put_binding("team", "x", "alice")


def test_single_use_claims_and_audit(opened) -> None:
    _, s = opened
    entry = _served()
    assert s.write_audit([(entry, ("alice", 100))]) == [True]
    assert s.write_audit([(entry, ("alice", 100)), (entry, ("alice", 101)), (entry, None)]) == [False, True, True]
    assert s.write_audit([(entry, ("alice", 102)), (entry, ("alice", 102))]) == [True, False]
    rows = s.read_audit(identifier="alice")
    assert [r.outcome for r in rows] == ["window_taken", "served", "served", "served", "window_taken", "served"]
    assert rows[0].workflow_run_id == "wr_1" and rows[0].client == "127.0.0.1"
    assert s.is_claimed("alice", 101) and not s.is_claimed("alice", 103)


def test_read_audit_filters(opened) -> None:
    _, s = opened
    s.write_audit([(store.AuditEntry("served", identifier="alice", at=100.0), None),
                   (store.AuditEntry("refused:bad_signature", identifier="bob", at=200.0), None),
                   (store.AuditEntry("served", identifier="alice", at=300.0), None)])
    assert [r.at for r in s.read_audit()] == [300.0, 200.0, 100.0]
    assert [r.at for r in s.read_audit(identifier="alice")] == [300.0, 100.0]
    assert [r.at for r in s.read_audit(since=150.0)] == [300.0, 200.0]
    assert [r.at for r in s.read_audit(limit=1)] == [300.0]


def test_a_claim_is_taken_once_across_store_instances(opened) -> None:
    """Several processes (or replicas) on one store: each window's claim goes to exactly one."""
    backend, first = opened
    others = [open_store(backend.settings()) for _ in range(3)]
    stores = [first, *others]
    results: list[list[bool]] = [[] for _ in stores]
    barrier = threading.Barrier(len(stores))

    def claim(i: int) -> None:
        barrier.wait()
        for counter in range(40):
            results[i] += stores[i].write_audit([(_served(), ("alice", counter))])

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for other in others:
        other.close()
    assert [sum(r[c] for r in results) for c in range(40)] == [1] * 40
    outcomes = [r.outcome for r in first.read_audit(limit=1000)]
    assert outcomes.count("served") == 40 and outcomes.count("window_taken") == 120


def test_concurrent_writer_and_readers(backend: Backend) -> None:
    init_store(backend.settings())
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            with open_store(backend.settings()) as s:
                for i in range(100):
                    s.put_secret(f"w{i}", _spec())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def reader() -> None:
        try:
            with open_store(backend.settings()) as s:
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
    with open_store(backend.settings()) as s:
        assert s.count_secrets() == 100
        assert len(s.read_audit(limit=1000)) == 300


def test_secrets_version_moves_on_every_change_from_any_instance(opened) -> None:
    backend, s = opened
    with open_store(backend.settings()) as other:
        seen = [s.secrets_version()]
        for change in (lambda: other.put_secret("alice", _spec()),
                       lambda: other.put_secret("alice", _spec(OTHER_B32), replace=True),
                       lambda: other.remove_secret("alice")):
            change()
            seen.append(s.secrets_version())
        s.put_binding("run", "wr_1", "alice")  # not a secret: no change
        s.write_audit([(_served(), ("alice", 1))])
        seen.append(s.secrets_version())
    assert seen[0] < seen[1] < seen[2] < seen[3] == seen[4]


def test_newer_schema_is_refused(opened) -> None:
    backend, s = opened
    backend.execute("UPDATE meta SET value = ? WHERE name = 'schema_version'", b"99")
    with pytest.raises(store.SchemaTooNew):
        open_store(backend.settings())


def _claims(backend: Backend) -> set[tuple[str, int]]:
    return {(i, int(c)) for i, c in backend.execute("SELECT identifier, counter FROM served")}


def _old_claim(backend: Backend, identifier: str, counter: int, at: float) -> None:
    backend.execute("INSERT INTO served (identifier, counter, at) VALUES (?, ?, ?)", identifier, counter, at)


def test_prune_claims_drops_closed_windows_only(opened) -> None:
    backend, s = opened
    s.put_secret("alice", _spec())  # 30 s windows
    s.put_secret("hourly", spec_from_base32(B32, period=3600))
    now = time.time()
    old = now - 2 * 86400
    _old_claim(backend, "alice", int(old // 30), old)
    # an old claim time but a window still open (as with a clock that jumped): kept, the window decides
    _old_claim(backend, "hourly", int(now // 3600), old)
    current = int(now // 30)
    assert s.write_audit([(_served(), ("alice", current))]) == [True]

    assert s.prune_claims(now - store.CLAIM_RETENTION_SECONDS) == 1

    assert _claims(backend) == {("alice", current), ("hourly", int(now // 3600))}
    assert s.write_audit([(_served(), ("alice", current))]) == [False]


def test_service_background_thread_prunes_old_claims(opened) -> None:
    backend, s = opened
    s.put_secret("alice", _spec())
    old = time.time() - 3 * 86400
    for counter in range(int(old // 30), int(old // 30) + 50):
        _old_claim(backend, "alice", counter, old)
    current = int(time.time() // 30)
    s.write_audit([(_served(), ("alice", current))])
    s.start_background_checkpoints(interval=0.02, prune_every=0.05)
    try:
        deadline = time.monotonic() + 10
        while len(_claims(backend)) > 1 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        s.stop_background_checkpoints()
    assert _claims(backend) == {("alice", current)}


def test_audit_counts_export_retention_and_unstorable_text(opened) -> None:
    _, s = opened
    s.write_audit([(store.AuditEntry("served", identifier="alice", at=100.0), None),
                   (store.AuditEntry("refused:bad_signature", client="10.0.0.9", at=200.0, count=41), None),
                   (store.AuditEntry("served", identifier="alice", detail="nul\x00 and \ud800 lone", at=300.0), None)])
    exported = list(s.export_audit(since=150.0))
    assert [(e.at, e.count) for e in exported] == [(200.0, 41), (300.0, 1)]  # oldest first
    assert exported[1].detail == "nul\ufffd and \ufffd lone"
    assert [e.count for e in s.read_audit()] == [1, 41, 1]
    assert s.prune_audit(250.0) == 2
    assert [e.at for e in s.read_audit()] == [300.0]


def test_an_instance_whose_key_was_rotated_elsewhere_writes_nothing(opened) -> None:
    backend, s = opened
    s.put_secret("alice", _spec())
    s.check_key_current()
    with open_store(backend.settings()) as other:  # another process rotates
        other.rotate_key(crypto.MasterKey.generate())
    before = backend.snapshot()["rows"]
    with pytest.raises(store.KeyRotated):
        s.put_secret("bob", _spec())
    with pytest.raises(store.KeyRotated):
        s.put_secret("alice", _spec(OTHER_B32), replace=True)
    with pytest.raises(store.KeyRotated):
        s.get_spec("alice")
    with pytest.raises(store.KeyRotated):
        s.check_key_current()
    assert backend.snapshot()["rows"] == before


def test_claims_outlive_a_removed_secret_and_readiness_probe_writes_nothing(opened) -> None:
    backend, s = opened
    s.put_secret("alice", _spec())
    assert s.write_audit([(_served(), ("alice", 7))]) == [True]
    s.remove_secret("alice")
    s.put_secret("alice", _spec())
    assert s.write_audit([(_served(), ("alice", 7))]) == [False]  # that window's code went out already
    before = backend.snapshot()["rows"]
    s.check_audit_writable()
    assert backend.snapshot()["rows"] == before
