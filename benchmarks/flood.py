#!/usr/bin/env python3
"""A bad-signature flood against a real `serve`: what it adds to the store, and whether honest
pulls made during it are answered (issue 11, item 1). Run by hand, from the repository root:

    python benchmarks/flood.py                  # 100,000 requests, 64 connections
    python benchmarks/flood.py --requests 20000 --tree /path/to/another/checkout   # compare

Each flood request is `POST /totp/<500 characters>` with a signature made with a key the
service does not know. An honest, correctly signed pull goes out every 100 ms meanwhile, from
a client of its own. Printed: flood statuses, honest statuses, requests/s, and the size of the
database + WAL before, right after, and 5 s after the flood.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import hashlib
import hmac
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KEY = "sk-flood-test-key"
BASE32 = "JBSWY3DPEHPK3PXPJBSWY3DP"


def sign(body: bytes, key: str) -> str:
    return hmac.new(key.encode(), body, hashlib.sha256).hexdigest()


def store_bytes(data_dir: Path) -> int:
    return sum(p.stat().st_size for p in (data_dir / "totp.db", data_dir / "totp.db-wal") if p.exists())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)
    return status


async def flood(port: int, total: int, connections: int, statuses: collections.Counter) -> None:
    body = b'{"task_id":"tsk_flood"}'
    request = (f"POST /totp/{'x' * 500} HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
               f"x-skyvern-signature: {sign(body, 'not-the-key')}\r\nx-skyvern-timestamp: {int(time.time())}\r\n"
               f"content-length: {len(body)}\r\n\r\n").encode() + body
    left = [total]

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while left[0] > 0:
            left[0] -= 1
            writer.write(request)
            try:
                statuses[await read_response(reader)] += 1
            except (asyncio.IncompleteReadError, ConnectionError):
                statuses["closed"] += 1
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()

    await asyncio.gather(*(one() for _ in range(connections)))


async def honest(port: int, path: str, stop: asyncio.Event, statuses: collections.Counter) -> None:
    body = json.dumps({"task_id": "tsk_honest"}, separators=(",", ":")).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while not stop.is_set():
        request = (f"POST {path} HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
                   f"x-skyvern-signature: {sign(body, KEY)}\r\nx-skyvern-timestamp: {int(time.time())}\r\n"
                   f"content-length: {len(body)}\r\n\r\n").encode() + body
        writer.write(request)
        statuses[await read_response(reader)] += 1
        await asyncio.sleep(0.1)
    writer.close()


async def main_async(port: int, path: str, total: int, connections: int) -> dict[str, object]:
    flood_statuses: collections.Counter = collections.Counter()
    honest_statuses: collections.Counter = collections.Counter()
    stop = asyncio.Event()
    honest_task = asyncio.create_task(honest(port, path, stop, honest_statuses))
    started = time.monotonic()
    await flood(port, total, connections, flood_statuses)
    elapsed = time.monotonic() - started
    stop.set()
    await honest_task
    return {"flood": dict(flood_statuses), "honest": dict(honest_statuses), "seconds": round(elapsed, 2),
            "requests_per_second": round(total / elapsed)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--tree", default=str(Path(__file__).resolve().parent.parent),
                        help="checkout whose totp_service to run (default: this one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TOTP_SERVICE_", "SKYVERN_"))}
        env.update(PYTHONPATH=args.tree, TOTP_SERVICE_DATA_DIR=str(data_dir), SKYVERN_API_KEY=KEY,
                   TOTP_SERVICE_MASTER_KEY=base64.b64encode(os.urandom(32)).decode())
        cli = [sys.executable, "-m", "totp_service"]
        subprocess.run([*cli, "init"], env=env, check=True, capture_output=True)
        subprocess.run([*cli, "secret", "add", "alice@example.com", "--secret", BASE32], env=env, check=True,
                       capture_output=True)
        config = Path(tmp) / "config.yaml"
        config.write_text("server:\n  access_log: false\ncodes:\n  min_validity_seconds: 0\n  max_hold_seconds: 0\n"
                          "  single_use: false\n")
        port = free_port()
        env["TOTP_SERVICE_CONFIG"] = str(config)
        url = subprocess.run([*cli, "url", "alice@example.com"], env=env, capture_output=True, text=True).stdout
        path = url.strip()[url.index("/totp"):] if "/totp" in url else "/totp/alice%40example.com"  # ?k= since item 2
        server = subprocess.Popen([*cli, "serve", "--port", str(port)], env=env, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            time.sleep(1)
            before = store_bytes(data_dir)
            figures = asyncio.run(main_async(port, path, args.requests, args.connections))
            right_after = store_bytes(data_dir)
            time.sleep(5)
            settled = store_bytes(data_dir)
        finally:
            server.terminate()
            server.wait(timeout=20)
        stopped = store_bytes(data_dir)
    figures.update(requests=args.requests, tree=args.tree, store_bytes_before=before,
                   store_bytes_right_after=right_after, store_bytes_5s_after=settled, store_bytes_after_stop=stopped,
                   added_bytes_5s_after=settled - before)
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
