"""A private PostgreSQL cluster for the tests: Debian's `postgresql` binaries, a temp dir, a free port.

Why our own and not pytest-postgresql: as root (CI runs as root) initdb refuses to run, so the
server is run as the `postgres` user through runuser; that, a restart and a stop are all the tests
need, in about sixty lines. Trust authentication on 127.0.0.1 only.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

SKIP_REASON = ("PostgreSQL tests skipped: `apt-get install -y postgresql` and "
               "`pip install -e '.[postgres]'` enable them (TOTP_SERVICE_REQUIRE_POSTGRES=1 makes this a failure)")


def find_bin_dir() -> Path | None:
    """Where initdb and pg_ctl live (PATH, else Debian's /usr/lib/postgresql/<version>/bin)."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    return Path(candidates[-1]).parent if candidates else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PgCluster:
    """initdb once; start, stop and restart on one port; `url(db)` gives a libpq URL."""

    def __init__(self, bin_dir: Path, durable: bool = False) -> None:
        self.bin_dir = bin_dir
        self.durable = durable  # fsync on (benchmarks); tests run without it
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="totp-pg-"))
        self.data = self.base / "data"
        self._as: list[str] = []
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            user = pwd.getpwnam("postgres")
            os.chown(self.base, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.data), "-U", "totp", "--auth=trust", "-E", "UTF8", "--no-sync")

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self._as, str(self.bin_dir / tool), *args], check=True, cwd=self.base,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c max_connections=200"
        if not self.durable:
            options += " -c fsync=off -c full_page_writes=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.base / "log"), "-o", options, "-w", "start")

    def ensure_running(self) -> None:
        """Start the server again if a test stopped it and failed before restarting it."""
        status = subprocess.run([*self._as, str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "status"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if status.returncode != 0:
            self.start()

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.base, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://totp@127.0.0.1:{self.port}/{database}"


# --- fixtures (conftest.py imports them) ----------------------------------------------------------


def _unavailable() -> str | None:
    """Why PostgreSQL tests cannot run here, or None."""
    if find_bin_dir() is None:
        return "no PostgreSQL binaries (initdb, pg_ctl)"
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError:
        return "psycopg / psycopg_pool not installed"
    return None


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One private cluster for the whole session (started on first use)."""
    missing = _unavailable()
    if missing:
        if os.environ.get("TOTP_SERVICE_REQUIRE_POSTGRES"):
            pytest.fail(f"TOTP_SERVICE_REQUIRE_POSTGRES is set but {missing}")
        pytest.skip(SKIP_REASON)
    cluster = PgCluster(find_bin_dir())  # type: ignore[arg-type]
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> Iterator[str]:
    """A fresh, empty database per test."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:16]}"
    pg_cluster.ensure_running()
    with psycopg.connect(pg_cluster.url(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield pg_cluster.url(name)
    pg_cluster.ensure_running()
    with psycopg.connect(pg_cluster.url(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")
