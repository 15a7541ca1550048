"""`totp-service demo`: an offline rehearsal of both ways Skyvern gets codes, in seconds.

Why: the first command a new user runs should show the whole path working (a signed pull from the
service, pushed codes picked by Skyvern, each code checked by a login page) with no Skyvern
account, no network and none of their data. Everything lives in a temporary directory and on
loopback ports and is gone afterwards. The demo secret and its codes are never printed.
"""

from __future__ import annotations

import base64
import os
import secrets
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TextIO

from totp_service import otp
from totp_service.config import Settings
from totp_service.launcher.runs import LaunchEvent, RunOutcome, launch_agent, totp_url
from totp_service.service.servers import free_port, running_server
from totp_service.store import crypto
from totp_service.store.open import init_store, open_store

IDENTIFIER = "demo@example.com"
AGENT_ID = "wpid_demo_login"
# A saved agent as people build them in Skyvern's editor: the login block's TOTP fields read parameters.
# Skyvern reads codes from these block fields only, so the launcher fills the parameters they name.
DEMO_AGENT = {"title": "demo: sign in", "workflow_definition": {
    "parameters": [
        {"key": "login_id", "parameter_type": "workflow", "workflow_parameter_type": "string"},
        {"key": "otp_url", "parameter_type": "workflow", "workflow_parameter_type": "string", "default_value": ""},
    ],
    "blocks": [{"block_type": "login", "label": "sign_in", "url": "https://example.com/login",
                "navigation_goal": "Sign in as {{ login_id }}", "totp_identifier": "{{ login_id }}",
                "totp_verification_url": "{{ otp_url }}"}],
}}
PERIOD = 5  # short windows: the push half (single use) waits at most one for a fresh code; real secrets have 30 s
SIMULATOR_TIMINGS = dict(poll_interval=0.5, first_poll_delay=0.3, queue_delay=0.5, typing_delay=0.5)


def demo_settings(data_dir: Path, api_key: str) -> Settings:
    settings = Settings(data_dir=data_dir, source="demo")
    settings.master_key = crypto.MasterKey.generate().to_base64()
    settings.skyvern.api_key = api_key
    settings.codes.min_validity_seconds = 2.0
    settings.codes.max_hold_seconds = 8.0
    settings.launcher.status_interval_seconds = 0.25
    settings.server.access_log = False
    return settings


class _Printer:
    def __init__(self, out: TextIO):
        self.out = out

    def __call__(self, event: LaunchEvent) -> None:
        if event.kind != "tick":
            print(f"    [{event.elapsed:5.1f}s] {event.message}", file=self.out, flush=True)


def _explain(outcome: RunOutcome, sim_run: dict, mode: str, out: TextIO) -> bool:
    ok = outcome.status == "completed"
    mark = "OK" if ok else "FAILED"
    if ok and mode == "url":
        answers = ", ".join(sim_run.get("totp_answers") or []) or "-"
        how = f"Skyvern pulled the code from the totp_url (answers: {answers}) and the login accepted it"
    elif ok:
        how = (f"{outcome.pushes} code(s) pushed; Skyvern picked one pushed after the run started "
               "and the login accepted it")
    else:
        how = sim_run.get("failure_reason") or outcome.status
    print(f"  {mark}: run {outcome.run_id} {outcome.status} in {outcome.elapsed:.1f}s: {how}", file=out, flush=True)
    return ok


def run_demo(out: TextIO = sys.stdout, timeout: float = 50.0) -> int:
    """Run both rehearsals; 0 when both runs completed, 1 otherwise."""
    from totp_service.service.app import (
        create_app,  # the service (heavier imports: only when the demo runs)
    )
    from totp_service.simulator.app import create_simulator_app

    began = time.monotonic()
    stop = threading.Event()
    timer = threading.Timer(timeout, stop.set)
    timer.daemon = True
    timer.start()
    api_key = "sk-demo-" + secrets.token_urlsafe(16)
    raw_secret = os.urandom(20)
    spec = otp.TotpSpec(secret=raw_secret, period=PERIOD)
    print("totp-service demo: offline rehearsal (temporary data dir, loopback only, no Skyvern account)", file=out)
    try:
        with tempfile.TemporaryDirectory(prefix="totp-service-demo-") as tmp:
            settings = demo_settings(Path(tmp) / "data", api_key)
            init_store(settings)
            port = free_port()
            settings.server.port = port
            settings.server.public_url = f"http://127.0.0.1:{port}"
            with open_store(settings) as store:
                store.put_secret(IDENTIFIER, spec)
                simulator = create_simulator_app([api_key], code_wait_timeout=timeout, **SIMULATOR_TIMINGS)
                sim_state = simulator.state.simulator
                sim_state.add_secret(base64.b32encode(raw_secret).decode("ascii"), period=PERIOD, agent_id=AGENT_ID)
                sim_state.define_agent(DEMO_AGENT, AGENT_ID)
                service = create_app(settings, store)
                with running_server(simulator) as sim_base, running_server(service, port=port) as service_base:
                    settings.skyvern.base_url = sim_base
                    print(f"  service  {service_base}  (answers Skyvern's signed POST /totp/<identifier>)", file=out)
                    print(f"  Skyvern  {sim_base}  (simulator: its login page checks every code it types)", file=out)
                    print(f"  secret   {IDENTIFIER}: random, 6 digits, {PERIOD} s windows (never shown)", file=out)
                    print(f"  agent    {AGENT_ID}: login block 'sign_in' reads totp_identifier {{{{ login_id }}}} and "
                          "totp_verification_url {{ otp_url }}; Skyvern ignores a run-level totp_url/identifier, "
                          "so the launcher fills those parameters", file=out)
                    results = []
                    for number, mode in enumerate(("url", "push"), start=1):
                        if mode == "url":
                            what = f"Skyvern pulls the code from {totp_url(settings, IDENTIFIER)}"
                        else:
                            what = "we push each fresh code to Skyvern's /v1/credentials/totp"
                        print(f"\n{number}/2 {mode} mode: {what}", file=out, flush=True)
                        outcome = launch_agent(settings, AGENT_ID, IDENTIFIER, mode=mode, on_event=_Printer(out),
                                               stop=stop, store=store, request={"title": f"demo ({mode} mode)"})
                        results.append(_explain(outcome, sim_state.run(outcome.run_id), mode, out))
                        if stop.is_set():
                            break
    finally:
        timer.cancel()
    elapsed = time.monotonic() - began
    if len(results) == 2 and all(results):
        print(f"\ndemo finished in {elapsed:.1f}s: both runs completed with verified codes. Everything it "
              "made is deleted.", file=out)
        print("next: totp-service init; totp-service secret add YOU@EXAMPLE.COM --stdin; totp-service serve; "
              "totp-service launch wpid_... --identifier YOU@EXAMPLE.COM", file=out)
        return 0
    reason = "timed out" if stop.is_set() else "a run did not complete"
    print(f"\ndemo FAILED after {elapsed:.1f}s ({reason})", file=out)
    return 1
