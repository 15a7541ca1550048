"""`TotpSpec` (one validated TOTP secret with its parameters), codes and window timing.

The parsers that turn what users hold into a `TotpSpec` live in `imports/`. Validation is strict
about what makes a code wrong (unknown algorithm, digits, period). No message holds the secret.
"""

from __future__ import annotations

import re

import base64
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import pyotp

ALGORITHMS: dict[str, Callable[..., "hashlib._Hash"]] = {
    "SHA1": hashlib.sha1,
    "SHA256": hashlib.sha256,
    "SHA512": hashlib.sha512,
}
MIN_SECRET_BYTES = 10  # 80-bit secrets are still issued by real sites
MAX_PERIOD_SECONDS = 3600


class OtpFormatError(ValueError):
    """A secret or URI that cannot be turned into a TOTP generator; the message says why."""


@dataclass(frozen=True)
class TotpSpec:
    """Everything needed to compute codes. The secret never appears in repr()."""

    secret: bytes = field(repr=False)
    algorithm: str = "SHA1"
    digits: int = 6
    period: int = 30
    issuer: str | None = None
    account: str | None = None

    def __post_init__(self) -> None:
        validate(self)


def validate(spec: TotpSpec) -> None:
    if not spec.secret:
        raise OtpFormatError("the secret is empty")
    if len(spec.secret) < MIN_SECRET_BYTES:
        raise OtpFormatError(
            f"the secret is too short ({len(spec.secret) * 8} bits; at least {MIN_SECRET_BYTES * 8} needed)"
        )
    if spec.algorithm not in ALGORITHMS:
        raise OtpFormatError(f"unknown algorithm {spec.algorithm!r} (use SHA1, SHA256 or SHA512)")
    if not isinstance(spec.digits, int) or not 6 <= spec.digits <= 8:
        raise OtpFormatError(f"digits must be 6, 7 or 8 (got {spec.digits})")
    if not isinstance(spec.period, int) or not 0 < spec.period <= MAX_PERIOD_SECONDS:
        raise OtpFormatError(f"period must be between 1 and {MAX_PERIOD_SECONDS} seconds (got {spec.period})")
    for name, text in (("issuer", spec.issuer), ("account", spec.account)):
        if text is not None and (not isinstance(text, str) or len(text) > MAX_LABEL_CHARS or not is_unicode(text)):
            raise OtpFormatError(f"the {name} must be UTF-8 text of at most {MAX_LABEL_CHARS} characters")


SURROGATE = re.compile("[\ud800-\udfff]")
MAX_LABEL_CHARS = 512


def is_unicode(text: str) -> bool:
    """False for a string holding a lone surrogate: from JSON's \\ud800, or from bytes that were not
    UTF-8 (Python's surrogateescape for command-line arguments). Such a string cannot be stored."""
    return text.isascii() or SURROGATE.search(text) is None


# --- codes and windows ---------------------------------------------------------------------


class _Totp(pyotp.TOTP):
    """pyotp's TOTP over raw bytes: accepts 80-bit secrets and skips base32 on every code."""

    min_secret_length_bits: ClassVar[int] = MIN_SECRET_BYTES * 8

    def __init__(self, spec: TotpSpec) -> None:
        self._raw = spec.secret
        super().__init__(
            base64.b32encode(spec.secret).decode("ascii"),
            digits=spec.digits,
            digest=ALGORITHMS[spec.algorithm],
            interval=spec.period,
        )

    def byte_secret(self) -> bytes:
        return self._raw

    def __repr__(self) -> str:
        return "<TOTP generator>"


def code_at(spec: TotpSpec, unix_time: float) -> str:
    return _Totp(spec).at(int(unix_time))


def window_start(spec: TotpSpec, unix_time: float) -> int:
    return int(unix_time) // spec.period * spec.period


def window_counter(spec: TotpSpec, unix_time: float) -> int:
    return int(unix_time) // spec.period


def seconds_left(spec: TotpSpec, unix_time: float) -> float:
    """Seconds until the code valid at `unix_time` expires."""
    return window_start(spec, unix_time) + spec.period - unix_time
