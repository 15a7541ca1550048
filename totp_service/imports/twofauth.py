"""2FAuth JSON export (`{"app": "2fauth_v…", "schema": 1, "data": [...]}`; shape read from
2FAuth's TwoFAccountExportCollection/Resource). `otp_type` is totp, hotp or steamtotp."""

from __future__ import annotations

from .entries import (
    ImportedEntry,
    PasswordSource,
    as_dict,
    as_list,
    load_json,
    params_entry,
    text_field,
)
from .errors import ImportFileError

FORMAT = "2fauth"
WHAT = "2FAuth export"
SCHEMA = 1


def looks_like(document: object) -> bool:
    return (isinstance(document, dict) and isinstance(document.get("app"), str)
            and document["app"].lower().startswith("2fauth") and "data" in document)


def read(data: bytes, password: PasswordSource = None) -> list[ImportedEntry]:
    export = as_dict(load_json(data, WHAT), f"the {WHAT}")
    schema = export.get("schema")
    if schema is not None and schema != SCHEMA:
        shown = schema if isinstance(schema, int) else "of another kind"
        raise ImportFileError(f"the {WHAT} has schema {shown}; this importer reads schema {SCHEMA}")
    items = as_list(export.get("data"), f"the {WHAT}'s data")
    return [_entry(f"account {number}", item) for number, item in enumerate(items, start=1)]


def _entry(where: str, item: object) -> ImportedEntry:
    account_fields = as_dict(item, where)
    issuer = text_field(account_fields, "service", where)
    account = text_field(account_fields, "account", where)
    kind = (text_field(account_fields, "otp_type", where) or "totp").lower()
    return params_entry(where, "steam" if kind == "steamtotp" else kind, account_fields, issuer, account)
