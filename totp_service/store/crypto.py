"""Master key handling and authenticated encryption of secrets (AES-256-GCM from `cryptography`).

Each sealed blob carries a fresh 96-bit nonce; the identifier is bound as associated data so a
row copied under another identifier fails to open. A key id lets rows say which key sealed them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from totp_service.store.files import read_key_file

KEY_BYTES = 32
NONCE_BYTES = 12
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
_CHECK_PLAINTEXT = b"totp-service master key check v1"
_CHECK_AAD = b"totp-service:check"


class CryptoError(Exception):
    """Base of the errors this module raises; messages are safe to show."""


class KeyFormatError(CryptoError):
    pass


class WrongMasterKey(CryptoError):
    def __init__(self, message: str = "the master key does not open this store") -> None:
        super().__init__(message)


class DecryptionFailed(CryptoError):
    def __init__(self, what: str) -> None:
        super().__init__(f"the stored secret for {what} does not open (tampered, copied, or another key)")


@dataclass(frozen=True)
class MasterKey:
    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.key) != KEY_BYTES:
            raise KeyFormatError(f"a master key must be {KEY_BYTES} bytes (got {len(self.key)})")

    @property
    def key_id(self) -> str:
        """A short public fingerprint: tells which key sealed a row without revealing the key."""
        return hmac.new(self.key, b"totp-service key id", hashlib.sha256).hexdigest()[:16]

    def url_token(self, identifier: str | None) -> str:
        """The token a totp_url carries (`?k=`): for `identifier`, or for the bound form (None).

        Derived from the master key, so every process holding the key hands out and checks the
        same tokens without storing any; a new master key gives new tokens (URLs must be handed
        out again after `rotate-key`). 128 bits, URL-safe.
        """
        subkey = hmac.new(self.key, b"totp-service url token v1", hashlib.sha256).digest()
        label = b"bound\0" if identifier is None else b"identifier\0" + identifier.encode("utf-8")
        mac = hmac.new(subkey, label, hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(AESGCM.generate_key(bit_length=256))

    @classmethod
    def from_base64(cls, text: str, source: str = "the master key") -> MasterKey:
        try:
            raw = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise KeyFormatError(f"{source} is not valid base64") from None
        if len(raw) != KEY_BYTES:
            raise KeyFormatError(f"{source} must be base64 of {KEY_BYTES} bytes (got {len(raw)} bytes)")
        return cls(raw)

    @classmethod
    def from_passphrase(cls, passphrase: str, salt: bytes) -> MasterKey:
        if not passphrase:
            raise KeyFormatError("the passphrase is empty")
        kdf = Scrypt(salt=salt, length=KEY_BYTES, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)
        return cls(kdf.derive(passphrase.encode("utf-8")))

    def to_base64(self) -> str:
        return base64.b64encode(self.key).decode("ascii")


def new_salt() -> bytes:
    return os.urandom(16)


def seal(key: MasterKey, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key.key).encrypt(nonce, plaintext, aad)


def open_sealed(key: MasterKey, blob: bytes, aad: bytes, what: str = "this row") -> bytes:
    try:
        return AESGCM(key.key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
    except (InvalidTag, ValueError):
        raise DecryptionFailed(what) from None


def make_check_value(key: MasterKey) -> bytes:
    return seal(key, _CHECK_PLAINTEXT, _CHECK_AAD)


def verify_check_value(key: MasterKey, check: bytes) -> None:
    try:
        plain = open_sealed(key, check, _CHECK_AAD)
    except DecryptionFailed:
        raise WrongMasterKey() from None
    if not hmac.compare_digest(plain, _CHECK_PLAINTEXT):
        raise WrongMasterKey()


def write_private_file(path: Path, data: bytes) -> None:
    """Create a file readable by its owner only; refuse to overwrite (O_EXCL)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(path, 0o600)


def create_key_file(path: Path) -> MasterKey:
    key = MasterKey.generate()
    write_private_file(path, (key.to_base64() + "\n").encode("ascii"))
    return key


def load_key_file(path: Path) -> MasterKey:
    """The key in `path`: ours, written by nobody else, never read through a symbolic link."""
    return MasterKey.from_base64(read_key_file(path), source=f"key file {path}")
