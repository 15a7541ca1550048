"""The `totp-service` command: argparse front for the store, the service and the launcher.

Errors raised below are specific exception classes; this edge turns them into one line on
stderr and a non-zero exit, never a stack trace. Nothing here ever prints a secret.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from totp_service import imports, otp
from totp_service.cli.paste import PasteError, read_pasted_line
from totp_service.cli.secret_import import ImportRefused, register_import
from totp_service.config import ConfigError, Settings, load_settings
from totp_service.identifiers import (
    InvalidIdentifier,
    normalize_identifier,
)
from totp_service.imports.qr import QrError, read_qr_text
from totp_service.store import SecretMeta, StoreError, crypto
from totp_service.store.files import UnsafeFileError
from totp_service.store.open import init_store, new_key_file, open_store, unsafe_file_lines

EXIT_ERROR = 1
EXIT_USAGE = 2
Handler = Callable[[argparse.Namespace, Settings], int]


class UsageError(Exception):
    """A command line that cannot work as given."""


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False, sort_keys=True))


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


# --- init and keys ---------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace, settings: Settings) -> int:
    result = init_store(settings)
    if not result.created_store:
        print(f"already initialised: {result.database} (master key from {result.key_source}); nothing changed")
        return 0
    print(f"created store {result.database}")
    if result.created_key_file:
        print(f"created key file {settings.key_file_path} (mode 0600): back it up; without it the secrets are lost")
    else:
        print(f"master key from {result.key_source}")
    return 0


def cmd_rotate_key(args: argparse.Namespace, settings: Settings) -> int:
    new_path = Path(args.new_key_file).expanduser()
    with open_store(settings) as store:
        if os.path.lexists(new_path):  # a link is refused, not followed or replaced
            new_key = crypto.load_key_file(new_path)
        else:
            new_key = new_key_file(new_path)
            print(f"created new key file {new_path} (mode 0600)")
        if new_key.key_id == store.key_id:
            raise UsageError("the new key is the key the store already uses")
        count = store.rotate_key(new_key)
    print(f"re-encrypted {count} secret(s) under key {new_key.key_id}; the old key opens nothing now")
    uses_default_file = not settings.master_key and not settings.passphrase
    if uses_default_file and new_path.resolve() != settings.key_file_path.resolve():
        replacement = settings.key_file_path.with_suffix(".new")
        crypto.write_private_file(replacement, (new_key.to_base64() + "\n").encode("ascii"))
        os.replace(replacement, settings.key_file_path)
        print(f"replaced {settings.key_file_path} with the new key")
    elif not uses_default_file:
        print(f"from now on open the store with the key in {new_path} "
              f"(set TOTP_SERVICE_MASTER_KEY to its content or key_file: {new_path})")
    return 0


# --- secrets ---------------------------------------------------------------------------------


def _spec_from_args(args: argparse.Namespace) -> otp.TotpSpec:
    sources = [s for s in ("uri", "secret", "stdin", "qr") if getattr(args, s)]
    if len(sources) != 1:
        raise UsageError("give exactly one of --uri, --secret, --stdin, --qr")
    # only the flags given: a URI carries its own parameters, and silently ignoring `--digits 8`
    # next to one would store a secret whose codes the site never accepts
    params = {name: value for name in ("algorithm", "digits", "period")
              if (value := getattr(args, name)) is not None}
    if args.secret:
        return imports.spec_from_base32(args.secret, **params)
    text = args.uri or (read_qr_text(Path(args.qr)) if args.qr else _read_stdin())
    if params and text.strip().lower().startswith("otpauth"):
        given = " and ".join(f"--{name}" for name in params)
        raise UsageError(f"{given} only apply to a bare base32 secret: an otpauth URI carries its own parameters")
    return imports.parse_uri(text) if args.uri else imports.parse_any(text, **params)


def _read_stdin() -> str:
    """From a pipe: everything, as given. On a terminal: one hidden line that Enter ends."""
    if not sys.stdin.isatty():
        return sys.stdin.read()
    try:
        return read_pasted_line()
    except PasteError as exc:
        raise UsageError(str(exc)) from None


def _meta_line(meta: SecretMeta) -> str:
    label = " / ".join(x for x in (meta.issuer, meta.account) if x) or "-"
    agents = ",".join(meta.allowed_agents) or "any agent"
    return f"{meta.identifier}\t{meta.algorithm} {meta.digits} digits {meta.period}s\t{label}\t{agents}"


def cmd_secret_add(args: argparse.Namespace, settings: Settings) -> int:
    spec = _spec_from_args(args)
    with open_store(settings) as store:
        meta = store.put_secret(
            args.identifier,
            spec,
            allowed_agents=args.allow_agent or (),
            min_validity_seconds=args.min_validity,
            replace=args.replace,
        )
    if args.json:
        _print_json(meta.to_dict())
    else:
        print(f"stored {meta.identifier} ({meta.algorithm}, {meta.digits} digits, {meta.period}s)")
    return 0


def cmd_secret_list(args: argparse.Namespace, settings: Settings) -> int:
    with open_store(settings) as store:
        metas = store.list_meta()
    if args.json:
        _print_json([m.to_dict() for m in metas])
    elif not metas:
        print("no secrets stored (add one with `totp-service secret add IDENTIFIER --stdin`)")
    else:
        for meta in metas:
            print(_meta_line(meta))
    return 0


def cmd_secret_show(args: argparse.Namespace, settings: Settings) -> int:
    with open_store(settings) as store:
        meta = store.get_meta(args.identifier)
    if args.json:
        _print_json(meta.to_dict())
    else:
        for key, value in meta.to_dict().items():
            if key in ("created_at", "updated_at"):
                value = _iso(value)
            print(f"{key}: {value}")
    return 0


def cmd_secret_remove(args: argparse.Namespace, settings: Settings) -> int:
    with open_store(settings) as store:
        store.remove_secret(args.identifier)
    print(f"removed {normalize_identifier(args.identifier)}")
    return 0


_MAX_UNIX_SECONDS = 1e11  # year 5138: anything larger is milliseconds (or nonsense), not seconds


def _unix_seconds(text: str) -> float:
    """`--at`: unix seconds, as `date +%s` prints them."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise UsageError(f"--at takes unix seconds (e.g. {int(time.time())}); {text!r} is not a number")
    if value < 0:
        raise UsageError(f"--at takes unix seconds since 1970; {text} is negative")
    if value >= _MAX_UNIX_SECONDS:
        raise UsageError(f"--at takes unix seconds (e.g. {int(time.time())}); {text} is far too large "
                         "(milliseconds? divide by 1000)")
    return value


def cmd_code(args: argparse.Namespace, settings: Settings) -> int:
    at = time.time() if args.at is None else _unix_seconds(args.at)
    with open_store(settings) as store:
        meta = store.get_meta(args.identifier)
        spec = store.get_spec(args.identifier)
    code = otp.code_at(spec, at)
    left = otp.seconds_left(spec, at)
    if args.json:
        _print_json({"identifier": meta.identifier, "code": code, "seconds_left": round(left, 3),
                     "expires_at": _iso(otp.window_start(spec, at) + spec.period)})
    else:
        print(f"{code}  ({int(left)}s left)")
    return 0


# --- the parser -----------------------------------------------------------------------------


def _add_secret_parsers(sub: argparse._SubParsersAction) -> None:
    secret = sub.add_parser("secret", help="add, import, list, show and remove secrets")
    ssub = secret.add_subparsers(dest="secret_command", required=True, metavar="COMMAND")

    add = ssub.add_parser("add", help="store one secret under an identifier")
    add.add_argument("identifier", help="the totp_identifier: an email, phone number or user id")
    add.add_argument("--uri", help="an otpauth://totp/... URI")
    add.add_argument("--secret", help="a base32 secret (prefer --stdin: it stays out of shell history)")
    add.add_argument("--stdin", action="store_true", help="read a URI or base32 secret from standard input")
    add.add_argument("--qr", metavar="IMAGE", help="a screenshot of the QR code (qr extra: pip install '.[qr]')")
    add.add_argument("--algorithm", help="SHA1 (default), SHA256 or SHA512 (with a bare base32 secret)")
    add.add_argument("--digits", type=int, help="6 (default), 7 or 8 (with a bare base32 secret)")
    add.add_argument("--period", type=int, help="seconds per code, default 30 (with a bare base32 secret)")
    add.add_argument("--allow-agent", action="append", metavar="WPID", help="only this agent may get codes")
    add.add_argument("--min-validity", type=seconds, metavar="SECONDS", help="override codes.min_validity_seconds")
    add.add_argument("--replace", action="store_true", help="overwrite an existing secret")
    add.add_argument("--json", action="store_true")
    add.set_defaults(handler=cmd_secret_add)

    register_import(ssub)

    lst = ssub.add_parser("list", help="list identifiers and metadata (never secrets)")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(handler=cmd_secret_list)

    show = ssub.add_parser("show", help="one secret's metadata (never the secret)")
    show.add_argument("identifier")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=cmd_secret_show)

    rm = ssub.add_parser("remove", help="delete a secret")
    rm.add_argument("identifier")
    rm.set_defaults(handler=cmd_secret_remove)


def _add_global_flags(parser: argparse.ArgumentParser, default: Any = None) -> None:
    parser.add_argument("--config", metavar="FILE", default=default,
                        help="YAML config (default: $TOTP_SERVICE_CONFIG)")
    parser.add_argument("--data-dir", metavar="DIR", default=default,
                        help="data directory (default: $TOTP_SERVICE_DATA_DIR or ~/.local/share/totp-service)")


def _subcommand_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                found += [child, *_subcommand_parsers(child)]
    return found


def seconds(text: str) -> float:
    """An argparse type: a finite number of seconds, 0 or more (not nan, inf or -5)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value <= 86400:
        raise argparse.ArgumentTypeError(f"{text!r} must be a number of seconds from 0 to 86400")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="totp-service",
        description="Self-hosted TOTP codes for Skyvern runs: encrypted store, signed totp_url, push launcher.",
    )
    _add_global_flags(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    init = sub.add_parser("init", help="create the data dir, key file and database (safe to rerun)")
    init.set_defaults(handler=cmd_init)

    rotate = sub.add_parser("rotate-key", help="re-encrypt every secret under a new master key")
    rotate.add_argument("--new-key-file", required=True, metavar="FILE", help="created if missing")
    rotate.set_defaults(handler=cmd_rotate_key)

    _add_secret_parsers(sub)

    code = sub.add_parser("code", help="print the current code and the seconds it has left")
    code.add_argument("identifier")
    code.add_argument("--at", metavar="UNIX_SECONDS", help="compute for this time instead of now (unix seconds)")
    code.add_argument("--json", action="store_true")
    code.set_defaults(handler=cmd_code)

    for register in _extension_registrars():
        register(sub)
    for child in _subcommand_parsers(parser):  # `code ID --data-dir X` works as well as before `code`
        if not {"--config", "--data-dir"} & set(child._option_string_actions):
            _add_global_flags(child, default=argparse.SUPPRESS)
    return parser


def _extension_registrars() -> list[Callable[[argparse._SubParsersAction], None]]:
    """Commands that live in their own modules (service, launcher), when present."""
    registrars = []
    for module_name in ("totp_service.cli.serve", "totp_service.cli.launch", "totp_service.cli.agent",
                        "totp_service.cli.simulator", "totp_service.cli.store"):
        try:
            module = __import__(module_name, fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        registrars.append(module.register)
    return registrars


def _known_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [
        UsageError, ImportRefused, ConfigError, StoreError, InvalidIdentifier, crypto.CryptoError, otp.OtpFormatError,
        QrError, UnsafeFileError,
    ]
    try:
        from totp_service.launcher.client import SkyvernError
    except ImportError:  # pragma: no cover - the client module is part of the package
        pass
    else:
        errors.append(SkyvernError)
    return tuple(errors)


def _warn_unsafe_files(args: argparse.Namespace, settings: Settings) -> None:
    """Readable key file or database: one line per file (serve puts them in its start-up line)."""
    if args.command in ("serve", "demo") or settings.refuse_readable_files:
        return
    for line in unsafe_file_lines(settings):
        print(f"totp-service: warning: {line}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    os.umask(0o077)  # anything we create (WAL files, keys) is owner-only
    parser = build_parser()
    for argument in sys.argv[1:] if argv is None else argv:
        if not otp.is_unicode(argument):  # bytes that were not UTF-8 (surrogate-escaped by Python)
            parser.error(f"the argument {argument.encode('utf-8', 'surrogateescape')!r} is not valid UTF-8")
    args = parser.parse_args(argv)
    try:
        overrides = {"data_dir": Path(args.data_dir).expanduser()} if args.data_dir else None
        settings = load_settings(args.config, overrides=overrides)
        _warn_unsafe_files(args, settings)
        handler: Handler = args.handler
        return handler(args, settings)
    except _known_errors() as exc:
        print(f"totp-service: error: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, UsageError) else EXIT_ERROR
    except KeyboardInterrupt:
        return 130
