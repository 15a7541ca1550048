"""Known-runs mode (`codes.known_runs_only`): the run a url-mode launch starts is registered as live.

Why: in that mode the service answers only pulls whose body names a run bound to the identifier
(service/pull_rules.check_known_run), so a captured pull is useless once its run is over. The
launcher knows the run id as soon as the run exists and sees its final status, so it registers a
run binding then and removes it at the end (or on Ctrl-C/cancel). The expiry is a backstop for a
launcher that dies without cleaning up. A launcher with a remote code source has no store: the
run must then be registered through the service's admin API.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Final

from totp_service.config import Settings
from totp_service.launcher.client import SkyvernError
from totp_service.launcher.request import LaunchError
from totp_service.store import Store, StoreError

DEFAULT_RUN_SECONDS: Final = 4 * 3600.0  # Skyvern's max_elapsed_time_minutes allows at most 240 min
QUEUE_MARGIN_SECONDS: Final = 600.0  # a run may wait in Skyvern's queue before its clock starts


class RunNotRegistered(LaunchError):
    """Known-runs mode: the run exists but its binding could not be written (the run is canceled)."""


def run_expiry(request: Mapping[str, Any], now: float) -> float:
    """When the binding lapses if nobody removes it: the run's own time limit, else a few hours."""
    minutes = request.get("max_elapsed_time_minutes")
    if isinstance(minutes, (int, float)) and not isinstance(minutes, bool) and 0 < minutes <= 240:
        return now + minutes * 60.0 + QUEUE_MARGIN_SECONDS
    return now + DEFAULT_RUN_SECONDS


@contextmanager
def registered_run(settings: Settings, store: Store | None, run_id: str, identifier: str,
                   request: Mapping[str, Any], *, keep: bool, emit: Callable[[str, str], None],
                   cancel: Callable[[], object]) -> Iterator[None]:
    """Bind `run_id` to `identifier` while the block runs (`keep`: leave it to its expiry, as a
    run the launcher does not follow). Off unless `codes.known_runs_only`."""
    if not settings.codes.known_runs_only:
        yield
        return
    if store is None:
        emit("note", f"known-runs mode: this launcher has no store (launcher.code_source is remote): register "
                     f"run {run_id} with the service's admin API, POST /v1/bindings "
                     f'{{"kind": "run", "ref": "{run_id}", "identifier": …}}, or its pulls are refused')
        yield
        return
    expires_at = run_expiry(request, time.time())
    try:
        store.put_binding("run", run_id, identifier, expires_at)
    except StoreError as exc:
        try:
            cancel()
        except SkyvernError as cancel_error:
            emit("note", f"could not cancel run {run_id}: {cancel_error}")
        raise RunNotRegistered(f"known-runs mode: could not register run {run_id} ({exc}); the run was "
                               "canceled, since its pulls would be refused") from None
    emit("note", f"known-runs mode: run {run_id} registered for its codes"
                 + (f" until {time.strftime('%H:%M:%S', time.localtime(expires_at))}" if keep else ""))
    if keep:
        yield
        return
    try:
        yield
    finally:
        try:
            store.remove_binding("run", run_id)
        except StoreError as exc:
            emit("note", f"known-runs mode: could not remove the binding of run {run_id} ({exc}); it lapses "
                         "at its expiry")
