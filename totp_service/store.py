"""The SQLite store: sealed secrets, run/agent bindings, the audit trail and single-use claims.

Only ciphertext and non-secret metadata are written. The sealed blob holds the whole TotpSpec, so
the metadata columns are for display only and tampering with them cannot change a code.
WAL mode lets the service and the CLI read while one of them writes.
"""

from __future__ import annotations

import base64
import json
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from totp_service import crypto, otp

SCHEMA_VERSION = 2
CLAIM_RETENTION_SECONDS = 86400.0  # single-use claims older than this are pruned (their windows closed long ago)
CLAIM_PRUNE_INTERVAL_SECONDS = 3600.0  # how often the service's background thread prunes them
_EMAIL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+$")
_AGENT_ID = re.compile(r"^wpid_[A-Za-z0-9_-]+$")

_MIGRATIONS: dict[int, list[str]] = {
    1: [
        """CREATE TABLE secrets (
    identifier TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    sealed BLOB NOT NULL,
    algorithm TEXT NOT NULL,
    digits INTEGER NOT NULL,
    period INTEGER NOT NULL,
    issuer TEXT,
    account TEXT,
    allowed_agents TEXT NOT NULL DEFAULT '[]',
    min_validity_seconds REAL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
)""",
        """CREATE TABLE bindings (
    kind TEXT NOT NULL CHECK (kind IN ('run', 'agent')),
    ref TEXT NOT NULL,
    identifier TEXT NOT NULL,
    expires_at REAL,
    created_at REAL NOT NULL,
    PRIMARY KEY (kind, ref)
)""",
        """CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    identifier TEXT,
    task_id TEXT,
    workflow_run_id TEXT,
    workflow_permanent_id TEXT,
    client TEXT,
    route TEXT,
    outcome TEXT NOT NULL,
    detail TEXT
)""",
        """CREATE INDEX audit_identifier_at ON audit (identifier, at)""",
        """CREATE INDEX audit_at ON audit (at)""",
        """CREATE TABLE served (
    identifier TEXT NOT NULL,
    counter INTEGER NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (identifier, counter)
)""",
    ],
    # The audit table only grows: an index on (identifier, at) made every insert touch a page at a
    # random place in that index, which slowed commits as the table grew. Reads by identifier are
    # rare (admin) and scan from the newest row down. `secrets_version` lets a serving process tell
    # with one read whether any secret changed (in any process) since it cached them.
    2: [
        "DROP INDEX IF EXISTS audit_identifier_at",
        "INSERT OR IGNORE INTO meta (name, value) VALUES ('secrets_version', 0)",
        *(
            f"""CREATE TRIGGER secrets_version_{event.lower()} AFTER {event} ON secrets
               BEGIN UPDATE meta SET value = value + 1 WHERE name = 'secrets_version'; END"""
            for event in ("INSERT", "UPDATE", "DELETE")
        ),
    ],
}


class StoreError(Exception):
    """Base of the store's errors; messages are safe to show to a user."""


class StoreMissing(StoreError):
    pass


class SecretExists(StoreError):
    def __init__(self, identifier: str) -> None:
        super().__init__(f"a secret for {identifier!r} already exists (use --replace to overwrite it)")


class SecretNotFound(StoreError):
    def __init__(self, identifier: str) -> None:
        super().__init__(f"no secret for {identifier!r}")


class InvalidIdentifier(StoreError):
    pass


class SchemaTooNew(StoreError):
    pass


def normalize_identifier(identifier: str) -> str:
    """Skyvern's rule: an email is trimmed and case-folded; anything else is kept as given."""
    stripped = identifier.strip()
    if _EMAIL.fullmatch(stripped):
        return stripped.casefold()
    return identifier


def check_identifier(identifier: str) -> str:
    if not identifier or not identifier.strip():
        raise InvalidIdentifier("the identifier is empty")
    if len(identifier) > 512 or any(ord(c) < 32 for c in identifier):
        raise InvalidIdentifier("the identifier is too long or holds control characters")
    return normalize_identifier(identifier)


def check_agent_id(agent_id: str) -> str:
    if not _AGENT_ID.fullmatch(agent_id):
        raise InvalidIdentifier(f"{agent_id!r} is not an agent id (wpid_…)")
    return agent_id


@dataclass(frozen=True)
class SecretMeta:
    """What may be shown about a secret: never the secret itself."""

    identifier: str
    algorithm: str
    digits: int
    period: int
    issuer: str | None
    account: str | None
    allowed_agents: list[str] = field(default_factory=list)
    min_validity_seconds: float | None = None
    key_id: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Binding:
    kind: str  # "run" (task / workflow run id) or "agent" (wpid_…)
    ref: str
    identifier: str
    expires_at: float | None = None
    created_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AuditEntry:
    outcome: str  # "served", "empty" or "refused:<reason>"
    identifier: str | None = None
    task_id: str | None = None
    workflow_run_id: str | None = None
    workflow_permanent_id: str | None = None
    client: str | None = None
    route: str | None = None
    detail: str | None = None
    at: float = field(default_factory=time.time)
    id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _seal_spec(key: crypto.MasterKey, identifier: str, spec: otp.TotpSpec) -> bytes:
    plain = json.dumps(
        {
            "secret": base64.b64encode(spec.secret).decode("ascii"),
            "algorithm": spec.algorithm,
            "digits": spec.digits,
            "period": spec.period,
            "issuer": spec.issuer,
            "account": spec.account,
        }
    ).encode("utf-8")
    return crypto.seal(key, plain, identifier.encode("utf-8"))


def _open_spec(key: crypto.MasterKey, identifier: str, sealed: bytes) -> otp.TotpSpec:
    data = json.loads(crypto.open_sealed(key, sealed, identifier.encode("utf-8"), what=repr(identifier)))
    data["secret"] = base64.b64decode(data["secret"])
    return otp.TotpSpec(**data)


def create_database_file(path: Path) -> None:
    """Create an empty database file owned-only (0600) before SQLite opens it."""
    crypto.write_private_file(path, b"")


def read_meta_value(path: Path, name: str) -> bytes | None:
    """Read one value from a store without a key (the passphrase salt), opening it read-only."""
    if not path.exists():
        raise StoreMissing(f"no store at {path} (run `totp-service init`)")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
    except sqlite3.DatabaseError:
        raise StoreError(f"{path} is not a totp-service store") from None
    finally:
        conn.close()
    return bytes(row[0]) if row else None


class Store:
    """One connection to the store, safe to share between threads (calls are serialised)."""

    def __init__(self, path: Path, key: crypto.MasterKey, *, create: bool = False, meta: dict[str, bytes] | None = None):
        self.path = Path(path)
        self._key = key
        self._lock = threading.RLock()
        self._checkpointer: _Checkpointer | None = None
        if create:
            if self.path.exists() and self.path.stat().st_size > 0:
                raise StoreError(f"{self.path} already exists")
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
        except BaseException:
            self._conn.close()
            raise

    def __repr__(self) -> str:
        return f"<Store {self.path}>"

    # --- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        self.stop_background_checkpoints()
        with self._lock:
            self._conn.close()

    # --- WAL checkpoints -----------------------------------------------------------------

    def start_background_checkpoints(
        self, interval: float = 0.25, prune_every: float = CLAIM_PRUNE_INTERVAL_SECONDS
    ) -> None:
        """Move WAL checkpoints out of this connection's commits (for the service).

        SQLite's automatic checkpoint runs inside whichever COMMIT pushes the WAL past 1,000 pages:
        that commit then copies pages into the database file and fsyncs, and every request waiting
        on it pays. Here the serving connection stops checkpointing and a daemon thread with its
        own connection runs a PASSIVE checkpoint every `interval` seconds (never blocking writers
        or readers; sqlite3 releases the GIL while it works). Commits stay as durable as before.
        The same thread prunes old single-use claims every `prune_every` seconds, so the `served`
        table stays the size of a day's windows instead of growing forever.
        """
        if self._checkpointer is not None:
            return
        with self._lock:
            self._conn.execute("PRAGMA wal_autocheckpoint = 0")
        self._checkpointer = _Checkpointer(self.path, interval, prune_every)
        self._checkpointer.start()

    def stop_background_checkpoints(self) -> None:
        checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is not None:
            checkpointer.stop()
            with self._lock:
                self._conn.execute(f"PRAGMA wal_autocheckpoint = {_AUTOCHECKPOINT_PAGES}")

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
            for version in sorted(_MIGRATIONS):
                for statement in _MIGRATIONS[version]:
                    conn.execute(statement)
            values = {
                "schema_version": str(SCHEMA_VERSION).encode(),
                "check": crypto.make_check_value(self._key),
                "key_id": self._key.key_id.encode(),
                **meta,
            }
            conn.executemany("INSERT INTO meta (name, value) VALUES (?, ?)", list(values.items()))

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
                for statement in _MIGRATIONS[step]:
                    conn.execute(statement)
            conn.execute("UPDATE meta SET value = ? WHERE name = 'schema_version'", (str(SCHEMA_VERSION).encode(),))

    @property
    def key_id(self) -> str:
        return self._key.key_id

    # --- secrets -------------------------------------------------------------------------

    def put_secret(
        self,
        identifier: str,
        spec: otp.TotpSpec,
        *,
        allowed_agents: Sequence[str] = (),
        min_validity_seconds: float | None = None,
        replace: bool = False,
    ) -> SecretMeta:
        self.put_many([(identifier, spec)], allowed_agents=allowed_agents,
                      min_validity_seconds=min_validity_seconds, replace=replace)
        return self.get_meta(identifier)

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
                (identifier, self._key.key_id, _seal_spec(self._key, identifier, spec), spec.algorithm,
                 spec.digits, spec.period, spec.issuer, spec.account, agents, min_validity_seconds, now, now)
            )
        with self._transaction() as conn:
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
        return _open_spec(self._key, identifier, bytes(row[0]))

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
            conn.execute("DELETE FROM served WHERE identifier = ?", (identifier,))

    # --- key rotation --------------------------------------------------------------------

    def rotate_key(self, new_key: crypto.MasterKey, meta: dict[str, bytes] | None = None) -> int:
        """Re-seal every row under `new_key` in one transaction; afterwards the old key opens nothing."""
        with self._transaction() as conn:
            rows = conn.execute("SELECT identifier, sealed FROM secrets").fetchall()
            resealed = [
                (new_key.key_id, _seal_spec(new_key, ident, _open_spec(self._key, ident, bytes(sealed))), ident)
                for ident, sealed in rows
            ]
            conn.executemany("UPDATE secrets SET key_id = ?, sealed = ? WHERE identifier = ?", resealed)
            values = {"check": crypto.make_check_value(new_key), "key_id": new_key.key_id.encode(), **(meta or {})}
            conn.executemany(
                "INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                list(values.items()),
            )
            if meta is None:
                conn.execute("DELETE FROM meta WHERE name = 'kdf_salt'")
        self._key = new_key
        return len(resealed)

    # --- bindings ------------------------------------------------------------------------

    def put_binding(self, kind: str, ref: str, identifier: str, expires_at: float | None = None) -> Binding:
        if kind not in ("run", "agent"):
            raise StoreError("a binding's kind is 'run' or 'agent'")
        if kind == "agent":
            check_agent_id(ref)
        elif not ref.strip():
            raise InvalidIdentifier("the run id is empty")
        identifier = check_identifier(identifier)
        binding = Binding(kind, ref, identifier, expires_at, time.time())
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

    def write_audit(self, items: Sequence[tuple[AuditEntry, tuple[str, int] | None]]) -> list[bool]:
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
                rows.append((e.at, e.identifier, e.task_id, e.workflow_run_id, e.workflow_permanent_id, e.client,
                             e.route, e.outcome if fresh else "window_taken", e.detail))
            conn.executemany(
                """INSERT INTO audit (at, identifier, task_id, workflow_run_id, workflow_permanent_id, client,
                       route, outcome, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                rows,
            )
        return results

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
        with self._transaction() as conn:
            return _prune_claims(conn, before)

    def is_claimed(self, identifier: str, counter: int) -> bool:
        with self._lock:
            row = self._conn.execute(
                "SELECT 1 FROM served WHERE identifier = ? AND counter = ?", (identifier, counter)
            ).fetchone()
        return row is not None

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
                f"""SELECT outcome, identifier, task_id, workflow_run_id, workflow_permanent_id, client, route,
                        detail, at, id FROM audit {where} ORDER BY id DESC LIMIT ?""",
                (*args, limit),
            ).fetchall()
        return [AuditEntry(*row) for row in rows]


_AUTOCHECKPOINT_PAGES = 1000  # SQLite's default


def _prune_claims(conn: sqlite3.Connection, before: float) -> int:
    return conn.execute(
        """DELETE FROM served WHERE at < ? AND NOT EXISTS (
               SELECT 1 FROM secrets WHERE secrets.identifier = served.identifier
                   AND (served.counter + 1) * secrets.period > ?)""",
        (before, before),
    ).rowcount


class _Checkpointer(threading.Thread):
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
            _prune_claims(conn, time.time() - CLAIM_RETENTION_SECONDS)
        except sqlite3.Error:
            conn.execute("ROLLBACK")
            return
        conn.execute("COMMIT")

    def stop(self) -> None:
        self._stopping.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=10)


