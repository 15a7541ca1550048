"""`secret import`: read an authenticator's export, show what it would store, store all or nothing.

Every entry is read and given its identifier before the store is touched; any problem (a bad
entry, an unsupported one without --skip-unsupported, a --map that matches nothing, two entries
with one identifier, one already stored without --replace) stops the import with nothing stored.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from totp_service.config import Settings
from totp_service.identifiers import InvalidIdentifier, check_identifier
from totp_service.imports import (
    FORMAT_NAMES,
    MAX_EXPORT_BYTES,
    ImportedEntry,
    ImportFileError,
    describe,
    printable,
    read_export,
)
from totp_service.store import StoreError
from totp_service.store.open import open_store

IDENTIFIER_SOURCES = ("account", "label", "issuer")
NOTHING = "nothing was imported"


class ImportRefused(Exception):
    """The import cannot go ahead as asked; the message says why and that nothing was stored."""


@dataclass(frozen=True)
class Planned:
    entry: ImportedEntry
    identifier: str | None  # None: unsupported, not stored
    status: str


def register_import(ssub: argparse._SubParsersAction) -> None:
    imp = ssub.add_parser(
        "import", help="import an authenticator export (all or nothing; --dry-run to review first)",
        description="Import every TOTP account from an export file: Aegis (plain or encrypted), 2FAS (plain or "
                    "encrypted), andOTP (.json or .json.aes), Bitwarden (.json or .csv), FreeOTP+, 2FAuth, or a "
                    "text file of otpauth:// and otpauth-migration:// URIs. The format is detected; nothing is "
                    "stored unless every entry can be.")
    imp.add_argument("file", help="the export file, or - for standard input")
    imp.add_argument("--format", choices=FORMAT_NAMES, help="skip detection and read the file as this format")
    imp.add_argument("--password-stdin", action="store_true",
                     help="read the export's password from the first line of standard input "
                          "(otherwise it is asked for, without echo, on a terminal)")
    imp.add_argument("--dry-run", action="store_true",
                     help="show each account's identifier, parameters and status; store nothing")
    imp.add_argument("--skip-unsupported", action="store_true",
                     help="import the rest when some entries are HOTP, Steam or otherwise unsupported")
    imp.add_argument("--identifier-from", choices=IDENTIFIER_SOURCES, default="account",
                     help="identifier rule: the account name (default), the label Issuer:account, or the issuer")
    imp.add_argument("--map", action="append", metavar="NAME=IDENTIFIER",
                     help="store the entry whose name (per --identifier-from) is NAME under IDENTIFIER")
    imp.add_argument("--allow-agent", action="append", metavar="WPID", help="only these agents may get codes")
    imp.add_argument("--replace", action="store_true", help="overwrite secrets already stored")
    imp.set_defaults(handler=cmd_secret_import)


def cmd_secret_import(args: argparse.Namespace, settings: Settings) -> int:
    if args.file == "-" and args.password_stdin:
        raise ImportRefused("--password-stdin reads the password from standard input, so give the export as a FILE")
    mapping = _parse_mapping(args.map or [])
    try:
        export = read_export(_read_source(args.file), args.format, _password_source(args.password_stdin))
    except ImportFileError as exc:
        raise ImportRefused(f"{exc}; {NOTHING}") from None
    unsupported = [e for e in export.entries if e.spec is None]
    if unsupported and not (args.skip_unsupported or args.dry_run):
        listed = "; ".join(f"{describe(e.position, e.issuer, e.account)}: {e.unsupported}" for e in unsupported[:5])
        more = f" (and {len(unsupported) - 5} more)" if len(unsupported) > 5 else ""
        raise ImportRefused(f"{listed}{more}; {NOTHING} (--skip-unsupported imports the other entries)")
    identifiers = _identifiers([e for e in export.entries if e.spec is not None], args.identifier_from, mapping)
    with open_store(settings) as store:
        plan = _plan(export.entries, identifiers, store.has_secret, args)
        if args.dry_run:
            _print_plan(plan, export.format)
            return 0
        stored = [p for p in plan if p.identifier is not None]
        clash = next((p for p in stored if p.status.startswith("duplicate")), None)
        if clash is not None:
            raise ImportRefused(f"{_where(clash.entry)}: {clash.identifier!r} is already stored; "
                                f"{NOTHING} (--replace overwrites, --map stores it under another identifier)")
        try:
            store.put_many([(p.identifier, p.entry.spec) for p in stored],  # type: ignore[misc]
                           allowed_agents=args.allow_agent or (), replace=args.replace)
        except (StoreError, InvalidIdentifier) as exc:
            raise ImportRefused(f"{exc}; {NOTHING}") from None
    for p in plan:
        print(f"stored {p.identifier}" if p.identifier else f"skipped {_where(p.entry)}: {p.entry.unsupported}")
    print(f"imported {len(stored)} secret(s) from the {export.format} export")
    return 0


def _read_source(source: str) -> bytes:
    """At most one byte past the size limit: read_export refuses anything that long."""
    if source == "-":
        stream = getattr(sys.stdin, "buffer", None)
        return stream.read(MAX_EXPORT_BYTES + 1) if stream is not None else sys.stdin.read().encode("utf-8")
    try:
        with Path(source).open("rb") as file:
            return file.read(MAX_EXPORT_BYTES + 1)
    except OSError as exc:
        raise ImportRefused(f"cannot read {source}: {exc.strerror or type(exc).__name__}") from None


def _password_source(from_stdin: bool) -> Callable[[], str | None]:
    """Called only when the export turns out to be encrypted."""
    def ask() -> str | None:
        if from_stdin:
            return sys.stdin.readline().rstrip("\r\n")
        if sys.stdin.isatty():
            try:
                return getpass.getpass("password for the export: ")
            except EOFError:  # Ctrl-D at the prompt
                return None
        return None  # no terminal to ask on: the importer says to use --password-stdin
    return ask


def _parse_mapping(pairs: Sequence[str]) -> dict[str, str]:
    mapping = {}
    for pair in pairs:
        name, sep, identifier = pair.partition("=")
        if not sep or not name or not identifier:
            raise ImportRefused(f"--map takes NAME=IDENTIFIER (got {printable(pair)!r})")
        mapping[name] = identifier
    return mapping


def _identifiers(entries: list[ImportedEntry], source: str, mapping: dict[str, str]) -> dict[int, str]:
    """id(entry) -> identifier, after --identifier-from and --map; unique within the file."""
    names = {id(e): getattr(e, source) or "" for e in entries}
    unmatched = [name for name in mapping if name not in names.values()]
    if unmatched:
        known = ", ".join(sorted({printable(n) for n in names.values() if n})[:10]) or "none"
        raise ImportRefused(f"--map {printable(unmatched[0])!r} matches no entry's {source} "
                            f"(the file's: {known}); {NOTHING}")
    identifiers: dict[int, str] = {}
    first_at: dict[str, ImportedEntry] = {}
    for entry in entries:
        raw = mapping.get(names[id(entry)], names[id(entry)])
        if not raw:
            raise ImportRefused(f"{_where(entry)} has no {source} to use as its identifier; "
                                f"{NOTHING} (give --map or another --identifier-from)")
        try:
            identifier = check_identifier(raw)
        except InvalidIdentifier as exc:
            raise ImportRefused(f"{_where(entry)}: {exc}; {NOTHING}") from None
        if identifier in first_at:
            raise ImportRefused(f"{_where(first_at[identifier])} and {_where(entry)} would both be stored as "
                                f"{identifier!r}; {NOTHING} (give --map or another --identifier-from)")
        first_at[identifier] = entry
        identifiers[id(entry)] = identifier
    return identifiers


def _plan(entries: list[ImportedEntry], identifiers: dict[int, str], is_stored: Callable[[str], bool],
          args: argparse.Namespace) -> list[Planned]:
    plan = []
    for entry in entries:
        identifier = identifiers.get(id(entry))
        if identifier is None:
            status = f"{'skipped' if args.skip_unsupported else 'unsupported'}: {entry.unsupported}"
        elif is_stored(identifier):
            status = "replaces a stored identifier" if args.replace else "duplicate of a stored identifier"
        else:
            status = "new"
        plan.append(Planned(entry, identifier, status))
    return plan


def _print_plan(plan: list[Planned], format_name: str) -> None:
    for p in plan:
        spec = p.entry.spec
        params = f"{spec.algorithm} {spec.digits} digits {spec.period}s" if spec else p.entry.kind
        print("\t".join([p.entry.position, p.identifier or "-", printable(p.entry.issuer or "-"), params, p.status]))
    counts: dict[str, int] = {}
    for p in plan:
        key = p.status.split(":")[0]
        counts[key] = counts.get(key, 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in counts.items())
    print(f"dry run of the {format_name} export: {summary}; nothing was stored")


def _where(entry: ImportedEntry) -> str:
    return describe(entry.position, entry.issuer, entry.account)
