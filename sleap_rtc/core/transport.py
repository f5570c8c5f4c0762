"""WebRTC connection set-up through the signaling room (client offers, worker answers).

* ``await connect(signaling, target_peer_id, ...) -> PeerChannel`` (client side)
* ``await accept(signaling, offer_frame, ...) -> PeerChannel`` (worker side; its busy guard
  runs before, and refuses with ``protocol.busy_error_frame`` instead of calling this)

Signaling is non-trickle: each side gathers its candidates first and sends one complete
SDP in ``offer``/``answer`` (v2.0 wire names, ``sender``/``target``); ``candidate``
frames are not needed. Errors (all ``TransportError``): ``PeerNotFoundError`` (target not in
the room), ``WorkerBusyError`` (relayed ``worker_busy``; pick another worker),
``AnswerTimeoutError``, ``ConnectionFailedError`` (ICE/DTLS/SCTP never came up),
``LoopbackOnlyError``, ``ChannelVersionError``, ``PeerClosedError``.

ICE policy: servers from the argument, else the config file's ``ice_servers`` plus
``signaling.registration.ice_servers``, else none (loopback and LAN need none). aioice waits a fixed 5 s for an unreachable
STUN/TURN server while gathering, so before gathering every server is probed with one STUN
binding request (``probe_ice_servers``, all in parallel, capped at ``PROBE_TIMEOUT``);
servers that do not answer are left out for that connection. Worst case this adds
``PROBE_TIMEOUT`` instead of 5 s per peer; with no servers it adds nothing.

Loopback-only hosts: aioice never offers 127.0.0.1 as a candidate, so on a host whose only
interface is ``lo`` no connection can ever open (and aiortc never reports failure).
``connect``/``accept`` detect this up front and raise ``LoopbackOnlyError`` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import os
import socket
import struct
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import ifaddr

from sleap_rtc.core.backends import Connection, choose_backend, make_connection
from sleap_rtc.core.channel import PeerChannel
from sleap_rtc.core.config import ConfigError, ice_servers_from_config
from sleap_rtc.core.protocol import CHANNEL_VERSION, WORKER_BUSY, ErrorCode, MessageType
from sleap_rtc.core.transport_errors import (
    AnswerTimeoutError,
    ConnectionFailedError,
    LoopbackOnlyError,
    PeerClosedError,
    PeerNotFoundError,
    TransportError,
    WorkerBusyError,
)

log = logging.getLogger(__name__)

CHANNEL_LABEL = "sleap-rtc"
"""Label of the one data channel the client creates."""
PROBE_TIMEOUT = 0.8
"""Cap (seconds) on probing all ICE servers for reachability before gathering."""

_STUN_MAGIC = 0x2112A442


# ---------------------------------------------------------------------- ICE policy


def non_loopback_addresses() -> list[str]:
    """Addresses aioice would gather host candidates on (every one except loopback)."""
    found = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            addr = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            with contextlib.suppress(ValueError):
                parsed = ipaddress.ip_address(addr)
                if not parsed.is_loopback and not (parsed.version == 6 and parsed.is_link_local):
                    found.append(addr)
    return found


def check_not_loopback_only() -> None:
    """Raise ``LoopbackOnlyError`` on a host where aioice can gather no host candidate."""
    if not non_loopback_addresses():
        raise LoopbackOnlyError(
            "This machine has no network interface besides loopback (lo), and aiortc's ICE "
            "library never uses 127.0.0.1, so no WebRTC connection can open here. Bring up any "
            "other interface (on Linux even a dummy one: `ip link add d0 type dummy && "
            "ip addr add 10.254.0.1/24 dev d0 && ip link set d0 up`)."
        )


def resolve_ice_servers(ice_servers: list[dict[str, Any]] | None, signaling: Any) -> list[dict[str, Any]]:
    """The ICE servers to use: the argument, else this machine's config file (``ice_servers``)
    plus those the signaling server sent in ``registered_auth``; none by default."""
    if ice_servers is not None:
        return list(ice_servers)
    try:
        local = ice_servers_from_config()
    except ConfigError as exc:
        log.warning("ignoring ice_servers from the config file: %s", exc)
        local = []
    reg = getattr(signaling, "registration", None)
    sent = [s for s in getattr(reg, "ice_servers", None) or [] if s not in local]
    return local + sent


def _server_urls(server: dict[str, Any]) -> list[str]:
    urls = server.get("urls") or server.get("url") or []
    return [urls] if isinstance(urls, str) else [u for u in urls if isinstance(u, str)]


def _host_port(url: str) -> tuple[str, int, str] | None:
    """``stun:host:port`` / ``turn:host:port?transport=tcp`` -> (host, port, transport)."""
    scheme, _, rest = url.partition(":")
    if scheme not in {"stun", "stuns", "turn", "turns"}:
        return None
    rest, _, query = rest.partition("?")
    transport = "tcp" if scheme.endswith("s") or "transport=tcp" in query else "udp"
    parsed = urlparse("//" + rest)
    default = 5349 if scheme.endswith("s") else 3478
    try:
        return parsed.hostname or "", parsed.port or default, transport
    except ValueError:
        return None


async def _probe_url(url: str, timeout: float) -> bool:
    target = _host_port(url)
    if target is None or not target[0]:
        return False
    host, port, transport = target
    loop = asyncio.get_running_loop()
    if transport == "tcp":
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
            writer.close()
            return True
        except (OSError, asyncio.TimeoutError):
            return False
    # One STUN binding request; TURN servers answer it too.
    txid = os.urandom(12)
    request = struct.pack("!HHI", 0x0001, 0, _STUN_MAGIC) + txid
    answered = loop.create_future()

    class _Proto(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            if len(data) >= 20 and data[8:20] == txid and not answered.done():
                answered.set_result(True)

        def error_received(self, exc: Exception) -> None:
            if not answered.done():
                answered.set_result(False)

    transport_ = None
    try:
        infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM), timeout)
        transport_, _ = await loop.create_datagram_endpoint(_Proto, remote_addr=infos[0][4])
        for _ in range(3):  # UDP may drop one: resend within the cap
            transport_.sendto(request)
            with contextlib.suppress(asyncio.TimeoutError):
                return await asyncio.wait_for(asyncio.shield(answered), timeout / 3)
        return False
    except (OSError, asyncio.TimeoutError, IndexError):
        return False
    finally:
        if transport_ is not None:
            transport_.close()


async def probe_ice_servers(servers: list[dict[str, Any]], timeout: float = PROBE_TIMEOUT) -> list[dict[str, Any]]:
    """The subset of ``servers`` (RTCIceServer-shaped dicts) that answer within ``timeout``.

    A server is kept when any of its URLs answers. All probes run in parallel.
    """
    if not servers:
        return []

    async def server_ok(server: dict[str, Any]) -> bool:
        results = await asyncio.gather(*(_probe_url(u, timeout) for u in _server_urls(server)))
        return any(results)

    oks = await asyncio.gather(*(server_ok(s) for s in servers))
    for server, ok in zip(servers, oks):
        if not ok:
            log.warning("ICE server %s did not answer within %.1f s; leaving it out", _server_urls(server), timeout)
    return [s for s, ok in zip(servers, oks) if ok]


async def _peer_connection(signaling: Any, ice_servers: list[dict[str, Any]] | None, backend: str | None) -> Connection:
    backend = choose_backend(backend)
    if backend == "memory":  # the in-process test pair needs no network at all
        return make_connection(backend, [])
    if backend == "aiortc":  # libdatachannel does use loopback; aioice never does
        check_not_loopback_only()
    servers = await probe_ice_servers(resolve_ice_servers(ice_servers, signaling))
    return make_connection(backend, servers)


# ---------------------------------------------------------------------- set-up


async def connect(
    signaling: Any,
    target_peer_id: str,
    *,
    ice_servers: list[dict[str, Any]] | None = None,
    timeout: float = 20.0,
    receive_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    version: int = CHANNEL_VERSION,
    backend: str | None = None,
) -> PeerChannel:
    """Open a data channel to ``target_peer_id`` through the room (client side).

    ``signaling`` is a registered ``SignalingClient``. ``timeout`` bounds the whole set-up
    (offer -> answer -> ICE/DTLS -> hello). ``receive_dir``/``cache_dir``: where incoming
    files and the transfer cache go. ``version`` is for tests of the hello exchange.
    ``backend`` forces a transport backend (default: ``backends.choose_backend``).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    conn = await _peer_connection(signaling, ice_servers, backend)
    channel: PeerChannel | None = None
    try:
        channel = PeerChannel(
            conn, local_peer_id=signaling.peer_id, remote_peer_id=target_peer_id, role="client",
            receive_dir=receive_dir, cache_dir=cache_dir, version=version,
        )
        sdp = await conn.offer(CHANNEL_LABEL)  # gathers (non-trickle)
        frame = await exchange_offer(signaling, target_peer_id, sdp, deadline, timeout)
        await conn.accept_answer(frame["sdp"])
        await _start(channel, deadline, target_peer_id)
        channel.stripes.opener = functools.partial(
            open_stripe, signaling, target_peer_id, ice_servers=ice_servers, timeout=timeout, backend=backend
        )
        return channel
    except BaseException:
        if channel is not None:
            await channel.abort("connection set-up failed")
        else:
            await conn.close()
        raise


async def exchange_offer(
    signaling: Any, target_peer_id: str, sdp: str, deadline: float, timeout: float, **extra: Any
) -> dict[str, Any]:
    """Send one ``offer`` (plus ``extra`` fields) to ``target_peer_id`` and return its ``answer``
    frame; raises ``AnswerTimeoutError`` at ``deadline`` (loop time) and the matching error
    for a relayed refusal (``WorkerBusyError``, ``PeerNotFoundError``, ...)."""
    loop = asyncio.get_running_loop()
    offer_id = f"offer-{uuid.uuid4().hex[:12]}"
    reply = loop.create_future()

    def on_frame(frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        from_target = frame.get("sender") in (None, target_peer_id)
        if reply.done():
            return
        if kind == MessageType.ANSWER and frame.get("sender") == target_peer_id and frame.get("id") in (None, offer_id):
            reply.set_result(frame)
        elif kind == MessageType.ERROR and (frame.get("id") == offer_id or (frame.get("reason") == WORKER_BUSY and from_target)):
            reply.set_result(frame)

    remove = signaling.add_listener(on_frame)
    try:
        await signaling.send(
            {"type": MessageType.OFFER.value, "sender": signaling.peer_id, "target": target_peer_id,
             "sdp": sdp, "id": offer_id, **extra}
        )
        try:
            frame = await asyncio.wait_for(reply, max(0.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            raise AnswerTimeoutError(f"Peer {target_peer_id} did not answer within {timeout:.0f} s.") from None
    finally:
        remove()
    if frame.get("type") == MessageType.ERROR:
        raise _error_from_frame(frame, target_peer_id)
    if not isinstance(frame.get("sdp"), str):
        raise ConnectionFailedError(f"Peer {target_peer_id} answered without an SDP.")
    return frame


async def open_stripe(
    signaling: Any,
    target_peer_id: str,
    token: str,
    *,
    ice_servers: list[dict[str, Any]] | None = None,
    timeout: float = 20.0,
    backend: str | None = None,
) -> Connection:
    """Open one extra peer connection to ``target_peer_id`` for striped file payload (client
    side): an ``offer`` carrying the worker's stripe ``token`` (``stripes``), through the same
    room. Returns the open backend ``Connection`` (its handlers are set by the caller)."""
    from sleap_rtc.core.stripes import STRIPE_LABEL, wait_open

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    conn = await _peer_connection(signaling, ice_servers, backend)
    try:
        opened = wait_open(conn)
        sdp = await conn.offer(STRIPE_LABEL)
        frame = await exchange_offer(signaling, target_peer_id, sdp, deadline, timeout, stripe=token)
        await conn.accept_answer(frame["sdp"])
        await asyncio.wait_for(opened, max(0.1, deadline - loop.time()))
        return conn
    except BaseException:
        await conn.close()
        raise


async def accept_stripe(
    signaling: Any,
    offer_frame: dict[str, Any],
    *,
    ice_servers: list[dict[str, Any]] | None = None,
    timeout: float = 20.0,
    backend: str | None = None,
) -> Connection:
    """Answer a stripe ``offer`` (worker side, after the guard admitted its token) and return
    the open backend ``Connection``."""
    from sleap_rtc.core.stripes import wait_open

    sender, sdp = offer_frame.get("sender"), offer_frame.get("sdp")
    if not isinstance(sender, str) or not isinstance(sdp, str):
        raise ConnectionFailedError("The offer frame has no 'sender' or no 'sdp'.")
    conn = await _peer_connection(signaling, ice_servers, backend)
    try:
        opened = wait_open(conn)
        answer_sdp = await conn.answer(sdp)
        await signaling.send({"type": MessageType.ANSWER.value, "sender": signaling.peer_id, "target": sender,
                              "sdp": answer_sdp, "id": offer_frame.get("id")})
        await asyncio.wait_for(opened, timeout)
        return conn
    except BaseException:
        await conn.close()
        raise


async def accept(
    signaling: Any,
    offer_frame: dict[str, Any],
    *,
    ice_servers: list[dict[str, Any]] | None = None,
    timeout: float = 20.0,
    receive_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    version: int = CHANNEL_VERSION,
    backend: str | None = None,
) -> PeerChannel:
    """Answer a relayed ``offer`` frame and return the open channel (worker side)."""
    sender = offer_frame.get("sender")
    sdp = offer_frame.get("sdp")
    if not isinstance(sender, str) or not isinstance(sdp, str):
        raise ConnectionFailedError("The offer frame has no 'sender' or no 'sdp'.")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    conn = await _peer_connection(signaling, ice_servers, backend)
    channel = PeerChannel(conn, local_peer_id=signaling.peer_id, remote_peer_id=sender, role="worker",
                          receive_dir=receive_dir, cache_dir=cache_dir, version=version)
    try:
        answer_sdp = await conn.answer(sdp)
        answer = {"type": MessageType.ANSWER.value, "sender": signaling.peer_id, "target": sender, "sdp": answer_sdp,
                  "id": offer_frame.get("id")}
        await signaling.send(answer)
        try:
            await _start(channel, deadline, sender)
        except PeerClosedError as exc:
            if not channel.conn.is_open and channel.remote_hello is None:
                raise ConnectionFailedError(f"ICE/DTLS with {sender} failed: no route between the peers.") from exc
            raise
        return channel
    except BaseException:
        await channel.abort("connection set-up failed")
        raise


async def _start(channel: PeerChannel, deadline: float, peer: str) -> None:
    remaining = max(0.1, deadline - asyncio.get_running_loop().time())
    try:
        await channel.start(remaining)
    except TimeoutError:
        raise ConnectionFailedError(
            f"The data channel to {peer} did not open within the timeout (ICE/DTLS state: {channel.conn.state})."
        ) from None


def _error_from_frame(frame: dict[str, Any], target: str) -> TransportError:
    message = str(frame.get("message") or frame.get("reason") or "refused")
    if frame.get("reason") == WORKER_BUSY:
        return WorkerBusyError(message, status=frame.get("status"), frame=frame)
    if frame.get("code") in (ErrorCode.PEER_NOT_FOUND, ErrorCode.PEER_NOT_IN_ROOM):
        return PeerNotFoundError(f"Peer {target} is not in this room: {message}")
    return ConnectionFailedError(f"The signaling server refused the offer to {target}: {message}")
