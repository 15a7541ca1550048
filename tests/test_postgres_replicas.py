"""Several `serve` replicas (real subprocesses) on one PostgreSQL database: the rules that must
hold across them exactly as on one machine."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from tests.helpers_app import ADMIN_TOKEN, BASE32, OTHER_BASE32, READER_TOKEN, SKYVERN_KEY, bearer, expected_code, pull
from tests.pg_cluster import PgCluster
from tests.test_serve import Proc, _cli, _env
from totp_service.imports.otpauth import spec_from_base32
from totp_service.service.servers import free_port
from totp_service.store import crypto

pytest.importorskip("psycopg", reason="psycopg not installed")
from totp_service.store.postgres import PostgresStore  # noqa: E402


@dataclass
class Replica:
    proc: Proc
    url: str


@dataclass
class Cluster:
    url: str  # the database
    key: crypto.MasterKey
    replicas: list[Replica]

    def store(self) -> PostgresStore:
        return PostgresStore(self.url, self.key)


@pytest.fixture
def start_replicas(pg_url: str, tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """Start N replicas, each with its own data dir (nothing shared but the database and the key)."""
    key = crypto.MasterKey.generate()
    stack = ExitStack()

    def start(count: int, codes: str, secrets: dict[str, str]) -> Cluster:
        config = tmp_path / "config.yaml"
        # pulls name identifiers bare here: the URL token (test_url_token.py) is not what is tested
        config.write_text(f"server:\n  require_url_token: false\ncodes:\n{codes}")
        envs = [_env(tmp_path / f"replica{i}", TOTP_SERVICE_DATABASE_URL=pg_url,
                     TOTP_SERVICE_MASTER_KEY=key.to_base64(), SKYVERN_API_KEY=SKYVERN_KEY,
                     TOTP_SERVICE_ADMIN_TOKEN=ADMIN_TOKEN, TOTP_SERVICE_READER_TOKEN=READER_TOKEN,
                     TOTP_SERVICE_CONFIG=str(config)) for i in range(count)]
        init = _cli(envs[0], "init")
        assert init.returncode == 0, init.stderr
        with PostgresStore(pg_url, key) as s:
            s.put_many([(identifier, spec_from_base32(b32)) for identifier, b32 in secrets.items()])
        replicas = []
        for env in envs:
            port = free_port()
            proc = Proc([sys.executable, "-m", "totp_service", "serve", "--port", str(port)], env)
            stack.callback(_kill, proc)
            replicas.append(Replica(proc, f"http://127.0.0.1:{port}"))
        for replica in replicas:
            replica.proc.wait_for("listening on", timeout=30)
        return Cluster(pg_url, key, replicas)

    try:
        yield start
    finally:
        stack.close()


def _kill(proc: Proc) -> None:
    if proc.popen.poll() is None:
        proc.popen.kill()
        proc.popen.wait()


def _window_of(answer: dict[str, str], period: int) -> int:
    """The window a pull answer is for, from its expires_at (the end of that window)."""
    return int(datetime.fromisoformat(answer["expires_at"].replace("Z", "+00:00")).timestamp()) // period - 1


def test_simultaneous_logins_over_three_replicas_get_one_code_per_window(start_replicas) -> None:
    period = 2
    cluster = start_replicas(3, "  min_validity_seconds: 0\n  max_hold_seconds: 5\n  single_use: true\n",
                             {"alice": BASE32})
    with cluster.store() as s:
        s.put_secret("alice", spec_from_base32(BASE32, period=period), replace=True)
    clients = [httpx.Client(base_url=r.url, timeout=30) for r in cluster.replicas]
    barrier = threading.Barrier(60)

    def login(i: int) -> dict[str, str]:
        barrier.wait()
        response = pull(clients[i % 3], "/totp/alice", {"workflow_run_id": f"wr_{i}"})
        assert response.status_code == 200, response.text
        return response.json()

    with concurrent.futures.ThreadPoolExecutor(60) as pool:
        answers = list(pool.map(login, range(60)))
    for client in clients:
        client.close()
    served = [a for a in answers if a["verification_code"]]
    windows = [_window_of(a, period) for a in served]
    assert len(windows) == len(set(windows)), "a window's code went to two logins"
    assert 2 <= len(served) <= 5  # ~5 s of holding over 2 s windows: a few windows, never more
    for answer, window in zip(served, windows):
        assert answer["verification_code"] == expected_code(BASE32, window * period, period)
    with cluster.store() as s:
        rows = s.read_audit("alice", limit=1000)
    outcomes = [r.outcome for r in rows]
    assert outcomes.count("served") == len(served) and outcomes.count("empty") == 60 - len(served)
    assert set(outcomes) <= {"served", "empty", "window_taken"}  # window_taken: another replica's claim won
    assert sorted(r.detail for r in rows if r.outcome == "served") == sorted(f"window {w}" for w in windows)


def test_a_secret_changed_through_one_replica_is_served_by_another_within_a_second(start_replicas) -> None:
    cluster = start_replicas(2, "  min_validity_seconds: 0\n  max_hold_seconds: 0\n  single_use: false\n",
                             {"alice": BASE32})
    first, second = (httpx.Client(base_url=r.url, timeout=10) for r in cluster.replicas)
    with first, second:
        before = second.get("/v1/codes/alice", headers=bearer(READER_TOKEN)).json()  # cached there now
        assert before["code"] == expected_code(BASE32, time.time())
        added = first.put("/v1/secrets/bob", headers=bearer(ADMIN_TOKEN), json={"secret": OTHER_BASE32})
        assert added.status_code == 201
        replaced = first.put("/v1/secrets/alice", headers=bearer(ADMIN_TOKEN),
                             json={"secret": OTHER_BASE32, "replace": True})
        assert replaced.status_code == 200
        changed = time.monotonic()
        while True:
            code = second.get("/v1/codes/alice", headers=bearer(READER_TOKEN)).json()["code"]
            if code == expected_code(OTHER_BASE32, time.time()):
                break
            assert time.monotonic() - changed < 1.0, "the other replica still serves the old secret"
            time.sleep(0.01)
        got = pull(second, "/totp/bob", {"workflow_run_id": "wr_1"})
        assert got.status_code == 200 and got.json()["verification_code"] == expected_code(OTHER_BASE32, time.time())


def test_kill_9_under_load_leaves_no_answered_code_without_its_audit_row(start_replicas) -> None:
    identifiers = {f"user{i}": BASE32 for i in range(20)}
    cluster = start_replicas(2, "  min_validity_seconds: 0\n  max_hold_seconds: 0\n  single_use: false\n",
                             identifiers)
    victim = cluster.replicas[0]
    answered: list[str] = []
    stop = threading.Event()

    def load(n: int) -> None:
        with httpx.Client(base_url=victim.url, timeout=5) as client:
            i = 0
            while not stop.is_set():
                run_id = f"wr_{n}_{i}_{uuid.uuid4().hex[:6]}"
                i += 1
                try:
                    response = pull(client, f"/totp/user{i % 20}", {"workflow_run_id": run_id})
                except httpx.HTTPError:
                    if victim.proc.popen.poll() is not None:
                        return
                    continue
                if response.status_code == 200 and response.json()["verification_code"]:
                    answered.append(run_id)

    threads = [threading.Thread(target=load, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while len(answered) < 300 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(victim.proc.popen.pid, signal.SIGKILL)
    victim.proc.popen.wait()
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join(timeout=10)
    assert len(answered) >= 300
    with cluster.store() as s:
        audited = {r.workflow_run_id for r in s.read_audit(limit=1_000_000) if r.outcome == "served"}
    missing = [run_id for run_id in answered if run_id not in audited]
    assert missing == []
    with httpx.Client(base_url=cluster.replicas[1].url, timeout=5) as other:  # the survivor serves on
        assert pull(other, "/totp/user1", {"workflow_run_id": "wr_after"}).status_code == 200


def test_postgres_restart_gives_503s_then_the_same_replicas_answer(start_replicas, pg_cluster: PgCluster) -> None:
    cluster = start_replicas(2, "  min_validity_seconds: 0\n  max_hold_seconds: 0\n  single_use: false\n",
                             {"alice": BASE32})
    clients = [httpx.Client(base_url=r.url, timeout=10) for r in cluster.replicas]
    pids = [r.proc.popen.pid for r in cluster.replicas]
    try:
        for client in clients:
            assert pull(client, "/totp/alice", {"workflow_run_id": "wr_0"}).status_code == 200
            assert client.get("/readyz").status_code == 200
        pg_cluster.stop()
        try:
            for client in clients:
                for i in range(5):
                    down = pull(client, "/totp/alice", {"workflow_run_id": f"wr_down_{i}"})
                    assert down.status_code == 503, down.text
                    assert down.json()["error"] == "unavailable" and not down.json().get("verification_code")
                assert client.get("/readyz").status_code == 503
                assert client.get("/healthz").status_code == 200  # alive, just not ready
        finally:
            pg_cluster.start()
        for client in clients:
            deadline = time.monotonic() + 15
            while pull(client, "/totp/alice", {"workflow_run_id": "wr_back"}).status_code != 200:
                assert time.monotonic() < deadline, "the replica did not come back"
                time.sleep(0.1)
            assert client.get("/readyz").status_code == 200
    finally:
        for client in clients:
            client.close()
    assert [r.proc.popen.pid for r in cluster.replicas] == pids and all(r.proc.popen.poll() is None
                                                                       for r in cluster.replicas)
    with cluster.store() as s:
        runs = [r.workflow_run_id for r in s.read_audit("alice", limit=1000) if r.outcome == "served"]
    assert not any(run.startswith("wr_down") for run in runs)
