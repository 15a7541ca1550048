"""`totp-service demo`: the README's first command, as a user runs it (a subprocess)."""

from __future__ import annotations

import re
import subprocess
import sys
import time

from helpers_launch import REPO


def test_demo_completes_both_runs_quickly_without_showing_codes(tmp_path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
    began = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "totp_service", "demo"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=70)
    elapsed = time.monotonic() - began
    assert result.returncode == 0, result.stdout + result.stderr
    assert elapsed < 60
    out = result.stdout
    assert "1/2 url mode" in out and "2/2 push mode" in out
    assert len(re.findall(r"OK: run wr_\w+ completed", out)) == 2
    assert "both runs completed" in out
    waits = [float(w) for w in re.findall(r"waiting (\d+(?:\.\d+)?)s", out)]
    assert all(w <= 5.0 for w in waits), out  # the push half never sits out a whole window
    assert "block 'sign_in' (login): totp_verification_url <- parameters.otp_url = http://127.0.0.1:" in out
    assert "block 'sign_in' (login): totp_identifier <- parameters.login_id = demo@example.com" in out
    assert not re.search(r"\b\d{6}\b", out), "a one-time code was printed"
    assert not re.search(r"\b[A-Z2-7]{16,}\b", out), "something like a base32 secret was printed"
    assert "sk-demo-" not in out + result.stderr
    assert list(tmp_path.iterdir()) == [], "the demo left files behind"
