"""The Skyvern simulator's state: secrets, saved agents, pushed codes and Skyvern's pick of them, runs.

Why: tests and the offline demo need a Skyvern that behaves like shared/SKYVERN.md says (pushed
codes counted only from ``started_at`` for agent runs, within the 10-minute lifespan, strict code
checking at typing time) and that finishes in seconds. The HTTP layer lives in ``app.py``, request
validation in ``requests.py``, a run's lifecycle and its polls in ``lifecycle.py``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import secrets as _secrets
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pyotp

from totp_service.simulator.agents import make_workflow
from totp_service.simulator.options import (
    _DIGESTS,
    FINAL_STATUSES,
    SimulatorOptions,
    _now,
    iso,
    normalize_identifier,
)

TASK_RUN_TYPES = {"skyvern-3.0": "task_v3", "openai-cua": "openai_cua", "anthropic-cua": "anthropic_cua",
                  "ui-tars": "ui_tars", "yutori-navigator": "yutori_navigator"}

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
    run_type: str  # "workflow_run" | "task_v1" | "task_v2" | a CUA engine's
    api_key: str  # the org key the run was started with: it signs the totp_url polls
    request: dict[str, Any]
    max_steps: int | None
    workflow: dict[str, Any] | None = None  # an agent run's saved agent (None: a task run)
    values: dict[str, Any] = field(default_factory=dict)  # an agent run's parameter values
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
    block_tasks: list[dict[str, Any]] = field(default_factory=list)  # each login step's task

    @property
    def anchored(self) -> bool:
        """Pushed codes only from started_at on: runs with a workflow run behind them (not skyvern-1.0 tasks)."""
        return self.run_type in ("workflow_run", "task_v2")

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
        self.agents: dict[str, dict[str, Any]] = {}  # wpid_ -> Skyvern's Workflow JSON

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
            data["block_tasks"] = [dict(task) for task in sim_run.block_tasks]
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

    # agents -------------------------------------------------------------------------------
    def define_agent(self, json_definition: Any, agent_id: str | None = None) -> dict[str, Any]:
        """POST /v1/workflows: store a saved agent (DefinitionInvalid when Skyvern would refuse it).
        `agent_id` fixes its wpid_ (tests, the demo); Skyvern always makes a new one."""
        workflow = make_workflow(json_definition, agent_id)
        with self.lock:
            self.agents[workflow["workflow_permanent_id"]] = workflow
        return copy.deepcopy(workflow)

    def agent(self, agent_id: str) -> dict[str, Any] | None:
        with self.lock:
            workflow = self.agents.get(agent_id)
            return copy.deepcopy(workflow) if workflow is not None else None

    # runs ---------------------------------------------------------------------------------
    def create_run(self, kind: str, request: dict[str, Any], api_key: str, max_steps: int | None,
                   workflow: dict[str, Any] | None = None, values: dict[str, Any] | None = None) -> SimRun:
        if kind == "agent":
            if workflow is None:
                raise ValueError("an agent run needs its saved agent (Skyvern answers 404 Workflow not found)")
            prefix, run_type = "wr_", "workflow_run"
        elif request.get("engine") == "skyvern-2.0":
            prefix, run_type = "tsk_v2_", "task_v2"
        else:  # skyvern-1.0 (the default), 3.0 and the CUA engines run a standalone task
            prefix, run_type = "tsk_", TASK_RUN_TYPES.get(str(request.get("engine")), "task_v1")
        sim_run = SimRun(f"{prefix}{_secrets.token_hex(8)}", run_type, api_key, request, max_steps, workflow,
                         dict(values or {}))
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

    def secret_for(self, sim_run: SimRun, identifier: str | None) -> SimSecret | None:
        """The site's secret: agent-specific first, then by the identifier asked for, then a catch-all."""
        with self.lock:
            candidates = list(reversed(self.secrets))
        if sim_run.agent_id:
            for entry in candidates:
                if entry.agent_id == sim_run.agent_id:
                    return entry
        if identifier:
            wanted = normalize_identifier(identifier)
            for entry in candidates:
                if entry.totp_identifier and normalize_identifier(entry.totp_identifier) == wanted:
                    return entry
        return next((e for e in candidates if not e.agent_id and not e.totp_identifier), None)

    def newest_pushed_code(self, sim_run: SimRun, identifier: str, task_id: str) -> str | None:
        """Skyvern 1.0.56's pick (otp_service._get_otp_value_from_db): same identifier, created in the last
        totp_lifespan seconds, at/after started_at for anchored runs, unexpired, not scoped to another run
        or task, newest first across scopes. A standalone task has no workflow run, so a row scoped to
        another workflow run is not skipped for it."""
        wanted, now = normalize_identifier(identifier), _now()
        run_id = sim_run.run_id if sim_run.run_type == "workflow_run" else None
        oldest = now - timedelta(seconds=self.options.totp_lifespan)
        with self.lock:
            usable = [
                c for c in self.codes
                if normalize_identifier(c.totp_identifier) == wanted and c.code and c.created_at > oldest
                and (not sim_run.anchored or (sim_run.started_at is not None and c.created_at >= sim_run.started_at))
                and (c.expired_at is None or c.expired_at > now)
                and not (c.workflow_run_id and run_id and c.workflow_run_id != run_id)
                and not (c.task_id and c.task_id != task_id)
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
