"""FreeOTP+ JSON export (`tokens` + `tokenOrder`; shape read from FreeOTP+'s legacy Token model).

The secret is the raw key as a list of signed bytes (-128..127), as Gson writes a Java byte[].
A token whose issuer is "Steam" produces Steam Guard codes in FreeOTP+, so it is unsupported here.
"""

from __future__ import annotations

from .entries import (
    ImportedEntry,
    PasswordSource,
    as_dict,
    as_list,
    describe,
    int_field,
    load_json,
    other_kind_entry,
    text_field,
    totp_entry,
)
from .errors import EntryError

FORMAT = "freeotp"
WHAT = "FreeOTP+ export"


def looks_like(document: object) -> bool:
    return isinstance(document, dict) and isinstance(document.get("tokens"), list)


def read(data: bytes, password: PasswordSource = None) -> list[ImportedEntry]:
    export = as_dict(load_json(data, WHAT), f"the {WHAT}")
    tokens = as_list(export.get("tokens"), f"the {WHAT}'s tokens")
    return [_entry(f"token {number}", item) for number, item in enumerate(tokens, start=1)]


def _entry(where: str, item: object) -> ImportedEntry:
    token = as_dict(item, where)
    issuer = (text_field(token, "issuerAlt", where) or text_field(token, "issuerExt", where)
              or text_field(token, "issuerInt", where))
    account = text_field(token, "labelAlt", where) or text_field(token, "label", where)
    kind = (text_field(token, "type", where) or "totp").lower()
    if kind == "totp" and (text_field(token, "issuerExt", where) or "").lower() == "steam":
        kind = "steam"
    if kind != "totp":
        return other_kind_entry(where, kind, issuer, account)
    return totp_entry(
        where,
        secret=_secret(token.get("secret"), describe(where, issuer, account)),
        algorithm=text_field(token, "algo", where),
        digits=int_field(token, "digits", where, 6),
        period=int_field(token, "period", where, 30),
        issuer=issuer,
        account=account,
    )


def _secret(value: object, where: str) -> bytes | None:
    if value is None or value == []:
        return None
    if not isinstance(value, list) or not all(
        isinstance(b, int) and not isinstance(b, bool) and -128 <= b <= 255 for b in value
    ):
        raise EntryError(where, "secret is not a list of bytes")
    return bytes(b & 0xFF for b in value)
