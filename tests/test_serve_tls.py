"""`totp-service serve` over TLS: a real self-signed certificate, a real subprocess, a signed https pull."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pyotp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.helpers_app import BASE32, SKYVERN_KEY, pull
from tests.test_serve import Proc, _cli, _pull_path, store_env  # noqa: F401  (store_env is a fixture)
from totp_service.cli.serve import startup_line
from totp_service.config import Settings
from totp_service.service.servers import free_port
from totp_service.store import crypto


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A P-256 certificate for 127.0.0.1 (SAN), valid for a day; both files written 0600."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "totp-service test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    crypto.write_private_file(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    crypto.write_private_file(key_path, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path


def _config(path: Path, cert: Path, key: Path) -> Path:
    path.write_text("codes:\n  min_validity_seconds: 0\n  max_hold_seconds: 0\n  single_use: false\n"
                    f"server:\n  tls_cert: {cert}\n  tls_key: {key}\n")
    return path


def test_serve_over_tls_answers_a_signed_pull(store_env: dict[str, str], tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    assert cert.stat().st_mode & 0o777 == 0o600 and key.stat().st_mode & 0o777 == 0o600
    env = {**store_env, "TOTP_SERVICE_CONFIG": str(_config(tmp_path / "tls.yaml", cert, key))}
    port = free_port()
    path = _pull_path(env, "alice@example.com")  # with its ?k= token
    proc = Proc([sys.executable, "-m", "totp_service", "serve", "--port", str(port)], env)
    try:
        line = proc.wait_for("listening on")
        assert f"listening on https://127.0.0.1:{port}" in line
        assert f"totp_url https://127.0.0.1:{port}/totp/<identifier>?k=<token>" in line
        assert "WARNING" not in line
        verify = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=verify, timeout=10) as client:
            before = time.time()
            answer = pull(client, path, {"task_id": "tsk_tls"})
            after = time.time()
            assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
            code = answer.json()["verification_code"]
            assert code in {pyotp.TOTP(BASE32).at(int(before)), pyotp.TOTP(BASE32).at(int(after))}
            assert pull(client, path, {"task_id": "tsk_tls"}, key="wrong").status_code == 401
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as plain:  # no plain-text fallback
            with pytest.raises(httpx.HTTPError):
                plain.get("/healthz")
        with httpx.Client(base_url=f"https://127.0.0.1:{port}", timeout=5) as untrusting:  # system CAs only
            with pytest.raises(httpx.ConnectError):
                untrusting.get("/healthz")
        assert proc.stop() == 0
    finally:
        if proc.popen.poll() is None:
            proc.popen.kill()
            proc.popen.wait()
    assert SKYVERN_KEY not in proc.output and code not in proc.output


def _serve_once(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "totp_service", "serve", "--port", str(free_port())], env=env,
                          capture_output=True, text=True, timeout=30)


def test_bad_tls_files_are_one_line_errors(store_env: dict[str, str], tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    (tmp_path / "other").mkdir()
    _, other_key = _self_signed(tmp_path / "other")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    encrypted = tmp_path / "encrypted.pem"
    private = serialization.load_pem_private_key(key.read_bytes(), None)
    encrypted.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.BestAvailableEncryption(b"passphrase")))
    cases = [
        (tmp_path / "missing.pem", key, "server.tls_cert: ", "does not exist"),
        (garbage, key, "not a PEM certificate", ""),
        (cert, other_key, "is not the private key of server.tls_cert", ""),
        (cert, encrypted, "protected by a passphrase", ""),
    ]
    for i, (c, k, expected, also) in enumerate(cases):
        env = {**store_env, "TOTP_SERVICE_CONFIG": str(_config(tmp_path / f"bad{i}.yaml", c, k))}
        result = _serve_once(env)
        assert result.returncode == 1, (expected, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("totp-service: error: "), (expected, result.stderr)
        assert expected in lines[0] and also in lines[0]
        assert "BEGIN" not in lines[0]  # never file content


def test_a_tls_key_readable_by_others_is_announced(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    settings = Settings(data_dir=tmp_path / "data")
    settings.server.tls_cert, settings.server.tls_key = str(cert), str(key)
    assert "tls_key" not in startup_line(settings, 0)
    key.chmod(0o644)
    assert f"UNSAFE server.tls_key {key} is readable by other users" in startup_line(settings, 0)
