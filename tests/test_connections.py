"""Silent and slow clients cannot hold connections; open connections are bounded (issue 11, item 5)."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

from tests.helpers_app import add_secret, make_settings, pull, running_service


def _connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    sock.settimeout(10)
    return sock


def _closed_by_server(sock: socket.socket) -> bool:
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except (socket.timeout, OSError):
        return False


def test_connections_without_a_head_in_time_are_closed(tmp_path) -> None:
    settings = make_settings(tmp_path)
    settings.server.header_timeout_seconds = 1.0
    add_secret(settings, "alice@example.com")
    with running_service(settings) as svc:
        silent = [_connect(svc.url) for _ in range(40)]
        dribbling = [_connect(svc.url) for _ in range(40)]
        handed = _connect(svc.url)  # a connection uvicorn's protocol serves after a GET
        handed.sendall(b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n")
        assert handed.recv(65536).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        for step in range(6):  # a byte every 0.3 s: the head never completes in time
            for sock, head in [(s, b"POST /totp/alice%40example.com HTTP/1.1\r\n") for s in dribbling] + [
                    (handed, b"GET /healthz HTTP/1.1\r\n")]:
                try:
                    sock.sendall(head[step:step + 1])
                except OSError:  # closed already: what is tested
                    pass
            time.sleep(0.3)
        with svc.client() as client:  # honest clients are served meanwhile
            assert pull(client, "/totp/alice%40example.com", {"task_id": "t"}).status_code == 200
        assert all(_closed_by_server(sock) for sock in silent + dribbling + [handed])
        assert time.monotonic() - started < 8
        for sock in silent + dribbling + [handed]:
            sock.close()


def test_open_connections_are_bounded(tmp_path) -> None:
    settings = make_settings(tmp_path)
    settings.server.max_connections = 10
    add_secret(settings, "alice@example.com")
    with running_service(settings) as svc:
        held = [_connect(svc.url) for _ in range(10)]
        time.sleep(0.2)
        extra = _connect(svc.url)
        answer = extra.recv(65536)
        assert answer.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in answer
        assert _closed_by_server(extra)
        for sock in held:
            sock.close()
        time.sleep(0.2)
        with svc.client() as client:
            assert pull(client, "/totp/alice%40example.com", {"task_id": "t"}).status_code == 200
