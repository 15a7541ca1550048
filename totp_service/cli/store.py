"""`totp-service store copy` and `store verify`: moving between SQLite and PostgreSQL, and checking.

A location is a postgresql:// URL or the path of a SQLite store file; the configured store
(store.url / TOTP_SERVICE_DATABASE_URL, else the data directory's file) is the other side.
"""

from __future__ import annotations

import argparse

from totp_service.cli.main import UsageError
from totp_service.config import Settings
from totp_service.store.copy import VerifyReport, copy_store, verify_store
from totp_service.store.open import configured_location, describe, load_master_key, open_location


def _same(a: str, b: str) -> bool:
    return describe(a) == describe(b)


def cmd_store_copy(args: argparse.Namespace, settings: Settings) -> int:
    here = configured_location(settings)
    source, target = (here, args.to) if args.to else (args.from_, here)
    if _same(source, target):
        raise UsageError("the source and the target are the same store")
    key = load_master_key(settings, salt_from=source)
    with open_location(source, key) as opened:
        result = copy_store(opened, source, target, key)
        with open_location(target, key) as copied:
            report = verify_store(opened, copied)
    counts = result.counts
    print(f"copied {counts['secrets']} secret(s), {counts['bindings']} binding(s), {counts['served']} claim(s) "
          f"and {counts['audit']} audit row(s) from {describe(source)} to {result.target}"
          f"{' (created)' if result.created else ''}, in one transaction")
    return _print_report(report, "the copy agrees with its source: every secret opens and gives the same code")


def cmd_store_verify(args: argparse.Namespace, settings: Settings) -> int:
    key = load_master_key(settings)
    with open_location(configured_location(settings), key) as opened:
        if args.against:
            with open_location(args.against, key) as other:
                report = verify_store(opened, other)
        else:
            report = verify_store(opened)
    what = f"and agree with {describe(args.against)}" if args.against else "with this key"
    return _print_report(report, f"{report.secrets} secret(s) open {what}")


def _print_report(report: VerifyReport, ok_line: str) -> int:
    if report.ok:
        print(ok_line)
        return 0
    for problem in report.problems:
        print(f"problem: {problem}")
    print(f"{len(report.problems)} problem(s) found")
    return 1


def register(sub: argparse._SubParsersAction) -> None:
    store = sub.add_parser("store", help="copy the store between SQLite and PostgreSQL; verify it")
    ssub = store.add_subparsers(dest="store_command", required=True, metavar="COMMAND")
    copy = ssub.add_parser("copy", help="copy every sealed secret, binding, claim and audit row, in one transaction")
    side = copy.add_mutually_exclusive_group(required=True)
    side.add_argument("--to", metavar="LOCATION", help="from the configured store to this postgresql:// URL or file")
    side.add_argument("--from", dest="from_", metavar="LOCATION", help="from this URL or file into the configured store")
    copy.set_defaults(handler=cmd_store_copy)
    verify = ssub.add_parser("verify", help="every secret opens with the key; with --against, a copy agrees")
    verify.add_argument("--against", metavar="LOCATION", help="another store (URL or file) that should hold the same")
    verify.set_defaults(handler=cmd_store_verify)
