"""Aegis vault export, plain or password-encrypted (format: docs/vault.md in beemdevelopment/Aegis).

Encrypted vaults keep a random master key wrapped once per credential slot; a password slot
derives its wrapping key with scrypt (N, r, p and salt stored in the slot). The master key then
opens `db`, the base64 AES-256-GCM ciphertext of the same content a plain vault holds as JSON.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping

from .decrypt import aes_gcm_open, password_bytes, scrypt_key
from .entries import (
    ImportedEntry,
    PasswordSource,
    as_dict,
    as_list,
    load_json,
    params_entry,
    other_kind_entry,
    text_field,
)
from .errors import ImportFileError, WrongPassword

FORMAT = "aegis"
WHAT = "Aegis vault"
PASSWORD_SLOT = 1
MAX_PASSWORD_SLOTS = 4  # each costs one scrypt run


def looks_like(document: object) -> bool:
    return isinstance(document, dict) and "header" in document and "db" in document


def read(data: bytes, password: PasswordSource = None) -> list[ImportedEntry]:
    vault = as_dict(load_json(data, WHAT), f"the {WHAT}")
    if not looks_like(vault):
        raise ImportFileError(f"the {WHAT} has no header and db")
    version = vault.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version > 1:
        raise ImportFileError(f"the {WHAT} has format version {version}; this importer reads version 1")
    db = vault["db"]
    if isinstance(db, str):
        content = _decrypt(vault["header"], db, password)
    elif isinstance(db, dict):
        content = db
    else:
        raise ImportFileError(f"the {WHAT}'s db is neither an object nor encrypted text")
    entries = as_list(as_dict(content, f"the {WHAT}'s content").get("entries"), f"the {WHAT}'s entries")
    return [_entry(f"entry {number}", item) for number, item in enumerate(entries, start=1)]


def _entry(where: str, item: object) -> ImportedEntry:
    fields = as_dict(item, where)
    kind = (text_field(fields, "type", where) or "totp").lower()
    issuer = text_field(fields, "issuer", where)
    account = text_field(fields, "name", where)
    if kind != "totp":
        return other_kind_entry(where, kind, issuer, account)
    return params_entry(where, kind, as_dict(fields.get("info"), f"{where} info"), issuer, account,
                        algorithm_key="algo")


def _decrypt(header: object, db: str, password: PasswordSource) -> object:
    fields = _fields(header, "header")
    slots = fields.get("slots")
    if not isinstance(slots, list):
        raise ImportFileError(f"the {WHAT}'s header has no slots")
    password_slots = [s for s in slots if isinstance(s, dict) and s.get("type") == PASSWORD_SLOT]
    if not password_slots:
        raise ImportFileError(f"the {WHAT} has no password slot (biometric slots only open on the phone)")
    secret = password_bytes(password, WHAT)
    master_key = None
    for slot in password_slots[:MAX_PASSWORD_SLOTS]:
        try:
            master_key = _unwrap(slot, secret)
            break
        except WrongPassword:
            continue
    if master_key is None:
        raise WrongPassword(f"wrong password for the {WHAT}")
    params = _fields(fields.get("params"), "header params")
    try:
        ciphertext = base64.b64decode(db, validate=True)
    except (binascii.Error, ValueError):
        raise ImportFileError(f"the {WHAT}'s db is not valid base64") from None
    plain = aes_gcm_open(master_key, _hex(params, "nonce"), ciphertext + _hex(params, "tag"), WHAT,
                         key_from_password=False)
    return load_json(plain, f"{WHAT}'s decrypted content")


def _unwrap(slot: Mapping[str, object], secret: bytes) -> bytes:
    n, r, p = (_number(slot, name) for name in ("n", "r", "p"))
    wrapping_key = scrypt_key(secret, _hex(slot, "salt"), n, r, p, f"{WHAT}'s password slot")
    params = _fields(slot.get("key_params"), "slot key_params")
    return aes_gcm_open(wrapping_key, _hex(params, "nonce"), _hex(slot, "key") + _hex(params, "tag"), WHAT)


def _fields(value: object, name: str) -> Mapping[str, object]:
    if not isinstance(value, dict):
        raise ImportFileError(f"the {WHAT}'s {name} is missing or not an object")
    return value


def _hex(fields: Mapping[str, object], key: str) -> bytes:
    value = fields.get(key)
    try:
        if isinstance(value, str):
            return bytes.fromhex(value)
    except ValueError:
        pass
    raise ImportFileError(f"the {WHAT}'s {key} is missing or not hexadecimal")


def _number(fields: Mapping[str, object], key: str) -> int:
    value = fields.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ImportFileError(f"the {WHAT}'s password slot has no whole number {key}")
