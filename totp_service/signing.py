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


def verify(body: bytes, signature: str | None, api_keys: Iterable[str]) -> bool:
    """True when the signature matches the body under any of the keys.

    Every key is tried (no early exit) so timing does not reveal which key, if any, matched.
    """
    if not signature:
        return False
    given = signature.strip().lower().encode("ascii", "replace")
    matched = False
    for key in api_keys:
        expected = sign(body, key).encode("ascii")
        matched |= hmac.compare_digest(expected, given)
    return matched
