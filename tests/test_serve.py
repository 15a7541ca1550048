"""`totp-service serve` and `totp-service audit` as real subprocesses."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.helpers_app import (
    ADMIN_TOKEN,
    BASE32,
    OTHER_BASE32,
    READER_TOKEN,
    SKYVERN_KEY,
    bearer,
    pull,
)
from totp_service.service.servers import free_port

REPO = Path(__file__).resolve().parent.parent


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOTP_SERVICE_", "SKYVERN_"))}
    env.update(TOTP_SERVICE_DATA_DIR=str(data_dir), PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", **extra)
    return env


def _cli(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "totp_service", *args], env=env, input=stdin,
                          capture_output=True, text=True, timeout=30)


class Proc:
    """A running `serve`, its stderr collected line by line."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.popen = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if text in line:
                    return line
            if self.popen.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"{text!r} not seen; stderr: {''.join(self.lines)}")

    def stop(self) -> int:
        self.popen.send_signal(signal.SIGTERM)
        code = self.popen.wait(timeout=15)
        self._reader.join(timeout=5)
        return code

    @property
    def output(self) -> str:
        return "".join(self.lines)


@contextmanager
def serving(env: dict[str, str], *args: str) -> Iterator[tuple[Proc, str]]:
    port = free_port()
    proc = Proc([sys.executable, "-m", "totp_service", "serve", "--port", str(port), *args], env)
    try:
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        if proc.popen.poll() is None:
            proc.popen.kill()
            proc.popen.wait()


def _pull_path(env: dict[str, str], identifier: str) -> str:
    """The path + ?k= token of `totp-service url --json` (serve requires the URL token)."""
    result = _cli(env, "url", identifier, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    parts = urlsplit(data["url"])
    assert parts.query == f"k={data['token']}" and data["bound_url"].split("?")[0].endswith("/totp")
    return f"{parts.path}?{parts.query}"


@pytest.fixture()
def store_env(tmp_path: Path) -> dict[str, str]:
    config = tmp_path / "config.yaml"  # no holds: this test is about the process, not freshness
    config.write_text("codes:\n  min_validity_seconds: 0\n  max_hold_seconds: 0\n  single_use: false\n"
                      "server:\n  access_log: true\n")  # off by default; on here to check its lines
    env = _env(tmp_path / "data", SKYVERN_API_KEY=SKYVERN_KEY, TOTP_SERVICE_ADMIN_TOKEN=ADMIN_TOKEN,
               TOTP_SERVICE_READER_TOKEN=READER_TOKEN, TOTP_SERVICE_CONFIG=str(config))
    assert _cli(env, "init").returncode == 0
    added = _cli(env, "secret", "add", "alice@example.com", "--stdin", stdin=BASE32)
    assert added.returncode == 0, added.stderr
    return env


def test_serve_starts_answers_and_stops_cleanly_without_leaking_codes(store_env: dict[str, str]) -> None:
    path = _pull_path(store_env, "alice@example.com")
    token = path.split("?k=")[1]
    started = time.monotonic()
    with serving(store_env) as (proc, url):
        line = proc.wait_for("listening on")
        with httpx.Client(base_url=url, timeout=10) as client:
            assert client.get("/healthz").status_code == 200
            elapsed = time.monotonic() - started
            assert "http://127.0.0.1:" in line and "1 identifier(s)" in line and "1 Skyvern key(s)" in line
            assert "WARNING" not in line
            assert pull(client, "/totp/alice%40example.com", {"task_id": "tsk_1"}).status_code == 401  # no token
            codes = [pull(client, path, {"task_id": "tsk_1"}).json()["verification_code"] for _ in range(2)]
            codes.append(client.get("/v1/codes/alice%40example.com", headers=bearer(READER_TOKEN)).json()["code"])
            put = client.put("/v1/secrets/bob", headers=bearer(ADMIN_TOKEN), json={"secret": OTHER_BASE32})
            assert put.status_code == 201
            bad = client.put("/v1/secrets/carol", headers=bearer(ADMIN_TOKEN), json={"secret": OTHER_BASE32 + "!"})
            assert bad.status_code == 400
            pull(client, path, {"task_id": "tsk_1"}, key="wrong")
        with httpx.Client(base_url=url, timeout=10) as fresh:  # a connection that only pulls: serve's own protocol
            codes.append(pull(fresh, f"/totp/Alice%40example.com?k={token}", {"task_id": "tsk_1"}).json()["verification_code"])
        assert proc.stop() == 0
    logs = proc.output
    assert f'"POST {path} HTTP/1.1" 200' in logs  # access log turned on (uvicorn's line)
    assert f'"POST /totp/Alice%40example.com?k={token} HTTP/1.1" 200' in logs  # ... and pull_protocol's
    for secret_text in (BASE32, OTHER_BASE32, SKYVERN_KEY, ADMIN_TOKEN, READER_TOKEN, *codes):
        assert secret_text not in logs
    assert elapsed < 5  # start to first answer (a loose bound for slow CI machines)

    audit = _cli(store_env, "audit", "--identifier", "alice@example.com", "--json")
    assert audit.returncode == 0, audit.stderr
    rows = json.loads(audit.stdout)
    assert [r["outcome"] for r in rows] == ["served", "refused:bad_signature", "served", "served", "served",
                                            "refused:bad_url_token"]
    text = _cli(store_env, "audit", "--since", "1h", "--limit", "2")
    assert text.returncode == 0 and "refused:bad_signature" in text.stdout and len(text.stdout.splitlines()) == 2
    assert _cli(store_env, "audit", "--since", "soon").returncode == 2


def test_forked_workers_share_the_socket_and_stop_together(store_env: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "workers.yaml"
    config.write_text("codes:\n  min_validity_seconds: 0\n  max_hold_seconds: 0\n  single_use: false\n"
                      "server:\n  workers: 2\n  access_log: false\n")
    env = {**store_env, "TOTP_SERVICE_CONFIG": str(config)}
    with serving(env) as (proc, url):
        assert "workers 2" in proc.wait_for("listening on")
        children = _children(proc.popen.pid)
        assert len(children) == 2
        for _ in range(6):  # a new connection each time: either worker may answer
            with httpx.Client(base_url=url, timeout=10) as client:
                assert pull(client, _pull_path(store_env, "alice@example.com"), {"task_id": "tsk_w"}).status_code == 200
        with httpx.Client(base_url=url, timeout=10) as client:
            assert client.put("/v1/secrets/bob", headers=bearer(ADMIN_TOKEN), json={"secret": OTHER_BASE32}).status_code == 201
        bob = _pull_path(store_env, "bob")
        for _ in range(6):  # every worker sees the new secret at once
            with httpx.Client(base_url=url, timeout=10) as client:
                assert pull(client, bob, {"task_id": "tsk_w"}).status_code == 200
        assert proc.stop() == 0
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    rows = json.loads(_cli(store_env, "audit", "--json", "--limit", "100").stdout)
    assert sum(r["outcome"] == "served" for r in rows) == 12


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_startup_line_names_unsafe_settings(tmp_path: Path) -> None:
    env = _env(tmp_path / "data")
    assert _cli(env, "init").returncode == 0
    with serving(env) as (proc, url):
        line = proc.wait_for("listening on")
        assert "no Skyvern API key configured" in line and "every pull is refused" in line
        assert "admin API off" in line
        assert proc.stop() == 0
    config = tmp_path / "unsafe.yaml"
    config.write_text("server:\n  allow_unsigned: true\n  trusted_proxies: ['*']\n")
    port = free_port()
    proc = Proc([sys.executable, "-m", "totp_service", "--config", str(config), "serve", "--host", "0.0.0.0",
                 "--port", str(port)], env)
    try:
        line = proc.wait_for("listening on")
        assert "UNSIGNED PULLS ARE ANSWERED" in line and "without TLS" in line
        assert "trusted_proxies is *" in line
        assert len([l for l in proc.lines if "listening on" in l]) == 1
        assert proc.stop() == 0
    finally:
        if proc.popen.poll() is None:
            proc.popen.kill()


def test_wrong_master_key_is_refused_with_one_line(tmp_path: Path) -> None:
    env = _env(tmp_path / "data")
    assert _cli(env, "init").returncode == 0
    env["TOTP_SERVICE_MASTER_KEY"] = base64.b64encode(os.urandom(32)).decode()
    result = subprocess.run([sys.executable, "-m", "totp_service", "serve", "--port", str(free_port())], env=env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("totp-service: error: TOTP_SERVICE_MASTER_KEY does not open the store")
