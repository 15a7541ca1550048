"""Fixtures for the launcher and simulator tests: a simulator, a store with a short-period secret, settings, env.

Short TOTP periods (4 s) and fast simulator timings keep each run to a second or two; codes are
still checked strictly by the simulator's login page.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from totp_service import imports
from totp_service.config import AdminToken, Settings
from totp_service.launcher.client import SkyvernClient
from totp_service.service.servers import free_port, running_server
from totp_service.simulator.app import SimulatorState, create_simulator_app
from totp_service.store import crypto
from totp_service.store.open import init_store, open_store

API_KEY = "sk-launcher-test-key"
SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
IDENTIFIER = "alice@example.com"
AGENT = "wpid_login"
PERIOD = 4
MIN_VALIDITY = 1.0
READER_TOKEN = "reader-token-for-tests-0123456789"
FAST = dict(poll_interval=0.1, first_poll_delay=0.05, queue_delay=0.3, typing_delay=0.2, code_wait_timeout=15.0,
            totp_retry_delay=0.05)
REPO = Path(__file__).resolve().parent.parent


@dataclass
class Sim:
    base: str
    state: SimulatorState

    def requests(self, path_prefix: str = "/v1/") -> list[dict[str, Any]]:
        return httpx.get(f"{self.base}/_sim/requests", params={"path_prefix": path_prefix}).json()

    def fault(self, path_prefix: str, status: int, count: int = 1, **extra: Any) -> None:
        self.state.add_fault(path_prefix, status, count, **extra)

    def push_rows(self) -> list[dict[str, Any]]:
        return self.state.pushed_codes()


def agent_parameter(key: str, default: Any = None, kind: str = "string") -> dict[str, Any]:
    return {"key": key, "parameter_type": "workflow", "workflow_parameter_type": kind, "default_value": default}


def login_agent(parameters: list[dict[str, Any]] | None = None, **fields: Any) -> dict[str, Any]:
    """A saved agent with one login block; by default its TOTP fields read {{ totp_identifier }} / {{ totp_url }}."""
    block = {"block_type": "login", "label": "sign_in", "navigation_goal": "sign in",
             **(fields or {"totp_identifier": "{{ totp_identifier }}", "totp_verification_url": "{{ totp_url }}"})}
    if parameters is None:
        parameters = [agent_parameter("totp_identifier", ""), agent_parameter("totp_url", "")]
    return {"title": "log in", "workflow_definition": {"parameters": parameters, "blocks": [block]}}


@contextmanager
def simulator(**options: Any) -> Iterator[Sim]:
    """The simulator, with AGENT saved as `login_agent()` (a block wired through its parameters); a run of
    any agent not saved is 404, as on Skyvern."""
    app = create_simulator_app([API_KEY], **{**FAST, **options})
    app.state.simulator.define_agent(login_agent(), AGENT)
    with running_server(app) as base:
        yield Sim(base, app.state.simulator)


@dataclass
class Env:
    """A data dir with a store holding SECRET under IDENTIFIER, and settings pointing at `sim`."""

    settings: Settings
    sim: Sim
    config_file: Path
    master_key: str
    extra_env: dict[str, str] = field(default_factory=dict)

    def client(self, **options: Any) -> SkyvernClient:
        return SkyvernClient(self.sim.base, API_KEY, **{"backoff": 0.05, **options})

    def environ(self) -> dict[str, str]:
        """Environment for a `totp-service` subprocess (or monkeypatched in-process runs)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TOTP_SERVICE_", "SKYVERN_"))}
        env.update({
            "TOTP_SERVICE_CONFIG": str(self.config_file),
            "TOTP_SERVICE_DATA_DIR": str(self.settings.data_dir),
            "TOTP_SERVICE_MASTER_KEY": self.master_key,
            "SKYVERN_API_KEY": API_KEY,
            "SKYVERN_BASE_URL": self.sim.base,
            "TOTP_SERVICE_PUBLIC_URL": self.settings.server.effective_public_url,
            "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            **self.extra_env,
        })
        return env

    def apply(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name, value in self.environ().items():
            if name.startswith(("TOTP_SERVICE_", "SKYVERN_")):
                monkeypatch.setenv(name, value)


def make_env(tmp_path: Path, sim: Sim, *, secret: str = SECRET, identifier: str = IDENTIFIER) -> Env:
    master_key = crypto.MasterKey.generate().to_base64()
    settings = Settings(data_dir=tmp_path / "data")
    settings.master_key = master_key
    settings.skyvern.base_url = sim.base
    settings.skyvern.api_key = API_KEY
    settings.codes.min_validity_seconds = MIN_VALIDITY
    settings.codes.max_hold_seconds = 3.0
    settings.launcher.status_interval_seconds = 0.1
    settings.server.port = free_port()
    settings.server.access_log = False
    settings.admin.tokens.append(AdminToken(READER_TOKEN, "reader"))
    init_store(settings)
    with open_store(settings) as store:
        store.put_secret(identifier, imports.spec_from_base32(secret, period=PERIOD))
    config = tmp_path / "config.yaml"
    config.write_text(
        f"codes: {{min_validity_seconds: {MIN_VALIDITY}, max_hold_seconds: 3}}\n"
        "launcher: {status_interval_seconds: 0.1}\n"
        f"server: {{port: {settings.server.port}}}\n",
        "utf-8",
    )
    return Env(settings, sim, config, master_key)


@contextmanager
def service(env: Env) -> Iterator[str]:
    """The real totp service (pull endpoint, /healthz, /v1/codes) on the env's public URL."""
    from totp_service.service.app import create_app

    with running_server(create_app(env.settings), port=env.settings.server.port) as base:
        yield base


def cli_process(env: Env, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "totp_service", *args], env=env.environ(), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until(predicate: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def parse_utc(text: str) -> float:
    from datetime import datetime, timezone

    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()
