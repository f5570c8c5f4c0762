"""The ICE servers (STUN/TURN) a signaling server hands to its registered peers.

Pure functions and one settings object, no I/O beyond reading a secret file:

* ``IceSettings.for_peer(peer_id, now)`` -> the list for one peer's ``registered_auth``
  (and for its ``get_ice_servers`` refresh): every URL its own entry, because aiortc uses
  only the first URL of an entry; STUN first, then TURN in the order configured.
* TURN credentials follow the TURN REST scheme that coturn's ``use-auth-secret``
  implements: username ``<expiry unix time>:<peer_id>``, credential
  ``base64(HMAC-SHA1(secret, username))``. They are minted per peer, valid for ``ttl``
  seconds, and never contain the shared secret. coturn checks the expiry when an allocation
  is created, not while it lives, so a long job keeps its relay; a peer that connects again
  after the expiry asks for fresh ones (``get_ice_servers``).
* ``settings_from(...)``: flags > config file (``[ice]`` table) > nothing.
* ``startup_warnings(settings, host)``: what will not work with this configuration.
* ``coturn_config(...)``: a coturn ``turnserver.conf`` that matches these settings.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

DEFAULT_TTL = 3600.0
"""Seconds a minted TURN credential is valid (coturn checks it when an allocation is made)."""
MIN_TTL = 60.0
"""Shortest accepted TTL: below this a slow ICE gathering could outlive its credential."""
MAX_TTL = 7 * 24 * 3600.0
"""Longest accepted TTL: a week (longer is no longer "short-lived")."""
MIN_SECRET_CHARS = 16
"""A shorter shared secret is refused: it signs every credential."""
TURN_PORT = 3478
"""coturn's default port for STUN and TURN over UDP and TCP."""
TURNS_PORT = 5349
"""coturn's default port for TURN over TLS."""
RELAY_PORTS = (49152, 65535)
"""coturn's default relay port range (UDP), which a firewall must let in."""
PRIVATE_RANGES = (
    "0.0.0.0-0.255.255.255", "10.0.0.0-10.255.255.255", "100.64.0.0-100.127.255.255",
    "127.0.0.0-127.255.255.255", "169.254.0.0-169.254.255.255", "172.16.0.0-172.31.255.255",
    "192.168.0.0-192.168.255.255",
)
"""Peer addresses the generated coturn config refuses to relay to (no pivot into the TURN
host's own network); peers' private host candidates then get 403, which is harmless."""


class IceConfigError(ValueError):
    """The STUN/TURN settings are unusable (bad URL, missing or short secret, bad TTL)."""


def url_scheme(url: str) -> str:
    """``stun``/``stuns``/``turn``/``turns`` of an ICE URL ('' when it is none of them)."""
    scheme = url.partition(":")[0].lower()
    return scheme if scheme in {"stun", "stuns", "turn", "turns"} else ""


def url_host(url: str) -> str:
    """The host of ``stun:host:port`` / ``turn:host:port?transport=tcp``."""
    rest = url.partition(":")[2].partition("?")[0]
    try:
        return urlparse("//" + rest).hostname or ""
    except ValueError:
        return ""


def check_url(url: str, kinds: tuple[str, ...]) -> str:
    """``url`` stripped, or ``IceConfigError`` unless it is a ``kinds`` URL with a host."""
    url = url.strip()
    if url_scheme(url) not in kinds or not url_host(url):
        raise IceConfigError(f"Not a {'/'.join(kinds)} URL: {url!r} (e.g. {kinds[0]}:turn.example.org:{TURN_PORT}).")
    return url


def turn_credentials(secret: str, peer_id: str, expiry: int) -> tuple[str, str]:
    """``(username, credential)`` of the TURN REST scheme (coturn ``use-auth-secret``)."""
    username = f"{int(expiry)}:{peer_id}"
    digest = hmac.new(secret.encode("utf-8"), username.encode("utf-8"), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


def credential_expiry(username: Any) -> float | None:
    """The expiry (unix time) in a TURN REST username, or None for any other username."""
    if not isinstance(username, str):
        return None
    head = username.partition(":")[0]
    return float(head) if head.isdigit() else None


def split_entries(servers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """RTCIceServer-shaped dicts with one URL each (credentials copied to each)."""
    out: list[dict[str, Any]] = []
    for server in servers:
        urls = server.get("urls") or server.get("url") or []
        for url in [urls] if isinstance(urls, str) else list(urls):
            if not isinstance(url, str) or not url_scheme(url):
                continue
            entry: dict[str, Any] = {"urls": url}
            if url_scheme(url).startswith("turn"):
                for key in ("username", "credential"):
                    if server.get(key) is not None:
                        entry[key] = server[key]
            if entry not in out:
                out.append(entry)
    return out


@dataclass(frozen=True)
class IceSettings:
    """STUN/TURN settings of one server; ``for_peer`` turns them into a peer's list."""

    stun: tuple[str, ...] = ()
    turn: tuple[str, ...] = ()
    secret: str | None = field(default=None, repr=False)
    ttl: float = DEFAULT_TTL
    static: tuple[dict[str, Any], ...] = ()
    """Entries from the config's ``ice_servers`` as written (static credentials; legacy)."""

    @property
    def has_relay(self) -> bool:
        """Whether any TURN URL is configured (minted or static)."""
        return bool(self.turn) or any(url_scheme(e["urls"]).startswith("turn") for e in split_entries(list(self.static)))

    @property
    def stun_urls(self) -> tuple[str, ...]:
        """The STUN URLs handed out: those configured, else one per TURN host.

        coturn answers STUN on its TURN port, and both peers need a server-reflexive
        candidate (a TURN relay only gets a permission for the other peer's public address).
        """
        if self.stun:
            return self.stun
        derived: list[str] = []
        for url in self.turn:
            stun = f"stun:{_bracket(url_host(url))}:{_port_of(url)}"
            if url_scheme(url) == "turn" and stun not in derived:
                derived.append(stun)
        return tuple(derived)

    def for_peer(self, peer_id: str, now: float) -> list[dict[str, Any]]:
        """The ICE servers for ``peer_id``: STUN, then TURN with credentials minted now."""
        servers: list[dict[str, Any]] = [{"urls": url} for url in self.stun_urls]
        if self.turn and self.secret:
            username, credential = turn_credentials(self.secret, peer_id, math.floor(now + self.ttl))
            servers += [{"urls": url, "username": username, "credential": credential} for url in self.turn]
        for entry in split_entries(list(self.static)):
            if entry not in servers:
                servers.append(entry)
        return servers


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _port_of(url: str) -> int:
    rest = url.partition(":")[2].partition("?")[0]
    try:
        return urlparse("//" + rest).port or TURN_PORT
    except ValueError:
        return TURN_PORT


def read_secret(path: str | Path) -> str:
    """The shared TURN secret from a file (first line, whitespace stripped)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise IceConfigError(f"Cannot read the TURN secret file {path}: {exc}") from None
    secret = text.strip().splitlines()[0].strip() if text.strip() else ""
    return secret


def settings_from(
    config: dict[str, Any] | None = None,
    *,
    stun: tuple[str, ...] | list[str] = (),
    turn: tuple[str, ...] | list[str] = (),
    secret: str | None = None,
    secret_file: str | Path | None = None,
    ttl: float | None = None,
) -> IceSettings:
    """Settings from flags, falling back to the config file's ``[ice]`` table.

    Config keys (all optional): ``[ice] stun = [...]``, ``turn = [...]``,
    ``turn_secret_file = "..."`` (or ``turn_secret``), ``ttl = 3600``; plus the top-level
    ``ice_servers`` list of static entries. Raises ``IceConfigError`` on unusable settings.
    """
    config = config or {}
    table = config.get("ice") if isinstance(config.get("ice"), dict) else {}
    stun_urls = list(stun) or _as_list(table.get("stun"))
    turn_urls = list(turn) or _as_list(table.get("turn"))
    if secret is None and secret_file is None:
        secret = table.get("turn_secret") if isinstance(table.get("turn_secret"), str) else None
        secret_file = table.get("turn_secret_file") if isinstance(table.get("turn_secret_file"), str) else None
    if secret is None and secret_file is not None:
        secret = read_secret(secret_file)
    ttl = float(ttl if ttl is not None else table.get("ttl", DEFAULT_TTL))
    if not MIN_TTL <= ttl <= MAX_TTL:
        raise IceConfigError(f"The TURN credential TTL must be between {MIN_TTL:.0f} and {MAX_TTL:.0f} s, not {ttl:g}.")
    stun_t = tuple(check_url(u, ("stun", "stuns")) for u in stun_urls)
    turn_t = tuple(check_url(u, ("turn", "turns")) for u in turn_urls)
    if turn_t and not secret:
        raise IceConfigError("TURN URLs need the shared secret of coturn's use-auth-secret (--turn-secret-file).")
    if secret is not None and len(secret) < MIN_SECRET_CHARS:
        raise IceConfigError(f"The TURN secret is too short: use at least {MIN_SECRET_CHARS} random characters.")
    static = tuple(dict(s) for s in config.get("ice_servers", []) or [] if isinstance(s, dict) and s.get("urls"))
    return IceSettings(stun=stun_t, turn=turn_t, secret=secret if turn_t else None, ttl=ttl, static=static)


def _as_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _is_local(host: str) -> bool:
    if host in ("", "localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def startup_warnings(settings: IceSettings, host: str) -> list[str]:
    """What will not work with ``settings`` on a server listening on ``host`` (in words)."""
    if _is_local(host):
        return []  # a local demo: every peer is on this machine
    warnings = []
    if not settings.has_relay:
        warnings.append(
            "No TURN server configured: peers behind different NATs or firewalls (a laptop at "
            "home and a GPU machine behind a university network) cannot connect; only peers on "
            "the same network or with public addresses can. See docs/deploy.md."
        )
        if not settings.stun_urls and not any(url_scheme(e["urls"]).startswith("stun") for e in split_entries(list(settings.static))):
            warnings.append("No STUN server configured either: a peer behind any NAT offers only its private address.")
    if any(e.get("username") for e in split_entries(list(settings.static)) if url_scheme(e["urls"]).startswith("turn")):
        warnings.append(
            "ice_servers in the config holds static TURN credentials, handed to every registered "
            "peer; prefer --turn with --turn-secret-file (short-lived credentials per peer)."
        )
    return warnings


def coturn_config(
    secret: str,
    realm: str,
    *,
    listening_ips: tuple[str, ...] | list[str] = (),
    external_ip: str | None = None,
    port: int = TURN_PORT,
    tls_port: int = TURNS_PORT,
    cert: str | None = None,
    pkey: str | None = None,
    relay_ports: tuple[int, int] = RELAY_PORTS,
    allow_private_peers: bool = False,
    log_file: str | None = None,
) -> str:
    """A coturn ``turnserver.conf`` for ``use-auth-secret`` with ``secret`` (TLS with a cert)."""
    if len(secret) < MIN_SECRET_CHARS:
        raise IceConfigError(f"The TURN secret is too short: use at least {MIN_SECRET_CHARS} random characters.")
    if bool(cert) != bool(pkey):
        raise IceConfigError("--cert and --pkey go together (TURN over TLS needs both).")
    lines = [
        "# coturn configuration written by `sleap-rtc turn-config`; matches `sleap-rtc server",
        "# --turn ... --turn-secret-file ...` (TURN REST credentials, minted per peer).",
        f"listening-port={port}",
        f"min-port={relay_ports[0]}",
        f"max-port={relay_ports[1]}",
        "fingerprint",
        "use-auth-secret",
        f"static-auth-secret={secret}",
        f"realm={realm}",
        "no-cli",
        "no-multicast-peers",
        "no-tlsv1",
        "no-tlsv1_1",
        "stale-nonce=600",
    ]
    lines += [f"listening-ip={ip}" for ip in listening_ips]
    lines += [f"relay-ip={ip}" for ip in listening_ips]
    if external_ip:
        lines.append(f"external-ip={external_ip}")
    if cert:
        lines += [f"tls-listening-port={tls_port}", f"cert={cert}", f"pkey={pkey}"]
    else:
        lines.append("no-tls")
        lines.append("no-dtls")
    if not allow_private_peers:
        lines += [f"denied-peer-ip={r}" for r in PRIVATE_RANGES]
    if log_file:
        lines.append(f"log-file={log_file}")
    else:
        lines.append("syslog")
    return "\n".join(lines) + "\n"


def server_flags_hint(host: str, *, tls: bool) -> str:
    """The ``sleap-rtc server`` flags matching a coturn on ``host`` (for turn-config's output)."""
    urls = [f"--turn turn:{host}:{TURN_PORT}?transport=udp", f"--turn turn:{host}:{TURN_PORT}?transport=tcp"]
    if tls:
        urls.append(f"--turn turns:{host}:{TURNS_PORT}?transport=tcp")
    return " ".join(urls)
