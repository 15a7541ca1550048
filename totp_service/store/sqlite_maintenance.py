"""SQLite housekeeping for a serving process: WAL checkpoints and claim pruning on a thread of
their own, so no request's commit pays for them."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from totp_service.store.base import (
    CLAIM_PRUNE_INTERVAL_SECONDS,
    CLAIM_RETENTION_SECONDS,
)

AUTOCHECKPOINT_PAGES = 1000  # SQLite's default


def prune_claims_on(conn: sqlite3.Connection, before: float) -> int:
    return conn.execute(
        """DELETE FROM served WHERE at < ? AND NOT EXISTS (
               SELECT 1 FROM secrets WHERE secrets.identifier = served.identifier
                   AND (served.counter + 1) * secrets.period > ?)""",
        (before, before),
    ).rowcount


class Checkpointer(threading.Thread):
    """PASSIVE WAL checkpoints on a connection of its own, every `interval` seconds; claim pruning
    every `prune_every` seconds (first soon after start, so a service restarted often still prunes)."""

    def __init__(self, path: Path, interval: float, prune_every: float = CLAIM_PRUNE_INTERVAL_SECONDS) -> None:
        super().__init__(name="wal-checkpoint", daemon=True)
        self._path, self._interval, self._prune_every = path, interval, prune_every
        self._stopping = threading.Event()
        self._next_prune = time.monotonic() + min(prune_every, 60.0)

    def run(self) -> None:
        conn = sqlite3.connect(self._path, isolation_level=None, timeout=30, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout = 30000")
            conn.execute("PRAGMA synchronous = NORMAL")
            while not self._stopping.wait(self._interval):
                self.checkpoint(conn)
                if time.monotonic() >= self._next_prune:
                    self._next_prune = time.monotonic() + self._prune_every
                    self.prune(conn)
            self.checkpoint(conn)
        finally:
            conn.close()

    @staticmethod
    def checkpoint(conn: sqlite3.Connection) -> None:
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()  # fetchall: no read left open
        except sqlite3.Error:  # busy or locked now: the next round catches up
            pass

    @staticmethod
    def prune(conn: sqlite3.Connection) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error:  # busy now: the next round tries again
            return
        try:
            prune_claims_on(conn, time.time() - CLAIM_RETENTION_SECONDS)
        except sqlite3.Error:
            conn.execute("ROLLBACK")
            return
        conn.execute("COMMIT")

    def stop(self) -> None:
        self._stopping.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=10)


