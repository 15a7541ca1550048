"""Push mode: hand the current TOTP code to Skyvern under a `totp_identifier` while a run lives.

Why the schedule (shared/SKYVERN.md section 2): Skyvern only picks codes created at or after the
run's `started_at`, unexpired, scoped to the run or to none, newest first. So a code is pushed
when the run is created, again once it is seen running, and again as each new window opens.
Each push carries `expired_at` = end of window - min_validity_seconds (DESIGN.md), so Skyvern
stops picking a code just before it becomes useless; when that moment has already passed, the
pusher waits for the next window instead. A failed push is reported and tried again at the next
tick: it never ends the run. No code ever appears in an event, a log line or an error.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol
from urllib.parse import quote

import httpx

from totp_service import otp
from totp_service.identifiers import normalize_identifier
from totp_service.launcher.client import SkyvernClient, SkyvernError
from totp_service.launcher.request import LaunchError
from totp_service.store import (
    CLAIM_RETENTION_SECONDS,
    AuditEntry,
    SecretNotFound,
    Store,
    StoreBusy,
)

# A code needs at least this much of its window left to be worth pushing, whatever the settings say.
MIN_VALIDITY_FLOOR = 0.5
WAKE_AFTER_WINDOW = 0.05  # wake just after a window opens, not just before
STANDALONE_TASK_LIMIT = (
    "this window's code for {identifier} went to another run (single use), and Skyvern lets a standalone task "
    "run take a code pushed for another run of the same identifier (it scopes neither the lookup nor its time "
    "for these runs): this run may type that code and the site may refuse the replay; pushing the next "
    "window's code in {wait:.1f}s"
)


class CodeSourceError(LaunchError):
    """The code for the identifier cannot be read (missing secret, remote service refusing)."""


@dataclass(frozen=True)
class WindowCode:
    """One window's code. `window_id` tells windows apart; the code stays out of repr()."""

    code: str
    window_id: int
    window_end: float
    min_validity: float

    def __repr__(self) -> str:
        return f"WindowCode(window_id={self.window_id}, window_end={self.window_end})"

    @property
    def expires_at(self) -> float:
        """When Skyvern should stop picking this code."""
        return self.window_end - self.min_validity


class CodeSource(Protocol):
    identifier: str

    def current(self, now: float) -> WindowCode: ...

    def claim(self, window: WindowCode, run_id: str, scope: str) -> bool:
        """Reserve the window for this run (single use); False when another consumer had it."""
        ...

    def close(self) -> None: ...


def effective_min_validity(min_validity: float, period: float) -> float:
    """DESIGN.md's min_validity, kept below the period so a short-period secret still gets codes."""
    return max(MIN_VALIDITY_FLOOR, min(min_validity, period * 0.75))


class LocalCodeSource:
    """Codes computed from the local encrypted store; windows are claimed there when single-use."""

    def __init__(self, store: Store, identifier: str, *, min_validity: float, single_use: bool = True):
        self.identifier = normalize_identifier(identifier)
        self._store = store
        try:
            self._spec = store.get_spec(self.identifier)
            meta = store.get_meta(self.identifier)
        except SecretNotFound:
            raise CodeSourceError(f"no secret for {self.identifier!r} in the store {store.location}") from None
        chosen = meta.min_validity_seconds if meta.min_validity_seconds is not None else min_validity
        self.min_validity = effective_min_validity(chosen, self._spec.period)
        self.single_use = single_use
        if single_use:  # `serve` prunes old claims hourly; a store only the CLI pushes from is pruned here
            try:
                store.prune_claims(time.time() - CLAIM_RETENTION_SECONDS)
            except StoreBusy:  # busy: the next launch (or the service) prunes
                pass

    def __repr__(self) -> str:
        return f"LocalCodeSource({self.identifier!r})"

    def current(self, now: float) -> WindowCode:
        start = otp.window_start(self._spec, now)
        return WindowCode(otp.code_at(self._spec, now), otp.window_counter(self._spec, now),
                          float(start + self._spec.period), self.min_validity)

    def claim(self, window: WindowCode, run_id: str, scope: str) -> bool:
        entry = AuditEntry(outcome="pushed", identifier=self.identifier, route="push", client="launcher",
                           **{scope: run_id}, detail=f"window {window.window_id}")
        claim = (self.identifier, window.window_id) if self.single_use else None
        return self._store.write_audit([(entry, claim)])[0]

    def close(self) -> None:
        pass


class RemoteCodeSource:
    """Codes read from another totp-service's `GET /v1/codes/{identifier}` with a reader token."""

    def __init__(self, base_url: str, token: str, identifier: str, *, min_validity: float, timeout: float = 10.0):
        if not base_url or not base_url.startswith(("http://", "https://")):
            raise CodeSourceError("launcher.remote_url must be the http(s) URL of a totp-service")
        if not token:
            raise CodeSourceError("launcher.reader_token (or TOTP_SERVICE_READER_TOKEN) is needed for remote codes")
        self.identifier = normalize_identifier(identifier)
        self._min_validity = min_validity
        self._url = f"{base_url.rstrip('/')}/v1/codes/{quote(self.identifier, safe='')}"
        self._http = httpx.Client(timeout=timeout, headers={"authorization": f"Bearer {token}"},
                                  follow_redirects=False, trust_env=False)

    def __repr__(self) -> str:
        return f"RemoteCodeSource({self.identifier!r})"

    def current(self, now: float) -> WindowCode:
        try:
            response = self._http.get(self._url)
        except httpx.HTTPError as exc:
            raise CodeSourceError(f"the code service cannot be reached ({type(exc).__name__})") from None
        if response.status_code == 404:
            raise CodeSourceError(f"the code service holds no secret for {self.identifier!r}")
        if response.status_code in (401, 403):
            raise CodeSourceError(f"the code service refused the reader token ({response.status_code})")
        if response.status_code != 200:
            raise CodeSourceError(f"the code service answered {response.status_code}")
        try:
            data = response.json()
            code = data.get("code") or data.get("verification_code")
            seconds_left = float(data["seconds_left"])
        except (ValueError, KeyError, TypeError, AttributeError):
            raise CodeSourceError("the code service answered something that is not a code") from None
        if not isinstance(code, str) or not code:
            raise CodeSourceError("the code service answered an empty code")
        window_end = time.time() + seconds_left  # our clock: the service's may differ
        period = float(data.get("period") or 30)
        return WindowCode(code, _window_id(data.get("expires_at"), window_end), window_end,
                          effective_min_validity(self._min_validity, period))

    def claim(self, window: WindowCode, run_id: str, scope: str) -> bool:
        return True  # the remote service keeps its own single-use record when it hands the code out

    def close(self) -> None:
        self._http.close()


def _window_id(expires_at: Any, fallback: float) -> int:
    """The window's end on the service's clock (exact), else ours rounded."""
    if isinstance(expires_at, str):
        try:
            moment = datetime.fromisoformat(expires_at.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=timezone.utc)
            return int(moment.timestamp())
    return int(round(fallback))


@dataclass(frozen=True)
class PushEvent:
    """What the pusher did; safe to log (no code)."""

    kind: str  # "pushed", "push_failed", "waiting", "skipped"
    message: str
    pushes: int


class Pusher:
    """Decides when to push and pushes; call `tick` from the follower's loop."""

    def __init__(
        self,
        client: SkyvernClient,
        source: CodeSource,
        run_id: str,
        run_type: str,
        *,
        on_event: Callable[[PushEvent], None] | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self._client = client
        self._source = source
        self.run_id = run_id
        self.scope = "workflow_run_id" if run_type == "workflow_run" or run_id.startswith("wr_") else "task_id"
        # engine skyvern-1.0 (and the CUA engines): no workflow run behind the task, so no started_at anchor
        self.standalone_task = self.scope == "task_id" and not run_id.startswith("tsk_v2_") and run_type != "task_v2"
        self._on_event = on_event or (lambda event: None)
        self._clock = clock
        self.pushes = 0
        self.failures = 0
        self._created_push_done = False
        self._started_push_done = False
        self._last_window: int | None = None
        self._claimed: set[int] = set()
        self._lost: set[int] = set()

    def __repr__(self) -> str:
        return f"Pusher(run_id={self.run_id!r}, pushes={self.pushes})"

    def tick(self, run: dict[str, Any] | None, retry_in: float) -> float:
        """Push if due; return how many seconds until the pusher next needs to run."""
        started = bool(run and (run.get("started_at") or run.get("status") in ("running", "paused")))
        now = self._clock()
        try:
            window = self._source.current(now)
        except CodeSourceError as exc:
            self.failures += 1
            self._emit("push_failed", f"cannot read the code: {exc}")
            return retry_in
        next_window = max(window.window_end - now, 0.0) + WAKE_AFTER_WINDOW
        due = (not self._created_push_done) or (started and not self._started_push_done) or (
            started and window.window_id != self._last_window
        )
        if not due or window.window_id in self._lost:
            return next_window
        if now >= window.expires_at:
            if window.window_id not in self._lost:
                self._lost.add(window.window_id)
                self._emit("waiting", f"current code has under {window.min_validity:g}s left; "
                                      f"pushing the next one in {next_window:.1f}s")
            return next_window
        if window.window_id not in self._claimed:
            if not self._source.claim(window, self.run_id, self.scope):
                self._lost.add(window.window_id)
                if started and self.standalone_task:
                    self._emit("skipped", STANDALONE_TASK_LIMIT.format(identifier=self._source.identifier,
                                                                       wait=next_window))
                else:
                    self._emit("skipped", "this window's code already went to another consumer (single use); "
                                          f"waiting {next_window:.1f}s for the next one")
                return next_window
            self._claimed.add(window.window_id)
        if not window.code:  # never push an empty code
            return retry_in
        try:
            self._client.push_code(
                self._source.identifier,
                window.code,
                expired_at=datetime.fromtimestamp(window.expires_at, timezone.utc),
                **{self.scope: self.run_id},
            )
        except SkyvernError as exc:
            self.failures += 1
            self._emit("push_failed", f"push failed, will retry: {exc}")
            return retry_in
        self.pushes += 1
        self._created_push_done = True
        if started:
            self._started_push_done = True
            self._last_window = window.window_id
        expiry = datetime.fromtimestamp(window.expires_at, timezone.utc).strftime("%H:%M:%S")
        when = "run running" if started else "run not started yet"
        self._emit("pushed", f"pushed code #{self.pushes} ({when}; Skyvern may use it until {expiry}Z)")
        return next_window

    def _emit(self, kind: str, message: str) -> None:
        self._on_event(PushEvent(kind, message, self.pushes))
