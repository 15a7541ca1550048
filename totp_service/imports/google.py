"""Google Authenticator exports (`otpauth-migration://offline?data=…`), many accounts each.

The payload is a small protobuf (MigrationPayload); reading varints and length-delimited fields
is all it takes, so no protobuf dependency is needed.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from urllib.parse import parse_qs

from totp_service.imports.otpauth import split_uri
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


@dataclass(frozen=True)
class MigrationAccount:
    """One account of an export, before any judgement on whether we can serve it."""

    name: str | None
    issuer: str | None
    kind: str  # "totp", "hotp" or "unknown"
    algorithm: str  # "UNKNOWN" for a value this code does not know
    digits: int  # 0 for a value this code does not know
    secret: bytes = field(repr=False)


def migration_accounts(uri: str) -> list[MigrationAccount]:
    """Every account in a Google Authenticator export, HOTP ones included."""
    parts = split_uri(uri)
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
    accounts = []
    for number, value in _read_fields(payload):
        if number != 1 or not isinstance(value, bytes):
            continue
        entry: dict[int, int | bytes] = dict(_read_fields(value))
        name = _text(entry.get(2, b""))
        issuer = _text(entry.get(3, b""))
        if ":" in name and not issuer:
            issuer, _, name = name.partition(":")
        elif issuer and name.startswith(issuer + ":"):
            name = name[len(issuer) + 1 :]
        kind = {_MIGRATION_TYPE_HOTP: "hotp", _MIGRATION_TYPE_TOTP: "totp"}.get(_number(entry, 6, 2), "unknown")
        secret = entry.get(1, b"")
        accounts.append(MigrationAccount(
            name=name.strip() or None,
            issuer=issuer.strip() or None,
            kind=kind,
            algorithm=_MIGRATION_ALGORITHMS.get(_number(entry, 4, 0), "UNKNOWN"),
            digits=_MIGRATION_DIGITS.get(_number(entry, 5, 0), 0),
            secret=secret if isinstance(secret, bytes) else b"",
        ))
    if not accounts:
        raise OtpFormatError("the Google Authenticator export holds no accounts")
    return accounts


def parse_migration(uri: str) -> list[TotpSpec]:
    """Parse a Google Authenticator export, which may hold many accounts; HOTP is refused."""
    specs = []
    for account in migration_accounts(uri):
        if account.kind == "hotp":
            raise OtpFormatError(f"account {account.name!r} is HOTP (counter-based); only TOTP is supported")
        specs.append(TotpSpec(secret=account.secret, algorithm=account.algorithm, digits=account.digits, period=30,
                              issuer=account.issuer, account=account.name))
    return specs


def _number(entry: dict[int, int | bytes], field_number: int, default: int) -> int:
    value = entry.get(field_number, default)
    return value if isinstance(value, int) else -1  # a varint field sent with another wire type


def _text(value: int | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else ""
