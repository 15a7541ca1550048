"""Read a saved agent from Skyvern and wire a run request to its blocks (the launcher's side of wiring).

Why: `wiring` decides from a definition; this module fetches the definition (`GET /v1/workflows`),
turns a refused read into one line naming the agent, and merges the plan into the request, so
`launch`, `agent show` and the Python API (`inspect_agent`) all wire the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from totp_service.identifiers import normalize_identifier
from totp_service.launcher.client import SkyvernAuthError, SkyvernClient, SkyvernNotFound
from totp_service.launcher.request import LaunchError, RequestError, check_request
from totp_service.launcher.wiring import (
    IDENTIFIER_FIELD,
    AgentDefinition,
    ParameterConflict,
    WiringError,
    WiringPlan,
    plan_wiring,
    read_agent,
)

NO_INSPECT_WARNING = (
    "not reading agent {agent}'s blocks (--no-inspect): Skyvern takes the TOTP URL or identifier from "
    "each block's own fields, never from the run, so this run gets codes only if a block already names them"
)


class AgentUnreadable(LaunchError):
    """Skyvern would not show the agent's definition (403/404)."""


class WiringRefused(RequestError):
    """The agent's blocks would never get our codes as launched (found before any run exists)."""


def fetch_agent(client: SkyvernClient, agent_id: str) -> AgentDefinition:
    try:
        workflow = client.get_agent(agent_id)
    except SkyvernNotFound:
        raise AgentUnreadable(f"Skyvern knows no agent {agent_id} (404 on GET /v1/workflows/{agent_id}): check "
                              "the id, or pass --no-inspect") from None
    except SkyvernAuthError as exc:
        raise AgentUnreadable(f"Skyvern would not show agent {agent_id} ({exc.status_code}): use an API key that "
                              "may read agents, or pass --no-inspect to start it without checking its blocks") from None
    try:
        return read_agent(agent_id, workflow)
    except WiringError as exc:
        raise WiringRefused(str(exc)) from None


def plan_for(agent: AgentDefinition, mode: str, identifier: str, our_totp_url: str,
             parameters: Mapping[str, Any] | None, totp_param: str | None) -> WiringPlan:
    try:
        return plan_wiring(agent, mode, identifier, our_totp_url, parameters, totp_param=totp_param)
    except WiringError as exc:
        raise WiringRefused(str(exc)) from None


def wire_agent_run(
    client: SkyvernClient,
    body: Mapping[str, Any],
    mode: str,
    identifier: str,
    our_totp_url: str,
    *,
    totp_param: str | None,
    inspect: bool,
    emit: Callable[[str, str], None] | None,
) -> tuple[dict[str, Any], WiringPlan | None]:
    """The agent run's request with the parameters its blocks read filled in (your --param values stay).

    `emit(kind, message)` hears each wiring line ("wiring"), or the warning when `inspect` is off ("note").
    """
    agent_id = str(body["agent_id"])
    if not inspect:
        if emit:
            emit("note", NO_INSPECT_WARNING.format(agent=agent_id))
        return dict(body), None
    plan = plan_for(fetch_agent(client, agent_id), mode, identifier, our_totp_url, body.get("parameters"), totp_param)
    if emit:
        for line in plan.lines():
            emit("wiring", line)
    wired = {**body, "parameters": {**plan.parameters, **(body.get("parameters") or {})}}
    return check_request(wired, "agent"), plan


def attach_notes(client: SkyvernClient, run: Mapping[str, Any], identifier: str, our_totp_url: str) -> list[str]:
    """For a pusher attached to someone else's run: will the run read codes pushed for `identifier`?

    A task run reads its run-level totp_identifier; an agent run only what its blocks' fields get
    from the run's parameters, so the agent is read and wired against them.
    """
    request = run.get("run_request") or {}
    agent_id = request.get("agent_id") or request.get("workflow_id")
    if run.get("run_type") != "workflow_run" or not isinstance(agent_id, str) or not agent_id.startswith("wpid_"):
        wanted = request.get("totp_identifier")
        if not wanted:
            return ["the run has no totp_identifier: Skyvern will not read the codes pushed for it"]
        if normalize_identifier(str(wanted)) != normalize_identifier(identifier):
            return [f"the run was started with another totp_identifier; pushing for {identifier!r} anyway"]
        return []
    given = request.get("parameters") if isinstance(request.get("parameters"), Mapping) else {}
    try:
        plan = plan_wiring(fetch_agent(client, agent_id), "push", identifier, our_totp_url, given)
    except ParameterConflict:
        return [f"the run's parameters give agent {agent_id}'s login block another totp_identifier than "
                f"{identifier!r}: Skyvern will not read these codes there; pushing anyway"]
    except (LaunchError, WiringError) as exc:
        return [f"pushing anyway, but {exc}"]
    return [f"the run did not set parameters.{step.parameter}, which {step.where} reads as its {IDENTIFIER_FIELD}: "
            f"that block will not read codes pushed for {identifier!r}; pushing anyway"
            for step in plan.steps if step.source == "filled" and step.field == IDENTIFIER_FIELD]
