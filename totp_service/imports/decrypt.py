"""Opening password-encrypted exports with `cryptography` (scrypt, PBKDF2, AES-256-GCM).

Key-derivation costs come from the file, so they are bounded here: a crafted file must not
be able to make an import run for hours or allocate gigabytes.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from .entries import PasswordSource
from .errors import ImportFileError, PasswordRequired, WrongPassword

MAX_SCRYPT_WORK = 2**20  # n * r * p; Aegis writes n=2^15, r=8, p=1 (2^18: 32 MiB, ~0.1 s)
MAX_PBKDF2_ITERATIONS = 1_000_000  # andOTP writes 140,000-160,000; 2FAS 10,000
GCM_TAG_BYTES = 16


def password_bytes(password: PasswordSource, what: str) -> bytes:
    """Ask for the password only now that the file is known to be encrypted."""
    value = password() if callable(password) else password
    if value is None:
        raise PasswordRequired(
            f"the {what} is encrypted: give its password (asked for on a terminal, or --password-stdin)"
        )
    if not value:
        raise PasswordRequired(f"the {what} is encrypted and the password given is empty")
    return value.encode("utf-8")


def scrypt_key(password: bytes, salt: bytes, n: int, r: int, p: int, what: str) -> bytes:
    if not (1 < n and n & (n - 1) == 0 and 0 < r and 0 < p and n * r * p <= MAX_SCRYPT_WORK):
        raise ImportFileError(f"the {what} asks for scrypt parameters out of range (n={n}, r={r}, p={p})")
    try:
        return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(password)
    except (ValueError, MemoryError, UnsupportedAlgorithm):
        raise ImportFileError(f"the {what}'s scrypt parameters cannot be used (n={n}, r={r}, p={p})") from None


def pbkdf2_key(password: bytes, salt: bytes, iterations: int, algorithm: hashes.HashAlgorithm, what: str) -> bytes:
    if not 0 < iterations <= MAX_PBKDF2_ITERATIONS:
        raise ImportFileError(f"the {what} asks for {iterations} PBKDF2 iterations (at most {MAX_PBKDF2_ITERATIONS})")
    return PBKDF2HMAC(algorithm=algorithm, length=32, salt=salt, iterations=iterations).derive(password)


def aes_gcm_open(
    key: bytes, nonce: bytes, ciphertext_and_tag: bytes, what: str, *, key_from_password: bool = True
) -> bytes:
    """AES-GCM decryption. A bad tag under a password-derived key means a wrong password (or a
    changed file); under a key that already opened (`key_from_password=False`), a changed file."""
    if len(key) not in (16, 24, 32) or not 8 <= len(nonce) <= 128 or len(ciphertext_and_tag) < GCM_TAG_BYTES:
        raise ImportFileError(f"the {what} is truncated or corrupt (key, nonce or tag of the wrong size)")
    try:
        return AESGCM(key).decrypt(nonce, ciphertext_and_tag, None)
    except InvalidTag:
        if not key_from_password:
            raise ImportFileError(f"the {what} was changed after it was written (its GCM tag does not match)") from None
        raise WrongPassword(f"wrong password for the {what} (or the file was changed after it was written)") from None
