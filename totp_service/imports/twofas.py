"""2FAS backup (`.2fas`), plain or password-encrypted (scheme read from the 2FAS Android app).

An encrypted backup leaves `services` empty and carries `servicesEncrypted` as
`base64(ciphertext+tag):base64(salt):base64(iv)`: AES-256-GCM under PBKDF2-HMAC-SHA256
(10,000 iterations, 256-bit key) of the password. `reference`, a fixed text encrypted the same
way, tells a wrong password apart from a changed file.
"""

from __future__ import annotations

import base64
import binascii

from cryptography.hazmat.primitives import hashes

from .decrypt import aes_gcm_open, password_bytes, pbkdf2_key
from .entries import (
    ImportedEntry,
    PasswordSource,
    as_dict,
    as_list,
    load_json,
    params_entry,
    text_field,
)
from .errors import ImportFileError, WrongPassword

FORMAT = "2fas"
WHAT = "2FAS backup"
PBKDF2_ITERATIONS = 10_000


def looks_like(document: object) -> bool:
    return isinstance(document, dict) and ("servicesEncrypted" in document or (
        "services" in document and "schemaVersion" in document))


def read(data: bytes, password: PasswordSource = None) -> list[ImportedEntry]:
    backup = as_dict(load_json(data, WHAT), f"the {WHAT}")
    encrypted = backup.get("servicesEncrypted")
    if encrypted:
        if not isinstance(encrypted, str):
            raise ImportFileError(f"the {WHAT}'s servicesEncrypted is not text")
        services = _decrypt(encrypted, backup.get("reference"), password)
    elif "services" in backup:
        services = backup["services"]
    else:
        raise ImportFileError(f"the {WHAT} has no services")
    items = as_list(services, f"the {WHAT}'s services")
    return [_entry(f"service {number}", item) for number, item in enumerate(items, start=1)]


def _entry(where: str, item: object) -> ImportedEntry:
    service = as_dict(item, where)
    otp = as_dict(service.get("otp") or {}, f"{where} otp")
    issuer = text_field(otp, "issuer", where) or text_field(service, "name", where)
    account = text_field(otp, "account", where) or text_field(otp, "label", where)
    kind = (text_field(otp, "tokenType", where) or "totp").lower()
    return params_entry(where, kind, otp, issuer, account, secret_in=service)


def _decrypt(services: str, reference: object, password: PasswordSource) -> object:
    secret = password_bytes(password, WHAT)
    if isinstance(reference, str) and reference:
        _open(reference, secret, "reference")  # a bad tag here is the password, not the data
        try:
            plain = _open(services, secret, "services")
        except WrongPassword:
            raise ImportFileError(f"the {WHAT}'s services were changed after it was written "
                                  "(the password opens its reference but not its services)") from None
    else:
        plain = _open(services, secret, "services")
    return load_json(plain, f"{WHAT}'s decrypted services")


def _open(value: str, secret: bytes, name: str) -> bytes:
    parts = value.split(":")
    if len(parts) != 3:
        raise ImportFileError(f"the {WHAT}'s {name} is not ciphertext:salt:iv")
    try:
        ciphertext, salt, iv = (base64.b64decode(part, validate=True) for part in parts)
    except (binascii.Error, ValueError):
        raise ImportFileError(f"the {WHAT}'s {name} is not valid base64") from None
    key = pbkdf2_key(secret, salt, PBKDF2_ITERATIONS, hashes.SHA256(), WHAT)
    return aes_gcm_open(key, iv, ciphertext, WHAT)
