"""andOTP backup, plain JSON or password-encrypted `.json.aes` (layout read from andOTP's code).

Plain: a JSON list of entries. Encrypted (andOTP 0.6.3 and later): a 4-byte big-endian
PBKDF2 iteration count, a 12-byte salt, a 12-byte GCM nonce, then ciphertext and tag; the
key is PBKDF2-HMAC-SHA1 of the password (256 bits). Older backups hold only nonce, ciphertext
and tag under SHA-256 of the password; those are tried when the newer layout does not open.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes

from .decrypt import GCM_TAG_BYTES, MAX_PBKDF2_ITERATIONS, aes_gcm_open, password_bytes, pbkdf2_key
from .entries import (
    MAX_EXPORT_BYTES,
    ImportedEntry,
    PasswordSource,
    as_dict,
    as_list,
    load_json,
    params_entry,
    text_field,
)
from .errors import ImportFileError, WrongPassword

FORMAT = "andotp"
WHAT = "andOTP backup"
ITERATIONS_BYTES, SALT_BYTES, NONCE_BYTES = 4, 12, 12
MIN_ITERATIONS = 1_000  # andOTP never wrote fewer


def looks_like(document: object) -> bool:
    return (isinstance(document, list) and bool(document) and isinstance(document[0], dict)
            and "secret" in document[0] and ("label" in document[0] or "type" in document[0]))


def looks_encrypted(data: bytes) -> bool:
    """Binary data that starts with a plausible iteration count (andOTP files carry no magic)."""
    header = ITERATIONS_BYTES + SALT_BYTES + NONCE_BYTES
    return len(data) >= header + GCM_TAG_BYTES and MIN_ITERATIONS <= _iterations(data) <= MAX_PBKDF2_ITERATIONS


def read(data: bytes, password: PasswordSource = None) -> list[ImportedEntry]:
    stripped = data.lstrip()
    if stripped[:1] in (b"[", b"{") or stripped[:3] == b"\xef\xbb\xbf":
        document = load_json(data, WHAT)
    else:
        document = load_json(_decrypt(data, password), f"{WHAT}'s decrypted content")
    items = as_list(document, f"the {WHAT}")
    return [_entry(f"entry {number}", item) for number, item in enumerate(items, start=1)]


def _entry(where: str, item: object) -> ImportedEntry:
    fields = as_dict(item, where)
    issuer = text_field(fields, "issuer", where)
    account = text_field(fields, "label", where)
    kind = (text_field(fields, "type", where) or "totp").lower()
    return params_entry(where, kind, fields, issuer, account)


def _iterations(data: bytes) -> int:
    return int.from_bytes(data[:ITERATIONS_BYTES], "big")


def _decrypt(data: bytes, password: PasswordSource) -> bytes:
    if len(data) > MAX_EXPORT_BYTES:
        raise ImportFileError(f"the {WHAT} is larger than {MAX_EXPORT_BYTES // (1024 * 1024)} MiB")
    if len(data) < NONCE_BYTES + GCM_TAG_BYTES:
        raise ImportFileError(f"the {WHAT} is too short to be an encrypted andOTP backup")
    secret = password_bytes(password, WHAT)
    if looks_encrypted(data):
        salt_end = ITERATIONS_BYTES + SALT_BYTES
        key = pbkdf2_key(secret, data[ITERATIONS_BYTES:salt_end], _iterations(data), hashes.SHA1(), WHAT)
        try:
            return aes_gcm_open(key, data[salt_end : salt_end + NONCE_BYTES], data[salt_end + NONCE_BYTES :], WHAT)
        except WrongPassword:
            pass  # maybe an old backup whose nonce happens to start like an iteration count
    digest = hashes.Hash(hashes.SHA256())
    digest.update(secret)
    legacy_key = digest.finalize()
    return aes_gcm_open(legacy_key, data[:NONCE_BYTES], data[NONCE_BYTES:], WHAT)
