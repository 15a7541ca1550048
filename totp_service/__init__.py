"""totp-service: self-hosted TOTP codes for Skyvern agent runs.

The launcher's Python API, for programs that start or follow Skyvern runs themselves::

    from totp_service import load_settings, launch_agent, attach_pusher, totp_url

    settings = load_settings()                       # YAML + environment, as the CLI reads them
    outcome = launch_agent(settings, "wpid_123", "alice@example.com", mode="push",
                           request={"parameters": {"plan": "pro"}})
    outcome.status, outcome.exit_code, outcome.run     # "completed", 0, Skyvern's run JSON

- `launch_agent(settings, agent_id, identifier, *, mode, request, totp_param, inspect, max_steps,
  wait, on_event, stop)` / `launch_task(settings, prompt, identifier, *, url, ...)`: start a run and
  follow it to its end (pushing codes in push mode); a saved agent's blocks are read first and the
  parameters their TOTP fields name are filled (`outcome.wiring`). Ctrl-C cancels the run and is re-raised;
  `stop.set()` (a `threading.Event`) cancels it and returns with `outcome.interrupted`.
- `attach_pusher(settings, run_id, identifier, ...)`: push codes to a run another client started.
- `inspect_agent(settings, agent_id, identifier, *, mode, parameters)`: the wiring `launch_agent`
  would use for a saved agent's blocks (a `WiringPlan`), or the refusal, without starting a run.
- `totp_url(settings, identifier)`: the URL to give Skyvern as `totp_url`.
- `follow_run(client, run, ...)`, `RunOutcome`, `LaunchEvent`, `EXIT_CODES`, and the errors
  `LaunchError` (base), `RequestError` (found before sending), `SkyvernError`.

Names are imported lazily so `import totp_service` stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "launch_agent": "totp_service.launcher.runs",
    "launch_task": "totp_service.launcher.runs",
    "attach_pusher": "totp_service.launcher.runs",
    "follow_run": "totp_service.launcher.runs",
    "inspect_agent": "totp_service.launcher.runs",
    "totp_url": "totp_service.launcher.runs",
    "RunOutcome": "totp_service.launcher.runs",
    "LaunchEvent": "totp_service.launcher.runs",
    "EXIT_CODES": "totp_service.launcher.runs",
    "LaunchError": "totp_service.launcher.request",
    "RequestError": "totp_service.launcher.request",
    "WiringRefused": "totp_service.launcher.agents",
    "SkyvernClient": "totp_service.launcher.client",
    "SkyvernError": "totp_service.launcher.client",
    "load_settings": "totp_service.config",
    "Settings": "totp_service.config",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'totp_service' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
