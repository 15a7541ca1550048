"""PostgreSQL schema, forward migrations, and the few things done on a bare connection (no key,
no pool): connecting with clear errors, finding a store, reading the passphrase salt.

Versions are this backend's own (SQLite's are in sqlite_schema.py). Migrations run under the
advisory lock MIGRATION_LOCK, inside one transaction (PostgreSQL's DDL is transactional).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import conninfo

from totp_service.store.base import StoreError, StoreMissing, StoreUnavailable

SCHEMA_VERSION = 1
CHANNEL = "totp_secrets"
MIGRATION_LOCK = 0x7074_6F74_7073  # pg_advisory_xact_lock key: "ptotps", any constant of our own

MIGRATIONS: dict[int, list[str]] = {
    1: [
        "CREATE TABLE meta (name TEXT PRIMARY KEY, value BYTEA NOT NULL)",
        """CREATE TABLE secrets (
    identifier TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    sealed BYTEA NOT NULL,
    algorithm TEXT NOT NULL,
    digits INTEGER NOT NULL,
    period INTEGER NOT NULL,
    issuer TEXT,
    account TEXT,
    allowed_agents TEXT NOT NULL DEFAULT '[]',
    min_validity_seconds DOUBLE PRECISION,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
)""",
        """CREATE TABLE bindings (
    kind TEXT NOT NULL CHECK (kind IN ('run', 'agent')),
    ref TEXT NOT NULL,
    identifier TEXT NOT NULL,
    expires_at DOUBLE PRECISION,
    created_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (kind, ref)
)""",
        """CREATE TABLE audit (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at DOUBLE PRECISION NOT NULL,
    identifier TEXT,
    task_id TEXT,
    workflow_run_id TEXT,
    workflow_permanent_id TEXT,
    client TEXT,
    route TEXT,
    outcome TEXT NOT NULL,
    detail TEXT,
    count INTEGER NOT NULL DEFAULT 1
)""",
        "CREATE INDEX audit_at ON audit (at)",
        """CREATE TABLE served (
    identifier TEXT NOT NULL,
    counter BIGINT NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (identifier, counter)
)""",
        """CREATE TABLE secrets_version (
    one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
    version BIGINT NOT NULL
)""",
        "INSERT INTO secrets_version (version) VALUES (0)",
        f"""CREATE FUNCTION totp_secrets_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE v BIGINT;
BEGIN
    UPDATE secrets_version SET version = version + 1 RETURNING version INTO v;
    PERFORM pg_notify('{CHANNEL}', v::text);
    RETURN NULL;
END $$""",
        """CREATE TRIGGER secrets_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON secrets
    FOR EACH STATEMENT EXECUTE FUNCTION totp_secrets_changed()""",
    ],
}


def redact(url: str) -> str:
    """The URL without its password, for messages and reprs."""
    try:
        params = conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://(unparsable URL)"
    host, port, db, user = (params.get(k) for k in ("host", "port", "dbname", "user"))
    return f"postgresql://{user + '@' if user else ''}{host or ''}{':' + str(port) if port else ''}/{db or ''}"


def unreachable(url: str, exc: BaseException) -> StoreUnavailable:
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
    return StoreUnavailable(f"PostgreSQL at {redact(url)} cannot be reached ({detail[:200]})")


def defaults(url: str, role: str = "totp-service") -> dict[str, Any]:
    """Connection options the URL does not set itself (its own always win: libpq's options pass through)."""
    try:
        given = conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        given = {}
    options = {"connect_timeout": 5, "application_name": role}
    return {name: value for name, value in options.items() if name not in given}


def connect(url: str, role: str = "totp-service") -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(url, autocommit=True, **defaults(url, role))
    except psycopg.ProgrammingError as exc:  # a malformed URL or option
        raise StoreError(f"the database URL {redact(url)} is not valid ({str(exc).strip()[:200]})") from None
    except psycopg.OperationalError as exc:
        raise unreachable(url, exc) from None


def has_store(conn: psycopg.Connection[Any]) -> bool:
    return conn.execute("SELECT to_regclass('meta') IS NOT NULL").fetchone()[0]  # type: ignore[index]


def read_meta_value(url: str, name: str) -> bytes | None:
    """One meta value without a key (the passphrase salt)."""
    with connect(url) as conn:
        if not has_store(conn):
            raise StoreMissing(f"no store in {redact(url)} (run `totp-service init`)")
        row = conn.execute("SELECT value FROM meta WHERE name = %s", (name,)).fetchone()
    return bytes(row[0]) if row else None
