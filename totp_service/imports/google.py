"""Google Authenticator exports (`otpauth-migration://offline?data=…`), many accounts each.

The payload is a small protobuf (MigrationPayload); reading varints and length-delimited fields
is all it takes, so no protobuf dependency is needed.
"""

from __future__ import annotations

import base64
import binascii
from urllib.parse import parse_qs, urlsplit

from totp_service.otp import OtpFormatError, TotpSpec

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
