"""Prometheus text exposition, written by hand: a handful of counters need no client library.

Labels never carry identifiers, run ids or codes: only route names, statuses and reasons.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter

HOLD_BUCKETS = (0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        self.requests: Counter[tuple[str, int]] = Counter()
        self.refusals: Counter[str] = Counter()
        self.codes_served = 0
        self.empty_answers = 0
        self.hold_count = 0
        self.hold_sum = 0.0
        self.hold_buckets = [0] * len(HOLD_BUCKETS)

    def request(self, route: str, status: int) -> None:
        self.requests[(route, status)] += 1

    def refused(self, reason: str) -> None:
        self.refusals[reason] += 1

    def served(self, held: float) -> None:
        self.codes_served += 1
        self.hold_count += 1
        self.hold_sum += held
        index = bisect_left(HOLD_BUCKETS, held)
        if index < len(HOLD_BUCKETS):
            self.hold_buckets[index] += 1  # cumulated when rendered

    def render(self, extra: dict[str, float] | None = None) -> str:
        lines = [
            "# HELP totp_requests_total HTTP requests by route and status.",
            "# TYPE totp_requests_total counter",
        ]
        for (route, status), count in sorted(self.requests.items()):
            lines.append(f'totp_requests_total{{route="{route}",status="{status}"}} {count}')
        lines += [
            "# HELP totp_codes_served_total Codes handed out by the pull endpoint.",
            "# TYPE totp_codes_served_total counter",
            f"totp_codes_served_total {self.codes_served}",
            "# HELP totp_empty_answers_total Pulls answered with an empty code (no fresh code within max_hold).",
            "# TYPE totp_empty_answers_total counter",
            f"totp_empty_answers_total {self.empty_answers}",
            "# HELP totp_refusals_total Pull and admin requests refused, by reason.",
            "# TYPE totp_refusals_total counter",
        ]
        for reason, count in sorted(self.refusals.items()):
            lines.append(f'totp_refusals_total{{reason="{reason}"}} {count}')
        lines += [
            "# HELP totp_hold_seconds Time a pull answer was held for a fresh window.",
            "# TYPE totp_hold_seconds histogram",
        ]
        total = 0
        for bound, count in zip(HOLD_BUCKETS, self.hold_buckets):
            total += count
            lines.append(f'totp_hold_seconds_bucket{{le="{bound}"}} {total}')
        lines += [
            f'totp_hold_seconds_bucket{{le="+Inf"}} {self.hold_count}',
            f"totp_hold_seconds_sum {self.hold_sum:.6f}",
            f"totp_hold_seconds_count {self.hold_count}",
        ]
        for name, value in (extra or {}).items():
            lines += [f"# TYPE {name} gauge" if not name.endswith("_total") else f"# TYPE {name} counter",
                      f"{name} {value}"]
        return "\n".join(lines) + "\n"
