"""A simulated run's life: queued, running, each login block asking for a code, typing it, final status.

Why: Skyvern 1.0.56 (otp_service.poll_otp_value) polls per block task: first the task's totp URL
(signed POST), then, when that answered no code, the codes pushed under the task's identifier;
a poll whose URL call failed outright (transport error after its attempts, or a 200 that is not
JSON) does not fall back. For a saved agent the task's URL and identifier come from the block's
own fields templated with the run's parameters; the run-level fields reach no block.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets as _secrets
import time
from collections import Counter
from dataclasses import dataclass

import httpx

from totp_service.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, compact_json, sign
from totp_service.simulator.agents import LOGIN_CAPABLE, RenderFailed, asking_blocks, block_sources, walk_blocks
from totp_service.simulator.runs import SimRun, SimulatorState


@dataclass(frozen=True)
class LoginStep:
    """One task meeting the site's 2FA prompt, with the sources Skyvern gave that task."""

    task_id: str
    label: str | None  # the block's label (None: a task run)
    url: str | None
    identifier: str | None


class _RunFails(Exception):
    """Ends the run with this status and failure_reason."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def login_steps(sim_run: SimRun) -> list[LoginStep]:
    """The tasks that meet the 2FA prompt, in order. An agent run: its agent's asking blocks (or its first
    login-capable block, which then has no TOTP source); a task run: the task itself with its own fields."""
    if sim_run.workflow is None:  # a task run (every agent run has its saved agent)
        request = sim_run.request
        return [LoginStep(sim_run.run_id, None, request.get("totp_url"), request.get("totp_identifier"))]
    blocks = asking_blocks(sim_run.workflow) or [
        b for b in walk_blocks(sim_run.workflow["workflow_definition"]["blocks"])
        if b.get("block_type") in LOGIN_CAPABLE][:1]
    steps = []
    for block in blocks:
        try:
            sources = block_sources(block, sim_run.values)
        except RenderFailed as exc:
            raise _RunFails("failed", f"Block {block.get('label')}: {exc}") from None
        steps.append(LoginStep(f"tsk_{_secrets.token_hex(8)}", sources.label, sources.url, sources.identifier))
    return steps


def poll_body(sim_run: SimRun, task_id: str) -> bytes:
    """Only the ids known for the task, in Skyvern's order: task_id, workflow_run_id, workflow_permanent_id."""
    if sim_run.run_type == "workflow_run":
        payload = {"task_id": task_id, "workflow_run_id": sim_run.run_id, "workflow_permanent_id": sim_run.agent_id}
    else:
        payload = {"task_id": sim_run.run_id}
    return compact_json(payload)


class _PollContractError(Exception):
    """totp_url answered something Skyvern cannot handle (it would crash or report it)."""


async def _poll_url(state: SimulatorState, sim_run: SimRun, client: httpx.AsyncClient, url: str,
                    task_id: str) -> tuple[str | None, bool]:
    """One poll as Skyvern makes it: (code, failed outright). Answers go to ``sim_run.totp_answers``."""
    body = poll_body(sim_run, task_id)
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
            state.polls.append({"run_id": sim_run.run_id, "task_id": task_id, "url": url, "body": body.decode(),
                                "headers": dict(headers), "status": answer})
        if response is not None:
            break
        if attempt < options.totp_attempts - 1:
            await asyncio.sleep(options.totp_retry_delay)
    if response is None:
        sim_run.totp_answers.append(answer)
        return None, True
    if response.status_code != 200:
        sim_run.totp_answers.append(answer)
        return None, False
    try:
        payload = json.loads(response.content)
    except ValueError:  # Skyvern: a contract error, reported in failure_reason at timeout
        sim_run.totp_answers.append("200 (not JSON)")
        return None, True
    if not isinstance(payload, dict):
        sim_run.totp_answers.append("200 (JSON not an object)")
        return None, False
    code = payload.get("verification_code")
    if code is not None and not isinstance(code, str):  # Skyvern's OTPValue(value=...) raises, uncaught
        raise _PollContractError("totp_url answered a verification_code that is not a string")
    if not code:
        sim_run.totp_answers.append("200 (no code yet)")
        return None, False
    if len(code) > 10:  # Skyvern hands it to an LLM; the simulator takes the first 4-10 digit run
        sim_run.totp_answers.append("200 (long text: LLM parse)")
        match = re.search(r"(?<!\d)\d{4,10}(?!\d)", code)
        return (match.group(0) if match else None), False
    sim_run.totp_answers.append("200 (code)")
    return code, False


def _answers_summary(answers: list[str]) -> str:
    if not answers:
        return "none"
    counts = Counter(answers)
    return ", ".join(f"{answer} x{n}" for answer, n in counts.items())


async def _wait_for_code(state: SimulatorState, sim_run: SimRun, step: LoginStep) -> tuple[str, str] | None:
    options = state.options
    deadline = time.monotonic() + options.code_wait_timeout
    await asyncio.sleep(options.first_poll_delay)
    async with httpx.AsyncClient(timeout=options.totp_request_timeout, trust_env=False) as client:
        while time.monotonic() <= deadline:
            failed = False
            if step.url:
                code, failed = await _poll_url(state, sim_run, client, step.url, step.task_id)
                if code:
                    return code, "totp_url"
            if step.identifier and not failed:
                code = state.newest_pushed_code(sim_run, step.identifier, step.task_id)
                if code:
                    return code, "pushed"
            await asyncio.sleep(options.poll_interval)
    return None


async def _log_in(state: SimulatorState, sim_run: SimRun, step: LoginStep) -> str | None:
    """One task at the 2FA prompt: the code's source, or None when the site asks for no code."""
    where = f"Block {step.label}: " if step.label else ""
    secret = state.secret_for(sim_run, step.identifier)
    if secret is None:
        if step.url or step.identifier:
            raise _RunFails("failed", "Simulator has no TOTP secret for this run (register one with POST /_sim/secrets)")
        return None
    if not step.url and not step.identifier:
        what = "its task" if step.label else "the run"
        raise _RunFails("failed", f"{where}the login asked for a TOTP code but {what} has no totp_verification_url "
                                  "and no totp_identifier")
    try:
        found = await _wait_for_code(state, sim_run, step)
    except _PollContractError as exc:
        raise _RunFails("failed", f"Failed to get TOTP code: {exc}") from None
    if found is None:
        raise _RunFails("timed_out", f"{where}Failed to get TOTP verification code within "
                                     f"{state.options.code_wait_timeout:g}s. totp_url answers: "
                                     f"{_answers_summary(sim_run.totp_answers)}")
    code, source = found
    with state.lock:
        sim_run.code_source = source
    await asyncio.sleep(state.options.typing_delay)
    refusal = state.check_typed_code(secret, code)
    if refusal:
        raise _RunFails("failed", f"{where}Login failed: {refusal}")
    return source


async def run_lifecycle(state: SimulatorState, sim_run: SimRun) -> None:
    """created -> queued -> running -> each login step gets and types a code -> completed/failed/timed_out."""
    try:
        state.set_status(sim_run, "queued")
        await asyncio.sleep(state.options.queue_delay)
        state.set_status(sim_run, "running")
        sources = []
        for step in login_steps(sim_run):
            with state.lock:
                sim_run.block_tasks.append({"task_id": step.task_id, "label": step.label, "totp_url": step.url,
                                            "totp_identifier": step.identifier})
            source = await _log_in(state, sim_run, step)
            if source:
                sources.append(source)
        output = {"logged_in": True, "totp_used": bool(sources)}
        if sources:
            output["code_source"] = sources[-1]
        state.set_status(sim_run, "completed", output=output)
    except _RunFails as exc:
        state.set_status(sim_run, exc.status, failure_reason=exc.reason)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a simulator bug must show up as a failed run, not a hang
        state.set_status(sim_run, "failed", failure_reason=f"Simulator error: {type(exc).__name__}")
    finally:
        with state.lock:
            state.tasks.pop(sim_run.run_id, None)
