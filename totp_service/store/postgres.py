"""The PostgreSQL store: the SQLite store's contract on a database several replicas share.

Why these choices:
- A psycopg_pool pool per process (connections in autocommit; multi-statement work in explicit
  transactions), so a replica survives the database going away: every call that cannot reach it
  raises StoreUnavailable (the service answers 503) and the pool reconnects on its own.
- Schema creation and forward migrations run under a transaction-scoped advisory lock, so
  replicas starting together migrate once and the others wait, then see the new version.
- Single-use claims are the primary key (identifier, counter), taken with INSERT ... ON CONFLICT
  DO NOTHING in the same transaction as the audit rows: two replicas can never both hand out a
  window's code, and no code leaves without its committed audit row.
- Secret changes bump a counter and NOTIFY in the same statement trigger; a background thread
  LISTENs on its own connection, so `secrets_version()` is a memory read on the hot path. The same
  thread re-reads the counter every LISTEN_TICK_SECONDS (the backstop for a missed notification)
  and tells the store when the database is reachable again.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
import psycopg_pool
from psycopg import sql

from totp_service import otp
from totp_service.identifiers import check_agent_id, check_identifier, normalize_identifier
from totp_service.store import crypto
from totp_service.store.base import (
    CLAIM_PRUNE_INTERVAL_SECONDS,
    CLAIM_RETENTION_SECONDS,
    COPY_TABLES,
    AuditEntry,
    Binding,
    Claim,
    Rows,
    SchemaTooNew,
    SecretExists,
    SecretMeta,
    SecretNotFound,
    Store,
    StoreError,
    StoreExists,
    StoreMissing,
    StoreUnavailable,
    audit_text,
    new_binding,
    key_meta,
    reseal_rows,
    seal_spec,
)
from totp_service.store.postgres_checks import PostgresChecks
from totp_service.store.postgres_schema import (
    CHANNEL,
    MIGRATION_LOCK,
    MIGRATIONS,
    SCHEMA_VERSION,
    connect,
    defaults,
    has_store,
    read_meta_value,
    redact,
    unreachable,
)

LISTEN_TICK_SECONDS = 0.5
POOL_TIMEOUT_SECONDS = 2.0
__all__ = ["PostgresStore", "read_meta_value", "redact"]

_META_COLUMNS = ("identifier, algorithm, digits, period, issuer, account, allowed_agents, "
                 "min_validity_seconds, key_id, created_at, updated_at")
_AUDIT_COLUMNS = COPY_TABLES["audit"][0]
_AUDIT_ENTRY_COLUMNS = ("outcome, identifier, task_id, workflow_run_id, workflow_permanent_id, client, route, "
                        "detail, at, id, count")  # AuditEntry's field order
AUDIT_PRUNE_BATCH = 10_000  # audit rows deleted per transaction
T = TypeVar("T")


class PostgresStore(PostgresChecks, Store):
    """The store on PostgreSQL; one instance per process, safe to share between threads."""

    slow_commits = True  # a commit is a network round trip: the audit writer runs it off the event loop

    def __init__(self, url: str, key: crypto.MasterKey, *, create: bool = False,
                 meta: dict[str, bytes] | None = None, pool_size: int = 4) -> None:
        self._url = url  # may hold a password: never shown (self.path is the redacted form)
        self.path = redact(url)
        self._key = key
        self._listener: _Listener | None = None
        self._version = -1
        self._reachable = True
        with connect(url) as conn:
            try:
                self._prepare(conn, create, meta or {})
            except psycopg.OperationalError as exc:
                raise unreachable(url, exc) from None
        self._pool = psycopg_pool.ConnectionPool(
            url, min_size=1, max_size=pool_size, timeout=POOL_TIMEOUT_SECONDS, open=True, name="totp-service",
            kwargs={"autocommit": True, **defaults(url)})

    def __repr__(self) -> str:
        return f"<PostgresStore {self.path}>"

    @property
    def location(self) -> str:
        return self.path

    # --- opening, creating, migrating ------------------------------------------------------------

    def _prepare(self, conn: psycopg.Connection[Any], create: bool, meta: dict[str, bytes]) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            exists = has_store(conn)
            if create:
                if exists:
                    raise StoreExists(f"{self.path} already holds a totp-service store")
                self._create(conn, meta)
                return
            if not exists:
                raise StoreMissing(f"no store in {self.path} (run `totp-service init`)")
            check = self._meta(conn, "check")
            if check is None:
                raise StoreError(f"{self.path} is not a totp-service store")
            crypto.verify_check_value(self._key, check)
            self._migrate(conn)

    def _create(self, conn: psycopg.Connection[Any], meta: dict[str, bytes]) -> None:
        for version in sorted(MIGRATIONS):
            for statement in MIGRATIONS[version]:
                conn.execute(statement)  # type: ignore[arg-type]
        values = [("schema_version", str(SCHEMA_VERSION).encode()), *key_meta(self._key, meta)]
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO meta (name, value) VALUES (%s, %s)", values)

    @staticmethod
    def _meta(conn: psycopg.Connection[Any], name: str) -> bytes | None:
        row = conn.execute("SELECT value FROM meta WHERE name = %s", (name,)).fetchone()
        return bytes(row[0]) if row else None

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        version = int(self._meta(conn, "schema_version") or b"0")
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(f"{self.path} was written by a newer totp-service (schema {version})")
        for step in range(version + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[step]:
                conn.execute(statement)  # type: ignore[arg-type]
        if version < SCHEMA_VERSION:
            conn.execute("UPDATE meta SET value = %s WHERE name = 'schema_version'", (str(SCHEMA_VERSION).encode(),))

    # --- connections -----------------------------------------------------------------------------

    @contextmanager
    def _conn(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection; an unreachable database becomes StoreUnavailable.

        While the listener knows the database is gone, calls fail at once instead of waiting for
        the pool's timeout (pull handlers call some of these on the event loop).
        """
        if not self._reachable:
            raise StoreUnavailable(f"PostgreSQL at {self.path} cannot be reached")
        try:
            with self._pool.connection() as conn:
                yield conn
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout, psycopg.InterfaceError) as exc:
            if self._listener is not None:
                self._reachable = False  # the listener sets it back once a query succeeds
            raise unreachable(self._url, exc) from None

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Connection[Any]]:
        with self._conn() as conn, conn.transaction():
            yield conn

    def _one(self, query: str, args: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        with self._conn() as conn:
            return conn.execute(query, args).fetchone()  # type: ignore[arg-type]

    def _all(self, query: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._conn() as conn:
            return conn.execute(query, args).fetchall()  # type: ignore[arg-type]

    # --- lifecycle -------------------------------------------------------------------------------

    def close(self) -> None:
        self.stop_background_checkpoints()
        self._pool.close()

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start_background_checkpoints(self, interval: float = 0.25,
                                     prune_every: float = CLAIM_PRUNE_INTERVAL_SECONDS,
                                     audit_retention_seconds: float | None = None) -> None:
        """LISTEN for secret changes (and prune old claims) on a connection of its own (for the service)."""
        if self._listener is None:
            self._version = self._read_version()
            self._listener = _Listener(self, prune_every, audit_retention_seconds)
            self._listener.start()

    def stop_background_checkpoints(self) -> None:
        listener, self._listener = self._listener, None
        self._reachable = True
        if listener is not None:
            listener.stop()

    @property
    def key_id(self) -> str:
        return self._key.key_id

    # --- secrets ---------------------------------------------------------------------------------

    def put_secret(self, identifier: str, spec: otp.TotpSpec, *, allowed_agents: Sequence[str] = (),
                   min_validity_seconds: float | None = None, replace: bool = False) -> SecretMeta:
        self.put_many([(identifier, spec)], allowed_agents=allowed_agents,
                      min_validity_seconds=min_validity_seconds, replace=replace)
        return self.get_meta(identifier)

    def put_many(self, items: Iterable[tuple[str, otp.TotpSpec]], *, allowed_agents: Sequence[str] = (),
                 min_validity_seconds: float | None = None, replace: bool = False) -> int:
        """Store several secrets in one transaction: all of them, or none."""
        agents = json.dumps(sorted({check_agent_id(a) for a in allowed_agents}))
        now = time.time()
        rows, seen = [], set()
        for raw_identifier, spec in items:
            identifier = check_identifier(raw_identifier)
            if identifier in seen:
                raise SecretExists(identifier)
            seen.add(identifier)
            rows.append((identifier, self._key.key_id, seal_spec(self._key, identifier, spec), spec.algorithm,
                         spec.digits, spec.period, spec.issuer, spec.account, agents, min_validity_seconds, now, now))
        on_conflict = (""" ON CONFLICT (identifier) DO UPDATE SET key_id = excluded.key_id, sealed = excluded.sealed,
                       algorithm = excluded.algorithm, digits = excluded.digits, period = excluded.period,
                       issuer = excluded.issuer, account = excluded.account,
                       allowed_agents = excluded.allowed_agents,
                       min_validity_seconds = excluded.min_validity_seconds, updated_at = excluded.updated_at"""
                       if replace else "")
        try:
            with self._transaction() as conn:
                self._check_key_on(conn)  # never seal under a key that another process has rotated away
                if not replace:
                    taken = conn.execute("SELECT identifier FROM secrets WHERE identifier = ANY(%s) "
                                         "ORDER BY identifier LIMIT 1", ([r[0] for r in rows],)).fetchone()
                    if taken:
                        raise SecretExists(taken[0])
                with conn.cursor() as cur:
                    cur.executemany(
                        """INSERT INTO secrets (identifier, key_id, sealed, algorithm, digits, period, issuer,
                               account, allowed_agents, min_validity_seconds, created_at, updated_at)
                           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""" + on_conflict,
                        rows)
        except psycopg.errors.UniqueViolation:  # another replica stored one of them meanwhile
            raise SecretExists(rows[0][0] if len(rows) == 1 else "one of them") from None
        return len(rows)

    def get_spec(self, identifier: str) -> otp.TotpSpec:
        identifier = normalize_identifier(identifier)
        row = self._one("SELECT sealed FROM secrets WHERE identifier = %s", (identifier,))
        if row is None:
            raise SecretNotFound(identifier)
        return self._open(identifier, bytes(row[0]))

    @staticmethod
    def _meta_from_row(row: Sequence[Any]) -> SecretMeta:
        return SecretMeta(row[0], row[1], row[2], row[3], row[4], row[5], json.loads(row[6]), row[7], row[8],
                          row[9], row[10])

    def get_meta(self, identifier: str) -> SecretMeta:
        identifier = normalize_identifier(identifier)
        row = self._one(f"SELECT {_META_COLUMNS} FROM secrets WHERE identifier = %s", (identifier,))
        if row is None:
            raise SecretNotFound(identifier)
        return self._meta_from_row(row)

    def list_meta(self) -> list[SecretMeta]:
        return [self._meta_from_row(r) for r in self._all(f"SELECT {_META_COLUMNS} FROM secrets ORDER BY identifier")]

    def count_secrets(self) -> int:
        return int(self._one("SELECT count(*) FROM secrets")[0])  # type: ignore[index]

    def has_secret(self, identifier: str) -> bool:
        return self._one("SELECT 1 FROM secrets WHERE identifier = %s", (normalize_identifier(identifier),)) is not None

    def remove_secret(self, identifier: str) -> None:
        identifier = normalize_identifier(identifier)
        with self._transaction() as conn:
            if conn.execute("DELETE FROM secrets WHERE identifier = %s", (identifier,)).rowcount == 0:
                raise SecretNotFound(identifier)

    def secrets_version(self) -> int:
        """A counter bumped on every change to any secret; from memory while the listener runs."""
        if self._listener is not None:
            return self._version
        return self._read_version()

    def _read_version(self) -> int:
        return int(self._one("SELECT version FROM secrets_version")[0])  # type: ignore[index]

    # --- key rotation ----------------------------------------------------------------------------

    def rotate_key(self, new_key: crypto.MasterKey, meta: dict[str, bytes] | None = None) -> int:
        """Re-seal every row under `new_key` in one transaction; afterwards the old key opens nothing."""
        with self._transaction() as conn:
            self._check_key_on(conn)
            rows = conn.execute("SELECT identifier, sealed FROM secrets FOR UPDATE").fetchall()
            resealed = reseal_rows(self._key, new_key, rows)
            with conn.cursor() as cur:
                cur.executemany("UPDATE secrets SET key_id = %s, sealed = %s WHERE identifier = %s", resealed)
                cur.executemany("INSERT INTO meta (name, value) VALUES (%s, %s) "
                                "ON CONFLICT (name) DO UPDATE SET value = excluded.value", key_meta(new_key, meta))
            if meta is None:
                conn.execute("DELETE FROM meta WHERE name = 'kdf_salt'")
        self._key = new_key
        return len(resealed)

    # --- bindings --------------------------------------------------------------------------------

    def put_binding(self, kind: str, ref: str, identifier: str, expires_at: float | None = None) -> Binding:
        binding = new_binding(kind, ref, identifier, expires_at)
        with self._conn() as conn:
            conn.execute(
                """INSERT INTO bindings (kind, ref, identifier, expires_at, created_at) VALUES (%s, %s, %s, %s, %s)
                   ON CONFLICT (kind, ref) DO UPDATE SET identifier = excluded.identifier,
                       expires_at = excluded.expires_at, created_at = excluded.created_at""",
                (binding.kind, binding.ref, binding.identifier, binding.expires_at, binding.created_at))
        return binding

    def find_binding(self, kind: str, ref: str, now: float | None = None) -> Binding | None:
        now = time.time() if now is None else now
        row = self._one("SELECT kind, ref, identifier, expires_at, created_at FROM bindings "
                        "WHERE kind = %s AND ref = %s", (kind, ref))
        if row is None or (row[3] is not None and row[3] <= now):
            return None
        return Binding(*row)

    def list_bindings(self) -> list[Binding]:
        rows = self._all("SELECT kind, ref, identifier, expires_at, created_at FROM bindings ORDER BY kind, ref")
        return [Binding(*row) for row in rows]

    def remove_binding(self, kind: str, ref: str) -> bool:
        with self._conn() as conn:
            return conn.execute("DELETE FROM bindings WHERE kind = %s AND ref = %s", (kind, ref)).rowcount > 0

    # --- audit and single-use claims -------------------------------------------------------------

    def write_audit(self, items: Sequence[tuple[AuditEntry, Claim | None]]) -> list[bool]:
        """Commit audit rows, each with an optional single-use claim, in one transaction.

        Returns, per item, whether its claim was new (True when it had none); a claim already
        taken (by any replica, or earlier in this batch) is recorded as `window_taken`.
        """
        now = time.time()
        claims = [claim for _, claim in items if claim is not None]
        with self._transaction() as conn:
            taken: set[Claim] = set()
            fresh_claims: set[Claim] = set()
            if claims:
                new = conn.execute(
                    """INSERT INTO served (identifier, counter, at)
                       SELECT i, c, %s FROM unnest(%s::text[], %s::bigint[]) AS claim(i, c)
                       ON CONFLICT DO NOTHING RETURNING identifier, counter""",
                    (now, [c[0] for c in claims], [c[1] for c in claims])).fetchall()
                fresh_claims = {(i, int(c)) for i, c in new}
            results = []
            with conn.cursor().copy(f"COPY audit ({', '.join(_AUDIT_COLUMNS)}) FROM STDIN") as copy:
                for e, claim in items:
                    fresh = claim is None or (claim in fresh_claims and claim not in taken)
                    if claim is not None:
                        taken.add(claim)
                    results.append(fresh)
                    copy.write_row((e.at, audit_text(e.identifier), audit_text(e.task_id),
                                    audit_text(e.workflow_run_id), audit_text(e.workflow_permanent_id),
                                    audit_text(e.client), audit_text(e.route),
                                    audit_text(e.outcome) if fresh else "window_taken", audit_text(e.detail), e.count))
        return results

    def dump_rows(self) -> Rows:
        with self._conn() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")  # one snapshot
            return {table: [tuple(row) for row in conn.execute(
                        f"SELECT {', '.join(columns)} FROM {table} ORDER BY {order}")]  # type: ignore[arg-type]
                    for table, (columns, order) in COPY_TABLES.items()}

    def load_rows(self, rows: Rows) -> None:
        with self._transaction() as conn:
            conn.execute("LOCK TABLE secrets, bindings, served, audit IN EXCLUSIVE MODE")
            for table in COPY_TABLES:
                if conn.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone():  # type: ignore[arg-type]
                    raise StoreError(f"{self.path} already holds {table}: copy only into a new, empty store")
            for table, (columns, _) in COPY_TABLES.items():
                with conn.cursor().copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:  # type: ignore[arg-type]
                    for row in rows.get(table, []):
                        copy.write_row(row)

    def prune_claims(self, before: float) -> int:
        """Forget single-use claims made before `before` whose window had closed by then."""
        with self._conn() as conn:
            return conn.execute(
                """DELETE FROM served WHERE at < %s AND NOT EXISTS (
                       SELECT 1 FROM secrets WHERE secrets.identifier = served.identifier
                           AND (served.counter + 1) * secrets.period > %s)""", (before, before)).rowcount

    def is_claimed(self, identifier: str, counter: int) -> bool:
        return self._one("SELECT 1 FROM served WHERE identifier = %s AND counter = %s", (identifier, counter)) is not None

    def read_audit(self, identifier: str | None = None, since: float | None = None,
                   limit: int = 100) -> list[AuditEntry]:
        clauses, args = [], []  # type: list[sql.Composable], list[Any]
        if identifier is not None:
            clauses.append(sql.SQL("identifier = %s"))
            args.append(normalize_identifier(identifier))
        if since is not None:
            clauses.append(sql.SQL("at >= %s"))
            args.append(since)
        where = sql.SQL("WHERE ") + sql.SQL(" AND ").join(clauses) if clauses else sql.SQL("")
        query = sql.SQL(f"SELECT {_AUDIT_ENTRY_COLUMNS} FROM audit {{}} ORDER BY id DESC LIMIT %s").format(where)
        with self._conn() as conn:
            rows = conn.execute(query, (*args, limit)).fetchall()
        return [AuditEntry(*row) for row in rows]

    def export_audit(self, since: float | None = None, batch: int = 1000) -> Iterator[AuditEntry]:
        last_id = 0
        while True:
            rows = self._all(f"SELECT {_AUDIT_ENTRY_COLUMNS} FROM audit WHERE id > %s AND at >= %s ORDER BY id LIMIT %s",
                             (last_id, -1.0 if since is None else since, batch))
            yield from (AuditEntry(*row) for row in rows)
            if len(rows) < batch:
                return
            last_id = rows[-1][9]

    def prune_audit(self, before: float) -> int:
        removed = 0
        while True:
            with self._conn() as conn:
                count = conn.execute("DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE at < %s "
                                     "ORDER BY at LIMIT %s)", (before, AUDIT_PRUNE_BATCH)).rowcount
            removed += count
            if count < AUDIT_PRUNE_BATCH:
                return removed

    # --- what the listener tells the store -------------------------------------------------------

    def _heard(self, version: int) -> None:
        self._version = version
        self._reachable = True


class _Listener(threading.Thread):
    """LISTEN on its own connection; every tick re-read the counter (backstop, liveness), prune hourly."""

    def __init__(self, store: PostgresStore, prune_every: float, audit_retention: float | None) -> None:
        super().__init__(name="pg-listen", daemon=True)
        self._store, self._prune_every, self._audit_retention = store, prune_every, audit_retention
        self._stopping = threading.Event()
        self._next_prune = time.monotonic() + min(prune_every, 60.0)

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                with connect(self._store._url, "totp-service listener") as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._store._pool.check()  # connections broken while the database was gone are replaced
                    while not self._stopping.is_set():
                        self._tick(conn)
            except (psycopg.Error, psycopg_pool.PoolTimeout, StoreError):
                self._store._reachable = False
                self._stopping.wait(LISTEN_TICK_SECONDS)

    def _tick(self, conn: psycopg.Connection[Any]) -> None:
        for notice in conn.notifies(timeout=LISTEN_TICK_SECONDS):
            self._store._heard(int(notice.payload))
        self._store._heard(int(conn.execute("SELECT version FROM secrets_version").fetchone()[0]))  # type: ignore[index]
        if time.monotonic() >= self._next_prune:
            self._next_prune = time.monotonic() + self._prune_every
            _quietly(lambda: self._store.prune_claims(time.time() - CLAIM_RETENTION_SECONDS))
            if self._audit_retention is not None:
                retention = self._audit_retention
                _quietly(lambda: self._store.prune_audit(time.time() - retention))

    def stop(self) -> None:
        self._stopping.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=10)


def _quietly(fn: Callable[[], T]) -> T | None:
    try:
        return fn()
    except StoreError:  # unreachable now: the next round tries again
        return None
