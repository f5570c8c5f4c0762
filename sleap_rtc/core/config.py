"""Where settings come from: command-line flag > environment > TOML file > default.

The TOML file is ``./sleap-rtc.toml`` if present, else ``sleap-rtc.toml`` in the user
config dir (platformdirs). Known keys: ``server`` (signaling URL), ``ice_servers`` (list of
``{urls, username?, credential?}``), ``state`` (server state file), ``work_dir`` (worker).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import platformdirs

APP_NAME = "sleap-rtc"
DEFAULT_SERVER = "ws://127.0.0.1:8765"
ENV_SERVER = "SLEAP_RTC_SERVER"
ENV_CONFIG = "SLEAP_RTC_CONFIG"
ENV_DISABLE_ROOMS = "SLEAP_RTC_DISABLE_ROOMS"
CONFIG_NAME = "sleap-rtc.toml"


class ConfigError(ValueError):
    """The config file exists but cannot be read as TOML."""


def config_paths() -> list[Path]:
    """Config files in the order they are looked for (first existing one wins)."""
    if os.environ.get(ENV_CONFIG):
        return [Path(os.environ[ENV_CONFIG])]
    return [Path.cwd() / CONFIG_NAME, Path(platformdirs.user_config_dir(APP_NAME)) / CONFIG_NAME]


def load_config() -> dict[str, Any]:
    """The first config file found, parsed; empty when there is none."""
    for path in config_paths():
        if path.is_file():
            try:
                with path.open("rb") as fh:
                    return tomllib.load(fh)
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"Cannot read {path}: {exc}") from None
    return {}


def resolve_server(flag: str | None = None) -> str:
    """The signaling server URL: ``--server`` > ``SLEAP_RTC_SERVER`` > config > default."""
    if flag:
        return flag
    if os.environ.get(ENV_SERVER):
        return os.environ[ENV_SERVER]
    value = load_config().get("server")
    return str(value) if value else DEFAULT_SERVER


def http_base(server_url: str) -> str:
    """The HTTP base URL of a signaling server given by its ws:// or wss:// URL.

    The WebSocket path ``/ws`` is dropped (HTTP routes live beside it); any other path
    prefix is kept, for a server behind a reverse proxy at a sub-path.
    """
    url = server_url.rstrip("/")
    if url.startswith("wss://"):
        url = "https://" + url[len("wss://") :]
    elif url.startswith("ws://"):
        url = "http://" + url[len("ws://") :]
    scheme, sep, rest = url.partition("://")
    if sep and "/" in rest and rest.endswith("/ws"):
        url = f"{scheme}://{rest[: -len('/ws')]}"
    return url


def ice_servers_from_config(config: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """ICE servers from the config file; none by default (loopback and LAN need none)."""
    config = load_config() if config is None else config
    servers = config.get("ice_servers", [])
    return [dict(s) for s in servers if isinstance(s, dict) and s.get("urls")]


def rooms_disabled() -> bool:
    """The rollback switch of the seed's migration plan: room discovery turned off."""
    return os.environ.get(ENV_DISABLE_ROOMS, "").strip().lower() in {"1", "true", "yes", "on"}


def user_data_dir() -> Path:
    """Per-user data directory (server state, worker job dirs, transfer cache)."""
    return Path(platformdirs.user_data_dir(APP_NAME))
