"""``sleap-rtc server``: run the signaling server until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import click

from sleap_rtc.core.config import load_config, user_data_dir
from sleap_rtc.server import ice
from sleap_rtc.server.limits import Limits
from sleap_rtc.server.rooms import MAX_ROOMS, UNUSED_ROOM_TTL

log = logging.getLogger(__name__)


def default_state_path() -> Path:
    """Where rooms are kept unless ``--state`` or the config's ``state`` says otherwise."""
    return user_data_dir() / "server.sqlite3"


async def serve(host: str, port: int, *, state_path: Path, tls_cert: str | None, tls_key: str | None, ping_interval: float, room_ttl: float | None, limits: dict, rooms: dict | None = None, ice_settings: ice.IceSettings | None = None) -> None:
    """Run a server until SIGINT/SIGTERM, then close every connection and exit."""
    from sleap_rtc.server.app import start_server, tls_context

    # start_server logs a warning when listening beyond loopback without TLS (M6).
    ssl_context = tls_context(tls_cert, tls_key) if tls_cert else None
    server = await start_server(
        host, port, state_path=state_path, ping_interval=ping_interval, ssl_context=ssl_context,
        ice=ice_settings or ice.IceSettings(), room_ttl=room_ttl, **(rooms or {}), **limits,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # Windows: Ctrl+C still raises KeyboardInterrupt
            pass
    click.echo(f"sleap-rtc signaling server listening on {server.url} (HTTP: {server.http_url}); rooms in {state_path}", err=False)
    try:
        await stop.wait()
    finally:
        click.echo("shutting down", err=True)
        await server.stop()


@click.command("server")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0 for all interfaces).")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535), help="Port for WebSocket and HTTP.")
@click.option("--state", "state", type=click.Path(dir_okay=False, path_type=Path), default=None, help="SQLite file keeping rooms across restarts [default: user data dir].")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), default=None, help="PEM certificate chain (serves wss:// and https://).")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), default=None, help="PEM private key of --tls-cert.")
@click.option("--ping-interval", default=30.0, show_default=True, type=click.FloatRange(min=0.1), help="Seconds between application pings.")
@click.option("--room-ttl", default=None, type=click.FloatRange(min=1), help="Seconds after which new rooms expire [default: never].")
@click.option("--stun", "stun", multiple=True, metavar="URL", help="STUN URL handed to every peer (repeatable) [default: one per --turn host].")
@click.option("--turn", "turn", multiple=True, metavar="URL", help="TURN URL, e.g. turn:HOST:3478?transport=udp (repeatable: list UDP, TCP, then turns:).")
@click.option("--turn-secret-file", type=click.Path(exists=True, dir_okay=False), default=None, help="File holding coturn's static-auth-secret (use-auth-secret); credentials are minted per peer from it.")
@click.option("--turn-secret", envvar="SLEAP_RTC_TURN_SECRET", default=None, help="The shared TURN secret itself (prefer --turn-secret-file; env SLEAP_RTC_TURN_SECRET).")
@click.option("--turn-ttl", default=None, type=click.FloatRange(ice.MIN_TTL, ice.MAX_TTL), help=f"Seconds a minted TURN credential is valid [default: {ice.DEFAULT_TTL:.0f}].")
@click.option("--room-creation", type=click.Choice(["auto", "open", "secret"]), default="auto", show_default=True,
              help="Who may POST /create-room. auto: anyone on a loopback-only server without a secret, else as 'secret'; "
                   "secret: holders of --create-room-secret or of a room's worker token; open: anyone.")
@click.option("--create-room-secret", default=None, envvar="SLEAP_RTC_CREATE_ROOM_SECRET", show_envvar=True,
              help="Secret that POST /create-room must present (Authorization: Bearer ...). Config key: create_room_secret.")
@click.option("--unused-room-ttl", default=UNUSED_ROOM_TTL, show_default=True, type=click.FloatRange(min=1), help="Seconds after which a room no peer ever joined is deleted.")
@click.option("--max-rooms", default=MAX_ROOMS, show_default=True, type=click.IntRange(min=1), help="Rooms stored at most.")
@click.option("--max-peers-per-room", default=Limits.max_peers_per_room, show_default=True, type=click.IntRange(min=1),
              help="Live peers per room; with --max-metadata-bytes it must keep a peer list under the peers' 16 MiB limit.")
@click.option("--max-metadata-bytes", default=Limits.max_metadata_bytes, show_default=True, type=click.IntRange(min=256), help="Encoded metadata of one peer.")
@click.option("--max-frame-bytes", default=Limits.max_frame_bytes, show_default=True, type=click.IntRange(min=1024))
@click.option("--messages-per-second", default=Limits.messages_per_second, show_default=True, type=click.FloatRange(min=0.1), help="Sustained frames per second per connection.")
@click.option("--message-burst", default=Limits.message_burst, show_default=True, type=click.IntRange(min=1))
@click.option("--address-messages-per-second", default=Limits.address_messages_per_second, show_default=True, type=click.FloatRange(min=0.1), help="Sustained frames per second from one address, all its connections together.")
@click.option("--address-message-burst", default=Limits.address_message_burst, show_default=True, type=click.IntRange(min=1), help="Frames one address may send at once.")
@click.option("--address-bytes-per-second", default=Limits.address_bytes_per_second, show_default=True, type=click.FloatRange(min=1024), help="Bytes per second of peer lists and room events one address's requests may cause.")
@click.option("--max-rooms-per-minute", default=Limits.max_rooms_per_minute, show_default=True, type=click.IntRange(min=1), help="Rooms one address may create per minute.")
@click.option("--max-sockets-per-address", default=Limits.max_sockets_per_address, show_default=True, type=click.IntRange(min=1), help="Open TCP connections from one address (IPv6: per /64).")
@click.option("--max-sockets", default=None, type=click.IntRange(min=16), help="Open TCP connections in all [default: 80% of the file-descriptor limit, raised at start-up].")
@click.option("--register-timeout", default=Limits.register_timeout, show_default=True, type=click.FloatRange(min=0.1), help="Seconds a WebSocket may stay open without registering.")
@click.option("--http-idle-timeout", default=Limits.http_idle_timeout, show_default=True, type=click.FloatRange(min=0.1), help="Seconds a TCP connection may go without a complete HTTP request (slow headers, idle keep-alive).")
def server_command(host, port, state, tls_cert, tls_key, ping_interval, room_ttl, stun, turn, turn_secret_file, turn_secret, turn_ttl, room_creation, create_room_secret, unused_room_ttl, max_rooms,
                   max_peers_per_room, max_metadata_bytes, max_frame_bytes, messages_per_second, message_burst,
                   address_messages_per_second, address_message_burst, address_bytes_per_second, max_rooms_per_minute, max_sockets_per_address, max_sockets,
                   register_timeout, http_idle_timeout) -> None:
    """Run the signaling server (WebSocket + HTTP on one port, rooms kept in SQLite).

    Every limit against hostile peers is an option below; docs/security.md explains each.
    Frames: 1 MiB (bigger ones closed at 1 MiB + 16 KiB). Metadata: 16 KiB, values scalars or
    flat lists. Failed registrations: 10 per address per minute, and a correct token is never
    refused. Sockets that do not register in 10 s are closed.
    """
    if bool(tls_cert) != bool(tls_key):
        raise click.UsageError("--tls-cert and --tls-key go together.")
    config = load_config()
    try:
        ice_settings = ice.settings_from(config, stun=stun, turn=turn, secret=turn_secret, secret_file=turn_secret_file, ttl=turn_ttl)
    except ice.IceConfigError as exc:
        raise click.UsageError(str(exc)) from None
    for warning in ice.startup_warnings(ice_settings, host):
        click.echo(f"Warning: {warning}", err=True)
    if state is None:
        configured = config.get("state")
        state = Path(configured) if configured else default_state_path()
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    limits = {
        "max_peers_per_room": max_peers_per_room,
        "max_metadata_bytes": max_metadata_bytes,
        "max_frame_bytes": max_frame_bytes,
        "messages_per_second": messages_per_second,
        "message_burst": message_burst,
        "address_messages_per_second": address_messages_per_second,
        "address_message_burst": address_message_burst,
        "address_bytes_per_second": address_bytes_per_second,
        "max_rooms_per_minute": max_rooms_per_minute,
        "max_sockets_per_address": max_sockets_per_address,
        "max_sockets": max_sockets,
        "register_timeout": register_timeout,
        "http_idle_timeout": http_idle_timeout,
    }
    try:
        Limits(**limits)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if create_room_secret is None:
        create_room_secret = config.get("create_room_secret") or None
    rooms = {"room_creation": room_creation, "create_room_secret": create_room_secret or "", "unused_room_ttl": unused_room_ttl, "max_rooms": max_rooms}
    try:
        asyncio.run(serve(host, port, state_path=state, tls_cert=tls_cert, tls_key=tls_key, ping_interval=ping_interval, room_ttl=room_ttl, limits=limits, rooms=rooms, ice_settings=ice_settings))
    except OSError as exc:
        raise click.ClickException(f"Cannot start the server on {host}:{port}: {exc.strerror or exc}") from None
    except KeyboardInterrupt:
        pass


@click.command("turn-config")
@click.option("--secret-file", type=click.Path(exists=True, dir_okay=False), required=True, help="The shared secret (the same file `sleap-rtc server --turn-secret-file` reads).")
@click.option("--realm", required=True, help="coturn realm, e.g. the TURN host's DNS name.")
@click.option("--listening-ip", multiple=True, help="Address coturn listens and relays on (repeatable) [default: all].")
@click.option("--external-ip", default=None, help="Public address, when the host is behind 1:1 NAT (cloud VMs).")
@click.option("--cert", type=click.Path(dir_okay=False), default=None, help="PEM certificate for TURN over TLS (turns:, port 5349).")
@click.option("--pkey", type=click.Path(dir_okay=False), default=None, help="PEM private key of --cert.")
@click.option("--allow-private-peers", is_flag=True, help="Relay to private addresses too (only for a lab on one private network).")
@click.option("--log-file", default=None, help="coturn log file [default: syslog].")
def turn_config_command(secret_file, realm, listening_ip, external_ip, cert, pkey, allow_private_peers, log_file) -> None:
    """Print a coturn turnserver.conf matching `sleap-rtc server --turn-secret-file`.

    \b
    sleap-rtc turn-config --secret-file /etc/sleap-rtc/turn-secret --realm turn.example.org \\
        --cert /etc/letsencrypt/live/turn.example.org/fullchain.pem \\
        --pkey /etc/letsencrypt/live/turn.example.org/privkey.pem > /etc/turnserver.conf
    """
    try:
        text = ice.coturn_config(
            ice.read_secret(secret_file), realm, listening_ips=listening_ip, external_ip=external_ip,
            cert=cert, pkey=pkey, allow_private_peers=allow_private_peers, log_file=log_file,
        )
    except ice.IceConfigError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(text, nl=False)
    click.echo(
        f"# start sleap-rtc server with: {ice.server_flags_hint(realm, tls=bool(cert))} --turn-secret-file {secret_file}",
        err=True,
    )
