"""Every secret format users hold, turned into one validated `TotpSpec`; codes and window timing.

Parsing is strict about what makes a code wrong (HOTP, unknown algorithm, digits, period) and
lenient about what authenticator apps forgive (case, spaces, padding, percent-encoded labels).
Error messages never contain the secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar
from urllib.parse import parse_qs, unquote, urlsplit

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


# --- base32 and otpauth URIs -------------------------------------------------------------


def decode_base32(text: str) -> bytes:
    """Decode a base32 secret the way authenticator apps do: any case, spaces, dashes, no padding."""
    cleaned = re.sub(r"[\s\-]", "", text).upper().rstrip("=")
    if not cleaned:
        raise OtpFormatError("the secret is empty")
    if not re.fullmatch(r"[A-Z2-7]+", cleaned):
        raise OtpFormatError("the secret is not valid base32 (letters A-Z and digits 2-7 only)")
    cleaned += "=" * (-len(cleaned) % 8)
    try:
        return base64.b32decode(cleaned)
    except (binascii.Error, ValueError):
        raise OtpFormatError("the secret is not valid base32 (wrong length)") from None


def _parse_int(value: str, name: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise OtpFormatError(f"{name} must be a whole number (got {value!r})") from None


def spec_from_base32(
    secret: str,
    *,
    algorithm: str = "SHA1",
    digits: int = 6,
    period: int = 30,
    issuer: str | None = None,
    account: str | None = None,
) -> TotpSpec:
    return TotpSpec(
        secret=decode_base32(secret),
        algorithm=algorithm.strip().upper().replace("-", ""),
        digits=digits,
        period=period,
        issuer=issuer,
        account=account,
    )


def parse_uri(uri: str) -> TotpSpec:
    """Parse `otpauth://totp/Issuer:account?secret=…&issuer=…&algorithm=…&digits=…&period=…`."""
    uri = uri.strip()
    parts = urlsplit(uri)
    if parts.scheme.lower() != "otpauth":
        raise OtpFormatError("not an otpauth URI (it must start with otpauth://totp/)")
    kind = parts.netloc.lower()
    if kind == "hotp":
        raise OtpFormatError("HOTP (counter-based) secrets are not supported, only TOTP")
    if kind != "totp":
        raise OtpFormatError(f"unknown otpauth type {parts.netloc!r} (only totp is supported)")
    params = {k.lower(): v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    if "secret" not in params:
        raise OtpFormatError("the otpauth URI has no secret parameter")
    label = unquote(parts.path.lstrip("/"))
    issuer: str | None = params.get("issuer") or None
    account: str | None = label or None
    if ":" in label:
        label_issuer, _, account_part = label.partition(":")
        issuer = issuer or label_issuer.strip() or None
        account = account_part.strip() or None
    return spec_from_base32(
        params["secret"],
        algorithm=params.get("algorithm", "SHA1") or "SHA1",
        digits=_parse_int(params.get("digits", "6") or "6", "digits"),
        period=_parse_int(params.get("period", "30") or "30", "period"),
        issuer=issuer,
        account=account,
    )


# --- Google Authenticator export (otpauth-migration://offline?data=…) ----------------------
# The payload is a small protobuf (MigrationPayload); reading varints and length-delimited
# fields is all it takes, so no protobuf dependency is needed.

_MIGRATION_ALGORITHMS = {0: "SHA1", 1: "SHA1", 2: "SHA256", 3: "SHA512", 4: "MD5"}
_MIGRATION_DIGITS = {0: 6, 1: 6, 2: 8}
_MIGRATION_TYPE_HOTP, _MIGRATION_TYPE_TOTP = 1, 2


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise OtpFormatError("the migration data is truncated or corrupt")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _read_fields(data: bytes) -> list[tuple[int, int | bytes]]:
    fields: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(data, pos)
            fields.append((number, value))
        elif wire == 2:
            length, pos = _read_varint(data, pos)
            if pos + length > len(data):
                raise OtpFormatError("the migration data is truncated or corrupt")
            fields.append((number, data[pos : pos + length]))
            pos += length
        elif wire == 5:
            pos += 4
        elif wire == 1:
            pos += 8
        else:
            raise OtpFormatError("the migration data is truncated or corrupt")
    return fields


def parse_migration(uri: str) -> list[TotpSpec]:
    """Parse a Google Authenticator export, which may hold many accounts."""
    parts = urlsplit(uri.strip())
    if parts.scheme.lower() != "otpauth-migration":
        raise OtpFormatError("not a Google Authenticator export (otpauth-migration://offline?data=…)")
    data_values = parse_qs(parts.query).get("data")
    if not data_values:
        raise OtpFormatError("the Google Authenticator export has no data parameter")
    raw = data_values[-1].replace(" ", "+")
    try:
        payload = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise OtpFormatError("the Google Authenticator export's data is not valid base64") from None
    specs: list[TotpSpec] = []
    for number, value in _read_fields(payload):
        if number != 1 or not isinstance(value, bytes):
            continue
        entry: dict[int, int | bytes] = dict(_read_fields(value))
        name = _text(entry.get(2, b""))
        issuer = _text(entry.get(3, b""))
        if entry.get(6, _MIGRATION_TYPE_TOTP) == _MIGRATION_TYPE_HOTP:
            raise OtpFormatError(f"account {name!r} is HOTP (counter-based); only TOTP is supported")
        algorithm = _MIGRATION_ALGORITHMS.get(int(entry.get(4, 0)), "UNKNOWN")  # type: ignore[arg-type]
        digits = _MIGRATION_DIGITS.get(int(entry.get(5, 0)), 0)  # type: ignore[arg-type]
        if ":" in name and not issuer:
            issuer, _, name = name.partition(":")
        elif issuer and name.startswith(issuer + ":"):
            name = name[len(issuer) + 1 :]
        secret = entry.get(1, b"")
        specs.append(
            TotpSpec(
                secret=secret if isinstance(secret, bytes) else b"",
                algorithm=algorithm,
                digits=digits,
                period=30,
                issuer=issuer.strip() or None,
                account=name.strip() or None,
            )
        )
    if not specs:
        raise OtpFormatError("the Google Authenticator export holds no accounts")
    return specs


def _text(value: int | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else ""


def parse_line(line: str) -> list[TotpSpec]:
    """One line of an import file: an otpauth URI or a Google Authenticator export."""
    text = line.strip()
    if text.lower().startswith("otpauth-migration:"):
        return parse_migration(text)
    return [parse_uri(text)]


def parse_any(text: str, **params: object) -> TotpSpec:
    """A URI, or a bare base32 secret with optional parameters (what `--stdin` accepts)."""
    text = text.strip()
    if text.lower().startswith("otpauth"):
        specs = parse_line(text)
        if len(specs) != 1:
            raise OtpFormatError(f"the export holds {len(specs)} accounts; use `secret import` for several")
        return specs[0]
    return spec_from_base32(text, **params)  # type: ignore[arg-type]


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
