"""Unauthenticated traffic cannot grow what we store: throttling, aggregate refusal rows, WAL and
audit retention, and the JSONL export that runs before anything is pruned (issue 11, item 1)."""

from __future__ import annotations

import concurrent.futures
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from totp_service.service.refusals import OTHER_CLIENTS, RefusalGuard
from totp_service.store import AuditEntry, sqlite_maintenance
from totp_service.store.open import open_store
from tests.helpers_app import SKYVERN_KEY, add_secret, make_settings, pull, running_service

REPO = Path(__file__).resolve().parent.parent
IDENTIFIER = "alice@example.com"




def _store_bytes(database: Path) -> int:
    return sum(p.stat().st_size for p in (database, Path(f"{database}-wal")) if p.exists())


def test_guard_throttles_past_the_limit_and_aggregates_per_client_and_reason() -> None:
    guard = RefusalGuard(limit=3, window=60, max_clients=2)
    answers = [guard.refuse("10.0.0.1", "bad_signature", "x", "pull", "d", now=1000.0 + i) for i in range(5)]
    assert [row is not None for row, _ in answers] == [True, False, False, False, False]  # first at once
    assert [retry for _, retry in answers] == [None, None, None, 57, 56]  # 429 until the window ends
    assert guard.refuse("10.0.0.2", "bad_signature", "x", "pull", "d", now=1010.0)[1] is None  # per client
    row, _ = guard.refuse("10.0.0.3", "stale_timestamp", "y", "pull", "d", now=1011.0)
    assert row is not None and row.client == OTHER_CLIENTS  # past max_clients: counted together
    assert guard.drain(now=1059.0) == []  # the window is still open
    (aggregate,) = guard.drain(now=1060.0)
    assert aggregate.client == "10.0.0.1" and aggregate.count == 4 and aggregate.outcome == "refused:bad_signature"
    assert guard.refuse("10.0.0.1", "bad_signature", "x", "pull", "d", now=1061.0)[1] is None  # a new window


def test_a_bad_signature_flood_is_throttled_and_adds_almost_nothing_to_the_store(tmp_path, front_end) -> None:
    settings = make_settings(tmp_path)
    settings.server.refusal_limit = 20
    add_secret(settings, IDENTIFIER)
    flood_path = "/totp/" + "x" * 500
    before = _store_bytes(settings.database_path)
    statuses: list[int] = []
    with running_service(settings) as svc:
        def flood(n: int) -> None:
            with svc.client() as client:
                for _ in range(n):
                    response = pull(client, flood_path, {"task_id": "t"}, key="stolen-or-guessed")
                    statuses.append(response.status_code)
                    if response.status_code == 429:
                        assert 1 <= int(response.headers["retry-after"]) <= 60
        threads = [threading.Thread(target=flood, args=(500,)) for _ in range(4)]
        for thread in threads:
            thread.start()
        honest = []
        with svc.client() as client:  # signed pulls from the same address during the flood are answered
            while any(t.is_alive() for t in threads):
                honest.append(pull(client, "/totp/alice%40example.com", {"task_id": "tsk_1"}).status_code)
        for thread in threads:
            thread.join()
        assert set(honest) == {200} and len(honest) >= 1
        assert statuses.count(401) == 20 and statuses.count(429) == 1980
        refused = [r for r in svc.store.read_audit(limit=100000) if r.outcome != "served"]
        assert len(refused) == 1  # the first refusal, written at once
        metrics = svc.client().get("/metrics").text
        assert 'totp_refusals_total{reason="bad_signature"} 2000' in metrics
        assert "totp_refusals_throttled_total 1980" in metrics
    with open_store(settings) as store:
        rows = [r for r in store.read_audit(limit=100000) if r.outcome == "refused:bad_signature"]
    assert [r.count for r in rows] == [1999, 1]  # and the rest as one row with their count
    assert rows[0].client == "127.0.0.1"
    assert _store_bytes(settings.database_path) - before < 1_000_000


def test_the_wal_is_reset_under_sustained_writes(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_maintenance, "WAL_LIMIT_BYTES", 256 * 1024)  # small limits: a short test
    monkeypatch.setattr(sqlite_maintenance, "WAL_HARD_LIMIT_BYTES", 1024 * 1024)
    settings = make_settings(tmp_path)
    wal = Path(f"{settings.database_path}-wal")
    with open_store(settings) as store:
        store.start_background_checkpoints()
        largest = 0
        row = AuditEntry("served", "x" * 200, detail="y" * 300)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:  # back-to-back commits: the checkpointer never gets the lock
            store.write_audit([(row, None)] * 50)
            largest = max(largest, wal.stat().st_size if wal.exists() else 0)
        store.stop_background_checkpoints()
    assert largest < 12 * 1024 * 1024, largest  # unbounded, it passed 40 MB in 3 s


def test_audit_rows_past_retention_are_pruned(tmp_path) -> None:
    settings = make_settings(tmp_path)
    now = time.time()
    with open_store(settings) as store:
        store.write_audit([(AuditEntry("served", "old", at=now - 400 * 86400), None),
                           (AuditEntry("served", "recent", at=now - 10 * 86400), None)])
        assert store.prune_audit(now - 365 * 86400) == 1
        assert [r.identifier for r in store.read_audit()] == ["recent"]
        store.write_audit([(AuditEntry("served", "old", at=now - 400 * 86400), None)] * 3)
        checkpointer = sqlite_maintenance.Checkpointer(store.path, 1.0, audit_retention_seconds=365 * 86400)
        conn = sqlite3.connect(store.path, isolation_level=None)
        checkpointer.prune(conn)  # what the service's background thread does every hour
        conn.close()
        assert [r.identifier for r in store.read_audit()] == ["recent"]


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "totp_service", *args], env=env, capture_output=True, text=True,
                          timeout=60)


def test_audit_export_writes_one_json_object_a_line(tmp_path) -> None:
    settings = make_settings(tmp_path)
    now = time.time()
    with open_store(settings) as store:
        store.write_audit([(AuditEntry("served", "old", at=now - 3 * 86400), None),
                           (AuditEntry("refused:bad_signature", None, client="10.0.0.9", count=41, at=now - 60), None),
                           (AuditEntry("served", "caf\u00e9", task_id="tsk_\ud800", at=now - 30), None)])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOTP_SERVICE_", "SKYVERN_"))}
    env.update(TOTP_SERVICE_DATA_DIR=str(settings.data_dir), TOTP_SERVICE_MASTER_KEY=settings.master_key or "",
               PYTHONPATH=str(REPO))
    result = _cli(env, "audit", "export", "--since", "1d", "--format", "jsonl")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["outcome"], r["count"]) for r in lines] == [("refused:bad_signature", 41), ("served", 1)]
    assert lines[1]["identifier"] == "caf\u00e9" and lines[1]["task_id"] == "tsk_\ufffd"
    assert lines[0]["at_iso"].endswith("Z")
    everything = _cli(env, "audit", "export")
    assert len(everything.stdout.splitlines()) == 3
    assert _cli(env, "audit", "export", "--format", "csv").returncode == 2
    text = _cli(env, "audit", "--limit", "5")
    assert "refused:bad_signature x41" in text.stdout
