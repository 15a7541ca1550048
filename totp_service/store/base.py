"""The one store interface that the service, the CLI and the launcher use, and the records it holds.

Vault's `physical` backends are the model: everything above this file talks to `Store`; each
backend is one file beside it. Only ciphertext and non-secret metadata reach a backend: the sealed
blob holds the whole TotpSpec, so metadata columns are for display and cannot change a code.
"""

from __future__ import annotations

import base64
import json
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from totp_service import otp
from totp_service.identifiers import InvalidIdentifier, check_agent_id, check_identifier, check_run_id
from totp_service.store import crypto

CLAIM_RETENTION_SECONDS = 86400.0  # single-use claims older than this are pruned (their windows closed long ago)
CLAIM_PRUNE_INTERVAL_SECONDS = 3600.0  # how often a serving process prunes them

# A single-use claim: (identifier, window counter). Taken at most once, ever, per store.
Claim = tuple[str, int]

# What `store copy` moves, table by table, as stored (secrets stay sealed: the key never moves),
# and the order rows are read in (the audit trail in the order it was written).
COPY_TABLES: dict[str, tuple[tuple[str, ...], str]] = {
    "secrets": (("identifier", "key_id", "sealed", "algorithm", "digits", "period", "issuer", "account",
                 "allowed_agents", "min_validity_seconds", "created_at", "updated_at"), "identifier"),
    "bindings": (("kind", "ref", "identifier", "expires_at", "created_at"), "kind, ref"),
    "served": (("identifier", "counter", "at"), "identifier, counter"),
    "audit": (("at", "identifier", "task_id", "workflow_run_id", "workflow_permanent_id", "client", "route",
               "outcome", "detail", "count"), "id"),
}
Rows = dict[str, list[tuple[Any, ...]]]


class StoreError(Exception):
    """Base of the store's errors; messages are safe to show to a user."""


class StoreMissing(StoreError):
    pass


class StoreExists(StoreError):
    """`create` found a store already there (another `init` may have just made it)."""


class StoreBusy(StoreError):
    """The backend could not take the write now (locked, busy); trying later may work."""


class StoreUnavailable(StoreBusy):
    """The database cannot be reached now (a server backend); the service answers 503 until it is back."""


class SchemaTooNew(StoreError):
    pass


class KeyRotated(StoreError):
    """Another process rotated the master key: this one must not seal (or open) with its old key."""

    def __init__(self) -> None:
        super().__init__("the master key was rotated by another process and this one still holds the old key; "
                         "restart it with the new key (nothing was written)")


class SecretExists(StoreError):
    def __init__(self, identifier: str) -> None:
        super().__init__(f"a secret for {identifier!r} already exists (use --replace to overwrite it)")


class SecretNotFound(StoreError):
    def __init__(self, identifier: str) -> None:
        super().__init__(f"no secret for {identifier!r}")


# Identifier errors are raised below the store (identifiers.py) and caught with the store's own.
STORE_INPUT_ERRORS = (StoreError, InvalidIdentifier)


@dataclass(frozen=True)
class SecretMeta:
    """What may be shown about a secret: never the secret itself."""

    identifier: str
    algorithm: str
    digits: int
    period: int
    issuer: str | None
    account: str | None
    allowed_agents: list[str] = field(default_factory=list)
    min_validity_seconds: float | None = None
    key_id: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Binding:
    kind: str  # "run" (task / workflow run id) or "agent" (wpid_…)
    ref: str
    identifier: str
    expires_at: float | None = None
    created_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def new_binding(kind: str, ref: str, identifier: str, expires_at: float | None = None) -> Binding:
    """A binding checked the same way by every backend (identifier normalised, created now)."""
    if kind not in ("run", "agent"):
        raise StoreError("a binding's kind is 'run' or 'agent'")
    if kind == "agent":
        check_agent_id(ref)
    else:
        check_run_id(ref)
    return Binding(kind, ref, check_identifier(identifier), expires_at, time.time())


@dataclass(frozen=True)
class AuditEntry:
    outcome: str  # "served", "empty" or "refused:<reason>"
    identifier: str | None = None
    task_id: str | None = None
    workflow_run_id: str | None = None
    workflow_permanent_id: str | None = None
    client: str | None = None
    route: str | None = None
    detail: str | None = None
    at: float = field(default_factory=time.time)
    id: int | None = None
    count: int = 1  # > 1: this row stands for that many refusals of one client, for one reason

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_NOT_STORABLE = re.compile("[\x00\ud800-\udfff]")


def audit_text(value: str | None) -> str | None:
    """An audit field as any backend can store it. A lone surrogate (JSON's `\\ud800` in a signed
    body) or a NUL (PostgreSQL text refuses it) becomes U+FFFD instead of failing the row and,
    with it, every row of its group commit."""
    if value is None or (value.isascii() and "\x00" not in value):
        return value
    return _NOT_STORABLE.sub("\ufffd", value)


def seal_spec(key: crypto.MasterKey, identifier: str, spec: otp.TotpSpec) -> bytes:
    """The whole spec, sealed with the identifier as associated data (every backend stores this)."""
    plain = json.dumps(
        {
            "secret": base64.b64encode(spec.secret).decode("ascii"),
            "algorithm": spec.algorithm,
            "digits": spec.digits,
            "period": spec.period,
            "issuer": spec.issuer,
            "account": spec.account,
        }
    ).encode("utf-8")
    return crypto.seal(key, plain, identifier.encode("utf-8"))


def open_spec(key: crypto.MasterKey, identifier: str, sealed: bytes) -> otp.TotpSpec:
    data = json.loads(crypto.open_sealed(key, sealed, identifier.encode("utf-8"), what=repr(identifier)))
    data["secret"] = base64.b64decode(data["secret"])
    return otp.TotpSpec(**data)


def key_meta(key: crypto.MasterKey, meta: dict[str, bytes] | None = None) -> list[tuple[str, bytes]]:
    """The meta rows that name a store's master key (check value, key id, and e.g. a passphrase
    salt), as every backend writes them at creation and at rotation."""
    return list({"check": crypto.make_check_value(key), "key_id": key.key_id.encode(), **(meta or {})}.items())


def reseal_rows(old_key: crypto.MasterKey, new_key: crypto.MasterKey,
                rows: Iterable[Sequence[Any]]) -> list[tuple[str, bytes, str]]:
    """(key_id, sealed, identifier) for each stored (identifier, sealed) row, re-sealed under
    `new_key`: what `rotate_key` writes on every backend."""
    return [(new_key.key_id, seal_spec(new_key, ident, open_spec(old_key, ident, bytes(sealed))), ident)
            for ident, sealed in rows]


class Store(ABC):
    """A store of sealed secrets, bindings, the audit trail and single-use claims.

    Implementations are safe to share between threads. Every method that writes does so in one
    transaction: all of it, or nothing.
    """

    _key: crypto.MasterKey  # the master key it was opened with (set by every backend)

    def _open(self, identifier: str, sealed: bytes) -> otp.TotpSpec:
        """open_spec; a row that no longer opens because another process rotated the key raises KeyRotated."""
        try:
            return open_spec(self._key, identifier, sealed)
        except crypto.CryptoError:
            self.check_key_current()
            raise

    def url_token(self, identifier: str | None) -> str:
        """The `?k=` token of the totp_url for a (normalised) identifier, or of the bound form (None)."""
        return self._key.url_token(identifier)

    slow_commits = False  # True when a commit is a network round trip: audit writes then leave the event loop

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the store lives, for messages (a path, or a URL without its password)."""

    @property
    @abstractmethod
    def key_id(self) -> str:
        """The fingerprint of the master key this store was opened with."""

    # --- lifecycle -------------------------------------------------------------------------

    @abstractmethod
    def close(self) -> None: ...

    def start_background_checkpoints(
        self, interval: float = 0.25, prune_every: float = CLAIM_PRUNE_INTERVAL_SECONDS,
        audit_retention_seconds: float | None = None,
    ) -> None:
        """Start the backend's housekeeping for a long-running server (default: none); with
        `audit_retention_seconds` (audit.retention_days) it also calls prune_audit every `prune_every`."""

    def stop_background_checkpoints(self) -> None:
        """Stop what `start_background_checkpoints` started."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- secrets ---------------------------------------------------------------------------

    def put_secret(
        self,
        identifier: str,
        spec: otp.TotpSpec,
        *,
        allowed_agents: Sequence[str] = (),
        min_validity_seconds: float | None = None,
        replace: bool = False,
    ) -> SecretMeta:
        self.put_many([(identifier, spec)], allowed_agents=allowed_agents,
                      min_validity_seconds=min_validity_seconds, replace=replace)
        return self.get_meta(identifier)

    @abstractmethod
    def put_many(
        self,
        items: Iterable[tuple[str, otp.TotpSpec]],
        *,
        allowed_agents: Sequence[str] = (),
        min_validity_seconds: float | None = None,
        replace: bool = False,
    ) -> int:
        """Store several secrets in one transaction: all of them, or none."""

    @abstractmethod
    def get_spec(self, identifier: str) -> otp.TotpSpec: ...

    @abstractmethod
    def get_meta(self, identifier: str) -> SecretMeta: ...

    @abstractmethod
    def list_meta(self) -> list[SecretMeta]: ...

    @abstractmethod
    def count_secrets(self) -> int: ...

    @abstractmethod
    def has_secret(self, identifier: str) -> bool: ...

    @abstractmethod
    def remove_secret(self, identifier: str) -> None:
        """Its single-use claims stay (pruned with the others): added again, it must not serve a code twice."""

    @abstractmethod
    def secrets_version(self) -> int:
        """A counter bumped on every change to any secret, by any process."""

    @abstractmethod
    def rotate_key(self, new_key: crypto.MasterKey, meta: dict[str, bytes] | None = None) -> int:
        """Re-seal every row under `new_key` in one transaction; afterwards the old key opens nothing."""

    # --- bindings --------------------------------------------------------------------------

    @abstractmethod
    def put_binding(self, kind: str, ref: str, identifier: str, expires_at: float | None = None) -> Binding: ...

    @abstractmethod
    def find_binding(self, kind: str, ref: str, now: float | None = None) -> Binding | None: ...

    @abstractmethod
    def list_bindings(self) -> list[Binding]: ...

    @abstractmethod
    def remove_binding(self, kind: str, ref: str) -> bool: ...

    # --- audit and single-use claims -------------------------------------------------------

    @abstractmethod
    def write_audit(self, items: Sequence[tuple[AuditEntry, Claim | None]]) -> list[bool]:
        """Commit audit rows, each with an optional single-use claim, in one transaction.

        Returns, per item, whether its claim was new (True when it had none). A claim already
        taken means that window's code went out before and must not be handed out again; its
        row is then recorded as `window_taken`, not as what the caller meant to do.
        """

    @abstractmethod
    def read_audit(
        self, identifier: str | None = None, since: float | None = None, limit: int = 100
    ) -> list[AuditEntry]: ...

    @abstractmethod
    def check_key_current(self) -> None:
        """Raise KeyRotated when the store's key check value is no longer this process's key.

        Every write that seals checks it in its own transaction, so no sequence of commands can
        leave a row sealed under a key the store no longer names (issue 11, item 4)."""

    @abstractmethod
    def check_audit_writable(self) -> None:
        """Raise StoreError unless an audit row could be written now (written and rolled back:
        readiness must not grow the store). Readiness includes it: no audit, no code."""

    @abstractmethod
    def export_audit(self, since: float | None = None) -> Iterator[AuditEntry]:
        """Every audit row at or after `since`, oldest first, read in batches (a SIEM export)."""

    @abstractmethod
    def prune_audit(self, before: float) -> int:
        """Delete audit rows older than `before` (audit.retention_days) in short transactions; how many went."""

    @abstractmethod
    def is_claimed(self, identifier: str, counter: int) -> bool: ...

    # --- moving between backends -------------------------------------------------------------

    @abstractmethod
    def dump_rows(self) -> Rows:
        """Every row of COPY_TABLES as stored, read in one consistent snapshot."""

    @abstractmethod
    def load_rows(self, rows: Rows) -> None:
        """Write `rows` (from dump_rows, any backend) in one transaction; StoreError if this store holds any."""

    @abstractmethod
    def prune_claims(self, before: float) -> int:
        """Forget claims made before `before` whose window had closed by then; how many went."""
