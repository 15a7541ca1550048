"""The Skyvern simulator's options and the small helpers every part of it shares (Skyvern's
timestamp and identifier rules, as shared/SKYVERN.md states them)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Final

FINAL_STATUSES: Final = frozenset({"completed", "failed", "terminated", "canceled", "timed_out"})
PROXY_LOCATIONS: Final = frozenset(
    {
        "RESIDENTIAL", "RESIDENTIAL_ES", "RESIDENTIAL_IE", "RESIDENTIAL_GB", "RESIDENTIAL_IN",
        "RESIDENTIAL_JP", "RESIDENTIAL_FR", "RESIDENTIAL_DE", "RESIDENTIAL_NZ", "RESIDENTIAL_PH",
        "RESIDENTIAL_KR", "RESIDENTIAL_SA", "RESIDENTIAL_ZA", "RESIDENTIAL_AR", "RESIDENTIAL_AU",
        "RESIDENTIAL_BR", "RESIDENTIAL_TR", "RESIDENTIAL_CA", "RESIDENTIAL_MX", "RESIDENTIAL_IT",
        "RESIDENTIAL_NL", "RESIDENTIAL_ISP", "NONE", "US-CA", "US-NY", "US-TX", "US-FL", "US-WA",
    }
)
TASK_ENGINES: Final = frozenset({"skyvern-1.0", "skyvern-2.0", "skyvern-3.0", "openai-cua", "anthropic-cua",
                                 "ui-tars", "yutori-navigator"})
BROWSER_TYPES: Final = ("msedge", "chrome", "stealth-chromium")
MAX_FILE_IDS: Final = 50
_SKYVERN_EMAIL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+$")
_DIGESTS: Final = {"SHA1": hashlib.sha1, "SHA256": hashlib.sha256, "SHA512": hashlib.sha512}


@dataclass(frozen=True)
class SimulatorOptions:
    """Timings (seconds) and behaviour switches; Skyvern's real values are in the comments."""

    poll_interval: float = 1.0  # Skyvern: ~10 s between polls
    first_poll_delay: float = 0.2  # Skyvern: 10 s before the first poll
    queue_delay: float = 0.1  # created/queued -> running
    typing_delay: float = 1.0  # code received -> code typed (an LLM step sits in between)
    code_wait_timeout: float = 60.0  # Skyvern: 15 min
    totp_request_timeout: float = 5.0  # Skyvern: 30 s per totp_url request
    totp_retry_delay: float = 0.2  # Skyvern: 5 s between attempts of one failed request
    totp_attempts: int = 3  # Skyvern: 3 attempts per poll on connection errors/timeouts
    totp_lifespan: float = 600.0  # Skyvern: TOTP_LIFESPAN_MINUTES = 10; older pushed codes are never taken
    block_private_totp_url: bool = False  # True = behave like cloud Skyvern (400 blocked host)
    reject_replayed_codes: bool = True  # the "site" refuses a code already used in its window
    app_url: str = "https://app.skyvern.com"


def _now() -> datetime:
    return datetime.now(timezone.utc)


def iso(moment: datetime | None) -> str | None:
    """Skyvern serialises naive UTC timestamps (no zone suffix)."""
    return None if moment is None else moment.astimezone(timezone.utc).replace(tzinfo=None).isoformat()


def normalize_identifier(identifier: str) -> str:
    """Skyvern matches email-like identifiers trimmed and case-folded, others as given."""
    trimmed = identifier.strip()
    return trimmed.casefold() if _SKYVERN_EMAIL.fullmatch(trimmed) else identifier


def parse_timestamp(value: str) -> datetime:
    """ISO 8601 with ``Z``, an offset, or no zone (taken as UTC)."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    moment = datetime.fromisoformat(text)
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)
