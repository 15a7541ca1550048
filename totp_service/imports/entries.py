"""What every importer returns (`ImportedEntry`), and the field checks they share.

An export is read completely before anything is stored: a malformed entry raises `EntryError`
naming its position, while a well-formed entry we cannot serve (HOTP, Steam, MD5, 5 digits)
comes back with `spec=None` and the reason, so the caller can refuse or skip it.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from totp_service.imports.otpauth import decode_base32
from totp_service.otp import ALGORITHMS, MAX_PERIOD_SECONDS, OtpFormatError, TotpSpec

from .errors import EntryError, ImportFileError

MAX_EXPORT_BYTES = 16 * 1024 * 1024
HOTP_REASON = "HOTP (counter-based) is not supported, only TOTP"
STEAM_REASON = "Steam Guard codes are not supported"

PasswordSource = str | Callable[[], str | None] | None
"""A password, a function that asks for one only when the file turns out to be encrypted, or none."""


@dataclass(frozen=True)
class ImportedEntry:
    position: str  # "entry 3", "line 2", "row 5": where the entry sits in the file
    kind: str  # "totp", "hotp", "steam", ... as the exporting app calls it
    issuer: str | None
    account: str | None
    spec: TotpSpec | None = None  # None when the entry cannot be served
    unsupported: str | None = None  # why not

    @property
    def label(self) -> str | None:
        """The otpauth-style label `Issuer:account` (or whichever of the two exists)."""
        if self.issuer and self.account:
            return f"{self.issuer}:{self.account}"
        return self.account or self.issuer

    def __repr__(self) -> str:
        return f"ImportedEntry({self.position!r}, {self.kind!r}, {self.issuer!r}, {self.account!r})"


def describe(position: str, issuer: str | None, account: str | None) -> str:
    """`entry 3 (GitHub:alice)`: a position a user can find in the file; names cut short and cleaned."""
    names = ":".join(printable(x) for x in (issuer, account) if x)
    return f"{position} ({names})" if names else position


def printable(text: str, limit: int = 60) -> str:
    cleaned = "".join(c if unicodedata.category(c)[0] != "C" else "?" for c in text)
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


# --- reading the file -----------------------------------------------------------------------


def decode_text(data: bytes, what: str) -> str:
    if len(data) > MAX_EXPORT_BYTES:
        raise ImportFileError(f"the {what} is larger than {MAX_EXPORT_BYTES // (1024 * 1024)} MiB")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ImportFileError(f"the {what} is not UTF-8 text") from None


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON number")


def load_json(data: bytes, what: str) -> object:
    text = decode_text(data, what)
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise ImportFileError(f"the {what} is not valid JSON ({exc.msg} at {where})") from None
    except RecursionError:
        raise ImportFileError(f"the {what} is nested too deeply") from None
    except ValueError:  # NaN/Infinity, or an integer too long to convert
        raise ImportFileError(f"the {what} holds a number that is not a plain JSON number") from None


def as_dict(value: object, where: str) -> Mapping[str, object]:
    if not isinstance(value, dict):
        raise EntryError(where, "not a JSON object")
    return value


def as_list(value: object, where: str) -> list[object]:
    if not isinstance(value, list):
        raise EntryError(where, "not a JSON list")
    return value


# --- fields ---------------------------------------------------------------------------------


def text_field(obj: Mapping[str, object], key: str, where: str) -> str | None:
    """A string field; missing, null and "" all mean absent."""
    value = obj.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise EntryError(where, f"{key} is not text")
    return value.strip() or None


def int_field(obj: Mapping[str, object], key: str, where: str, default: int) -> int:
    """A whole number; apps write 30, 30.0 or "30"; missing or null means the default."""
    value = obj.get(key)
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise EntryError(where, f"{key} is not a whole number")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**31:
        return int(value)
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit() and len(value) < 10:
        return int(value)
    raise EntryError(where, f"{key} is not a whole number")


# --- entries --------------------------------------------------------------------------------


def unsupported_entry(where: str, kind: str, issuer: str | None, account: str | None, reason: str) -> ImportedEntry:
    return ImportedEntry(where, kind, issuer, account, None, reason)


def totp_entry(
    where: str,
    *,
    secret: str | bytes | None,
    algorithm: str | None,
    digits: int,
    period: int,
    issuer: str | None,
    account: str | None,
) -> ImportedEntry:
    """A TOTP entry: refused parameters make it unsupported, a missing or broken secret is an error."""
    algo = (algorithm or "SHA1").strip().upper().replace("-", "")
    if algo not in ALGORITHMS:
        reason = f"algorithm {printable(algo, 20)!r} is not supported (SHA1, SHA256 or SHA512 only)"
        return unsupported_entry(where, "totp", issuer, account, reason)
    if not 6 <= digits <= 8:
        return unsupported_entry(where, "totp", issuer, account, f"{digits}-digit codes are not supported (6, 7 or 8)")
    if not 0 < period <= MAX_PERIOD_SECONDS:
        return unsupported_entry(where, "totp", issuer, account, f"a period of {period} s is not supported")
    if not secret:
        raise EntryError(describe(where, issuer, account), "has no secret")
    try:
        raw = secret if isinstance(secret, bytes) else decode_base32(secret)
        spec = TotpSpec(secret=raw, algorithm=algo, digits=digits, period=period, issuer=issuer, account=account)
    except OtpFormatError as exc:
        raise EntryError(describe(where, issuer, account), str(exc)) from None
    return ImportedEntry(where, "totp", issuer, account, spec)


def other_kind_entry(where: str, kind: str, issuer: str | None, account: str | None) -> ImportedEntry:
    """An entry of a kind other than TOTP: HOTP, Steam, or something newer than this code."""
    kind = kind.lower()
    reasons = {"hotp": HOTP_REASON, "steam": STEAM_REASON, "steamtotp": STEAM_REASON}
    reason = reasons.get(kind, f"{printable(kind, 20)!r} entries are not supported, only TOTP")
    return unsupported_entry(where, kind, issuer, account, reason)


def params_entry(
    where: str,
    kind: str,
    params: Mapping[str, object],
    issuer: str | None,
    account: str | None,
    *,
    secret_in: Mapping[str, object] | None = None,
    algorithm_key: str = "algorithm",
) -> ImportedEntry:
    """The common JSON shape: `secret`, an algorithm, `digits` (default 6), `period` (default 30)."""
    if kind != "totp":
        return other_kind_entry(where, kind, issuer, account)
    return totp_entry(
        where,
        secret=text_field(params if secret_in is None else secret_in, "secret", where),
        algorithm=text_field(params, algorithm_key, where),
        digits=int_field(params, "digits", where, 6),
        period=int_field(params, "period", where, 30),
        issuer=issuer,
        account=account,
    )
