"""From `Settings` to an opened `Store`: which backend, where the master key comes from, and `init`.

Key sources, first match wins: TOTP_SERVICE_MASTER_KEY, TOTP_SERVICE_PASSPHRASE (scrypt, salt
kept in the store), the key file in the data directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from totp_service.config import Settings
from totp_service.store import crypto
from totp_service.store.base import Store, StoreError
from totp_service.store.sqlite import SqliteStore
from totp_service.store.sqlite_schema import read_meta_value

SALT_META = "kdf_salt"


@dataclass(frozen=True)
class InitResult:
    created_store: bool
    created_key_file: bool
    key_source: str
    data_dir: Path
    database: Path


def key_source(settings: Settings) -> str:
    if settings.master_key:
        return "environment (TOTP_SERVICE_MASTER_KEY)"
    if settings.passphrase:
        return "passphrase (TOTP_SERVICE_PASSPHRASE)"
    return f"key file {settings.key_file_path}"


def load_master_key(settings: Settings) -> crypto.MasterKey:
    if settings.master_key:
        return crypto.MasterKey.from_base64(settings.master_key, source="TOTP_SERVICE_MASTER_KEY")
    if settings.passphrase:
        salt = read_meta_value(settings.database_path, SALT_META)
        if salt is None:
            raise StoreError("this store was not created with a passphrase (no salt in it)")
        return crypto.MasterKey.from_passphrase(settings.passphrase, salt)
    return crypto.load_key_file(settings.key_file_path)


def open_store(settings: Settings, key: crypto.MasterKey | None = None) -> Store:
    """Open the store (with `key`, else the configured one); raises WrongMasterKey, and writes
    nothing, when the key does not fit."""
    return SqliteStore(settings.database_path, key or load_master_key(settings))


def ensure_data_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def init_store(settings: Settings) -> InitResult:
    """Create data dir (0700), key file (0600) and database (0600); never overwrite anything."""
    data_dir = settings.data_dir
    database = settings.database_path
    if database.exists() and database.stat().st_size > 0:
        open_store(settings).close()  # proves the key still fits; changes nothing
        return InitResult(False, False, key_source(settings), data_dir, database)
    ensure_data_dir(data_dir)
    created_key_file = False
    meta: dict[str, bytes] = {}
    if settings.master_key:
        key = load_master_key(settings)
    elif settings.passphrase:
        salt = crypto.new_salt()
        key = crypto.MasterKey.from_passphrase(settings.passphrase, salt)
        meta[SALT_META] = salt
    elif settings.key_file_path.exists():
        key = crypto.load_key_file(settings.key_file_path)
    else:
        key = crypto.create_key_file(settings.key_file_path)
        created_key_file = True
    SqliteStore(database, key, create=True, meta=meta).close()
    return InitResult(True, created_key_file, key_source(settings), data_dir, database)
