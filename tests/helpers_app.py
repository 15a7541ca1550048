"""Helpers for the service's end-to-end tests: a real store, a real uvicorn, signed requests."""

from __future__ import annotations

import base64
import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pyotp

from totp_service import imports, otp, signing
from totp_service.config import AdminToken, Settings
from totp_service.service.app import create_app
from totp_service.service.servers import running_server
from totp_service.store import Store
from totp_service.store.open import init_store, open_store

SKYVERN_KEY = "sk-test-skyvern-key-0001"
OTHER_KEY = "sk-test-skyvern-key-0002"
ADMIN_TOKEN = "admin-token-0123456789abcdef"
READER_TOKEN = "reader-token-0123456789abcdef"
BASE32 = "JBSWY3DPEHPK3PXPJBSWY3DP"  # 120 bits
OTHER_BASE32 = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"


def make_settings(tmp_path: Path, **codes: Any) -> Settings:
    """A fresh data dir (created with `init`) and settings with one Skyvern key and both tokens."""
    settings = Settings(data_dir=tmp_path / "data")
    settings.master_key = base64.b64encode(os.urandom(32)).decode()
    settings.skyvern.api_key = SKYVERN_KEY
    settings.admin.tokens = [AdminToken(ADMIN_TOKEN, "admin"), AdminToken(READER_TOKEN, "reader")]
    settings.codes.min_validity_seconds = codes.pop("min_validity_seconds", 0.0)
    settings.codes.max_hold_seconds = codes.pop("max_hold_seconds", 0.0)
    settings.codes.single_use = codes.pop("single_use", False)
    # pulls here name identifiers bare (/totp/<identifier>); the URL token has tests of its own
    # (test_url_token.py) and is on in every other set-up (serve, launcher, demo)
    settings.server.require_url_token = codes.pop("require_url_token", False)
    assert not codes, codes
    init_store(settings)
    return settings


def add_secret(settings: Settings, identifier: str, base32: str = BASE32, **options: Any) -> otp.TotpSpec:
    spec = imports.spec_from_base32(base32, period=options.pop("period", 30))
    with open_store(settings) as store:
        store.put_secret(identifier, spec, **options)
    return spec


def expected_code(base32: str, at: float, period: int = 30) -> str:
    return pyotp.TOTP(base32, interval=period).at(int(at))


@dataclass
class Service:
    url: str
    store: Store
    settings: Settings

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=40, follow_redirects=False)


# uvicorn's `http` option for running_service: None = as `serve` runs (pull_protocol.PullProtocol);
# "httptools" = uvicorn's own protocol, so pulls go through the ASGI handler (service/pull.py handle_pull)
SERVER_PROTOCOL: str | None = None


@contextlib.contextmanager
def running_service(settings: Settings, **options: Any) -> Iterator[Service]:
    """create_app + uvicorn on 127.0.0.1; the store is opened here so tests can look into it."""
    store = open_store(settings)
    if SERVER_PROTOCOL:
        options.setdefault("http", SERVER_PROTOCOL)
    try:
        app = create_app(settings, store)
        with running_server(app, **options) as url:
            yield Service(url, store, settings)
    finally:
        store.close()


def signed_headers(body: bytes, key: str = SKYVERN_KEY) -> dict[str, str]:
    return {"content-type": "application/json", "x-skyvern-timestamp": str(int(time.time())),
            "x-skyvern-signature": signing.sign(body, key)}


def pull(client: httpx.Client, path: str, payload: dict[str, Any] | None = None, key: str | None = SKYVERN_KEY,
         raw: bytes | None = None) -> httpx.Response:
    """POST exactly as Skyvern does: compact JSON body, HMAC hex of the raw bytes."""
    body = raw if raw is not None else signing.compact_json(payload or {})
    headers = signed_headers(body, key) if key else {"content-type": "application/json"}
    return client.post(path, content=body, headers=headers)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def wait_for_window_phase(period: int, phase_from: float, phase_to: float) -> float:
    """Sleep until time-in-window is in [phase_from, phase_to); return the time then."""
    while True:
        now = time.time()
        phase = now % period
        if phase_from <= phase < phase_to:
            return now
        wait = (phase_from - phase) % period
        time.sleep(min(max(wait, 0.005), period))
