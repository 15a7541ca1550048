"""What only the PostgreSQL backend does: advisory-locked migrations, LISTEN/NOTIFY, losing the
database and getting it back, URLs and their errors, and staying optional."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from tests.pg_cluster import PgCluster
from totp_service import store
from totp_service.imports.otpauth import spec_from_base32
from totp_service.store import crypto

B32 = "JBSWY3DPEHPK3PXP"

postgres = pytest.importorskip("totp_service.store.postgres", reason="psycopg not installed")


def _served() -> store.AuditEntry:
    return store.AuditEntry(outcome="served", identifier="alice")


def _wait(predicate, timeout: float) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError("not within %.1f s" % timeout)
        time.sleep(0.005)
    return time.monotonic() - started


def test_replicas_starting_together_migrate_once(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    key = crypto.MasterKey.generate()
    postgres.PostgresStore(pg_url, key, create=True).close()
    # a release with one more migration: a statement that fails if it runs twice
    monkeypatch.setitem(postgres.MIGRATIONS, 2, ["CREATE TABLE migrated_once (at DOUBLE PRECISION)",
                                                "INSERT INTO migrated_once VALUES (extract(epoch FROM now()))"])
    monkeypatch.setattr(postgres, "SCHEMA_VERSION", 2)
    errors: list[BaseException] = []
    barrier = threading.Barrier(3)

    def start_replica() -> None:
        barrier.wait()
        try:
            postgres.PostgresStore(pg_url, key).close()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start_replica) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    import psycopg

    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM migrated_once").fetchone() == (1,)
        assert conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone() == (b"2",)


def test_a_change_is_heard_by_another_process_at_once(pg_url: str) -> None:
    key = crypto.MasterKey.generate()
    postgres.PostgresStore(pg_url, key, create=True).close()
    with postgres.PostgresStore(pg_url, key) as serving, postgres.PostgresStore(pg_url, key) as admin:
        serving.start_background_checkpoints()
        before = serving.secrets_version()
        admin.put_secret("alice", spec_from_base32(B32))
        assert _wait(lambda: serving.secrets_version() != before, 1.0) < 1.0


def test_database_gone_then_back_without_reopening(pg_cluster: PgCluster, pg_url: str) -> None:
    key = crypto.MasterKey.generate()
    postgres.PostgresStore(pg_url, key, create=True).close()
    with postgres.PostgresStore(pg_url, key) as s:
        s.start_background_checkpoints()
        s.put_secret("alice", spec_from_base32(B32))
        pg_cluster.stop()
        try:
            started = time.monotonic()
            for _ in range(3):
                with pytest.raises(store.StoreUnavailable, match="cannot be reached"):
                    s.write_audit([(_served(), ("alice", 1))])
                with pytest.raises(store.StoreUnavailable):
                    s.get_meta("alice")
            assert time.monotonic() - started < 5  # fails fast, never a pool timeout per call
        finally:
            pg_cluster.start()

        def answers() -> bool:
            try:
                return s.write_audit([(_served(), ("alice", 2))]) == [True]
            except store.StoreUnavailable:
                return False

        _wait(answers, 10)
        assert s.get_meta("alice").identifier == "alice"
        assert [e.outcome for e in s.read_audit()] == ["served"]  # the refused writes left nothing


def test_unreachable_server_and_bad_url_say_so_without_the_password(pg_cluster: PgCluster) -> None:
    key = crypto.MasterKey.generate()
    url = f"postgresql://totp:hunter2secret@127.0.0.1:{pg_cluster.port + 1}/postgres?connect_timeout=2"
    with pytest.raises(store.StoreUnavailable) as caught:
        postgres.PostgresStore(url, key)
    assert "hunter2secret" not in str(caught.value) and "127.0.0.1" in str(caught.value)
    with pytest.raises(store.StoreError, match='invalid sslmode value: "sometimes"') as bad:
        postgres.PostgresStore("postgresql://totp:hunter2secret@/x?sslmode=sometimes", key)
    assert "hunter2secret" not in str(bad.value)
    with pytest.raises(store.StoreError, match="not valid") as bad:
        postgres.PostgresStore("postgresql://totp:hunter2secret@127.0.0.1/x?nosuchoption=1", key)
    assert "hunter2secret" not in str(bad.value)
    assert "hunter2secret" not in repr(postgres.redact(url))


def test_libpq_options_pass_through(pg_cluster: PgCluster, pg_url: str) -> None:
    key = crypto.MasterKey.generate()
    postgres.PostgresStore(pg_url + "?sslmode=disable&application_name=x", key, create=True).close()
    with pytest.raises(store.StoreError):  # the server has no TLS: sslmode=require must fail, not be dropped
        postgres.PostgresStore(pg_url + "?sslmode=require", key)


def test_without_the_extra_nothing_imports_psycopg() -> None:
    code = ("import sys; import totp_service.cli, totp_service.store.open, totp_service.service.app; "
            "print(sorted(m for m in sys.modules if m.startswith('psycopg')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_replicas_running_init_together_both_succeed(pg_url: str, tmp_path) -> None:
    from totp_service.config import load_settings
    from totp_service.store.open import init_store

    key = crypto.MasterKey.generate().to_base64()
    settings = [load_settings(environ={"TOTP_SERVICE_DATA_DIR": str(tmp_path / f"r{i}"), "TOTP_SERVICE_MASTER_KEY": key,
                                       "TOTP_SERVICE_DATABASE_URL": pg_url}) for i in range(3)]
    results: list[object] = []
    barrier = threading.Barrier(3)

    def init(i: int) -> None:
        barrier.wait()
        try:
            results.append(init_store(settings[i]).created_store)
        except BaseException as exc:  # pragma: no cover - reported below
            results.append(exc)

    threads = [threading.Thread(target=init, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results, key=str) == [False, False, True]


def test_the_launchers_local_code_source_shares_claims_with_the_service(pg_url: str) -> None:
    from totp_service.launcher.pusher import LocalCodeSource

    key = crypto.MasterKey.generate()
    postgres.PostgresStore(pg_url, key, create=True).close()
    with postgres.PostgresStore(pg_url, key) as launcher_side, postgres.PostgresStore(pg_url, key) as service_side:
        launcher_side.put_secret("alice", spec_from_base32(B32))
        source = LocalCodeSource(launcher_side, "alice", min_validity=0)
        window = source.current(time.time())
        assert source.claim(window, "wr_1", "workflow_run_id")
        assert service_side.write_audit([(_served(), ("alice", window.window_id))]) == [False]  # taken: no reuse
        assert [e.outcome for e in service_side.read_audit("alice")] == ["window_taken", "pushed"]
