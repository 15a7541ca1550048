"""otpauth:// URIs and bare base32 secrets, as authenticator apps and sites hand them out.

Strict about what makes a code wrong (HOTP, unknown algorithm, digits, period), lenient about
what apps forgive (case, spaces, padding, percent-encoded labels). No message holds the secret.
"""

from __future__ import annotations

import base64
import binascii
import re
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit

from totp_service.otp import OtpFormatError, TotpSpec


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


def split_uri(uri: str) -> SplitResult:
    """urlsplit, with its ValueError for a malformed netloc (`otpauth://[x`) as an OtpFormatError."""
    try:
        return urlsplit(uri.strip())
    except ValueError:
        raise OtpFormatError("not a valid URI (its host part is malformed)") from None


def parse_uri(uri: str) -> TotpSpec:
    """Parse `otpauth://totp/Issuer:account?secret=…&issuer=…&algorithm=…&digits=…&period=…`."""
    parts = split_uri(uri)
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
