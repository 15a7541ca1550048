"""What Skyvern's pull asks for, and when its answer may leave: pure decisions, no I/O.

Resolution: the identifier in the URL wins; else a run binding (`task_id`, then
`workflow_run_id`); else an agent binding (`workflow_permanent_id`). Freshness: a code leaves only
with at least `min_validity` seconds of its window left, never twice under `single_use`; otherwise
the answer waits for the next window, at most `max_hold` seconds. Known runs
(`codes.known_runs_only`): the run the body names must be bound to the identifier asked for.
Kept free of clocks and stores so the rules can be tested with any time.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from totp_service.otp import is_unicode
from totp_service.service.http import BadRequest, Forbidden, NotFound

BODY_FIELDS = ("task_id", "workflow_run_id", "workflow_permanent_id")
MAX_ID_CHARS = 512


class NoBinding(NotFound):
    reason = "no_binding"


class UnknownIdentifier(NotFound):
    reason = "unknown_identifier"


class AgentNotAllowed(Forbidden):
    reason = "agent_not_allowed"


class UnknownRun(Forbidden):
    reason = "unknown_run"


@dataclass(frozen=True)
class PullBody:
    """The run ids Skyvern sent (only those it knows for the run)."""

    task_id: str | None = None
    workflow_run_id: str | None = None
    workflow_permanent_id: str | None = None


def parse_pull_body(data: Mapping[str, Any]) -> PullBody:
    """Take the three known ids; other keys are ignored (Skyvern may add some one day)."""
    values: dict[str, str | None] = {}
    for name in BODY_FIELDS:
        value = data.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > MAX_ID_CHARS or not is_unicode(value)):
            raise BadRequest(f"{name} must be a string of at most {MAX_ID_CHARS} characters (UTF-8 text)")
        values[name] = value or None
    return PullBody(**values)


@dataclass(frozen=True)
class Resolution:
    identifier: str
    via: str  # "path", "run" or "agent"


def resolve_identifier(
    path_identifier: str | None,
    body: PullBody,
    find_run: Callable[[str], str | None],
    find_agent: Callable[[str], str | None],
) -> Resolution:
    """Whose code is wanted: the URL, else a run binding, else an agent binding (NoBinding if none)."""
    if path_identifier:
        return Resolution(path_identifier, "path")
    for run_id in (body.task_id, body.workflow_run_id):
        if run_id:
            found = find_run(run_id)
            if found:
                return Resolution(found, "run")
    if body.workflow_permanent_id:
        found = find_agent(body.workflow_permanent_id)
        if found:
            return Resolution(found, "agent")
    raise NoBinding("no identifier in the URL and no binding for this run or agent")


def check_agent(allowed_agents: Sequence[str], agent_id: str | None) -> None:
    """An allow-list refuses any other agent, and a request that names no agent at all."""
    if not allowed_agents:
        return
    if agent_id is None:
        raise AgentNotAllowed("this secret is limited to certain agents and the request names none")
    if agent_id not in allowed_agents:
        raise AgentNotAllowed("this agent may not get codes for this identifier")


def check_known_run(body: PullBody, identifier: str, find_run: Callable[[str], str | None]) -> None:
    """Known-runs mode: the body's run (`workflow_run_id`, else `task_id`: a plain task run's id)
    must have a live run binding to `identifier`, so a pull replayed after its run ended gets nothing."""
    run_id = body.workflow_run_id or body.task_id
    if run_id is None:
        raise UnknownRun("known-runs mode: the body names no run (workflow_run_id or task_id)")
    bound = find_run(run_id)
    if bound is None:
        raise UnknownRun(f"known-runs mode: run {run_id!r} is not registered or is over "
                         "(register it with POST /v1/bindings, kind run)")
    if bound != identifier:
        raise UnknownRun(f"known-runs mode: run {run_id!r} is registered for another identifier")


def effective_min_validity(min_validity: float, period: int) -> float:
    """Clamp to [0, period]: asking for a full period or more means "only a code whose window has
    just opened", which is the freshest code there is; holding any longer cannot help."""
    return min(max(0.0, min_validity), float(period))


@dataclass(frozen=True)
class Plan:
    """`counter` is the window whose code to send after waiting `wait` seconds; None: answer empty."""

    counter: int | None
    wait: float = 0.0


def plan(period: int, now: float, min_validity: float, hold_budget: float, taken: Collection[int] = ()) -> Plan:
    """Pick the window to serve at `now`.

    The current window if it has at least `min_validity` left (clamped, see above) and its code
    was not served already; else the first later window not taken. If that window opens more than
    `hold_budget` seconds from now, nothing can be served in time: Plan(None).
    """
    counter = int(now) // period
    left = (counter + 1) * period - now
    if left < effective_min_validity(min_validity, period):
        counter += 1
    while counter in taken:
        counter += 1
    wait = max(0.0, counter * period - now)
    if wait > hold_budget:
        return Plan(None, wait)
    return Plan(counter, wait)
