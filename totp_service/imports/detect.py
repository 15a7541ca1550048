"""One entry for every export format: find the format from the bytes, then read all entries.

`read_export` raises only `ImportFileError` (and its subclasses), whatever the input, so a
caller can hand it arbitrary bytes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from . import aegis, andotp, bitwarden, freeotp, twofas, twofauth, uri_lines
from .entries import MAX_EXPORT_BYTES, ImportedEntry, PasswordSource
from .errors import ImportFileError, UnknownFormat

Reader = Callable[[bytes, PasswordSource], list[ImportedEntry]]

READERS: dict[str, Reader] = {
    uri_lines.FORMAT: uri_lines.read,
    aegis.FORMAT: aegis.read,
    twofas.FORMAT: twofas.read,
    andotp.FORMAT: andotp.read,
    bitwarden.FORMAT_JSON: bitwarden.read,
    bitwarden.FORMAT_CSV: bitwarden.read_csv,
    freeotp.FORMAT: freeotp.read,
    twofauth.FORMAT: twofauth.read,
}
FORMAT_NAMES = tuple(READERS)
# JSON shapes, most specific first: each test looks at top-level keys only
_JSON_SHAPES = (
    (aegis.FORMAT, aegis.looks_like),
    (twofas.FORMAT, twofas.looks_like),
    (twofauth.FORMAT, twofauth.looks_like),
    (freeotp.FORMAT, freeotp.looks_like),
    (bitwarden.FORMAT_JSON, bitwarden.looks_like),
    (andotp.FORMAT, andotp.looks_like),
)


@dataclass(frozen=True)
class ReadExport:
    format: str
    entries: list[ImportedEntry]


def detect(data: bytes) -> str:
    """The format's name (one of FORMAT_NAMES), or UnknownFormat saying what was tried."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        if andotp.looks_encrypted(data):
            return andotp.FORMAT
        raise UnknownFormat(_unknown("binary data that is not an encrypted andOTP backup")) from None
    stripped = text.lstrip()
    if stripped[:1] in ("{", "["):
        try:
            document = json.loads(stripped)
        except (ValueError, RecursionError):
            raise UnknownFormat(_unknown("text that starts like JSON but is not valid JSON")) from None
        for name, looks_like in _JSON_SHAPES:
            if looks_like(document):
                return name
        raise UnknownFormat(_unknown("JSON of a shape no supported app writes"))
    if uri_lines.looks_like(text):
        return uri_lines.FORMAT
    if bitwarden.looks_like_csv(text):
        return bitwarden.FORMAT_CSV
    if andotp.looks_encrypted(data):
        return andotp.FORMAT
    raise UnknownFormat(_unknown("text that is neither JSON, otpauth URIs nor a Bitwarden CSV"))


def read_export(data: bytes, format: str | None = None, password: PasswordSource = None) -> ReadExport:
    """Every entry of the export; nothing is stored here, so a caller can review first."""
    if len(data) > MAX_EXPORT_BYTES:
        raise ImportFileError(f"the file is larger than {MAX_EXPORT_BYTES // (1024 * 1024)} MiB; no export is that big")
    name = format or detect(data)
    reader = READERS.get(name)
    if reader is None:
        raise UnknownFormat(f"unknown format {name!r} (one of: {', '.join(FORMAT_NAMES)})")
    try:
        entries = reader(data, password)
    except ImportFileError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, RecursionError, MemoryError, OverflowError) as exc:
        # a parser bug must not turn a user's bad file into a stack trace; the type says which
        raise ImportFileError(f"the file cannot be read as {name} ({type(exc).__name__})") from None
    if not entries:
        raise ImportFileError(f"the {name} export holds no TOTP entries")
    return ReadExport(name, entries)


def _unknown(what: str) -> str:
    return f"the file is {what}; give --format (one of: {', '.join(FORMAT_NAMES)})"
