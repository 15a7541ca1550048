"""`totp-service launch | launch-task | push | url | demo`: the launcher's command-line front.

Why a module of its own: flags for every seed field, a live status line, signal handling and exit
codes are the CLI's business; the logic lives in `launcher/` (runs, request, pusher).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from totp_service.config import Settings
from totp_service.identifiers import normalize_identifier
from totp_service.launcher import runs as launcher
from totp_service.launcher.request import (
    BROWSER_TYPES,
    PROXY_LOCATIONS,
    RUN_WITH,
    TASK_ENGINES,
    LaunchError,
    RequestError,
    parse_json_or_file,
    parse_pairs,
    proxy_from_flags,
    read_json_file,
)
from totp_service.store import SecretNotFound
from totp_service.store.open import open_store

EXIT_ERROR = 1
EXIT_USAGE = 2

EXIT_CODES_HELP = """\
exit codes:
  0    the run completed
  3    the run failed
  4    the run was terminated
  5    the run was canceled (by someone else)
  6    the run timed out
  130  interrupted (Ctrl-C / SIGTERM): the run was canceled on Skyvern
  1    error (Skyvern unreachable or refusing, service not ready, ...)
  2    usage error, found before anything was sent to Skyvern
"""


# --- output -------------------------------------------------------------------------------------


class StatusPrinter:
    """A live one-line status on a TTY; plain log lines otherwise. Never prints a code."""

    def __init__(self, stream: TextIO, live: bool | None = None):
        self.stream = stream
        self.live = stream.isatty() if live is None else live
        self._line = False

    def __call__(self, event: launcher.LaunchEvent) -> None:
        if self.live:
            if event.kind not in ("tick", "status", "pushed"):
                self._clear()
                print(f"totp-service: {event.message}", file=self.stream)
            status = event.status or "-"
            self.stream.write(f"\r\x1b[2K{event.run_id or ''}  {status}  {event.elapsed:5.0f}s  "
                              f"codes pushed: {event.pushes}")
            self.stream.flush()
            self._line = True
        elif event.kind != "tick":
            print(f"totp-service: [{event.elapsed:6.1f}s] {event.message}", file=self.stream, flush=True)

    def _clear(self) -> None:
        if self._line:
            self.stream.write("\r\x1b[2K")
            self._line = False

    def done(self) -> None:
        if self._line:
            self.stream.write("\n")
            self.stream.flush()
            self._line = False


def _with_wiring(outcome: launcher.RunOutcome) -> dict[str, Any]:
    """The run as Skyvern shows it, plus how the launcher wired the agent's blocks (`wiring`)."""
    if outcome.wiring is None:
        return outcome.run
    return {**outcome.run, "wiring": outcome.wiring.to_json()}


def _print_outcome(outcome: launcher.RunOutcome, as_json: bool) -> None:
    if as_json:
        print(json.dumps(_with_wiring(outcome), indent=2, ensure_ascii=False, sort_keys=True))
        return
    run = outcome.run
    print(f"run {outcome.run_id} {outcome.status} after {outcome.elapsed:.1f}s ({outcome.pushes} code(s) pushed)")
    if run.get("app_url"):
        print(f"  {run['app_url']}")
    if run.get("failure_reason"):
        print(f"  failure: {run['failure_reason']}")
    if run.get("output") is not None:
        print(f"  output: {json.dumps(run['output'], ensure_ascii=False)}")


class _Interrupts:
    """Ctrl-C and SIGTERM raise KeyboardInterrupt (the follower then cancels the run, exit 130).

    While a run is being created the first one is held back until the follower runs: an interrupt
    in the middle of the start request would lose the new run's id, leaving a run nobody can
    cancel. A second interrupt is not held back.
    """

    def __init__(self) -> None:
        self.holding = False
        self.pending = False

    def handler(self, signum: int, frame: Any) -> None:
        if self.holding and not self.pending:  # a second interrupt is not held back
            self.pending = True
            print("\ntotp-service: interrupt received; canceling as soon as the run id is known", file=sys.stderr)
            return
        raise KeyboardInterrupt

    def hold(self) -> None:
        self.holding = True

    def release(self) -> None:
        """Called from inside the follower (or after the start): a held interrupt fires now."""
        self.holding = False
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt


@contextmanager
def _signals_as_interrupt(interrupts: _Interrupts) -> Iterator[None]:
    try:
        previous = {sig: signal.signal(sig, interrupts.handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread (embedded use): leave signals alone
        yield
        return
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


Command = Callable[[argparse.Namespace, Settings, _Interrupts], int]


def _guarded(run: Command) -> Callable[[argparse.Namespace, Settings], int]:
    """Map the launcher's errors and interruptions to one line and an exit code."""

    def handler(args: argparse.Namespace, settings: Settings) -> int:
        interrupts = _Interrupts()
        try:
            with _signals_as_interrupt(interrupts):
                return run(args, settings, interrupts)
        except RequestError as exc:
            print(f"totp-service: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except LaunchError as exc:
            print(f"totp-service: error: {exc}", file=sys.stderr)
            return EXIT_ERROR
        except KeyboardInterrupt:
            print("\ntotp-service: interrupted", file=sys.stderr)
            return launcher.EXIT_INTERRUPTED

    return handler


# --- building requests from flags ---------------------------------------------------------------


def _common_request(args: argparse.Namespace) -> dict[str, Any]:
    request: dict[str, Any] = {
        "title": args.title,
        "proxy_location": proxy_from_flags(args.proxy_location, args.proxy_url, args.geo),
        "webhook_url": args.webhook_url,
        "browser_session_id": args.browser_session_id,
        "browser_address": args.browser_address,
        "max_screenshot_scrolls": args.max_screenshot_scrolls,
        "run_with": args.run_with,
    }
    if args.header:
        request["extra_http_headers"] = parse_pairs(args.header, "--header", sep=":")
    if args.file_id:
        request["file_ids"] = list(args.file_id)
    return {k: v for k, v in request.items() if v is not None}


def agent_request_from_args(args: argparse.Namespace) -> dict[str, Any]:
    request = _common_request(args)
    parameters: dict[str, Any] = {}
    if args.params_file:
        parameters.update(read_json_file(args.params_file, "--params-file"))
    if args.param:
        parameters.update(parse_pairs(args.param, "--param", json_values=True))
    if parameters or args.params_file:
        request["parameters"] = parameters
    if args.cdp_header:
        request["cdp_connect_headers"] = parse_pairs(args.cdp_header, "--cdp-header", sep=":")
    if args.metadata:
        request["run_metadata"] = parse_pairs(args.metadata, "--metadata")
    for name, value in (("browser_profile_id", args.browser_profile_id), ("browser_type", args.browser_type),
                        ("max_elapsed_time_minutes", args.max_minutes), ("ai_fallback", args.ai_fallback)):
        if value is not None:
            request[name] = value
    return request


def task_request_from_args(args: argparse.Namespace) -> dict[str, Any]:
    request = _common_request(args)
    if args.engine:
        request["engine"] = args.engine
    if args.data_extraction_schema:
        request["data_extraction_schema"] = parse_json_or_file(args.data_extraction_schema, "--data-extraction-schema")
    if args.error_code:
        request["error_code_mapping"] = parse_pairs(args.error_code, "--error-code")
    return request


# --- commands -----------------------------------------------------------------------------------


def _finish(outcome: launcher.RunOutcome, printer: StatusPrinter, as_json: bool) -> int:
    printer.done()
    _print_outcome(outcome, as_json)
    return outcome.exit_code


def _run_launch(args: argparse.Namespace, settings: Settings, kind: str, interrupts: _Interrupts) -> int:
    printer = StatusPrinter(sys.stderr)

    created = False

    def on_event(event: launcher.LaunchEvent) -> None:
        nonlocal created
        printer(event)
        if event.kind == "created":
            created = True
        elif created:  # inside the follower, which cancels the run on an interrupt
            interrupts.release()

    interrupts.hold()
    try:
        if kind == "agent":
            outcome = launcher.launch_agent(
                settings, args.agent_id, args.identifier, mode=args.mode, request=agent_request_from_args(args),
                totp_param=args.totp_param, inspect=not args.no_inspect, max_steps=args.max_steps,
                wait=not args.no_wait, on_event=on_event)
        else:
            outcome = launcher.launch_task(
                settings, args.prompt, args.identifier, url=args.url, mode=args.mode,
                request=task_request_from_args(args), max_steps=args.max_steps, wait=not args.no_wait,
                on_event=on_event)
    finally:
        printer.done()
    if args.no_wait:
        if interrupts.pending:  # Ctrl-C while starting a run we will not follow: cancel it
            with launcher.make_client(settings) as client:
                client.cancel_run(outcome.run_id)
            print(f"totp-service: run {outcome.run_id} canceled", file=sys.stderr)
            return launcher.EXIT_INTERRUPTED
        if args.json:
            print(json.dumps(_with_wiring(outcome), indent=2, ensure_ascii=False, sort_keys=True))
        else:
            print(outcome.run_id)
        return 0
    interrupts.release()
    return _finish(outcome, printer, args.json)


def cmd_launch(args: argparse.Namespace, settings: Settings, interrupts: _Interrupts) -> int:
    return _run_launch(args, settings, "agent", interrupts)


def cmd_launch_task(args: argparse.Namespace, settings: Settings, interrupts: _Interrupts) -> int:
    return _run_launch(args, settings, "task", interrupts)


def cmd_push(args: argparse.Namespace, settings: Settings, interrupts: _Interrupts) -> int:
    printer = StatusPrinter(sys.stderr)
    try:
        outcome = launcher.attach_pusher(settings, args.run_id, args.identifier, on_event=printer,
                                         cancel_on_stop=args.cancel_on_interrupt)
    finally:
        printer.done()
    return _finish(outcome, printer, args.json)


def cmd_url(args: argparse.Namespace, settings: Settings, interrupts: _Interrupts) -> int:
    """A URL for an identifier the store does not hold would only ever answer 404: say so instead."""
    url = launcher.totp_url(settings, args.identifier)
    if settings.launcher.code_source == "local":
        with open_store(settings) as store:
            if not store.has_secret(args.identifier):
                raise SecretNotFound(normalize_identifier(args.identifier))
    if args.json:  # for scripts: the URL, its token, and the bound form's URL (POST /totp + bindings)
        print(json.dumps({"identifier": normalize_identifier(args.identifier), "url": url,
                          "token": launcher.url_token(settings, args.identifier),
                          "bound_url": launcher.totp_url(settings, None)}, indent=2))
    else:
        print(url)
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings, interrupts: _Interrupts) -> int:
    from totp_service.cli import demo  # starts servers: only imported when asked for

    return demo.run_demo(out=sys.stdout, timeout=args.timeout)


# --- parsers ------------------------------------------------------------------------------------


def _add_common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--identifier", required=True, metavar="ID",
                        help="whose codes: the totp_identifier (email, phone, user id) the secret is stored under")
    parser.add_argument("--mode", choices=launcher.MODES,
                        help="url: Skyvern pulls from our totp_url; push: we push codes to Skyvern "
                             "(default: launcher.mode, url)")
    parser.add_argument("--title")
    proxy = parser.add_argument_group("proxy (one of)")
    proxy.add_argument("--proxy-location", metavar="NAME",
                       help=f"one of {', '.join(sorted(PROXY_LOCATIONS))}")
    proxy.add_argument("--proxy-url", metavar="URL", help="custom proxy http://user:pass@host:port (self-hosted)")
    proxy.add_argument("--geo", metavar="COUNTRY[/SUBDIVISION[/CITY]]", help="geo-targeted proxy, e.g. US/CA/San Francisco")
    parser.add_argument("--webhook-url", metavar="URL")
    parser.add_argument("--browser-session-id", metavar="PBS_ID")
    parser.add_argument("--browser-address", metavar="URL", help="CDP address of a remote browser")
    parser.add_argument("--max-screenshot-scrolls", type=int, metavar="N")
    parser.add_argument("--header", action="append", metavar="K:V", help="extra_http_headers (repeatable)")
    parser.add_argument("--run-with", choices=RUN_WITH)
    parser.add_argument("--max-steps", type=int, metavar="N",
                        help="agents: header x-max-steps-override; tasks: the body field max_steps")
    parser.add_argument("--file-id", action="append", metavar="FILE_ID", help="file_ids: a file to attach (repeatable, "
                                                                             "at most 50)")
    parser.add_argument("--no-wait", action="store_true", help="url mode only: print the run id and return")
    parser.add_argument("--json", action="store_true", help="print the final run as JSON on stdout")


def register(sub: argparse._SubParsersAction) -> None:
    launch = sub.add_parser(
        "launch", help="run a saved Skyvern agent with TOTP codes from this service, follow it to the end",
        description="Run a saved agent (wpid_...) on Skyvern (SKYVERN_BASE_URL, SKYVERN_API_KEY) with codes for "
                    "--identifier, pulled from our totp_url (url mode) or pushed by us (push mode). The agent's "
                    "blocks are read first and the parameters their TOTP fields name are filled (Skyvern reads "
                    "codes from the blocks, never from the run); everything checkable is checked before the run "
                    "is created. Ctrl-C / SIGTERM cancel the run.",
        epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    launch.add_argument("agent_id", metavar="AGENT_ID", help="the agent's id, wpid_...")
    _add_common_flags(launch)
    launch.add_argument("--param", action="append", metavar="K=V",
                        help="agent parameter (repeatable); V is parsed as JSON when it parses")
    launch.add_argument("--params-file", metavar="FILE", help="JSON object of parameters (--param wins)")
    launch.add_argument("--totp-param", metavar="NAME",
                        help="also put the totp_url (url mode) or the identifier (push mode) in parameters[NAME] "
                             "(the launcher already fills the parameters the agent's blocks name)")
    launch.add_argument("--no-inspect", action="store_true",
                        help="do not read the agent's definition (a key without read access, an older Skyvern): "
                             "nothing checks that a block will ask for our codes")
    launch.add_argument("--browser-type", choices=BROWSER_TYPES, help="browser engine for this run")
    launch.add_argument("--browser-profile-id", metavar="BP_ID")
    launch.add_argument("--max-minutes", type=int, metavar="1..240", help="max_elapsed_time_minutes")
    launch.add_argument("--cdp-header", action="append", metavar="K:V", help="cdp_connect_headers (repeatable)")
    launch.add_argument("--ai-fallback", action=argparse.BooleanOptionalAction, default=None)
    launch.add_argument("--metadata", action="append", metavar="K=V", help="run_metadata (repeatable)")
    launch.set_defaults(handler=_guarded(cmd_launch))

    task = sub.add_parser(
        "launch-task", help="run a one-off Skyvern task (POST /v1/run/tasks) with TOTP codes",
        description="Like launch, for a one-off task.", epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    task.add_argument("--prompt", required=True, help="what the task should do")
    task.add_argument("--url", help="starting URL")
    task.add_argument("--engine", choices=TASK_ENGINES)
    task.add_argument("--data-extraction-schema", metavar="JSON|@FILE")
    task.add_argument("--error-code", action="append", metavar="CODE=MESSAGE", help="error_code_mapping (repeatable)")
    _add_common_flags(task)
    task.set_defaults(handler=_guarded(cmd_launch_task))

    push = sub.add_parser(
        "push", help="push codes to a run started by another client (SDK, curl, n8n) until it ends",
        description="Attach a pusher to an existing run (started with totp_identifier=ID) and follow it to "
                    "its end. Ctrl-C stops pushing; the run is left alone unless --cancel-on-interrupt.",
        epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    push.add_argument("run_id", metavar="RUN_ID", help="wr_... or tsk_...")
    push.add_argument("--identifier", required=True, metavar="ID")
    push.add_argument("--cancel-on-interrupt", action="store_true", help="Ctrl-C / SIGTERM also cancel the run")
    push.add_argument("--json", action="store_true")
    push.set_defaults(handler=_guarded(cmd_push))

    url = sub.add_parser("url", help="print the totp_url to give Skyvern (or any client) for an identifier")
    url.add_argument("identifier")
    url.add_argument("--json", action="store_true", help="URL, token (?k=) and the bound form's URL, as JSON")
    url.set_defaults(handler=_guarded(cmd_url))

    demo = sub.add_parser(
        "demo", help="offline rehearsal: service + Skyvern simulator, one url-mode and one push-mode run",
        description="Starts this service and a Skyvern simulator on loopback ports in a temporary data dir, "
                    "runs one agent in url mode and one in push mode, shows the codes being accepted, cleans up. "
                    "Needs no Skyvern account and touches none of your data.")
    demo.add_argument("--timeout", type=float, default=50.0, help="give up after this many seconds")
    demo.set_defaults(handler=_guarded(cmd_demo))
