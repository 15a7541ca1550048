"""Start Skyvern runs that need TOTP codes (or attach to runs others started) and follow them.

Why: a run must get its codes the way the deployment allows (shared/SKYVERN.md): `url` mode gives
Skyvern our signed `totp_url` to pull from; `push` mode pushes each fresh code to Skyvern while the
run lives. Everything that can be checked locally is checked before the run is created, a run is
created at most once, and an interrupted launch cancels its run.

Python API (also exported from `totp_service`): `launch_agent`, `launch_task`, `attach_pusher`,
`inspect_agent`, `totp_url`, `follow_run`, `RunOutcome`, `LaunchEvent`, `EXIT_CODES`.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

import httpx

from totp_service.config import Settings
from totp_service.launcher.urls import totp_url, url_token  # noqa: F401  (url_token: part of runs' API)
from totp_service.identifiers import check_identifier, normalize_identifier
from totp_service.launcher.agents import attach_notes, fetch_agent, plan_for, wire_agent_run
from totp_service.launcher.client import (
    FINAL_STATUSES,
    SkyvernAuthError,
    SkyvernClient,
    SkyvernError,
    SkyvernNotFound,
)
from totp_service.launcher.pusher import (
    CodeSource,
    CodeSourceError,
    LocalCodeSource,
    Pusher,
    PushEvent,
    RemoteCodeSource,
)
from totp_service.launcher.request import (
    LaunchError,
    RequestError,
    check_agent_id,
    check_max_steps,
    check_request,
)
from totp_service.launcher.run_bindings import registered_run
from totp_service.launcher.wiring import WiringPlan
from totp_service.store import Store
from totp_service.store.open import open_store

MODES: Final = ("url", "push")
EXIT_CODES: Final = {"completed": 0, "failed": 3, "terminated": 4, "canceled": 5, "timed_out": 6}
EXIT_OTHER: Final = 1
EXIT_INTERRUPTED: Final = 130
STATUS_READ_GRACE_SECONDS: Final = 300.0  # keep following through this long a Skyvern outage
_CLOUD_HOSTS: Final = ("api.skyvern.com",)


class ServiceNotReady(LaunchError):
    """url mode: the totp service cannot answer for the identifier, so the run would stall."""


class CloudNeedsPush(RequestError):
    """url mode against Skyvern Cloud with a loopback/private totp_url: Cloud refuses it."""


@dataclass(frozen=True)
class LaunchEvent:
    """Progress for a live status line or log; never holds a code or a key."""

    kind: str  # wiring created status pushed push_failed waiting skipped status_failed canceling canceled note tick
    message: str
    run_id: str | None = None
    status: str | None = None
    pushes: int = 0
    elapsed: float = 0.0


@dataclass
class RunOutcome:
    """The run as Skyvern last showed it, and what the launcher did for it."""

    run: dict[str, Any]
    pushes: int = 0
    elapsed: float = 0.0
    interrupted: bool = False
    events: list[LaunchEvent] = field(default_factory=list, repr=False)
    wiring: WiringPlan | None = None  # how the agent's blocks were wired (None: a task, or --no-inspect)

    @property
    def run_id(self) -> str:
        return str(self.run.get("run_id", ""))

    @property
    def status(self) -> str:
        return str(self.run.get("status", ""))

    @property
    def exit_code(self) -> int:
        """0 completed, 3 failed, 4 terminated, 5 canceled, 6 timed_out, 130 interrupted, 1 otherwise."""
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_CODES.get(self.status, EXIT_OTHER)


EventHandler = Callable[[LaunchEvent], None]


# --- totp_url and url-mode checks ---------------------------------------------------------------


def is_private_url(url: str) -> bool:
    """Loopback, private, link-local or `localhost`: what Skyvern Cloud refuses as a totp_url."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost") or host.endswith(".local"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_private or address.is_link_local or address.is_unspecified


def is_skyvern_cloud(base_url: str) -> bool:
    return (urlsplit(base_url).hostname or "").lower() in _CLOUD_HOSTS


def check_cloud_reachable(settings: Settings) -> None:
    public = settings.server.effective_public_url
    if is_skyvern_cloud(settings.skyvern.base_url) and is_private_url(public):
        raise CloudNeedsPush(
            f"Skyvern Cloud cannot reach {public} and refuses a loopback/private totp_url "
            "(400 Invalid totp_url: blocked host.): use --mode push, or set server.public_url "
            "(TOTP_SERVICE_PUBLIC_URL) to an address reachable from the internet"
        )


def check_service(settings: Settings, identifier: str, *, timeout: float = 5.0) -> None:
    """url mode: the service at public_url answers /healthz (the identifier is checked separately)."""
    base = settings.server.effective_public_url
    try:
        response = httpx.get(f"{base}/healthz", timeout=timeout, follow_redirects=False, trust_env=False)
    except httpx.HTTPError as exc:
        raise ServiceNotReady(
            f"the totp service at {base} does not answer ({type(exc).__name__}): start it with "
            "`totp-service serve`, or set server.public_url"
        ) from None
    if response.status_code != 200:
        raise ServiceNotReady(f"the totp service at {base} answered /healthz with {response.status_code}")


# --- code sources and clients -------------------------------------------------------------------


def open_code_source(settings: Settings, identifier: str, store: Store | None = None) -> CodeSource:
    """The local store (default) or a remote service's reader endpoint (`launcher.code_source`)."""
    min_validity = settings.codes.min_validity_seconds
    if settings.launcher.code_source == "remote":
        return RemoteCodeSource(settings.launcher.remote_url or "", settings.launcher.reader_token or "",
                                identifier, min_validity=min_validity)
    if store is None:
        raise CodeSourceError("no store is open")  # pragma: no cover - callers open one
    return LocalCodeSource(store, identifier, min_validity=min_validity, single_use=settings.codes.single_use)


def make_client(settings: Settings) -> SkyvernClient:
    return SkyvernClient(settings.skyvern.base_url, settings.skyvern.api_key or "")


@contextmanager
def _resources(
    settings: Settings, identifier: str, mode: str, client: SkyvernClient | None, store: Store | None
) -> Iterator[tuple[SkyvernClient, CodeSource | None, Store | None]]:
    """Open what the mode needs (store, code source, client) and check the identifier is held."""
    with ExitStack() as stack:
        if store is None and settings.launcher.code_source == "local":
            store = stack.enter_context(open_store(settings))
        source: CodeSource | None = None
        if mode == "push":
            source = open_code_source(settings, identifier, store)
            stack.callback(source.close)
            source.current(time.time())  # proves the secret (or remote service) is there
        elif settings.launcher.code_source == "local":
            assert store is not None
            if not store.has_secret(identifier):
                raise CodeSourceError(f"no secret for {normalize_identifier(identifier)!r} in the store {store.location}")
        else:
            remote = open_code_source(settings, identifier, store)
            stack.callback(remote.close)
            remote.current(time.time())
        if client is None:
            client = stack.enter_context(make_client(settings))
        yield client, source, store


def prepare_request(
    kind: str,
    request: Mapping[str, Any],
    *,
    settings: Settings,
    identifier: str,
    mode: str,
    totp_param: str | None = None,
) -> dict[str, Any]:
    """Add totp_url (url mode) or totp_identifier (push mode), also as `parameters[totp_param]`."""
    if mode not in MODES:
        raise RequestError(f"--mode must be url or push (got {mode!r})")
    body = dict(request)
    for name in ("totp_url", "totp_identifier"):
        if body.get(name):
            raise RequestError(f"{name} is set by the launcher; do not pass it in the request")
    value = totp_url(settings, identifier) if mode == "url" else check_identifier(identifier)
    body["totp_url" if mode == "url" else "totp_identifier"] = value
    if totp_param:
        if kind != "agent":
            raise RequestError("--totp-param is for agent runs (tasks have no parameters)")
        parameters = dict(body.get("parameters") or {})
        parameters[totp_param] = value
        body["parameters"] = parameters
    return check_request(body, kind)


# --- following a run ------------------------------------------------------------------------------


class _Follower:
    def __init__(self, client: SkyvernClient, run: dict[str, Any], *, interval: float,
                 on_event: EventHandler | None, stop: threading.Event | None):
        self.client = client
        self.run = run
        self.run_id = str(run["run_id"])
        self.interval = max(0.05, interval)
        self.stop = stop
        self.started = time.monotonic()
        self.events: list[LaunchEvent] = []
        self._on_event = on_event
        self.pusher: Pusher | None = None

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def pushes(self) -> int:
        return self.pusher.pushes if self.pusher else 0

    def emit(self, kind: str, message: str) -> None:
        event = LaunchEvent(kind, message, self.run_id, self.run.get("status"), self.pushes, self.elapsed())
        if kind != "tick":  # ticks only refresh a live status line
            self.events.append(event)
        if self._on_event:
            self._on_event(event)

    def on_push_event(self, event: PushEvent) -> None:
        self.emit(event.kind, event.message)

    def outcome(self, interrupted: bool = False) -> RunOutcome:
        return RunOutcome(self.run, self.pushes, self.elapsed(), interrupted, self.events)

    def sleep(self, seconds: float) -> None:
        if self.stop is not None:
            self.stop.wait(seconds)
        else:
            time.sleep(seconds)

    def cancel(self) -> None:
        self.emit("canceling", f"canceling run {self.run_id}")
        try:
            self.client.cancel_run(self.run_id)
        except SkyvernError as exc:
            self.emit("note", f"could not cancel run {self.run_id}: {exc}")
            return
        try:
            self.run = self.client.get_run(self.run_id)
        except SkyvernError:
            self.run = {**self.run, "status": "canceled"}
        self.emit("canceled", f"run {self.run_id} canceled")

    def follow(self, cancel_on_stop: bool) -> RunOutcome:
        try:
            return self._loop(cancel_on_stop)
        except KeyboardInterrupt:
            if cancel_on_stop:
                self.cancel()
            raise

    def _loop(self, cancel_on_stop: bool) -> RunOutcome:
        last_ok = time.monotonic()
        last_status = None
        if self.pusher is not None and self.run.get("status") not in FINAL_STATUSES:
            self.pusher.tick(self.run, self.interval)  # the push "as soon as the run is created"
        while True:
            if self.stop is not None and self.stop.is_set():
                if cancel_on_stop:
                    self.cancel()
                return self.outcome(interrupted=True)
            try:
                self.run = self.client.get_run(self.run_id)
                last_ok = time.monotonic()
            except (SkyvernAuthError, SkyvernNotFound):
                raise
            except SkyvernError as exc:
                self.emit("status_failed", f"cannot read the run's status, still trying: {exc}")
                if time.monotonic() - last_ok > STATUS_READ_GRACE_SECONDS:
                    raise
            status = self.run.get("status")
            if status != last_status:
                last_status = status
                self.emit("status", f"run {self.run_id} is {status}")
            if status in FINAL_STATUSES:
                return self.outcome()
            wait = self.interval
            if self.pusher is not None:
                wait = min(wait, self.pusher.tick(self.run, self.interval))
            self.emit("tick", "")
            self.sleep(max(wait, 0.01))


def follow_run(
    client: SkyvernClient,
    run: dict[str, Any] | str,
    *,
    pusher_source: CodeSource | None = None,
    interval: float = 3.0,
    on_event: EventHandler | None = None,
    stop: threading.Event | None = None,
    cancel_on_stop: bool = True,
) -> RunOutcome:
    """Follow a run to a final status, pushing codes from `pusher_source` if given.

    Ctrl-C (KeyboardInterrupt) and `stop.set()` cancel the run when `cancel_on_stop`; Ctrl-C is
    re-raised afterwards, a stop returns an outcome with `interrupted=True`.
    """
    if isinstance(run, str):
        run = client.get_run(run)
    follower = _Follower(client, run, interval=interval, on_event=on_event, stop=stop)
    if pusher_source is not None:
        follower.pusher = Pusher(client, pusher_source, follower.run_id, str(run.get("run_type") or ""),
                                 on_event=follower.on_push_event)
    return follower.follow(cancel_on_stop)


# --- launching --------------------------------------------------------------------------------------


def _launch(
    kind: str, settings: Settings, request: Mapping[str, Any], identifier: str, *, mode: str | None,
    totp_param: str | None, inspect: bool = True, max_steps: int | None, wait: bool, on_event: EventHandler | None,
    stop: threading.Event | None, client: SkyvernClient | None, store: Store | None,
) -> RunOutcome:
    mode = mode or settings.launcher.mode
    identifier = check_identifier(identifier)
    check_max_steps(max_steps)
    inspecting = kind == "agent" and inspect
    body = prepare_request(kind, request, settings=settings, identifier=identifier, mode=mode,
                           totp_param=None if inspecting else totp_param)
    if kind == "task" and max_steps is not None:  # /v1/run/tasks reads max_steps from the body, not the header
        body["max_steps"], max_steps = max_steps, None
    if mode == "push" and not wait:
        raise RequestError("--no-wait works in url mode only: push mode must stay to push the codes")
    if mode == "url":
        check_cloud_reachable(settings)
    with _resources(settings, identifier, mode, client, store) as (skyvern, source, store):
        if mode == "url":
            check_service(settings, identifier)
        plan = None
        if kind == "agent":
            emit = (lambda kind, message: on_event(LaunchEvent(kind, message))) if on_event else None
            body, plan = wire_agent_run(skyvern, body, mode, identifier, totp_url(settings, identifier),
                                        totp_param=totp_param, inspect=inspect, emit=emit)
        start = skyvern.run_agent if kind == "agent" else skyvern.run_task
        run = start(body, max_steps=max_steps)
        if not run.get("run_id"):
            raise LaunchError("Skyvern answered the run start without a run_id")
        run_id = str(run["run_id"])
        created = LaunchEvent("created", f"run {run_id} created ({mode} mode)", run_id, run.get("status"))
        if on_event:
            on_event(created)
        note = (lambda kind, message: on_event(LaunchEvent(kind, message, run_id))) if on_event else (lambda *_: None)
        known_run = nullcontext() if mode != "url" else registered_run(  # known-runs mode: live while followed
            settings, store, run_id, identifier, body, keep=not wait, emit=note,
            cancel=lambda: skyvern.cancel_run(run_id))
        with known_run:
            if not wait:
                return RunOutcome(run, events=[created], wiring=plan)
            outcome = follow_run(skyvern, run, pusher_source=source, on_event=on_event, stop=stop,
                                 interval=settings.launcher.status_interval_seconds, cancel_on_stop=True)
        outcome.events.insert(0, created)
        outcome.wiring = plan
        return outcome


def launch_agent(
    settings: Settings,
    agent_id: str,
    identifier: str,
    *,
    mode: str | None = None,
    request: Mapping[str, Any] | None = None,
    totp_param: str | None = None,
    inspect: bool = True,
    max_steps: int | None = None,
    wait: bool = True,
    on_event: EventHandler | None = None,
    stop: threading.Event | None = None,
    client: SkyvernClient | None = None,
    store: Store | None = None,
) -> RunOutcome:
    """Run a saved agent (`wpid_…`) with codes for `identifier`; follow it to the end unless `wait=False`.

    The agent's definition is read first and the parameters its blocks' TOTP fields name are
    filled (`outcome.wiring` says how); a run whose blocks would never get our codes is refused
    before it exists. `inspect=False` skips that read; `totp_param` names the parameter yourself.
    `request` holds any other seed fields (parameters, proxy_location, …: shared/SKYVERN.md §3).
    Raises RequestError/LaunchError before anything is sent when the request or setup is wrong,
    SkyvernError when Skyvern refuses. Ctrl-C cancels the run and is re-raised; `stop.set()`
    cancels it and returns an outcome with `interrupted=True`.
    """
    return _launch("agent", settings, {**(request or {}), "agent_id": agent_id}, identifier, mode=mode,
                   totp_param=totp_param, inspect=inspect, max_steps=max_steps, wait=wait, on_event=on_event,
                   stop=stop, client=client, store=store)


def inspect_agent(
    settings: Settings,
    agent_id: str,
    identifier: str,
    *,
    mode: str | None = None, parameters: Mapping[str, Any] | None = None, totp_param: str | None = None,
    client: SkyvernClient | None = None,
) -> WiringPlan:
    """How `launch_agent` would wire the agent's blocks, without starting anything (WiringRefused if it would not)."""
    identifier = check_identifier(identifier)
    check_agent_id(agent_id)
    with ExitStack() as stack:
        skyvern = client or stack.enter_context(make_client(settings))
        return plan_for(fetch_agent(skyvern, agent_id), mode or settings.launcher.mode, identifier,
                        totp_url(settings, identifier), parameters, totp_param)


def launch_task(
    settings: Settings,
    prompt: str,
    identifier: str,
    *,
    url: str | None = None,
    mode: str | None = None,
    request: Mapping[str, Any] | None = None,
    max_steps: int | None = None,
    wait: bool = True,
    on_event: EventHandler | None = None,
    stop: threading.Event | None = None,
    client: SkyvernClient | None = None,
    store: Store | None = None,
) -> RunOutcome:
    """Run a one-off task (POST /v1/run/tasks) with codes for `identifier`; as `launch_agent`."""
    body = {**(request or {}), "prompt": prompt}
    if url:
        body["url"] = url
    return _launch("task", settings, body, identifier, mode=mode, totp_param=None, max_steps=max_steps,
                   wait=wait, on_event=on_event, stop=stop, client=client, store=store)


def attach_pusher(
    settings: Settings,
    run_id: str,
    identifier: str,
    *,
    on_event: EventHandler | None = None,
    stop: threading.Event | None = None,
    cancel_on_stop: bool = False,
    client: SkyvernClient | None = None,
    store: Store | None = None,
) -> RunOutcome:
    """Push codes for `identifier` to a run someone else started, until it is final.

    The run is not ours, so by default an interruption only stops pushing (`cancel_on_stop`
    cancels it too).
    """
    identifier = check_identifier(identifier)
    with _resources(settings, identifier, "push", client, store) as (skyvern, source, _):
        run = skyvern.get_run(run_id)
        if on_event:
            on_event(LaunchEvent("created", f"attached to run {run_id} ({run.get('status')})", run_id,
                                 run.get("status")))
            for note in attach_notes(skyvern, run, identifier, totp_url(settings, identifier)):
                on_event(LaunchEvent("note", note, run_id, run.get("status")))
        return follow_run(skyvern, run, pusher_source=source, interval=settings.launcher.status_interval_seconds,
                          on_event=on_event, stop=stop, cancel_on_stop=cancel_on_stop)
