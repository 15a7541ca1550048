"""The Skyvern simulator's state and run lifecycle: secrets, pushed codes, runs, polling totp_url.

Why: tests and the offline demo need a Skyvern that behaves like shared/SKYVERN.md says (signed
totp_url polls, pushed codes counted only from ``started_at``, strict code checking at typing
time) and that finishes in seconds. The HTTP layer lives in ``app.py``, request validation in
``requests.py``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import secrets as _secrets
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import httpx
import pyotp

from totp_service.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, compact_json, sign
from totp_service.simulator.options import (
    _DIGESTS,
    FINAL_STATUSES,
    SimulatorOptions,
    _now,
    iso,
    normalize_identifier,
)

# -- records ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimSecret:
    """A TOTP secret the simulated login page checks codes against."""

    secret: str
    digits: int = 6
    period: int = 30
    algorithm: str = "SHA1"
    agent_id: str | None = None
    totp_identifier: str | None = None
    totp_url_param: str | None = None  # agent block reads its TOTP URL from parameters[...]
    totp_identifier_param: str | None = None  # likewise for the identifier

    def __post_init__(self) -> None:
        cleaned = self.secret.replace(" ", "").upper()
        try:
            base64.b32decode(cleaned + "=" * (-len(cleaned) % 8))
        except (binascii.Error, ValueError):
            raise ValueError("secret is not valid base32") from None
        if self.algorithm.upper() not in _DIGESTS or self.digits not in (6, 7, 8) or self.period <= 0:
            raise ValueError("unsupported TOTP parameters")
        object.__setattr__(self, "secret", cleaned)
        object.__setattr__(self, "algorithm", self.algorithm.upper())

    def __repr__(self) -> str:  # never show the secret
        return f"SimSecret(agent_id={self.agent_id!r}, totp_identifier={self.totp_identifier!r})"

    def totp(self) -> pyotp.TOTP:
        return pyotp.TOTP(self.secret, digits=self.digits, digest=_DIGESTS[self.algorithm], interval=self.period)

    def describe(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("secret")
        return data


@dataclass
class PushedCode:
    totp_code_id: str
    totp_identifier: str
    content: str = field(repr=False)
    code: str = field(repr=False)
    created_at: datetime
    expired_at: datetime | None = None
    workflow_run_id: str | None = None
    task_id: str | None = None
    workflow_id: str | None = None
    source: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "totp_code_id": self.totp_code_id, "totp_identifier": self.totp_identifier,
            "content": self.content, "code": self.code, "workflow_run_id": self.workflow_run_id,
            "workflow_id": self.workflow_id, "task_id": self.task_id, "source": self.source,
            "expired_at": iso(self.expired_at), "created_at": iso(self.created_at),
            "modified_at": iso(self.created_at), "organization_id": "o_simulated",
        }


@dataclass
class SimRun:
    run_id: str
    run_type: str  # "workflow_run" | "task_v2"
    api_key: str  # the org key the run was started with: it signs the totp_url polls
    request: dict[str, Any]
    max_steps: int | None
    created_at: datetime = field(default_factory=_now)
    status: str = "created"
    modified_at: datetime = field(default_factory=_now)
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    output: dict[str, Any] | None = None
    failure_reason: str | None = None
    totp_answers: list[str] = field(default_factory=list)  # what totp_url answered, in order
    code_source: str | None = None  # "totp_url" | "pushed"

    def __repr__(self) -> str:
        return f"SimRun({self.run_id!r}, status={self.status!r})"

    @property
    def agent_id(self) -> str | None:
        return self.request.get("agent_id") if self.run_type == "workflow_run" else None

    def to_response(self, app_url: str) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "run_type": self.run_type, "status": self.status,
            "output": self.output, "downloaded_files": [], "recording_url": None, "screenshot_urls": [],
            "failure_reason": self.failure_reason, "created_at": iso(self.created_at),
            "modified_at": iso(self.modified_at), "queued_at": iso(self.queued_at),
            "started_at": iso(self.started_at), "finished_at": iso(self.finished_at),
            "app_url": f"{app_url}/runs/{self.run_id}",
            "browser_session_id": self.request.get("browser_session_id"),
            "browser_profile_id": self.request.get("browser_profile_id"),
            "run_with": self.request.get("run_with") or "agent", "ai_fallback": self.request.get("ai_fallback"),
            "script_run": None, "errors": [], "step_count": 1 if self.started_at else 0,
            "run_request": self.request,
        }


# -- state -----------------------------------------------------------------------------------


class SimulatorState:
    """Everything the simulator holds; safe to read and control from the test thread."""

    def __init__(self, api_keys: list[str], options: SimulatorOptions | None = None):
        if not api_keys or not all(api_keys):
            raise ValueError("the simulator needs at least one non-empty API key")
        self.api_keys = list(api_keys)
        self.options = options or SimulatorOptions()
        self.lock = threading.RLock()
        self.runs: dict[str, SimRun] = {}
        self.codes: list[PushedCode] = []
        self.secrets: list[SimSecret] = []
        self.faults: list[dict[str, Any]] = []
        self.recorded: list[dict[str, Any]] = []
        self.polls: list[dict[str, Any]] = []
        self.used_codes: set[tuple[str, int, str]] = set()
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def __repr__(self) -> str:
        return f"SimulatorState(runs={len(self.runs)}, codes={len(self.codes)})"

    # control (also exposed under /_sim) --------------------------------------------------
    def add_secret(self, secret: str, **spec: Any) -> SimSecret:
        entry = SimSecret(secret=secret, **spec)
        with self.lock:
            self.secrets.append(entry)
        return entry

    def add_fault(
        self, path_prefix: str, status: int | None = None, count: int = 1, *, retry_after: float | None = None,
        delay: float = 0.0, method: str | None = None, after: bool = False,
    ) -> None:
        """Make the next `count` matching requests fail (`after`: fail once the work is done)."""
        fault = {"path_prefix": path_prefix, "status": status, "count": count, "retry_after": retry_after,
                 "delay": delay, "method": method.upper() if method else None, "after": after}
        with self.lock:
            self.faults.append(fault)

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()

    def take_fault(self, method: str, path: str) -> dict[str, Any] | None:
        with self.lock:
            for fault in self.faults:
                if path.startswith(fault["path_prefix"]) and fault["method"] in (None, method):
                    if fault["count"] == 0:
                        continue
                    if fault["count"] > 0:
                        fault["count"] -= 1
                    return dict(fault)
        return None

    def record(self, entry: dict[str, Any]) -> None:
        with self.lock:
            self.recorded.append(entry)

    def requests(self, path_prefix: str | None = None, method: str | None = None) -> list[dict[str, Any]]:
        """Requests received on /v1/..., oldest first (raw body, parsed JSON, lower-case headers)."""
        with self.lock:
            return [
                dict(r) for r in self.recorded
                if (path_prefix is None or r["path"].startswith(path_prefix))
                and (method is None or r["method"] == method.upper())
            ]

    def run(self, run_id: str) -> dict[str, Any]:
        """A run as the API shows it, plus the simulator's notes (totp answers, code source)."""
        with self.lock:
            sim_run = self.runs[run_id]
            data = sim_run.to_response(self.options.app_url)
            data["totp_answers"] = list(sim_run.totp_answers)
            data["code_source"] = sim_run.code_source
            data["max_steps"] = sim_run.max_steps
            return data

    def list_runs(self) -> list[dict[str, Any]]:
        with self.lock:
            ids = list(self.runs)
        return [self.run(run_id) for run_id in ids]

    def pushed_codes(self) -> list[dict[str, Any]]:
        with self.lock:
            return [c.to_json() for c in self.codes]

    def totp_polls(self) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(p) for p in self.polls]

    def wait_for_run(self, run_id: str, statuses: frozenset[str] | set[str] = FINAL_STATUSES,
                     timeout: float = 30.0) -> dict[str, Any]:
        """Block the calling (test) thread until the run reaches one of `statuses`."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                sim_run = self.runs.get(run_id)
                if sim_run is not None and sim_run.status in statuses:
                    return self.run(run_id)
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} did not reach {sorted(statuses)} in {timeout}s")
            time.sleep(0.02)

    # runs ---------------------------------------------------------------------------------
    def create_run(self, kind: str, request: dict[str, Any], api_key: str, max_steps: int | None) -> SimRun:
        prefix, run_type = ("wr_", "workflow_run") if kind == "agent" else ("tsk_v2_", "task_v2")
        sim_run = SimRun(f"{prefix}{_secrets.token_hex(8)}", run_type, api_key, request, max_steps)
        with self.lock:
            self.runs[sim_run.run_id] = sim_run
        return sim_run

    def set_status(self, sim_run: SimRun, status: str, **changes: Any) -> None:
        with self.lock:
            if sim_run.status in FINAL_STATUSES:
                return
            now = _now()
            sim_run.status = status
            sim_run.modified_at = now
            if status == "queued":
                sim_run.queued_at = now
            elif status == "running":
                sim_run.started_at = now
            elif status in FINAL_STATUSES:
                sim_run.finished_at = now
            for name, value in changes.items():
                setattr(sim_run, name, value)

    def cancel(self, run_id: str) -> None:
        with self.lock:
            sim_run = self.runs[run_id]
            task = self.tasks.pop(run_id, None)
        self.set_status(sim_run, "canceled", failure_reason="Run was canceled")
        if task is not None:
            task.cancel()

    def add_code(self, code: PushedCode) -> None:
        with self.lock:
            self.codes.append(code)

    def secret_for(self, sim_run: SimRun) -> SimSecret | None:
        """Agent-specific secret first, then by identifier, then a catch-all (neither set)."""
        with self.lock:
            candidates = list(reversed(self.secrets))
        if sim_run.agent_id:
            for entry in candidates:
                if entry.agent_id == sim_run.agent_id:
                    return entry
        _, identifier = self.code_sources(sim_run, None)
        if identifier:
            wanted = normalize_identifier(identifier)
            for entry in candidates:
                if entry.totp_identifier and normalize_identifier(entry.totp_identifier) == wanted:
                    return entry
        return next((e for e in candidates if not e.agent_id and not e.totp_identifier), None)

    @staticmethod
    def code_sources(sim_run: SimRun, secret: SimSecret | None) -> tuple[str | None, str | None]:
        """(totp_url, totp_identifier) the login block uses: a block parameter wins over the run field."""
        url, identifier = sim_run.request.get("totp_url"), sim_run.request.get("totp_identifier")
        params = sim_run.request.get("parameters") or {}
        if secret is not None and secret.totp_url_param and isinstance(params.get(secret.totp_url_param), str):
            url = params[secret.totp_url_param] or url
        if secret is not None and secret.totp_identifier_param and isinstance(
            params.get(secret.totp_identifier_param), str
        ):
            identifier = params[secret.totp_identifier_param] or identifier
        return url, identifier

    def newest_pushed_code(self, sim_run: SimRun, identifier: str) -> str | None:
        """Skyvern's pick: same identifier, created at/after started_at, unexpired, in scope, newest."""
        wanted, now = normalize_identifier(identifier), _now()
        own_field = "workflow_run_id" if sim_run.run_type == "workflow_run" else "task_id"
        other_field = "task_id" if own_field == "workflow_run_id" else "workflow_run_id"
        with self.lock:
            usable = [
                c for c in self.codes
                if normalize_identifier(c.totp_identifier) == wanted
                and sim_run.started_at is not None and c.created_at >= sim_run.started_at
                and (c.expired_at is None or c.expired_at > now)
                and getattr(c, own_field) in (None, sim_run.run_id) and getattr(c, other_field) is None
                and c.code
            ]
        return max(usable, key=lambda c: c.created_at).code if usable else None

    def check_typed_code(self, secret: SimSecret, code: str) -> str | None:
        """The login page: None if accepted, else why not. Current window only, no replays."""
        totp = secret.totp()
        now = time.time()
        if code != totp.at(now):
            return "the TOTP code was wrong or expired when it was typed"
        window = int(now // secret.period)
        key = (secret.secret, window, code)
        with self.lock:
            if self.options.reject_replayed_codes and key in self.used_codes:
                return "the TOTP code had already been used in this window (replay refused)"
            self.used_codes.add(key)
        return None


# -- lifecycle -------------------------------------------------------------------------------


def poll_body(sim_run: SimRun) -> bytes:
    """Only the ids known for the run, in Skyvern's order: task_id, workflow_run_id, workflow_permanent_id."""
    if sim_run.run_type == "workflow_run":
        payload = {"workflow_run_id": sim_run.run_id, "workflow_permanent_id": sim_run.agent_id}
    else:
        payload = {"task_id": sim_run.run_id}
    return compact_json(payload)


class _PollContractError(Exception):
    """totp_url answered something Skyvern cannot handle (it would crash or report it)."""


async def _poll_url(state: SimulatorState, sim_run: SimRun, client: httpx.AsyncClient, url: str) -> str | None:
    """One poll as Skyvern makes it; what the endpoint answered goes to ``sim_run.totp_answers``."""
    body = poll_body(sim_run)
    headers = {
        "content-type": "application/json",
        TIMESTAMP_HEADER: str(int(time.time())),
        SIGNATURE_HEADER: sign(body, sim_run.api_key),
    }
    options = state.options
    response: httpx.Response | None = None
    for attempt in range(max(1, options.totp_attempts)):
        try:
            response = await client.post(url, content=body, headers=headers)
            answer: str = str(response.status_code)
        except httpx.TimeoutException:
            answer = "timeout"
        except httpx.TransportError:
            answer = "connection error"
        with state.lock:
            state.polls.append({"run_id": sim_run.run_id, "url": url, "body": body.decode(),
                                "headers": dict(headers), "status": answer})
        if response is not None:
            break
        if attempt < options.totp_attempts - 1:
            await asyncio.sleep(options.totp_retry_delay)
    if response is None or response.status_code != 200:
        sim_run.totp_answers.append(answer)
        return None
    try:
        payload = json.loads(response.content)
    except ValueError:  # Skyvern: a contract error, reported in failure_reason at timeout
        sim_run.totp_answers.append("200 (not JSON)")
        return None
    if not isinstance(payload, dict):
        sim_run.totp_answers.append("200 (JSON not an object)")
        return None
    code = payload.get("verification_code")
    if code is not None and not isinstance(code, str):  # Skyvern's OTPValue(value=...) raises, uncaught
        raise _PollContractError("totp_url answered a verification_code that is not a string")
    if not code:
        sim_run.totp_answers.append("200 (no code yet)")
        return None
    if len(code) > 10:  # Skyvern hands it to an LLM; the simulator takes the first 4-10 digit run
        sim_run.totp_answers.append("200 (long text: LLM parse)")
        match = re.search(r"(?<!\d)\d{4,10}(?!\d)", code)
        return match.group(0) if match else None
    sim_run.totp_answers.append("200 (code)")
    return code


def _answers_summary(answers: list[str]) -> str:
    if not answers:
        return "none"
    counts = Counter(answers)
    return ", ".join(f"{answer} x{n}" for answer, n in counts.items())


async def _wait_for_code(
    state: SimulatorState, sim_run: SimRun, url: str | None, identifier: str | None
) -> tuple[str, str] | None:
    options = state.options
    deadline = time.monotonic() + options.code_wait_timeout
    await asyncio.sleep(options.first_poll_delay)
    async with httpx.AsyncClient(timeout=options.totp_request_timeout, trust_env=False) as client:
        while time.monotonic() <= deadline:
            if url:
                code = await _poll_url(state, sim_run, client, url)
                if code:
                    return code, "totp_url"
            if identifier and (not url or options.url_then_pushed):
                code = state.newest_pushed_code(sim_run, identifier)
                if code:
                    return code, "pushed"
            await asyncio.sleep(options.poll_interval)
    return None


async def run_lifecycle(state: SimulatorState, sim_run: SimRun) -> None:
    """created -> queued -> running -> wait for a code -> type it -> completed/failed/timed_out."""
    options = state.options
    try:
        state.set_status(sim_run, "queued")
        await asyncio.sleep(options.queue_delay)
        state.set_status(sim_run, "running")
        secret = state.secret_for(sim_run)
        url, identifier = state.code_sources(sim_run, secret)
        if secret is None:
            if url or identifier:
                state.set_status(sim_run, "failed", failure_reason=(
                    "Simulator has no TOTP secret for this run (register one with POST /_sim/secrets)"))
            else:
                state.set_status(sim_run, "completed", output={"logged_in": True, "totp_used": False})
            return
        if not url and not identifier:
            state.set_status(sim_run, "failed", failure_reason=(
                "The login asked for a TOTP code but the run has no totp_url and no totp_identifier"))
            return
        try:
            found = await _wait_for_code(state, sim_run, url, identifier)
        except _PollContractError as exc:
            state.set_status(sim_run, "failed", failure_reason=f"Failed to get TOTP code: {exc}")
            return
        if found is None:
            state.set_status(sim_run, "timed_out", failure_reason=(
                f"Failed to get TOTP verification code within {options.code_wait_timeout:g}s. "
                f"totp_url answers: {_answers_summary(sim_run.totp_answers)}"))
            return
        code, source = found
        with state.lock:
            sim_run.code_source = source
        await asyncio.sleep(options.typing_delay)
        refusal = state.check_typed_code(secret, code)
        if refusal:
            state.set_status(sim_run, "failed", failure_reason=f"Login failed: {refusal}")
        else:
            state.set_status(sim_run, "completed", output={"logged_in": True, "totp_used": True,
                                                           "code_source": source})
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a simulator bug must show up as a failed run, not a hang
        state.set_status(sim_run, "failed", failure_reason=f"Simulator error: {type(exc).__name__}")
    finally:
        with state.lock:
            state.tasks.pop(sim_run.run_id, None)
