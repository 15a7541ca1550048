"""`totp-service simulator`: the Skyvern stand-in on a port of your own, to try launch / push / agent show offline.

Why: the tests and the demo run the simulator in-process; a user rehearsing a setup wants it as a
server: saved agents loaded from JSON files (as `POST /v1/workflows` takes them), the login page
checking codes against a secret from a file, and the key the launcher must send.
"""

from __future__ import annotations

import argparse
import base64
import json
import secrets
import sys
from pathlib import Path
from typing import Any

from totp_service import imports
from totp_service.config import Settings
from totp_service.otp import OtpFormatError

EXIT_USAGE = 2


class _SimulatorUsage(ValueError):
    pass


def _read_agent(path: str) -> tuple[dict[str, Any], str | None]:
    """A json_definition (or `{"json_definition": ...}`), and the wpid_ it asks for, if any."""
    try:
        data = json.loads(Path(path).expanduser().read_text("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise _SimulatorUsage(f"--agent {path}: cannot read a JSON object ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise _SimulatorUsage(f"--agent {path}: must hold a JSON object")
    wanted = data.get("workflow_permanent_id")
    definition = data.get("json_definition", data)
    if wanted is not None and (not isinstance(wanted, str) or not wanted.startswith("wpid_")):
        raise _SimulatorUsage(f"--agent {path}: workflow_permanent_id must start with wpid_")
    return definition, wanted


def _read_secret(path: str) -> dict[str, Any]:
    """The login page's secret: an otpauth URI or base32 in a file (never on the command line)."""
    try:
        spec = imports.parse_any(Path(path).expanduser().read_text("utf-8").strip())
    except (OSError, UnicodeDecodeError) as exc:
        raise _SimulatorUsage(f"--secret-file {path}: cannot read it ({type(exc).__name__})") from None
    except OtpFormatError as exc:
        raise _SimulatorUsage(f"--secret-file {path}: {exc}") from None
    return {"secret": base64.b32encode(spec.secret).decode("ascii"), "digits": spec.digits, "period": spec.period,
            "algorithm": spec.algorithm}


def cmd_simulator(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn  # a server and the simulator: only imported when asked for

    from totp_service.simulator.agents import DefinitionInvalid
    from totp_service.simulator.app import create_simulator_app

    api_key = settings.skyvern.api_key or ""
    shown_key = "from SKYVERN_API_KEY"
    if not api_key:
        api_key = "sk-sim-" + secrets.token_urlsafe(12)
        shown_key = api_key  # a throwaway key the user must copy: printing it is the point
    app = create_simulator_app([api_key], code_wait_timeout=args.code_wait)
    state = app.state.simulator
    try:
        if args.secret_file:
            state.add_secret(**_read_secret(args.secret_file))
        agents = []
        for path in args.agent or ():
            definition, wanted = _read_agent(path)
            agents.append((path, state.define_agent(definition, wanted)["workflow_permanent_id"]))
    except (_SimulatorUsage, DefinitionInvalid) as exc:
        print(f"totp-service: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    base = f"http://{args.host}:{args.port}"
    print(f"Skyvern simulator on {base} (API key: {shown_key}); Ctrl-C stops it", flush=True)
    for path, wpid in agents:
        print(f"  agent {wpid}  from {path}", flush=True)
    if not agents:
        print("  no --agent: agent runs answer 404 (Workflow not found, as Skyvern does) until an agent is saved "
              "with POST /v1/workflows", flush=True)
    if not args.secret_file:
        print("  no --secret-file: runs that ask for a code fail until a secret is added with POST /_sim/secrets",
              flush=True)
    example = agents[0][1] if agents else "wpid_..."
    print(f"try: SKYVERN_BASE_URL={base} totp-service agent show {example}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    sim = sub.add_parser(
        "simulator", help="run the Skyvern simulator as a server, to try launch / push / agent show offline",
        description="A Skyvern 1.0.56 stand-in: saved agents (POST/GET /v1/workflows), runs whose blocks read "
                    "their own TOTP fields, signed totp_url polls, pushed codes, a login page that checks each "
                    "code. Loopback only by default. Its API key is SKYVERN_API_KEY, or a new one it prints.")
    sim.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    sim.add_argument("--port", type=int, default=8000, help="port (default 8000, self-hosted Skyvern's)")
    sim.add_argument("--agent", action="append", metavar="FILE.json",
                     help="a saved agent: the json_definition POST /v1/workflows takes (repeatable); a top-level "
                          "workflow_permanent_id keeps its id. Runs of any other agent answer 404, as on Skyvern")
    sim.add_argument("--secret-file", metavar="FILE", help="the login page's TOTP secret (otpauth URI or base32)")
    sim.add_argument("--code-wait", type=float, default=120.0, metavar="SECONDS",
                     help="how long a run waits for a code (Skyvern: 15 minutes)")
    sim.set_defaults(handler=cmd_simulator)
