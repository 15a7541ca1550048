"""Check `server.tls_cert` / `server.tls_key` before serving.

Why: uvicorn loads them only once it starts, and a missing, unreadable or mismatched file then
ends in a stack trace (or, for a passphrase-protected key, a prompt on the terminal). Loading them
here first turns each case into one line naming the setting and the file.
"""

from __future__ import annotations

import ssl
import stat
from pathlib import Path

from totp_service.config import ConfigError


def _no_password() -> bytes:
    raise ConfigError("server.tls_key is protected by a passphrase: give an unencrypted key file (mode 0600)")


def check_tls_files(cert: str, key: str) -> None:
    """Raise ConfigError (one line, no file content) unless `cert` and `key` make a usable pair."""
    for setting, path in (("server.tls_cert", cert), ("server.tls_key", key)):
        if not Path(path).is_file():
            raise ConfigError(f"{setting}: {path} does not exist or is not a file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
            raise ConfigError(f"server.tls_key {key} is not the private key of server.tls_cert {cert}") from None
        raise ConfigError(f"server.tls_cert {cert} / server.tls_key {key}: not a PEM certificate and "
                          f"its PEM private key ({exc.reason or 'unreadable'})") from None
    except OSError as exc:
        raise ConfigError(f"server.tls_cert {cert} / server.tls_key {key} cannot be read "
                          f"({exc.strerror or exc.__class__.__name__})") from None


def readable_by_others(key: str) -> bool:
    """True when group or other users may read the key file (it should be 0600)."""
    try:
        return bool(Path(key).stat().st_mode & (stat.S_IRGRP | stat.S_IROTH))
    except OSError:
        return False
