"""Bitwarden unencrypted exports: JSON (`items[].login.totp`) and CSV (`login_totp` column).

Bitwarden keeps a TOTP as an otpauth URI, a bare base32 secret (SHA1, 6 digits, 30 s) or
`steam://SECRET`. Items without one are ordinary logins and are passed over. Encrypted
(account- or password-protected) exports are refused: they need Bitwarden's own keys.
"""

from __future__ import annotations

import csv
import io

from .entries import (
    ImportedEntry,
    PasswordSource,
    as_dict,
    as_list,
    decode_text,
    load_json,
    other_kind_entry,
    text_field,
    totp_entry,
)
from .errors import ImportFileError
from .uri_lines import uri_entry

FORMAT_JSON, FORMAT_CSV = "bitwarden", "bitwarden-csv"
WHAT_JSON, WHAT_CSV = "Bitwarden JSON export", "Bitwarden CSV export"
TOTP_COLUMN = "login_totp"


def looks_like(document: object) -> bool:
    return isinstance(document, dict) and isinstance(document.get("items"), list) or (
        isinstance(document, dict) and document.get("encrypted") is True and "data" in document)


def looks_like_csv(text: str) -> bool:
    header = text.lstrip("\ufeff").split("\n", 1)[0]
    return TOTP_COLUMN in [column.strip().strip('"') for column in header.split(",")]


def read(data: bytes, password: PasswordSource = None) -> list[ImportedEntry]:
    export = as_dict(load_json(data, WHAT_JSON), f"the {WHAT_JSON}")
    if export.get("encrypted") is True:
        raise ImportFileError(
            f"this is an encrypted {WHAT_JSON}; it opens only with Bitwarden's keys: import it into "
            "Bitwarden, or export the vault again as .json (unencrypted) and delete that file after importing"
        )
    entries = []
    for number, item in enumerate(as_list(export.get("items"), f"the {WHAT_JSON}'s items"), start=1):
        where = f"item {number}"
        fields = as_dict(item, where)
        login = fields.get("login")
        if not isinstance(login, dict):
            continue  # a card, identity or note: nothing to import
        entry = totp_value_entry(where, text_field(login, "totp", where), text_field(fields, "name", where),
                                 text_field(login, "username", where))
        if entry is not None:
            entries.append(entry)
    return entries


def read_csv(data: bytes, password: PasswordSource = None) -> list[ImportedEntry]:
    text = decode_text(data, WHAT_CSV)
    entries = []
    try:
        rows = csv.DictReader(io.StringIO(text, newline=""))
        if TOTP_COLUMN not in (rows.fieldnames or []):
            raise ImportFileError(f"the {WHAT_CSV} has no {TOTP_COLUMN} column")
        for number, row in enumerate(rows, start=2):  # row 1 is the header, as a spreadsheet counts
            where = f"row {number}"
            value = {k: v for k, v in row.items() if isinstance(k, str) and isinstance(v, str)}
            entry = totp_value_entry(where, text_field(value, TOTP_COLUMN, where), text_field(value, "name", where),
                                     text_field(value, "login_username", where))
            if entry is not None:
                entries.append(entry)
    except csv.Error as exc:
        raise ImportFileError(f"the {WHAT_CSV} is not valid CSV ({exc})") from None
    return entries


def totp_value_entry(where: str, totp: str | None, name: str | None, username: str | None) -> ImportedEntry | None:
    """Bitwarden's three spellings of a TOTP secret; None when the login has none."""
    if not totp:
        return None
    lowered = totp.lower()
    if lowered.startswith("steam://"):
        return other_kind_entry(where, "steam", name, username)
    if lowered.startswith("otpauth"):
        return uri_entry(where, totp, issuer=name, account=username)
    return totp_entry(where, secret=totp, algorithm="SHA1", digits=6, period=30, issuer=name, account=username)
