"""The totp_url Skyvern pulls codes from: `<public_url>/totp/<identifier>?k=<token>`."""

from __future__ import annotations

from urllib.parse import quote

from totp_service.config import Settings
from totp_service.identifiers import check_identifier
from totp_service.store.open import load_master_key


def totp_url(settings_or_base: Settings | str, identifier: str | None) -> str:
    """`<public_url>/totp/<identifier, URL-encoded>?k=<token>`: what Skyvern pulls codes from.

    The token (derived from the master key: store/crypto.py) is what makes a captured signed
    pull useless for any other identifier; identifier None gives the bound form `/totp?k=...`
    (run and agent bindings). A bare base URL (a str) has no key, so no token: such a URL is
    refused while server.require_url_token is on.
    """
    if isinstance(settings_or_base, str):
        return _url(settings_or_base, identifier, None)
    return _url(settings_or_base.server.effective_public_url, identifier, url_token(settings_or_base, identifier))


def url_token(settings: Settings, identifier: str | None) -> str:
    """The ?k= token of an identifier's totp_url (None: the bound form), from the configured master key."""
    return load_master_key(settings).url_token(None if identifier is None else check_identifier(identifier))


def _url(base: str, identifier: str | None, token: str | None) -> str:
    path = "/totp" if identifier is None else f"/totp/{quote(check_identifier(identifier), safe='')}"
    return f"{base.rstrip('/')}{path}" + (f"?k={token}" if token else "")
