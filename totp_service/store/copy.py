"""Moving a store between backends (SQLite <-> PostgreSQL) and checking a store, or a copy of one.

Why rows move sealed: the master key never leaves the process, and a copy needs no key on the
target beyond the one both sides already share (the check value proves it). Claims move too, so a
window served before the move is not served again after it; the audit trail moves in its order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from totp_service import otp
from totp_service.store import crypto
from totp_service.store.base import COPY_TABLES, SecretNotFound, Store
from totp_service.store.open import SALT_META, describe, open_location, read_salt, store_exists


@dataclass(frozen=True)
class CopyResult:
    target: str
    created: bool
    counts: dict[str, int]


@dataclass
class VerifyReport:
    secrets: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def copy_store(source: Store, source_location: str, target_location: str, key: crypto.MasterKey) -> CopyResult:
    """Copy every row of `source` into the store at `target_location` (created there with the same
    key and passphrase salt if absent; refused if it holds anything), in one transaction on the target."""
    created = not store_exists(target_location)
    if created:
        salt = read_salt(source_location)
        target = open_location(target_location, key, create=True, meta={SALT_META: salt} if salt else {})
    else:
        target = open_location(target_location, key)  # a wrong key stops here, before anything is written
    rows = source.dump_rows()
    with target:
        target.load_rows(rows)
    return CopyResult(describe(target_location), created, {table: len(rows[table]) for table in COPY_TABLES})


def verify_store(store: Store, against: Store | None = None, at: float | None = None) -> VerifyReport:
    """Every secret opens with the key and its metadata agrees with it; with `against`, the other
    store holds the same identifiers giving the same codes, and as many rows in every table."""
    at = time.time() if at is None else at
    report = VerifyReport()
    metas = store.list_meta()
    for meta in metas:
        report.secrets += 1
        try:
            spec = store.get_spec(meta.identifier)
        except crypto.CryptoError as exc:
            report.problems.append(str(exc))
            continue
        if (spec.algorithm, spec.digits, spec.period) != (meta.algorithm, meta.digits, meta.period):
            report.problems.append(f"{meta.identifier!r}: the metadata columns differ from the sealed secret")
        if against is None:
            continue
        try:
            other = against.get_spec(meta.identifier)
        except SecretNotFound:
            report.problems.append(f"{meta.identifier!r} is missing from the other store")
            continue
        except crypto.CryptoError as exc:
            report.problems.append(f"the other store: {exc}")
            continue
        if otp.code_at(spec, at) != otp.code_at(other, at):
            report.problems.append(f"{meta.identifier!r}: the two stores give different codes")
    if against is not None:
        extra = {m.identifier for m in against.list_meta()} - {m.identifier for m in metas}
        if extra:
            report.problems.append(f"the other store holds {len(extra)} identifier(s) this one does not")
        mine, theirs = store.dump_rows(), against.dump_rows()
        for table in COPY_TABLES:
            if len(mine[table]) != len(theirs[table]):
                report.problems.append(f"{table}: {len(mine[table])} row(s) here, {len(theirs[table])} in the other")
    return report
