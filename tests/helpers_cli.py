"""Run the real `totp-service` command in a subprocess, on a pipe or on a pseudo-terminal."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NOBODY = 65534  # another user, for files and folders that are not ours (tests run as root in CI)
B32 = "JBSWY3DPEHPK3PXP"


@dataclass
class Result:
    code: int
    out: str
    err: str

    def one_line_error(self, *fragments: str) -> None:
        """Exit non-zero with exactly one line on stderr holding every fragment; no traceback."""
        assert self.code != 0, (self.out, self.err)
        assert "Traceback" not in self.err and self.err.count("\n") == 1, self.err
        for fragment in fragments:
            assert fragment in self.err, (fragment, self.err)


def command_env(data_dir: Path | None, home: Path, **extra: str) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8",
           "XDG_DATA_HOME": str(home / "xdg"), "PYTHONPATH": str(REPO)}
    if data_dir is not None:
        env["TOTP_SERVICE_DATA_DIR"] = str(data_dir)
    env.update(extra)
    return env


# As another user: Python starts as root (its own files may sit in root's home), loads the
# command's modules, then becomes `uid` before the command runs.
_AS_USER = ("import os, runpy, sys; uid = int(sys.argv.pop(1)); "
            "import totp_service.cli.main, totp_service.cli.serve, totp_service.cli.launch; "
            "os.setgroups([]); os.setgid(uid); os.setuid(uid); "
            "runpy.run_module('totp_service', run_name='__main__', alter_sys=True)")


def run_command(env: dict[str, str], *args: str, stdin: str = "", user: int | None = None,
                python_args: tuple[str, ...] = ("-m", "totp_service")) -> Result:
    if user is not None:
        python_args = ("-c", _AS_USER, str(user))
    done = subprocess.run([sys.executable, *python_args, *args], env=env, input=stdin, capture_output=True,
                          text=True, timeout=60, cwd=env["HOME"])
    return Result(done.returncode, done.stdout, done.stderr)


class Terminal:
    """`totp-service ARGS` with stdin, stdout and stderr on a pseudo-terminal we hold the other end of."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.master, slave = pty.openpty()
        self.process = subprocess.Popen([sys.executable, "-m", "totp_service", *args], env=env, cwd=env["HOME"],
                                        stdin=slave, stdout=slave, stderr=slave, close_fds=True)
        os.close(slave)
        self.seen = b""

    def read_until(self, text: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while text.encode() not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(left):
                raise AssertionError(f"never saw {text!r}; the terminal shows {self.seen!r}")
        return self.seen.decode(errors="replace")

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return False
        try:
            chunk = os.read(self.master, 4096)
        except OSError:  # EIO: the child closed the terminal
            return False
        self.seen += chunk
        return bool(chunk)

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def finish(self, timeout: float = 30.0) -> tuple[int, str]:
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            self._read(0.1)
        while self._read(0.05):
            pass
        code = self.process.wait(timeout=5)
        os.close(self.master)
        return code, self.seen.decode(errors="replace")
