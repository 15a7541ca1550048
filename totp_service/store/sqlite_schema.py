"""The SQLite store's schema and its forward migrations, apart from the queries that use it.

Each version's statements run once, in one transaction, when a store of an older version opens.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from totp_service.store import crypto
from totp_service.store.base import StoreError, StoreMissing

SCHEMA_VERSION = 3

MIGRATIONS: dict[int, list[str]] = {
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
    # Refusals of unauthenticated pulls are audited in aggregate (service/refusals.py): a row's count.
    3: ["ALTER TABLE audit ADD COLUMN count INTEGER NOT NULL DEFAULT 1"],
}


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
