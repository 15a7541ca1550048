"""TOTP identifiers as Skyvern compares them, so the CLI, the store, the pull endpoint and
Skyvern's push store all agree on whose code is meant."""

from __future__ import annotations

import re

_EMAIL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+$")
_AGENT_ID = re.compile(r"^wpid_[A-Za-z0-9_-]+$")
MAX_IDENTIFIER_LENGTH = 512


class InvalidIdentifier(ValueError):
    """An identifier or agent id that cannot be stored; the message says why."""


def normalize_identifier(identifier: str) -> str:
    """Skyvern's rule: an email is trimmed and case-folded; anything else is kept as given."""
    stripped = identifier.strip()
    if _EMAIL.fullmatch(stripped):
        return stripped.casefold()
    return identifier


def check_identifier(identifier: str) -> str:
    """Refuse what no store should hold; return the normalised identifier."""
    if not identifier or not identifier.strip():
        raise InvalidIdentifier("the identifier is empty")
    if len(identifier) > MAX_IDENTIFIER_LENGTH or any(ord(c) < 32 for c in identifier):
        raise InvalidIdentifier("the identifier is too long or holds control characters")
    return normalize_identifier(identifier)


def check_agent_id(agent_id: str) -> str:
    if not _AGENT_ID.fullmatch(agent_id):
        raise InvalidIdentifier(f"{agent_id!r} is not an agent id (wpid_…)")
    return agent_id
