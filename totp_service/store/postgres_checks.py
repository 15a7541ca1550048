"""PostgreSQL: the checks a serving replica makes of itself (is its master key still the store's,
can an audit row be written), kept beside the backend so postgres.py stays one job."""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from typing import Any

import psycopg

from totp_service.store import crypto
from totp_service.store.base import KeyRotated, StoreError


class PostgresChecks:
    """Mixed into PostgresStore (which provides `_conn`, `_key` and `location`)."""

    _key: crypto.MasterKey
    location: str

    def _conn(self) -> AbstractContextManager[psycopg.Connection[Any]]:  # pragma: no cover - PostgresStore's
        raise NotImplementedError

    def check_key_current(self) -> None:
        with self._conn() as conn:
            self._check_key_on(conn)

    def _check_key_on(self, conn: psycopg.Connection[Any]) -> None:
        """FOR SHARE: a rotation committing meanwhile is waited for, then seen."""
        row = conn.execute("SELECT value FROM meta WHERE name = 'key_id' FOR SHARE").fetchone()
        if row is not None and bytes(row[0]).decode("ascii", "replace") != self._key.key_id:
            raise KeyRotated()

    def check_audit_writable(self) -> None:
        try:
            with self._conn() as conn, conn.transaction(force_rollback=True):
                conn.execute("INSERT INTO audit (at, outcome) VALUES (%s, 'readiness probe')", (time.time(),))
        except psycopg.Error as exc:
            raise StoreError(f"an audit row cannot be written to {self.location} ({exc.__class__.__name__})") from None
