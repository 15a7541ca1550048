"""Shared fixtures: a private data dir per test and an in-process CLI runner."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from totp_service.cli import main as cli_main

_ENV_NAMES = (
    "TOTP_SERVICE_CONFIG", "TOTP_SERVICE_DATA_DIR", "TOTP_SERVICE_MASTER_KEY", "TOTP_SERVICE_PASSPHRASE",
    "TOTP_SERVICE_ADMIN_TOKEN", "TOTP_SERVICE_READER_TOKEN", "TOTP_SERVICE_PUBLIC_URL", "TOTP_SERVICE_DATABASE_URL",
    "SKYVERN_API_KEY", "SKYVERN_BASE_URL",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the developer's own settings or data directory."""
    for name in _ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "data"
    monkeypatch.setenv("TOTP_SERVICE_DATA_DIR", str(path))
    return path


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """Run `totp-service ARGS` in-process; stdin text optional."""
    import io
    import sys

    def run(*args: str, stdin: str | None = None) -> CliResult:
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        try:
            code = cli_main(list(args))
        except SystemExit as exc:  # argparse usage errors
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    old_umask = os.umask(0o022)
    try:
        yield run
    finally:
        os.umask(old_umask)


from tests.pg_cluster import pg_cluster, pg_url  # noqa: E402,F401  (fixtures: a private PostgreSQL)


@pytest.fixture(params=["pull_protocol", "asgi"])
def front_end(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """A test twice: as `serve` answers pulls (its own protocol), and through the ASGI handler.
    Use it with `pytestmark = pytest.mark.usefixtures("front_end")` or as an argument."""
    from tests import helpers_app

    if request.param == "asgi":
        monkeypatch.setattr(helpers_app, "SERVER_PROTOCOL", "httptools")
    return str(request.param)
