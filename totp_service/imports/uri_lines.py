"""A text file of otpauth:// URIs and Google Authenticator otpauth-migration:// exports, one a line.

Blank lines and lines starting with # are skipped. HOTP and Steam URIs come back unsupported
(named, skippable); anything else wrong is an error naming its line.
"""

from __future__ import annotations

from dataclasses import replace
from urllib.parse import parse_qs, unquote

from totp_service.imports.google import MigrationAccount, migration_accounts
from totp_service.imports.otpauth import parse_uri, split_uri
from totp_service.otp import OtpFormatError

from .entries import ImportedEntry, decode_text, describe, other_kind_entry, totp_entry
from .errors import EntryError, ImportFileError

FORMAT = "otpauth"
WHAT = "file of otpauth URIs"
SCHEMES = ("otpauth://", "otpauth-migration://")


def looks_like(text: str) -> bool:
    first = next((line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")), "")
    return first.lower().startswith(SCHEMES)


def read(data: bytes, password: object = None) -> list[ImportedEntry]:
    entries: list[ImportedEntry] = []
    for number, line in enumerate(decode_text(data, WHAT).splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        where = f"line {number}"
        if text.lower().startswith("otpauth-migration:"):
            try:
                accounts = migration_accounts(text)
            except OtpFormatError as exc:
                raise EntryError(where, str(exc)) from None
            entries += [_migration_entry(f"{where} account {k}", a) for k, a in enumerate(accounts, start=1)]
        else:
            entries.append(uri_entry(where, text))
    if not entries:
        raise ImportFileError(f"the {WHAT} holds no URIs")
    return entries


def uri_entry(where: str, uri: str, *, issuer: str | None = None, account: str | None = None) -> ImportedEntry:
    """One otpauth URI; `issuer`/`account` fill in what the URI's label leaves out."""
    try:
        parts = split_uri(uri)
    except OtpFormatError as exc:
        raise EntryError(where, str(exc)) from None
    label_issuer, label_account = _label(parts.path, parts.query)
    issuer, account = label_issuer or issuer, label_account or account
    kind = parts.netloc.lower()
    if parts.scheme.lower() == "otpauth" and kind != "totp":
        return other_kind_entry(where, kind or "unknown", issuer, account)
    try:
        spec = replace(parse_uri(uri), issuer=issuer, account=account)
    except OtpFormatError as exc:
        raise EntryError(describe(where, issuer, account), str(exc)) from None
    return ImportedEntry(where, "totp", issuer, account, spec)


def _migration_entry(where: str, account: MigrationAccount) -> ImportedEntry:
    if account.kind != "totp":
        return other_kind_entry(where, account.kind, account.issuer, account.name)
    return totp_entry(where, secret=account.secret, algorithm=account.algorithm, digits=account.digits, period=30,
                      issuer=account.issuer, account=account.name)


def _label(path: str, query: str) -> tuple[str | None, str | None]:
    label = unquote(path.lstrip("/"))
    issuer = (parse_qs(query).get("issuer") or [""])[-1]
    if ":" in label:
        prefix, _, label = label.partition(":")
        issuer = issuer or prefix
    return issuer.strip() or None, label.strip() or None
