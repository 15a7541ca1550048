"""Refusals of unauthenticated pulls: throttled per client, audited in aggregate.

Why: a pull refused before its signature checks out (bad or missing signature, stale timestamp,
oversize body) costs an attacker nothing, and one audit row per such request let a single
client fill the disk. Here each client gets `limit` such refusals per `window` seconds; past that
its refusals are answered 429 with `Retry-After` (its signed pulls are still answered: the
signature is checked first, so a shared proxy address cannot lock Skyvern out). The audit keeps
the first refusal of each (client, reason) per window as a row of its own, at once, and the rest
as one row with their count when the window closes: at most two rows per client and reason per
window, however fast the flood. Memory is bounded too: past `max_clients` addresses in one
window, the others are counted together under the client `*`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from totp_service.service.audit import AuditRow

MAX_CLIENTS = 4096
OTHER_CLIENTS = "*"


@dataclass
class _Tally:
    count: int  # refusals after the first (the first was audited at once)
    first_at: float
    last_at: float
    identifier: str | None
    route: str
    detail: str


class RefusalGuard:
    """Counts unauthenticated refusals per client and window; one per service (ServiceState)."""

    def __init__(self, limit: int, window: float, *, max_clients: int = MAX_CLIENTS) -> None:
        self.limit, self.window, self.max_clients = limit, window, max_clients
        self._window_started = 0.0
        self._per_client: dict[str, int] = {}
        self._tallies: dict[tuple[str, str], _Tally] = {}
        self.throttled = 0  # refusals answered 429 (for the metrics)
        self.aggregated = 0  # refusals counted into an aggregate row instead of a row of their own

    def refuse(self, client: str | None, reason: str, identifier: str | None, route: str,
               detail: str, now: float | None = None) -> tuple[AuditRow | None, int | None]:
        """Count one refusal: the audit row to write at once (or None: it is tallied), and the
        Retry-After seconds when this client is over its limit (None: answer the refusal as is)."""
        now = time.time() if now is None else now
        self._roll(now)
        address = client or "-"
        if address not in self._per_client and len(self._per_client) >= self.max_clients:
            address = OTHER_CLIENTS
        seen = self._per_client.get(address, 0) + 1
        self._per_client[address] = seen
        retry_after = None
        if seen > self.limit:
            self.throttled += 1
            retry_after = max(1, math.ceil(self._window_started + self.window - now))
        key = (address, reason)
        tally = self._tallies.get(key)
        if tally is None:
            self._tallies[key] = _Tally(0, now, now, identifier, route, detail)
            return AuditRow(now, identifier, None, None, None, address, route, f"refused:{reason}", detail), retry_after
        tally.count += 1
        tally.last_at = now
        if tally.identifier != identifier:
            tally.identifier = None  # several identifiers: the row names none
        self.aggregated += 1
        return None, retry_after

    def drain(self, now: float | None = None) -> list[AuditRow]:
        """The aggregate rows of a window that has closed (all of them when `now` is None: at shutdown)."""
        if now is not None and now < self._window_started + self.window:
            return []
        rows = [
            AuditRow(t.last_at, t.identifier, None, None, None, client, t.route, f"refused:{reason}",
                     f"{t.count} more like this from this client in {t.last_at - t.first_at:.0f} s: {t.detail}",
                     t.count)
            for (client, reason), t in self._tallies.items() if t.count
        ]
        self._tallies.clear()
        self._per_client.clear()
        self._window_started = time.time() if now is None else now
        return rows

    def _roll(self, now: float) -> None:
        if now >= self._window_started + self.window and not self._tallies:
            self._per_client.clear()
            self._window_started = now
