"""Everything one running service holds in memory, built by the app factory (no module globals).

Why a cache: opening a sealed secret costs an AES-GCM decryption and a TotpSpec validation, and a
row read per request was a measurable share of the hot path. Decrypted specs are kept while the
store's `secrets_version` (bumped by triggers on any change, by any process) is unchanged; that
counter is read at most every `REVALIDATE_SECONDS`, so a change made by the CLI or another worker
is seen within that time, and one made through this process's admin API at once.
Single-use windows handed to a request are also reserved here, so concurrent logins for one
identifier go to different windows without waiting for the database to say so; the database
claim (in the audit transaction) stays the authority.
"""

from __future__ import annotations

import hmac
import time

from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from totp_service import otp, signing
from totp_service.config import Settings
from totp_service.identifiers import normalize_identifier
from totp_service.service.audit import AuditWriter
from totp_service.service.http import iso_utc
from totp_service.service.metrics import Metrics
from totp_service.service.refusals import RefusalGuard
from totp_service.store import SecretMeta, Store

REVALIDATE_SECONDS = 0.05
CACHE_MAX_ENTRIES = 10_000
NORMALIZED_MAX_ENTRIES = 10_000


class CachedSecret:
    """An opened secret and, once computed, the pull answer for its latest window."""

    __slots__ = ("meta", "spec", "counter", "answer")

    def __init__(self, meta: SecretMeta, spec: otp.TotpSpec) -> None:
        self.meta, self.spec = meta, spec
        self.counter, self.answer = -1, b""

    def __repr__(self) -> str:
        return f"<CachedSecret {self.meta.identifier!r}>"

    def pull_answer(self, counter: int) -> bytes:
        """The 200 body for window `counter` (computed once per window)."""
        if counter != self.counter:
            code = otp.code_at(self.spec, counter * self.spec.period)
            expires = iso_utc((counter + 1) * self.spec.period)
            self.answer = b'{"verification_code":"%s","expires_at":"%s"}' % (code.encode(), expires.encode())
            self.counter = counter
        return self.answer


class ServiceState:
    def __init__(self, settings: Settings, store: Store, *, owns_store: bool) -> None:
        self.settings = settings
        self.store = store
        self.owns_store = owns_store
        self.metrics = Metrics()
        self.audit = AuditWriter(store.write_audit, in_thread=store.slow_commits)
        self.signatures = signing.SignatureVerifier(settings.skyvern.signing_keys)
        self.refusals = RefusalGuard(settings.server.refusal_limit, settings.server.refusal_window_seconds)
        # server.trusted_proxies (env FORWARDED_ALLOW_IPS, uvicorn's; default 127.0.0.1): see forwarded_client
        self.forwarded_allow_ips = list(settings.server.trusted_proxies)
        self.trusted_proxies = ProxyHeadersMiddleware(None, self.forwarded_allow_ips)  # type: ignore[arg-type]
        self._normalized: dict[str, str] = {}
        self._url_tokens: dict[str | None, bytes] = {}
        self._tokens = {role: [t.encode("utf-8") for t in settings.tokens_for(role)] for role in ("admin", "reader")}
        self._secrets: dict[str, CachedSecret] = {}
        self._secrets_version = -1
        self._revalidate_at = 0.0
        self._claims: dict[str, set[int]] = {}
        self.started_at = time.time()

    def __repr__(self) -> str:
        return f"<ServiceState {self.store!r}>"

    # --- secrets ---------------------------------------------------------------------------

    def secret(self, identifier: str) -> CachedSecret:
        """Metadata and opened spec of a (normalised) identifier; SecretNotFound if absent."""
        now = time.monotonic()
        if now >= self._revalidate_at:
            version = self.store.secrets_version()
            if version != self._secrets_version:
                self._secrets.clear()
                self._secrets_version = version
            self._revalidate_at = now + REVALIDATE_SECONDS
        cached = self._secrets.get(identifier)
        if cached is None:
            if len(self._secrets) >= CACHE_MAX_ENTRIES:  # bounded memory; a refill is cheap
                self._secrets.clear()
            cached = CachedSecret(self.store.get_meta(identifier), self.store.get_spec(identifier))
            self._secrets[identifier] = cached
        return cached

    def forget(self, identifier: str) -> None:
        """Drop what is cached for an identifier (after an admin write or removal)."""
        identifier = normalize_identifier(identifier)
        self._secrets.pop(identifier, None)
        self._claims.pop(identifier, None)

    def url_token(self, identifier: str | None) -> bytes:
        """The ?k= token of an identifier's totp_url (None: the bound form), remembered (bounded)."""
        found = self._url_tokens.get(identifier)
        if found is None:
            if len(self._url_tokens) >= NORMALIZED_MAX_ENTRIES:
                self._url_tokens.clear()
            found = self._url_tokens[identifier] = self.store.url_token(identifier).encode("ascii")
        return found

    def normalize(self, identifier: str) -> str:
        """normalize_identifier, remembered (bounded): a regex match per pull showed in the profile."""
        found = self._normalized.get(identifier)
        if found is None:
            if len(self._normalized) >= NORMALIZED_MAX_ENTRIES:
                self._normalized.clear()
            found = self._normalized[identifier] = normalize_identifier(identifier)
        return found

    # --- request checks --------------------------------------------------------------------

    def forwarded_client(self, peer: str, forwarded_for: list[bytes]) -> str | None:
        """The client address behind a trusted proxy, by uvicorn's ProxyHeadersMiddleware rules.

        Why here and not uvicorn's middleware: it wrapped every request in one more coroutine for
        a header that only a proxy sends. The audit trail still names the real client behind a
        local TLS proxy (the set-up the start-up warning recommends), and only a peer listed in
        server.trusted_proxies (default 127.0.0.1, as uvicorn's) may say who the client was.
        """
        trusted = self.trusted_proxies.trusted_hosts
        if peer not in trusted:
            return None
        host, _ = trusted.get_trusted_client_address(b", ".join(forwarded_for).decode("latin-1"))
        return host or None

    # --- bindings --------------------------------------------------------------------------

    def find_run(self, run_id: str) -> str | None:
        binding = self.store.find_binding("run", run_id)
        return binding.identifier if binding else None

    def find_agent(self, agent_id: str) -> str | None:
        """Bindings made through the admin API (or the CLI) win over the config file's."""
        binding = self.store.find_binding("agent", agent_id)
        if binding:
            return binding.identifier
        return self.settings.bindings.agents.get(agent_id)

    # --- single-use reservations -----------------------------------------------------------

    def taken(self, identifier: str) -> set[int]:
        return self._claims.get(identifier) or set()

    def reserve(self, identifier: str, counter: int, current: int) -> None:
        claims = self._claims.setdefault(identifier, set())
        claims.add(counter)
        stale = [c for c in claims if c < current - 1]
        for c in stale:
            claims.discard(c)

    def release(self, identifier: str, counter: int) -> None:
        self._claims.get(identifier, set()).discard(counter)

    # --- bearer tokens ---------------------------------------------------------------------

    def role_of(self, authorization: str | None) -> str | None:
        """The role a bearer token grants, or None; every configured token is compared in constant time."""
        if not authorization or not authorization[:7].lower() == "bearer ":
            return None
        given = authorization[7:].strip().encode("utf-8")
        found: str | None = None
        for role in ("reader", "admin"):  # admin last: a token listed under both roles is admin
            for token in self._tokens[role]:
                if hmac.compare_digest(token, given):
                    found = role
        return found

    @property
    def has_tokens(self) -> bool:
        return any(self._tokens.values())
