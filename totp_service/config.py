"""One `Settings` object from defaults, a YAML file and the environment (rising priority).

Unknown keys and wrong types are errors that name the key and the file: a typo in a security
setting must not silently fall back to a default.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ENV_CONFIG = "TOTP_SERVICE_CONFIG"
ENV_DATA_DIR = "TOTP_SERVICE_DATA_DIR"
ENV_MASTER_KEY = "TOTP_SERVICE_MASTER_KEY"
ENV_PASSPHRASE = "TOTP_SERVICE_PASSPHRASE"
ENV_ADMIN_TOKEN = "TOTP_SERVICE_ADMIN_TOKEN"
ENV_READER_TOKEN = "TOTP_SERVICE_READER_TOKEN"
ENV_PUBLIC_URL = "TOTP_SERVICE_PUBLIC_URL"
ENV_SKYVERN_API_KEY = "SKYVERN_API_KEY"
ENV_SKYVERN_BASE_URL = "SKYVERN_BASE_URL"
ENV_FORWARDED_ALLOW_IPS = "FORWARDED_ALLOW_IPS"
ENV_DATABASE_URL = "TOTP_SERVICE_DATABASE_URL"

DATABASE_NAME = "totp.db"
KEY_FILE_NAME = "master.key"


class ConfigError(Exception):
    """A configuration problem; the message names the key and where it came from."""


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "totp-service"


@dataclass
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8088
    public_url: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    max_body_bytes: int = 65536
    allow_unsigned: bool = False
    max_timestamp_skew_seconds: float | None = None
    workers: int = 1
    access_log: bool = False  # the audit trail records every pull already (config.example.yaml says why)
    trusted_proxies: list[str] = field(default_factory=lambda: ["127.0.0.1"])
    # unauthenticated pulls refused per client and window before the rest get 429 (service refusals)
    refusal_limit: int = 20
    refusal_window_seconds: float = 60.0
    # a connection whose request head has not arrived this long after it opened (or after the
    # request's first byte) is closed; at max_connections open ones, a new one gets 503
    header_timeout_seconds: float = 10.0
    # a pull must carry its URL's token (?k=, see `totp-service url`): a captured signed body is
    # useless for any other identifier. false is announced at start-up as unsafe.
    require_url_token: bool = True
    max_connections: int = 2048

    @property
    def effective_public_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        scheme = "https" if self.tls_cert else "http"
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"{scheme}://{host}:{self.port}"


@dataclass
class SkyvernSettings:
    base_url: str = "https://api.skyvern.com"
    api_key: str | None = field(default=None, repr=False)
    api_keys: list[str] = field(default_factory=list, repr=False)

    @property
    def signing_keys(self) -> list[str]:
        """Every key a pull request may be signed with (rotation, several organisations)."""
        keys = [self.api_key] if self.api_key else []
        return keys + [k for k in self.api_keys if k and k not in keys]


@dataclass
class CodeSettings:
    min_validity_seconds: float = 20.0
    max_hold_seconds: float = 25.0
    single_use: bool = True
    # answer only pulls naming a run with a live run binding to the identifier (pull_rules.check_known_run)
    known_runs_only: bool = False


@dataclass
class AuditSettings:
    retention_days: float | None = 365.0  # rows older than this are pruned; None keeps them all


@dataclass
class AdminToken:
    token: str = field(default="", repr=False)
    role: str = "admin"


@dataclass
class AdminSettings:
    tokens: list[AdminToken] = field(default_factory=list, repr=False)


@dataclass
class BindingSettings:
    agents: dict[str, str] = field(default_factory=dict)


@dataclass
class LauncherSettings:
    mode: str = "url"
    code_source: str = "local"
    remote_url: str | None = None
    reader_token: str | None = field(default=None, repr=False)
    status_interval_seconds: float = 3.0


@dataclass
class StoreSettings:
    """Where the store lives: unset is the SQLite file in the data directory; a postgresql:// URL
    (libpq's: sslmode and every other option pass through) puts it on a PostgreSQL server."""

    url: str | None = field(default=None, repr=False)  # may carry a password


@dataclass
class Settings:
    data_dir: Path = field(default_factory=default_data_dir)
    key_file: Path | None = None
    refuse_readable_files: bool = False  # refuse, not just announce, a key file or database others may read
    master_key: str | None = field(default=None, repr=False)
    passphrase: str | None = field(default=None, repr=False)
    server: ServerSettings = field(default_factory=ServerSettings)
    skyvern: SkyvernSettings = field(default_factory=SkyvernSettings)
    codes: CodeSettings = field(default_factory=CodeSettings)
    admin: AdminSettings = field(default_factory=AdminSettings)
    bindings: BindingSettings = field(default_factory=BindingSettings)
    launcher: LauncherSettings = field(default_factory=LauncherSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    source: str = "defaults"

    @property
    def database_path(self) -> Path:
        return self.data_dir / DATABASE_NAME

    @property
    def key_file_path(self) -> Path:
        return self.key_file or self.data_dir / KEY_FILE_NAME

    def tokens_for(self, role: str) -> list[str]:
        return [t.token for t in self.admin.tokens if t.role == role]


_NOT_IN_FILE = {"master_key", "passphrase", "source"}
_ROLES = ("admin", "reader")
_MODES = ("url", "push")


def _check_type(value: Any, hint: Any, where: str) -> Any:
    """Coerce `value` to the annotated type or raise a ConfigError naming `where`."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _check_type(value, inner, where)
    if hint is Path:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a path (a string)")
        return Path(value).expanduser()
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false (got {value!r})")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be a whole number (got {value!r})")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number (got {value!r})")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string (got {type(value).__name__})")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list")
        return [_check_type(item, args[0], f"{where}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping")
        return {_check_type(k, args[0], where): _check_type(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping")
        return _build(hint, value, where)
    raise ConfigError(f"{where}: unsupported setting type")  # pragma: no cover


def _build(cls: Any, data: Mapping[str, Any], where: str, instance: Any = None) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)} - _NOT_IN_FILE
    obj = instance if instance is not None else cls()
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key in _NOT_IN_FILE and cls is Settings:
            raise ConfigError(f"{path} may not be written in a config file: use the environment or a key file")
        if key not in known:
            raise ConfigError(f"unknown setting {path!r}")
        setattr(obj, key, _check_type(value, hints[key], path))
    return obj


def _validate(settings: Settings) -> None:
    for i, token in enumerate(settings.admin.tokens):
        if token.role not in _ROLES:
            raise ConfigError(f"admin.tokens[{i}].role must be admin or reader (got {token.role!r})")
        if len(token.token) < 16:
            raise ConfigError(f"admin.tokens[{i}].token is too short (at least 16 characters)")
    if settings.launcher.mode not in _MODES:
        raise ConfigError(f"launcher.mode must be url or push (got {settings.launcher.mode!r})")
    if settings.launcher.code_source not in ("local", "remote"):
        raise ConfigError("launcher.code_source must be local or remote")
    url = settings.store.url
    if url is not None and url.split(":", 1)[0] not in ("postgresql", "postgres"):
        raise ConfigError("store.url must be a postgresql:// URL (leave it unset for the SQLite file in the data directory)")
    if settings.codes.min_validity_seconds < 0 or settings.codes.max_hold_seconds < 0:
        raise ConfigError("codes.min_validity_seconds and codes.max_hold_seconds must not be negative")
    if settings.codes.max_hold_seconds >= 30:
        raise ConfigError("codes.max_hold_seconds must stay under Skyvern's 30 s request timeout")
    if not 0 < settings.server.max_body_bytes <= 16 * 1024 * 1024:
        raise ConfigError("server.max_body_bytes must be between 1 and 16 MiB")
    if settings.server.refusal_limit < 1 or not 1 <= settings.server.refusal_window_seconds <= 3600:
        raise ConfigError("server.refusal_limit must be at least 1 and server.refusal_window_seconds "
                          "between 1 and 3600")
    if not 0.1 <= settings.server.header_timeout_seconds <= 300 or not 1 <= settings.server.max_connections <= 1_000_000:
        raise ConfigError("server.header_timeout_seconds must be between 0.1 and 300, server.max_connections "
                          "between 1 and 1000000")
    retention = settings.audit.retention_days
    if retention is not None and not 0 < retention <= 100 * 365:
        raise ConfigError("audit.retention_days must be a number of days above 0 (or null: keep everything)")
    if bool(settings.server.tls_cert) != bool(settings.server.tls_key):
        raise ConfigError("server.tls_cert and server.tls_key go together")
    for i, entry in enumerate(settings.server.trusted_proxies):
        if entry != "*":
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ConfigError(f"server.trusted_proxies[{i}] must be an IP address, a network like "
                                  f"10.0.0.0/8, or * (got {entry!r})") from None


def load_settings(
    config_file: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Defaults, then the YAML file (argument or TOTP_SERVICE_CONFIG), then the environment."""
    env = os.environ if environ is None else environ
    settings = Settings()
    path = config_file or env.get(ENV_CONFIG)
    if path:
        path = Path(path).expanduser()
        try:
            text = path.read_text("utf-8")
        except OSError as exc:
            raise ConfigError(f"config file {path} cannot be read ({exc.strerror or exc.__class__.__name__})") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" at line {mark.line + 1}" if mark else ""
            raise ConfigError(f"config file {path} is not valid YAML{at}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of settings")
        try:
            _build(Settings, data, "", settings)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        settings.source = str(path)
    _apply_environment(settings, env)
    for key, value in (overrides or {}).items():
        if value is not None:
            setattr(settings, key, value)
    try:
        _validate(settings)
    except ConfigError as exc:
        if settings.source == "defaults":
            raise
        raise ConfigError(f"{settings.source}: {exc}") from None
    return settings


def _apply_environment(settings: Settings, env: Mapping[str, str]) -> None:
    if env.get(ENV_DATA_DIR):
        settings.data_dir = Path(env[ENV_DATA_DIR]).expanduser()
    if env.get(ENV_DATABASE_URL):
        settings.store.url = env[ENV_DATABASE_URL]
    if env.get(ENV_MASTER_KEY):
        settings.master_key = env[ENV_MASTER_KEY]
    if env.get(ENV_PASSPHRASE):
        settings.passphrase = env[ENV_PASSPHRASE]
    if env.get(ENV_PUBLIC_URL):
        settings.server.public_url = env[ENV_PUBLIC_URL]
    if env.get(ENV_FORWARDED_ALLOW_IPS):  # uvicorn's own variable, same meaning
        settings.server.trusted_proxies = [item.strip() for item in env[ENV_FORWARDED_ALLOW_IPS].split(",")
                                           if item.strip()]
    if env.get(ENV_SKYVERN_API_KEY):
        settings.skyvern.api_key = env[ENV_SKYVERN_API_KEY]
    if env.get(ENV_SKYVERN_BASE_URL):
        settings.skyvern.base_url = env[ENV_SKYVERN_BASE_URL]
    for name, role in ((ENV_ADMIN_TOKEN, "admin"), (ENV_READER_TOKEN, "reader")):
        if env.get(name):
            settings.admin.tokens.append(AdminToken(env[name], role))
            if role == "reader" and not settings.launcher.reader_token:
                settings.launcher.reader_token = env[name]
