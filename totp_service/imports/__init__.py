"""Where secrets come in: one module per format people hold, behind one entry.

`parse_any` takes what `secret add` and the admin API accept (a URI or a base32 secret with
parameters); `parse_line` one line of an import file. Every parser raises `OtpFormatError` with a
message that names the problem and never holds the secret.

`read_export` takes a whole export file (Aegis, 2FAS, andOTP, Bitwarden, FreeOTP+, 2FAuth, lines
of otpauth URIs), finds its format with `detect`, and returns every entry; whatever the bytes, it
raises only `ImportFileError` (a subclass of `OtpFormatError`) and its subclasses.

May import: `otp` (and the standard library, `cryptography`). Nothing above it.
"""

from __future__ import annotations

from totp_service.imports.detect import FORMAT_NAMES, ReadExport, detect, read_export
from totp_service.imports.entries import MAX_EXPORT_BYTES, ImportedEntry, PasswordSource, describe, printable
from totp_service.imports.errors import EntryError, ImportFileError, PasswordRequired, UnknownFormat, WrongPassword
from totp_service.imports.google import parse_migration
from totp_service.imports.otpauth import decode_base32, parse_uri, spec_from_base32
from totp_service.otp import OtpFormatError, TotpSpec

__all__ = [
    "decode_base32", "describe", "detect", "EntryError", "FORMAT_NAMES", "ImportedEntry", "ImportFileError",
    "MAX_EXPORT_BYTES", "OtpFormatError", "parse_any", "parse_line", "parse_migration", "parse_uri",
    "PasswordRequired", "PasswordSource", "printable", "read_export", "ReadExport", "spec_from_base32",
    "UnknownFormat", "WrongPassword",
]


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
