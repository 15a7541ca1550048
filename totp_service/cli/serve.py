"""`totp-service serve` and `totp-service audit`: the service's two commands.

Why here: cli/main.py stays the front for the store; this module knows uvicorn and the app. A wrong
master key is found before anything listens (one line, exit 1); the start-up line says where the
service listens, what it holds and every unsafe setting.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import math
import os
import re
import signal
import socket
import sys
import time
from datetime import datetime, timezone
from typing import Any

import uvicorn

from totp_service.cli.main import UsageError
from totp_service.config import Settings
from totp_service.service.app import create_app
from totp_service.service.pull_protocol import PullProtocol
from totp_service.service.tls import check_tls_files, readable_by_others
from totp_service.store import AuditEntry
from totp_service.store.open import load_master_key, open_store, store_location, unsafe_file_lines

_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


# --- serve -----------------------------------------------------------------------------------


def _admin_api_part(admins: int, readers: int) -> str:
    if not admins and not readers:
        return "admin API off (no token)"
    plural = lambda n, what: f"{n} {what} token{'' if n == 1 else 's'}"  # noqa: E731
    return f"admin API on ({plural(admins, 'admin')}, {plural(readers, 'reader')})"


def startup_line(settings: Settings, identifiers: int) -> str:
    """One line: where, what, and every setting that weakens security."""
    server = settings.server
    scheme = "https" if server.tls_cert else "http"
    keys = len(settings.skyvern.signing_keys)
    parts = [
        f"totp-service: listening on {scheme}://{server.host}:{server.port}",
        f"totp_url {settings.server.effective_public_url}/totp/<identifier>"
        + ("?k=<token> (`totp-service url <identifier>`)" if settings.server.require_url_token else ""),
        f"{identifiers} identifier(s)" + (f" in {store_location(settings)}" if settings.store.url else ""),
        f"{keys} Skyvern key(s)",
        f"workers {max(1, server.workers)}",
    ]
    if settings.codes.known_runs_only:
        parts.append("known-runs mode (only pulls naming a registered live run are answered)")
    parts.append(_admin_api_part(len(settings.tokens_for("admin")), len(settings.tokens_for("reader"))))
    warnings = []
    if server.allow_unsigned:
        warnings.append("UNSAFE server.allow_unsigned is true: UNSIGNED PULLS ARE ANSWERED")
    elif not keys:
        warnings.append("no Skyvern API key configured (SKYVERN_API_KEY / skyvern.api_keys): every pull is refused")
    if server.host not in _LOOPBACK and not server.tls_cert:
        warnings.append(f"UNSAFE bound to {server.host} without TLS (use a TLS proxy or server.tls_cert/tls_key)")
    if server.tls_key and readable_by_others(server.tls_key):
        warnings.append(f"UNSAFE server.tls_key {server.tls_key} is readable by other users (chmod 600 it)")
    warnings += unsafe_file_lines(settings)
    if "*" in server.trusted_proxies:
        warnings.append("UNSAFE server.trusted_proxies is *: any client can name any address in the audit trail")
    if not server.require_url_token:
        warnings.append("UNSAFE server.require_url_token is false: a captured signed pull gets any identifier's code")
    if server.max_timestamp_skew_seconds is not None:
        warnings.append(f"x-skyvern-timestamp checked to ±{server.max_timestamp_skew_seconds:g}s")
    line = ", ".join(parts)
    if warnings:
        line += "; WARNING: " + "; ".join(warnings)
    return line


def _configure_logging(access_log: bool) -> None:
    """Our own format; uvicorn's own start-up chatter off; access lines (path, status; no bodies)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").setLevel(logging.INFO if access_log else logging.WARNING)


class _Server(uvicorn.Server):
    """Prints the start-up line once the socket is bound and the app's lifespan has started."""

    def __init__(self, config: uvicorn.Config, banner: str) -> None:
        super().__init__(config)
        self._banner = banner

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            print(self._banner, file=sys.stderr, flush=True)

    def handle_exit(self, sig: int, frame: Any) -> None:
        """SIGTERM is the normal way to stop a service: shut down gracefully and exit 0
        (uvicorn would re-raise it after shutdown, making the exit status 143)."""
        super().handle_exit(sig, frame)
        if sig == signal.SIGTERM and sig in self._captured_signals:
            self._captured_signals.remove(sig)


def _uvicorn_options(settings: Settings) -> dict[str, Any]:
    server = settings.server
    options: dict[str, Any] = dict(host=server.host, port=server.port, log_config=None,
                                   access_log=server.access_log, server_header=False, lifespan="on",
                                   timeout_graceful_shutdown=5, limit_concurrency=server.max_connections,
                                   proxy_headers=False,  # the app applies them (app.py)
                                   http=PullProtocol)  # pulls answered without ASGI, the rest by uvicorn
    if server.tls_cert:
        options.update(ssl_certfile=server.tls_cert, ssl_keyfile=server.tls_key)
    return options


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    if args.host:
        settings.server.host = args.host
    if args.port is not None:
        if not 0 < args.port < 65536:
            raise UsageError(f"--port must be between 1 and 65535 (got {args.port})")
        settings.server.port = args.port
    if settings.server.tls_cert and settings.server.tls_key:
        check_tls_files(settings.server.tls_cert, settings.server.tls_key)
    _configure_logging(settings.server.access_log)
    if settings.server.workers > 1:
        return _serve_forked(settings, settings.server.workers)
    app = create_app(settings)  # opens the store: a wrong master key stops us here
    identifiers = app.state.service.store.count_secrets()
    _Server(uvicorn.Config(app, **_uvicorn_options(settings)), startup_line(settings, identifiers)).run()
    return 0


# --- several workers: fork after imports, one shared listening socket --------------------------

_RESPAWN_MIN_SECONDS = 2.0  # a worker that dies sooner than this after its start is not restarted


def _serve_forked(settings: Settings, workers: int) -> int:
    """`server.workers > 1`: this process checks the key, binds the socket, then forks the workers.

    Why fork and not uvicorn's `workers=` (multiprocessing spawn): every spawned worker imports
    Python, Starlette, uvicorn and cryptography again (~45 MiB each). Forked after the imports,
    the workers share those pages copy-on-write (`gc.freeze()` keeps the collector from dirtying
    them), and the one listening socket is inherited, so the kernel hands each connection to
    whichever worker accepts first. Each worker opens its own SQLite connection after the fork
    (connections must not cross a fork); WAL mode and the group-commit audit writer make several
    writers safe, the spec cache re-validates every row it uses, and single-use claims are
    decided in the audit transaction (the database is the authority, see state.py).

    This process only supervises: it forwards SIGTERM/SIGINT, restarts a worker that dies
    (unless it died right after starting), and exits 0 after a clean shutdown.
    """
    key = load_master_key(settings)  # once: a passphrase is stretched here, not per worker
    with open_store(settings, key) as store:  # a wrong master key stops us here
        identifiers = store.count_secrets()
    config = uvicorn.Config(_no_app, **_uvicorn_options(settings))
    sock = config.bind_socket()
    sock.listen(config.backlog)  # connections queue from now on, before any worker is up
    banner = startup_line(settings, identifiers)
    gc.collect()
    gc.freeze()  # objects made so far stay out of the collector's reach: shared pages stay shared

    children: dict[int, float] = {}
    stopping = False
    failed = False

    def spawn() -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                code = _run_worker(settings, key, sock)
            finally:
                os._exit(code)
        children[pid] = time.monotonic()

    def forward(sig: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for _ in range(workers):
        spawn()
    print(banner, file=sys.stderr, flush=True)
    try:
        while children:
            pid, status = os.wait()
            started = children.pop(pid, None)
            if started is None or stopping:
                continue
            code = os.waitstatus_to_exitcode(status)
            if time.monotonic() - started < _RESPAWN_MIN_SECONDS:
                print(f"totp-service: worker {pid} exited ({code}) right after starting; stopping",
                      file=sys.stderr, flush=True)
                failed = True
                forward(signal.SIGTERM, None)
            else:
                print(f"totp-service: worker {pid} exited ({code}); starting another", file=sys.stderr, flush=True)
                spawn()
    finally:
        sock.close()
    return 1 if failed else 0


async def _no_app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover - replaced per worker
    raise RuntimeError("the supervisor serves nothing")


def _run_worker(settings: Settings, key: Any, sock: socket.socket) -> int:
    store = open_store(settings, key)
    try:
        app = create_app(settings, store)
        server = _WorkerServer(uvicorn.Config(app, **_uvicorn_options(settings)))
        server.run(sockets=[sock])
        return 0 if server.started else 3
    finally:
        store.close()


class _WorkerServer(uvicorn.Server):
    """A forked worker: SIGTERM (from the supervisor) is its normal stop, exit 0."""

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        if sig == signal.SIGTERM and sig in self._captured_signals:
            self._captured_signals.remove(sig)


# --- audit -----------------------------------------------------------------------------------


def parse_since(text: str, now: float | None = None) -> float:
    """ISO 8601 (no zone = UTC), unix seconds, or an age such as 30m, 2h, 7d."""
    text = text.strip()
    usage = f"--since takes an ISO 8601 time, unix seconds or an age like 30m, 2h, 7d (got {text!r})"
    match = _RELATIVE.fullmatch(text)
    try:
        if match:
            since = (time.time() if now is None else now) - float(match.group(1)) * _UNITS[match.group(2)]
        else:
            try:
                since = float(text)
            except ValueError:
                parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
                since = (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()
    except (ValueError, OverflowError):
        raise UsageError(usage) from None
    if not math.isfinite(since):
        raise UsageError(usage)
    return since


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _audit_line(entry: AuditEntry) -> str:
    ids = " ".join(f"{name}={value}" for name, value in (
        ("task", entry.task_id), ("run", entry.workflow_run_id), ("agent", entry.workflow_permanent_id),
        ("client", entry.client), ("route", entry.route)) if value)
    detail = f"  ({entry.detail})" if entry.detail else ""
    outcome = entry.outcome if entry.count == 1 else f"{entry.outcome} x{entry.count}"
    return f"{_iso(entry.at)}  {outcome:<28} {entry.identifier or '-'}  {ids}{detail}"


def cmd_audit(args: argparse.Namespace, settings: Settings) -> int:
    if not 1 <= args.limit <= 100000:
        raise UsageError("--limit must be between 1 and 100000")
    since = parse_since(args.since) if args.since else None
    with open_store(settings) as store:
        entries = store.read_audit(args.identifier, since, args.limit)
    if args.json:
        print(json.dumps([{**e.to_dict(), "at_iso": _iso(e.at)} for e in entries], indent=2, ensure_ascii=False))
    elif not entries:
        print("no audit entries")
    else:
        for entry in reversed(entries):  # oldest first, like a log
            print(_audit_line(entry))
    return 0


def cmd_audit_export(args: argparse.Namespace, settings: Settings) -> int:
    """Every row since --since, oldest first, one JSON object a line (what a SIEM ingests)."""
    since = parse_since(args.since) if args.since else None
    with open_store(settings) as store:
        out = sys.stdout
        for entry in store.export_audit(since):
            out.write(json.dumps({**entry.to_dict(), "at_iso": _iso(entry.at)}, ensure_ascii=False) + "\n")
    out.flush()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="run the HTTP service (Skyvern pull endpoint, admin API)")
    serve.add_argument("--host", help="address to bind (default: server.host, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: server.port, 8088)")
    serve.set_defaults(handler=cmd_serve)

    audit = sub.add_parser("audit", help="read the audit trail (codes served and refused)")
    audit.add_argument("--identifier", help="only this identifier")
    audit.add_argument("--since", help="ISO 8601 time, unix seconds, or an age: 30m, 2h, 7d")
    audit.add_argument("--limit", type=int, default=50, help="newest N entries (default 50)")
    audit.add_argument("--json", action="store_true")
    audit.set_defaults(handler=cmd_audit)
    audit_sub = audit.add_subparsers(dest="audit_command", metavar="export")
    export = audit_sub.add_parser("export", help="every row since a time, one JSON object a line (for a SIEM; "
                                                 "run it before audit.retention_days prunes them)")
    export.add_argument("--since", help="ISO 8601 time, unix seconds, or an age: 30m, 2h, 7d (default: everything)")
    export.add_argument("--format", choices=["jsonl"], default="jsonl", help="jsonl: one JSON object a line")
    export.set_defaults(handler=cmd_audit_export)
