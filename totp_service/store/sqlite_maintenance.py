"""SQLite housekeeping for a serving process: WAL checkpoints and claim pruning on a thread of
their own, so no request's commit pays for them."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from totp_service.store.base import (
    CLAIM_PRUNE_INTERVAL_SECONDS,
    CLAIM_RETENTION_SECONDS,
)

AUTOCHECKPOINT_PAGES = 1000  # SQLite's default
WAL_LIMIT_BYTES = 4 * 1024 * 1024  # an idle WAL larger than this is truncated (Checkpointer.checkpoint)
WAL_HARD_LIMIT_BYTES = 4 * WAL_LIMIT_BYTES  # past this the writer resets it itself (bound_wal)
AUDIT_PRUNE_BATCH = 10_000  # audit rows deleted per transaction


def prune_audit_batch_on(conn: sqlite3.Connection, before: float) -> int:
    return conn.execute(
        "DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE at < ? ORDER BY at LIMIT ?)",
        (before, AUDIT_PRUNE_BATCH),
    ).rowcount


def bound_wal(conn: sqlite3.Connection, wal: Path) -> None:
    """Reset a WAL past WAL_HARD_LIMIT_BYTES from the connection that writes (its lock held).

    Why: a writer that commits back to back leaves the background checkpointer no moment to
    take the write lock, and the WAL grew without end (~20 MB a second in a test; ~690 MB in a
    bad-signature flood before refusals were aggregated). Most frames are copied already by the
    PASSIVE rounds, so this costs little, and rarely.
    """
    try:
        if wal.stat().st_size <= WAL_HARD_LIMIT_BYTES:
            return
        conn.execute("PRAGMA busy_timeout = 100")
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        finally:
            conn.execute("PRAGMA busy_timeout = 30000")
    except (OSError, sqlite3.Error):  # no WAL, or another checkpoint running: the next look retries
        pass


def prune_claims_on(conn: sqlite3.Connection, before: float) -> int:
    return conn.execute(
        """DELETE FROM served WHERE at < ? AND NOT EXISTS (
               SELECT 1 FROM secrets WHERE secrets.identifier = served.identifier
                   AND (served.counter + 1) * secrets.period > ?)""",
        (before, before),
    ).rowcount


class Checkpointer(threading.Thread):
    """PASSIVE WAL checkpoints on a connection of its own, every `interval` seconds; claim (and
    audit retention) pruning every `prune_every` seconds (first soon after start, so a service
    restarted often still prunes). A WAL that a round has copied in full and that is larger than
    WAL_LIMIT_BYTES is truncated then (short busy timeout: it gives up rather than make a writer wait)."""

    def __init__(self, path: Path, interval: float, prune_every: float = CLAIM_PRUNE_INTERVAL_SECONDS,
                 audit_retention_seconds: float | None = None) -> None:
        super().__init__(name="wal-checkpoint", daemon=True)
        self._path, self._interval, self._prune_every = path, interval, prune_every
        self._wal = Path(f"{path}-wal")
        self._audit_retention = audit_retention_seconds
        self._stopping = threading.Event()
        self._next_prune = time.monotonic() + min(prune_every, 60.0)

    def run(self) -> None:
        conn = sqlite3.connect(self._path, isolation_level=None, timeout=30, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout = 30000")
            conn.execute("PRAGMA synchronous = NORMAL")
            while not self._stopping.wait(self._interval):
                self.checkpoint(conn, self._wal)
                if time.monotonic() >= self._next_prune:
                    self._next_prune = time.monotonic() + self._prune_every
                    self.prune(conn)
            self.checkpoint(conn, self._wal)
        finally:
            conn.close()

    @staticmethod
    def checkpoint(conn: sqlite3.Connection, wal: Path) -> None:
        try:
            _, frames, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if frames == done and wal.stat().st_size > WAL_LIMIT_BYTES:  # caught up (idle): start over
                conn.execute("PRAGMA busy_timeout = 50")
                try:
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                finally:
                    conn.execute("PRAGMA busy_timeout = 30000")
        except (sqlite3.Error, OSError):  # busy or locked now: the next round catches up
            pass

    def prune(self, conn: sqlite3.Connection) -> None:
        _in_transaction(conn, lambda: prune_claims_on(conn, time.time() - CLAIM_RETENTION_SECONDS))
        if self._audit_retention is not None:
            before = time.time() - self._audit_retention
            while _in_transaction(conn, lambda: prune_audit_batch_on(conn, before)) == AUDIT_PRUNE_BATCH:
                pass

    def stop(self) -> None:
        self._stopping.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=10)


def _in_transaction(conn: sqlite3.Connection, work: Callable[[], int]) -> int:
    """Run `work` in its own write transaction; 0 when the store is busy now (the next round retries)."""
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error:
        return 0
    try:
        done = work()
    except sqlite3.Error:
        conn.execute("ROLLBACK")
        return 0
    conn.execute("COMMIT")
    return done


