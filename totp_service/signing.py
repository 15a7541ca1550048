"""Skyvern's request signature: lowercase hex HMAC-SHA256 of the raw body, keyed by an API key."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from typing import Any

SIGNATURE_HEADER = "x-skyvern-signature"
TIMESTAMP_HEADER = "x-skyvern-timestamp"


def compact_json(payload: Mapping[str, Any]) -> bytes:
    """Serialise a body exactly as Skyvern does before signing it."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sign(body: bytes, api_key: str) -> str:
    return hmac.new(api_key.encode("utf-8"), body, hashlib.sha256).hexdigest()


class SignatureVerifier:
    """Checks signatures against several keys (rotation, several organisations).

    Keys are encoded once; every key is tried with no early exit, and each comparison is
    constant-time, so timing tells neither whether nor which key matched.
    """

    def __init__(self, api_keys: Iterable[str]) -> None:
        self._keys = [key.encode("utf-8") for key in api_keys if key]

    def __repr__(self) -> str:
        return f"<SignatureVerifier {len(self._keys)} key(s)>"

    def __bool__(self) -> bool:
        return bool(self._keys)

    def verify(self, body: bytes, signature: str | None) -> bool:
        if not signature:
            return False
        given = signature.strip().lower().encode("ascii", "replace")
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(hmac.digest(key, body, "sha256").hex().encode("ascii"), given)
        return matched


def verify(body: bytes, signature: str | None, api_keys: Iterable[str]) -> bool:
    """True when the signature matches the body under any of the keys."""
    return SignatureVerifier(api_keys).verify(body, signature)
