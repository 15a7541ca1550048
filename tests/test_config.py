"""Settings: defaults, YAML file, environment, in rising priority; the example file is complete."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from totp_service.config import ConfigError, Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent


def test_example_config_loads_and_holds_the_defaults() -> None:
    loaded = load_settings(ROOT / "config.example.yaml", environ={})
    defaults = load_settings(environ={})
    for section in ("server", "skyvern", "codes", "admin", "bindings", "launcher"):
        assert getattr(loaded, section) == getattr(defaults, section), section


def test_example_config_documents_every_setting() -> None:
    text = (ROOT / "config.example.yaml").read_text()
    data = yaml.safe_load(text)
    for field in dataclasses.fields(Settings):
        if field.name in ("master_key", "passphrase", "source"):
            continue
        assert f"{field.name}:" in text, field.name
        sub = field.default_factory() if field.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
        if dataclasses.is_dataclass(sub):
            assert set(data[field.name]) == {f.name for f in dataclasses.fields(sub)}, field.name


def test_priority_defaults_file_environment(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("data_dir: /from/file\nserver:\n  port: 9000\nskyvern:\n  base_url: http://file\n")
    settings = load_settings(config, environ={"SKYVERN_BASE_URL": "http://env", "TOTP_SERVICE_DATA_DIR": "/from/env"})
    assert settings.server.port == 9000
    assert settings.skyvern.base_url == "http://env"
    assert settings.data_dir == Path("/from/env")
    via_env = load_settings(environ={"TOTP_SERVICE_CONFIG": str(config)})
    assert via_env.data_dir == Path("/from/file") and via_env.source == str(config)


def test_default_data_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert load_settings(environ={}).data_dir == tmp_path / "totp-service"


def test_signing_keys_merge_env_and_file(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("skyvern:\n  api_keys: [old-key, env-key]\n")
    settings = load_settings(config, environ={"SKYVERN_API_KEY": "env-key"})
    assert settings.skyvern.signing_keys == ["env-key", "old-key"]
    assert "env-key" not in repr(settings) and "old-key" not in repr(settings)


@pytest.mark.parametrize(
    "text,message",
    [
        ("server:\n  port: eighty\n", "server.port must be a whole number"),
        ("server:\n  hots: x\n", "unknown setting 'server.hots'"),
        ("codes:\n  max_hold_seconds: 40\n", "under Skyvern's 30 s"),
        ("admin:\n  tokens:\n    - {token: short, role: admin}\n", "too short"),
        ("admin:\n  tokens:\n    - {token: aaaaaaaaaaaaaaaaaaaa, role: root}\n", "admin or reader"),
        ("launcher:\n  mode: pull\n", "launcher.mode must be url or push"),
        ("passphrase: x\n", "may not be written in a config file"),
        ("- a\n- b\n", "must hold a mapping"),
        ("server: [\n", "not valid YAML at line"),
        ("server:\n  trusted_proxies: [10.0.0.0/8, proxy.local]\n", "must be an IP address, a network like"),
    ],
)
def test_bad_config_names_key_and_file(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        load_settings(config, environ={})
    assert str(config) in str(info.value)


def test_missing_config_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        load_settings(tmp_path / "nope.yaml", environ={})


def test_trusted_proxies_from_file_and_uvicorn_s_variable(tmp_path: Path) -> None:
    assert load_settings(environ={}).server.trusted_proxies == ["127.0.0.1"]
    config = tmp_path / "c.yaml"
    config.write_text("server:\n  trusted_proxies: [10.0.0.0/8, '::1']\n")
    assert load_settings(config, environ={}).server.trusted_proxies == ["10.0.0.0/8", "::1"]
    env = {"FORWARDED_ALLOW_IPS": "192.168.1.1, 10.1.0.0/16"}
    assert load_settings(config, environ=env).server.trusted_proxies == ["192.168.1.1", "10.1.0.0/16"]
