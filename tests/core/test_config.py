"""Settings precedence (flag > env > TOML > default), config file lookup, small helpers."""

from __future__ import annotations

import pytest

from sleap_rtc.core import config
from sleap_rtc.core.config import (
    DEFAULT_SERVER,
    ConfigError,
    config_paths,
    http_base,
    ice_servers_from_config,
    load_config,
    resolve_server,
    rooms_disabled,
)


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    """An empty working directory, no SLEAP_RTC_CONFIG, and a user config dir of our own."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv(config.ENV_CONFIG, raising=False)
    monkeypatch.setattr(config.platformdirs, "user_config_dir", lambda app: str(tmp_path / "user-config"))
    return work


def test_default_when_nothing_is_set(cwd):
    assert load_config() == {}
    assert resolve_server() == DEFAULT_SERVER


def test_precedence_flag_env_toml_default(cwd, monkeypatch):
    (cwd / config.CONFIG_NAME).write_text('server = "ws://toml:1"\n')
    assert resolve_server() == "ws://toml:1"
    monkeypatch.setenv(config.ENV_SERVER, "ws://env:2")
    assert resolve_server() == "ws://env:2"
    assert resolve_server("ws://flag:3") == "ws://flag:3"
    monkeypatch.setenv(config.ENV_SERVER, "")  # empty counts as unset
    assert resolve_server() == "ws://toml:1"


def test_cwd_file_wins_over_the_user_config_dir(cwd, tmp_path):
    user = tmp_path / "user-config"
    user.mkdir()
    (user / config.CONFIG_NAME).write_text('server = "ws://user:1"\n')
    assert resolve_server() == "ws://user:1"
    (cwd / config.CONFIG_NAME).write_text('server = "ws://cwd:2"\n')
    assert resolve_server() == "ws://cwd:2"
    assert config_paths() == [cwd / config.CONFIG_NAME, user / config.CONFIG_NAME]


def test_env_config_path_replaces_the_lookup(cwd, tmp_path, monkeypatch):
    (cwd / config.CONFIG_NAME).write_text('server = "ws://cwd:2"\n')
    chosen = tmp_path / "elsewhere.toml"
    chosen.write_text('server = "ws://chosen:3"\nwork_dir = "/data/w"\n')
    monkeypatch.setenv(config.ENV_CONFIG, str(chosen))
    assert config_paths() == [chosen]
    assert load_config() == {"server": "ws://chosen:3", "work_dir": "/data/w"}
    monkeypatch.setenv(config.ENV_CONFIG, str(tmp_path / "missing.toml"))
    assert load_config() == {}, "a named file that does not exist means no config, not the cwd one"


def test_malformed_toml_is_a_config_error_naming_the_file(cwd):
    bad = cwd / config.CONFIG_NAME
    bad.write_text("server = [unterminated\n")
    with pytest.raises(ConfigError, match="Cannot read") as info:
        load_config()
    assert str(bad) in str(info.value)
    assert isinstance(info.value, ValueError) and info.value.__cause__ is None


def test_ice_servers_keep_only_entries_with_urls(cwd):
    (cwd / config.CONFIG_NAME).write_text(
        '[[ice_servers]]\nurls = "stun:stun.example.org:3478"\n'
        '[[ice_servers]]\nurls = ["turn:t.example.org"]\nusername = "u"\ncredential = "c"\n'
        '[[ice_servers]]\nusername = "no-urls"\n'
    )
    assert ice_servers_from_config() == [
        {"urls": "stun:stun.example.org:3478"},
        {"urls": ["turn:t.example.org"], "username": "u", "credential": "c"},
    ]
    assert ice_servers_from_config({}) == []
    assert ice_servers_from_config({"ice_servers": ["stun:x", 3]}) == []


@pytest.mark.parametrize(
    ("value", "disabled"),
    [(None, False), ("", False), ("0", False), ("no", False), ("1", True), ("true", True), (" Yes ", True), ("ON", True)],
)
def test_rooms_disabled_switch(monkeypatch, value, disabled):
    if value is None:
        monkeypatch.delenv(config.ENV_DISABLE_ROOMS, raising=False)
    else:
        monkeypatch.setenv(config.ENV_DISABLE_ROOMS, value)
    assert rooms_disabled() is disabled


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("ws://127.0.0.1:8765", "http://127.0.0.1:8765"),
        ("ws://127.0.0.1:8765/ws", "http://127.0.0.1:8765"),
        ("ws://127.0.0.1:8765/ws/", "http://127.0.0.1:8765"),
        ("wss://lab.example.org/ws", "https://lab.example.org"),
        ("wss://lab.example.org/sleap/ws", "https://lab.example.org/sleap"),
        ("wss://lab.example.org/sleap", "https://lab.example.org/sleap"),
        ("http://already:1/", "http://already:1"),
    ],
)
def test_http_base(url, base):
    assert http_base(url) == base
