"""`totp-service agent show`: a saved agent's TOTP wiring, and what `launch` would do in each mode.

Why: Skyvern reads the TOTP URL or identifier from each block's own fields, never from the run, so
before a launch (or to fix an agent in Skyvern's editor) a user needs to see which blocks ask for
codes, which parameters they read, and what the launcher would fill or refuse. Nothing is started.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from totp_service.config import Settings
from totp_service.launcher import runs as launcher
from totp_service.launcher.agents import WiringRefused, fetch_agent, plan_for
from totp_service.launcher.request import LaunchError, RequestError, check_agent_id, parse_pairs, read_json_file
from totp_service.launcher.wiring import AgentDefinition

PLACEHOLDER = "ID"
EXIT_NONE_WORKS = 2


def _described(agent: AgentDefinition) -> dict[str, Any]:
    return {
        "agent_id": agent.agent_id, "title": agent.title,
        "parameters": [{"key": p.key, "parameter_type": p.parameter_type, "workflow_parameter_type": p.value_type,
                        "default_value": p.default, "required": p.required} for p in agent.parameters.values()],
        "blocks": [{"label": b.label, "block_type": b.block_type, "inside": list(b.inside),
                    "totp_identifier": b.identifier, "totp_verification_url": b.url,
                    "parameter_keys": list(b.parameter_keys)} for b in agent.blocks],
    }


def _text(report: dict[str, Any], identifier: str) -> list[str]:
    title = f" {report['title']!r}" if report["title"] else ""
    lines = [f"agent {report['agent_id']}{title}"]
    params = [f"{p['key']} ({p['workflow_parameter_type'] or p['parameter_type']}, "
              f"{'no default' if p['default_value'] is None else 'default ' + repr(p['default_value'])})"
              for p in report["parameters"]]
    lines.append(f"  parameters: {', '.join(params) or 'none'}")
    for block in report["blocks"]:
        fields = ", ".join(f"{name} = {block[name]!r}" for name in ("totp_identifier", "totp_verification_url")
                           if block[name]) or "no TOTP field"
        inside = "".join(f" in loop {label!r}" for label in reversed(block["inside"]))
        lines.append(f"  block {block['label']!r} ({block['block_type']}){inside}: {fields}")
    if not report["blocks"]:
        lines.append("  no block has a TOTP field")
    for mode, result in report["modes"].items():
        lines.append(f"launch --mode {mode} --identifier {identifier}:")
        if result["ok"]:
            lines += [f"  {line}" for line in result["lines"]]
        else:
            lines.append(f"  refused: {result['error']}")
    return lines


def cmd_agent_show(args: argparse.Namespace, settings: Settings) -> int:
    try:
        check_agent_id(args.agent_id)
        parameters = read_json_file(args.params_file, "--params-file") if args.params_file else {}
        parameters.update(parse_pairs(args.param or (), "--param", json_values=True))
        identifier = args.identifier or PLACEHOLDER
        with launcher.make_client(settings) as client:
            agent = fetch_agent(client, args.agent_id)
        report = _described(agent)
        report["modes"] = {}
        for mode in launcher.MODES:
            try:
                plan = plan_for(agent, mode, identifier, launcher.totp_url(settings, identifier), parameters,
                                args.totp_param)
            except WiringRefused as exc:
                report["modes"][mode] = {"ok": False, "error": str(exc)}
            else:
                report["modes"][mode] = {"ok": True, "wiring": plan.to_json(), "lines": plan.lines()}
    except RequestError as exc:
        print(f"totp-service: error: {exc}", file=sys.stderr)
        return 2
    except LaunchError as exc:
        print(f"totp-service: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print("\n".join(_text(report, identifier)))
    return 0 if any(result["ok"] for result in report["modes"].values()) else EXIT_NONE_WORKS


def register(sub: argparse._SubParsersAction) -> None:
    agent = sub.add_parser("agent", help="read a saved Skyvern agent's TOTP wiring (nothing is started)")
    asub = agent.add_subparsers(dest="agent_command", required=True, metavar="COMMAND")
    show = asub.add_parser(
        "show", help="the blocks that ask for codes, the parameters they read, and what launch would do",
        description="Reads GET /v1/workflows/AGENT_ID (SKYVERN_BASE_URL, SKYVERN_API_KEY) and shows, for --mode "
                    "push and --mode url, the parameters launch would fill or why it would refuse. Exit 0 when "
                    "at least one mode works, 2 when none does, 1 when the agent cannot be read.")
    show.add_argument("agent_id", metavar="AGENT_ID", help="the agent's id, wpid_...")
    show.add_argument("--identifier", metavar="ID", help=f"whose codes (default: a placeholder, {PLACEHOLDER})")
    show.add_argument("--param", action="append", metavar="K=V", help="agent parameter you would pass (repeatable)")
    show.add_argument("--params-file", metavar="FILE", help="JSON object of parameters (--param wins)")
    show.add_argument("--totp-param", metavar="NAME", help="as launch --totp-param")
    show.add_argument("--json", action="store_true", help="the report as JSON")
    show.set_defaults(handler=cmd_agent_show)
