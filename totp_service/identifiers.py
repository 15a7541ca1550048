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
    if not _is_text(identifier) or "\ufffd" in identifier:  # U+FFFD: a path that was not UTF-8
        raise InvalidIdentifier("the identifier is not valid UTF-8 text")
    return normalize_identifier(identifier)


def _is_text(text: str) -> bool:
    """False for a string holding a lone surrogate (JSON's \\ud800, or a command-line argument that
    was not UTF-8): no store can hold it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_run_id(ref: str) -> str:
    if not ref.strip():
        raise InvalidIdentifier("the run id is empty")
    if len(ref) > MAX_IDENTIFIER_LENGTH or not _is_text(ref):
        raise InvalidIdentifier(f"the run id must be UTF-8 text of at most {MAX_IDENTIFIER_LENGTH} characters")
    return ref


def check_agent_id(agent_id: str) -> str:
    if not _AGENT_ID.fullmatch(agent_id):
        raise InvalidIdentifier(f"{agent_id!r} is not an agent id (wpid_…)")
    return agent_id
