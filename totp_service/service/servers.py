"""Run an ASGI app under uvicorn on a loopback port inside this process (demo, tests, benchmarks)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from totp_service.service.app import TotpApp
from totp_service.service.pull_protocol import PullProtocol


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class _ThreadServer(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the main thread keeps its own handlers
        pass


@contextlib.contextmanager
def running_server(
    app: Any, host: str = "127.0.0.1", port: int = 0, startup_timeout: float = 10.0, **options: Any
) -> Iterator[str]:
    """Serve `app` in a background thread; yield its base URL; stop it on exit."""
    port = port or free_port(host)
    if isinstance(app, TotpApp):  # as `serve` runs it
        options.setdefault("http", PullProtocol)
        options.setdefault("proxy_headers", False)  # the app applies server.trusted_proxies itself
        options.setdefault("limit_concurrency", app.state.service.settings.server.max_connections)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="auto", **options)
    server = _ThreadServer(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"server on {host}:{port} did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
