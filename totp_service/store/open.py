"""From `Settings` to an opened `Store`: which backend, where the master key comes from, and `init`.

Backend: `store.url` (env TOTP_SERVICE_DATABASE_URL) set means PostgreSQL (store/postgres.py,
imported only then: without the `postgres` extra nothing imports psycopg); unset means the SQLite
file in the data directory. Key sources, first match wins: TOTP_SERVICE_MASTER_KEY,
TOTP_SERVICE_PASSPHRASE (scrypt, salt kept in the store), the key file in the data directory; the
master key always stays with the process, never in a database. The data directory, the key file and the
database must be the running user's and writable by nobody else (files.py); when one cannot be
used, or the key does not fit, the message says which source was used and what to do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from totp_service.config import Settings
from totp_service.store import crypto, files
from totp_service.store.base import Store, StoreError, StoreExists, StoreMissing
from totp_service.store.sqlite import SqliteStore
from totp_service.store.sqlite_schema import read_meta_value

SALT_META = "kdf_salt"


@dataclass(frozen=True)
class InitResult:
    created_store: bool
    created_key_file: bool
    key_source: str
    data_dir: Path
    database: str  # the SQLite file, or the PostgreSQL URL without its password


def key_source(settings: Settings) -> str:
    if settings.master_key:
        return "environment (TOTP_SERVICE_MASTER_KEY)"
    if settings.passphrase:
        return "passphrase (TOTP_SERVICE_PASSPHRASE)"
    return f"key file {settings.key_file_path}"


def _postgres() -> ModuleType:
    try:
        from totp_service.store import postgres
    except ImportError:
        raise StoreError("store.url names PostgreSQL, but its driver is not installed: "
                         "pip install 'totp-service[postgres]'") from None
    return postgres


def _is_url(location: str) -> bool:
    return location.split(":", 1)[0] in ("postgresql", "postgres")


def configured_location(settings: Settings) -> str:
    """The store's location: a postgresql:// URL (store.url), else the SQLite file in the data dir."""
    return settings.store.url or str(settings.database_path)


def describe(location: str) -> str:
    """A location for messages (a URL loses its password)."""
    return _postgres().redact(location) if _is_url(location) else location


def store_location(settings: Settings) -> str:
    return describe(configured_location(settings))


def read_salt(location: str) -> bytes | None:
    """The passphrase salt kept in the store at `location` (readable without a key)."""
    if _is_url(location):
        return _postgres().read_meta_value(location, SALT_META)
    return read_meta_value(Path(location), SALT_META)


def store_exists(location: str) -> bool:
    if _is_url(location):
        try:
            _postgres().read_meta_value(location, "check")
        except StoreMissing:
            return False
        return True
    path = Path(location)
    return path.exists() and path.stat().st_size > 0


def open_location(location: str, key: crypto.MasterKey, **options: Any) -> Store:
    """Open (or with create=True, meta=..., create) the store at a URL or SQLite path."""
    if _is_url(location):
        return _postgres().PostgresStore(location, key, **options)
    return SqliteStore(Path(location), key, **options)


def _uses_key_file(settings: Settings) -> bool:
    return not settings.master_key and not settings.passphrase


def _missing_key_file(settings: Settings) -> StoreError:
    """Why there is no key: a fresh machine, a passphrase store, or a key file lost."""
    location, key_file = configured_location(settings), settings.key_file_path
    database = describe(location)
    if not store_exists(location):
        return StoreMissing(f"no store at {database} and no key file {key_file} (run `totp-service init`)")
    if read_salt(location) is not None:
        return StoreError(f"the store {database} is protected by a passphrase (its salt is in the store): "
                          "set TOTP_SERVICE_PASSPHRASE")
    return StoreError(f"key file {key_file} is missing but the store {database} exists: restore it from your "
                      "backup (or set TOTP_SERVICE_MASTER_KEY to that key); no new key can open this store")


def _read_key_file(settings: Settings) -> crypto.MasterKey:
    try:
        return crypto.load_key_file(settings.key_file_path)
    except files.KeyFileMissing:
        raise _missing_key_file(settings) from None


def load_master_key(settings: Settings, salt_from: str | None = None) -> crypto.MasterKey:
    """The configured master key; a passphrase is stretched with the salt of the store at
    `salt_from` (default: the configured store)."""
    if settings.master_key:
        return crypto.MasterKey.from_base64(settings.master_key, source="TOTP_SERVICE_MASTER_KEY")
    if settings.passphrase:
        salt = read_salt(salt_from or configured_location(settings))
        if salt is None:
            raise StoreError("this store was not created with a passphrase (no salt in it)")
        return crypto.MasterKey.from_passphrase(settings.passphrase, salt)
    return _read_key_file(settings)


def _wrong_key(settings: Settings) -> crypto.WrongMasterKey:
    database = store_location(settings)
    if settings.master_key:
        overridden = (f"; it overrides the key file {settings.key_file_path} (unset it to use that file)"
                      if os.path.lexists(settings.key_file_path) else "")
        return crypto.WrongMasterKey(f"TOTP_SERVICE_MASTER_KEY does not open the store {database}{overridden}")
    if settings.passphrase:
        return crypto.WrongMasterKey(f"TOTP_SERVICE_PASSPHRASE does not open the store {database} (wrong passphrase)")
    return crypto.WrongMasterKey(f"key file {settings.key_file_path} does not open the store {database} "
                                 "(the key of another store?)")


def unsafe_file_lines(settings: Settings) -> list[str]:
    """One UNSAFE line for each key file or database that other users may read."""
    candidates = [] if settings.store.url else [("database", settings.database_path)]
    if _uses_key_file(settings):
        candidates.insert(0, ("key file", settings.key_file_path))
    return [files.unsafe_readable_line(what, path) for what, path in candidates if files.readable_by_others(path)]


def check_store_files(settings: Settings) -> None:
    """Refuse a data dir or database we must not trust (and readable ones when the setting says so)."""
    files.check_data_dir(settings.data_dir)
    if not settings.store.url:
        files.check_database(settings.database_path)
    if settings.refuse_readable_files and (unsafe := unsafe_file_lines(settings)):
        raise files.UnsafeFileError(f"{unsafe[0].removeprefix('UNSAFE ')}; refuse_readable_files is on")


def open_store(settings: Settings, key: crypto.MasterKey | None = None) -> Store:
    """Open the store (with `key`, else the configured one); raises WrongMasterKey, and writes
    nothing, when the key does not fit."""
    check_store_files(settings)
    key = key or load_master_key(settings)
    try:
        return open_location(configured_location(settings), key)
    except crypto.WrongMasterKey:
        raise _wrong_key(settings) from None


def new_key_file(path: Path) -> crypto.MasterKey:
    """A fresh key in a new 0600 file (never over an existing file or link); OS errors as one line."""
    try:
        return crypto.create_key_file(path)
    except OSError as exc:
        raise files.UnsafeFileError(f"cannot create key file {path} ({files.os_reason(exc)})") from None


def init_store(settings: Settings) -> InitResult:
    """Create data dir (0700), key file (0600) and the store (a 0600 file, or tables in the
    PostgreSQL database); never overwrite anything."""
    data_dir = settings.data_dir
    location, database = configured_location(settings), store_location(settings)
    files.make_data_dir(data_dir)
    if store_exists(location):
        open_store(settings).close()  # proves the key still fits; changes nothing
        return InitResult(False, False, key_source(settings), data_dir, database)
    check_store_files(settings)
    created_key_file = False
    meta: dict[str, bytes] = {}
    if settings.master_key:
        key = load_master_key(settings)
    elif settings.passphrase:
        salt = crypto.new_salt()
        key = crypto.MasterKey.from_passphrase(settings.passphrase, salt)
        meta[SALT_META] = salt
    elif os.path.lexists(settings.key_file_path):  # a link to nowhere is refused, not replaced
        key = _read_key_file(settings)
    else:
        key = new_key_file(settings.key_file_path)
        created_key_file = True
    try:
        open_location(location, key, create=True, meta=meta).close()
    except StoreExists:  # another replica's `init` made it meanwhile: the same as finding it
        open_store(settings).close()
        return InitResult(False, created_key_file, key_source(settings), data_dir, database)
    except OSError as exc:
        raise files.UnsafeFileError(f"cannot create the database {database} ({files.os_reason(exc)})") from None
    return InitResult(True, created_key_file, key_source(settings), data_dir, database)
