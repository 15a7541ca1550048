"""The SQLite backend (the embedded default): one file, WAL, one connection shared by threads.

WAL mode lets the service and the CLI read while one of them writes.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from totp_service import otp
from totp_service.identifiers import (
    check_agent_id,
    check_identifier,
    normalize_identifier,
)
from totp_service.store import crypto
from totp_service.store.base import (
    CLAIM_PRUNE_INTERVAL_SECONDS,
    AuditEntry,
    Binding,
    COPY_TABLES,
    Claim,
    KeyRotated,
    Rows,
    SchemaTooNew,
    SecretExists,
    SecretMeta,
    SecretNotFound,
    Store,
    StoreBusy,
    StoreError,
    StoreExists,
    StoreMissing,
    audit_text,
    new_binding,
    key_meta,
    reseal_rows,
    seal_spec,
)

_AUDIT_COLUMNS = "outcome, identifier, task_id, workflow_run_id, workflow_permanent_id, client, route, detail, at, id, count"
WAL_CHECK_EVERY = 8  # audit transactions between two looks at the WAL's size (a stat: ~1 us)
from totp_service.store.sqlite_maintenance import (
    AUDIT_PRUNE_BATCH,
    AUTOCHECKPOINT_PAGES,
    WAL_LIMIT_BYTES,
    Checkpointer,
    bound_wal,
    prune_audit_batch_on,
    prune_claims_on,
)
from totp_service.store.sqlite_schema import (
    MIGRATIONS,
    SCHEMA_VERSION,
    create_database_file,
)


class SqliteStore(Store):
    """One connection to the store, safe to share between threads (calls are serialised)."""

    def __init__(self, path: Path, key: crypto.MasterKey, *, create: bool = False, meta: dict[str, bytes] | None = None):
        self.path = Path(path)
        self._key = key
        self._lock = threading.RLock()
        self._checkpointer: Checkpointer | None = None
        self._wal = Path(f"{self.path}-wal")
        self._writes_since_wal_check = 0
        if create:
            if self.path.exists() and self.path.stat().st_size > 0:
                raise StoreExists(f"{self.path} already exists")
            if not self.path.exists():
                create_database_file(self.path)
        elif not self.path.exists():
            raise StoreMissing(f"no store at {self.path} (run `totp-service init`)")
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._conn.execute("PRAGMA busy_timeout = 30000")
        try:
            if create:
                self._create(meta or {})
            else:
                self._verify_key()
                self._migrate()
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = NORMAL")
            self._conn.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT_BYTES}")
        except BaseException:
            self._conn.close()
            raise

    def __repr__(self) -> str:
        return f"<SqliteStore {self.path}>"

    # --- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        self.stop_background_checkpoints()
        with self._lock:
            self._conn.close()

    # --- WAL checkpoints -----------------------------------------------------------------

    def start_background_checkpoints(
        self, interval: float = 0.25, prune_every: float = CLAIM_PRUNE_INTERVAL_SECONDS,
        audit_retention_seconds: float | None = None,
    ) -> None:
        """Move WAL checkpoints out of this connection's commits (for the service).

        SQLite's automatic checkpoint runs inside whichever COMMIT pushes the WAL past 1,000 pages:
        that commit then copies pages into the database file and fsyncs, and every request waiting
        on it pays. Here the serving connection stops checkpointing and a daemon thread with its
        own connection runs a PASSIVE checkpoint every `interval` seconds (never blocking writers
        or readers; sqlite3 releases the GIL while it works). Commits stay as durable as before.
        The same thread prunes old single-use claims every `prune_every` seconds, so the `served`
        table stays the size of a day's windows instead of growing forever, and audit rows past
        `audit_retention_seconds`. The WAL stays bounded under sustained writes (sqlite_maintenance).
        """
        if self._checkpointer is not None:
            return
        with self._lock:
            self._conn.execute("PRAGMA wal_autocheckpoint = 0")
        self._checkpointer = Checkpointer(self.path, interval, prune_every, audit_retention_seconds)
        self._checkpointer.start()

    def stop_background_checkpoints(self) -> None:
        checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is not None:
            checkpointer.stop()
            with self._lock:
                self._conn.execute(f"PRAGMA wal_autocheckpoint = {AUTOCHECKPOINT_PAGES}")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _create(self, meta: dict[str, bytes]) -> None:
        with self._transaction() as conn:
            conn.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value BLOB NOT NULL)")
            for version in sorted(MIGRATIONS):
                for statement in MIGRATIONS[version]:
                    conn.execute(statement)
            values = [("schema_version", str(SCHEMA_VERSION).encode()), *key_meta(self._key, meta)]
            conn.executemany("INSERT INTO meta (name, value) VALUES (?, ?)", values)

    def _meta(self, name: str) -> bytes | None:
        try:
            row = self._conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        except sqlite3.DatabaseError:
            raise StoreError(f"{self.path} is not a totp-service store") from None
        return bytes(row[0]) if row else None

    def _verify_key(self) -> None:
        check = self._meta("check")
        if check is None:
            raise StoreError(f"{self.path} is not a totp-service store")
        crypto.verify_check_value(self._key, check)

    def _migrate(self) -> None:
        version = int(self._meta("schema_version") or b"0")
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(f"{self.path} was written by a newer totp-service (schema {version})")
        if version == SCHEMA_VERSION:
            return
        with self._transaction() as conn:
            for step in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[step]:
                    conn.execute(statement)
            conn.execute("UPDATE meta SET value = ? WHERE name = 'schema_version'", (str(SCHEMA_VERSION).encode(),))

    @property
    def key_id(self) -> str:
        return self._key.key_id

    @property
    def location(self) -> str:
        return str(self.path)

    # --- secrets -------------------------------------------------------------------------

    def put_many(
        self,
        items: Iterable[tuple[str, otp.TotpSpec]],
        *,
        allowed_agents: Sequence[str] = (),
        min_validity_seconds: float | None = None,
        replace: bool = False,
    ) -> int:
        """Store several secrets in one transaction: all of them, or none."""
        agents = json.dumps(sorted({check_agent_id(a) for a in allowed_agents}))
        now = time.time()
        rows = []
        seen: set[str] = set()
        for raw_identifier, spec in items:
            identifier = check_identifier(raw_identifier)
            if identifier in seen:
                raise SecretExists(identifier)
            seen.add(identifier)
            rows.append(
                (identifier, self._key.key_id, seal_spec(self._key, identifier, spec), spec.algorithm,
                 spec.digits, spec.period, spec.issuer, spec.account, agents, min_validity_seconds, now, now)
            )
        with self._transaction() as conn:
            self._check_key_on(conn)  # never seal under a key that another process has rotated away
            if not replace:
                for row in rows:
                    if conn.execute("SELECT 1 FROM secrets WHERE identifier = ?", (row[0],)).fetchone():
                        raise SecretExists(row[0])
            conn.executemany(
                """INSERT INTO secrets (identifier, key_id, sealed, algorithm, digits, period, issuer, account,
                       allowed_agents, min_validity_seconds, created_at, updated_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (identifier) DO UPDATE SET key_id = excluded.key_id, sealed = excluded.sealed,
                       algorithm = excluded.algorithm, digits = excluded.digits, period = excluded.period,
                       issuer = excluded.issuer, account = excluded.account,
                       allowed_agents = excluded.allowed_agents,
                       min_validity_seconds = excluded.min_validity_seconds, updated_at = excluded.updated_at""",
                rows,
            )
        return len(rows)

    def get_spec(self, identifier: str) -> otp.TotpSpec:
        identifier = normalize_identifier(identifier)
        with self._lock:
            row = self._conn.execute("SELECT sealed FROM secrets WHERE identifier = ?", (identifier,)).fetchone()
        if row is None:
            raise SecretNotFound(identifier)
        return self._open(identifier, bytes(row[0]))

    def check_key_current(self) -> None:
        with self._lock:
            self._check_key_on(self._conn)

    def _check_key_on(self, conn: sqlite3.Connection) -> None:
        row = conn.execute("SELECT value FROM meta WHERE name = 'key_id'").fetchone()
        if row is not None and bytes(row[0]).decode("ascii", "replace") != self._key.key_id:
            raise KeyRotated()

    _META_COLUMNS = ("identifier, algorithm, digits, period, issuer, account, allowed_agents, "
                     "min_validity_seconds, key_id, created_at, updated_at")

    @staticmethod
    def _meta_from_row(row: Sequence[Any]) -> SecretMeta:
        return SecretMeta(row[0], row[1], row[2], row[3], row[4], row[5], json.loads(row[6]), row[7], row[8],
                          row[9], row[10])

    def get_meta(self, identifier: str) -> SecretMeta:
        identifier = normalize_identifier(identifier)
        with self._lock:
            row = self._conn.execute(
                f"SELECT {self._META_COLUMNS} FROM secrets WHERE identifier = ?", (identifier,)
            ).fetchone()
        if row is None:
            raise SecretNotFound(identifier)
        return self._meta_from_row(row)

    def list_meta(self) -> list[SecretMeta]:
        with self._lock:
            rows = self._conn.execute(f"SELECT {self._META_COLUMNS} FROM secrets ORDER BY identifier").fetchall()
        return [self._meta_from_row(row) for row in rows]

    def count_secrets(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM secrets").fetchone()[0])

    def has_secret(self, identifier: str) -> bool:
        with self._lock:
            row = self._conn.execute(
                "SELECT 1 FROM secrets WHERE identifier = ?", (normalize_identifier(identifier),)
            ).fetchone()
        return row is not None

    def remove_secret(self, identifier: str) -> None:
        identifier = normalize_identifier(identifier)
        with self._transaction() as conn:
            if conn.execute("DELETE FROM secrets WHERE identifier = ?", (identifier,)).rowcount == 0:
                raise SecretNotFound(identifier)
            # its single-use claims stay (pruned with the others): a secret added again within the
            # same window must not hand out a code that already went out

    # --- key rotation --------------------------------------------------------------------

    def rotate_key(self, new_key: crypto.MasterKey, meta: dict[str, bytes] | None = None) -> int:
        """Re-seal every row under `new_key` in one transaction; afterwards the old key opens nothing."""
        with self._transaction() as conn:
            self._check_key_on(conn)
            rows = conn.execute("SELECT identifier, sealed FROM secrets").fetchall()
            resealed = reseal_rows(self._key, new_key, rows)
            conn.executemany("UPDATE secrets SET key_id = ?, sealed = ? WHERE identifier = ?", resealed)
            conn.executemany(
                "INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                key_meta(new_key, meta),
            )
            if meta is None:
                conn.execute("DELETE FROM meta WHERE name = 'kdf_salt'")
        self._key = new_key
        return len(resealed)

    # --- bindings ------------------------------------------------------------------------

    def put_binding(self, kind: str, ref: str, identifier: str, expires_at: float | None = None) -> Binding:
        binding = new_binding(kind, ref, identifier, expires_at)
        with self._transaction() as conn:
            conn.execute(
                """INSERT INTO bindings (kind, ref, identifier, expires_at, created_at) VALUES (?, ?, ?, ?, ?)
                   ON CONFLICT (kind, ref) DO UPDATE SET identifier = excluded.identifier,
                       expires_at = excluded.expires_at, created_at = excluded.created_at""",
                (binding.kind, binding.ref, binding.identifier, binding.expires_at, binding.created_at),
            )
        return binding

    def find_binding(self, kind: str, ref: str, now: float | None = None) -> Binding | None:
        now = time.time() if now is None else now
        with self._lock:
            row = self._conn.execute(
                "SELECT kind, ref, identifier, expires_at, created_at FROM bindings WHERE kind = ? AND ref = ?",
                (kind, ref),
            ).fetchone()
        if row is None or (row[3] is not None and row[3] <= now):
            return None
        return Binding(*row)

    def list_bindings(self) -> list[Binding]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT kind, ref, identifier, expires_at, created_at FROM bindings ORDER BY kind, ref"
            ).fetchall()
        return [Binding(*row) for row in rows]

    def remove_binding(self, kind: str, ref: str) -> bool:
        with self._transaction() as conn:
            return conn.execute("DELETE FROM bindings WHERE kind = ? AND ref = ?", (kind, ref)).rowcount > 0

    # --- audit and single-use claims -----------------------------------------------------

    def write_audit(self, items: Sequence[tuple[AuditEntry, Claim | None]]) -> list[bool]:
        """Commit audit rows, each with an optional single-use window claim, in one transaction.

        Returns, per item, whether its claim was new (True when it had none). A claim already
        taken means that window's code went out before and must not be handed out again; its
        row is then recorded as `window_taken`, not as what the caller meant to do.
        """
        now = time.time()
        with self._transaction() as conn:
            results, rows = [], []
            for e, claim in items:
                fresh = claim is None or conn.execute(
                    "INSERT OR IGNORE INTO served (identifier, counter, at) VALUES (?, ?, ?)", (*claim, now)
                ).rowcount == 1
                results.append(fresh)
                rows.append((e.at, audit_text(e.identifier), audit_text(e.task_id), audit_text(e.workflow_run_id),
                             audit_text(e.workflow_permanent_id), audit_text(e.client), audit_text(e.route),
                             audit_text(e.outcome) if fresh else "window_taken", audit_text(e.detail), e.count))
            conn.executemany(
                """INSERT INTO audit (at, identifier, task_id, workflow_run_id, workflow_permanent_id, client,
                       route, outcome, detail, count) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                rows,
            )
        self._writes_since_wal_check += 1
        if self._writes_since_wal_check >= WAL_CHECK_EVERY:
            self._writes_since_wal_check = 0
            with self._lock:
                bound_wal(self._conn, self._wal)
        return results

    def check_audit_writable(self) -> None:
        try:
            with self._lock:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    self._conn.execute("INSERT INTO audit (at, outcome) VALUES (?, 'readiness probe')", (time.time(),))
                finally:
                    self._conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            raise StoreError(f"an audit row cannot be written to {self.path} ({exc.__class__.__name__})") from None

    def export_audit(self, since: float | None = None, batch: int = 1000) -> Iterator[AuditEntry]:
        last_id = 0
        while True:
            with self._lock:
                rows = self._conn.execute(
                    f"SELECT {_AUDIT_COLUMNS} FROM audit WHERE id > ? AND at >= ? ORDER BY id LIMIT ?",
                    (last_id, -1.0 if since is None else since, batch),
                ).fetchall()
            yield from (AuditEntry(*row) for row in rows)
            if len(rows) < batch:
                return
            last_id = rows[-1][9]

    def prune_audit(self, before: float) -> int:
        removed = 0
        while True:
            with self._transaction() as conn:
                count = prune_audit_batch_on(conn, before)
            removed += count
            if count < AUDIT_PRUNE_BATCH:
                return removed

    def secrets_version(self) -> int:
        """A counter bumped (by triggers) on every change to any secret, by any process."""
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE name = 'secrets_version'").fetchone()
        return int(row[0])

    def prune_claims(self, before: float) -> int:
        """Forget single-use claims made before `before` whose window had closed by then.

        A claim only matters while its window can still come round as the current one; the
        window test keeps a claim of a very long period (over a day) until that window closes.
        Returns how many claims were removed.
        """
        try:
            with self._transaction() as conn:
                return prune_claims_on(conn, before)
        except sqlite3.OperationalError as exc:  # locked by another process: a later prune catches up
            raise StoreBusy(f"the store at {self.path} is busy") from exc

    def is_claimed(self, identifier: str, counter: int) -> bool:
        with self._lock:
            row = self._conn.execute(
                "SELECT 1 FROM served WHERE identifier = ? AND counter = ?", (identifier, counter)
            ).fetchone()
        return row is not None

    def dump_rows(self) -> Rows:
        with self._lock:
            self._conn.execute("BEGIN")  # one read transaction: one snapshot of every table
            try:
                return {table: [tuple(row) for row in self._conn.execute(
                            f"SELECT {', '.join(columns)} FROM {table} ORDER BY {order}")]
                        for table, (columns, order) in COPY_TABLES.items()}
            finally:
                self._conn.execute("COMMIT")

    def load_rows(self, rows: Rows) -> None:
        with self._transaction() as conn:
            for table in COPY_TABLES:
                if conn.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone():
                    raise StoreError(f"{self.path} already holds {table}: copy only into a new, empty store")
            for table, (columns, _) in COPY_TABLES.items():
                conn.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
                                 f"({', '.join('?' * len(columns))})", rows.get(table, []))

    def read_audit(
        self, identifier: str | None = None, since: float | None = None, limit: int = 100
    ) -> list[AuditEntry]:
        clauses, args = [], []  # type: list[str], list[Any]
        if identifier is not None:
            clauses.append("identifier = ?")
            args.append(normalize_identifier(identifier))
        if since is not None:
            clauses.append("at >= ?")
            args.append(since)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_AUDIT_COLUMNS} FROM audit {where} ORDER BY id DESC LIMIT ?", (*args, limit),
            ).fetchall()
        return [AuditEntry(*row) for row in rows]
