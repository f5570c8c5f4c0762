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

ICE policy (``resolve_ice_servers``): the signaling server's list from ``registered_auth``
(STUN, and TURN with credentials minted for this peer) first, then this machine's own
servers (the argument, else the config file's ``ice_servers``) merged in, every URL its own
entry: aiortc uses only the first URL of an entry, and only the first STUN and the first
TURN URL of the whole list. TURN credentials about to expire are fetched again
(``get_ice_servers``) before gathering. None at all by default (loopback and LAN need none).
aioice waits a fixed 5 s for an unreachable STUN/TURN server while gathering, so before
gathering every URL is probed on its own (one STUN binding request, or a TCP connect for
TCP/TLS; all in parallel, capped at ``PROBE_TIMEOUT``), and the URLs that do not answer are
left out. This runs on every attempt, so a retry after an outage uses what answers now.

Failing fast: aioice gives up on connectivity checks only after ~31 s of retransmissions,
so once both descriptions are set the checks get ``ICE_CHECK_TIMEOUT`` (a working path
opens in 0.4-1.8 s, ~4 s at 1 % loss); ICE ``failed`` ends the attempt earlier. The error
(``IceFailedError``) carries an ``IceReport``: the states recorded before teardown, the
candidate types each side offered, and one hint (e.g. "no TURN server configured").

Backends (``core.backends``): each side picks its own (libdatachannel when installed, else
aiortc); both speak standard WebRTC. Extra connections for striped transfers
(``core.stripes``) are set up by ``open_stripe``/``accept_stripe`` through the same room.

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
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import ifaddr

from sleap_rtc.core.backends import Connection, choose_backend, make_connection
from sleap_rtc.core.channel import PeerChannel
from sleap_rtc.core.config import ConfigError, ice_servers_from_config
from sleap_rtc.core.ice_report import IceReport, StateLog, candidate_types
from sleap_rtc.core.protocol import (
    CHANNEL_VERSION, OFFER_REF, STRIPE_GRANT, STRIPE_TOKEN, WORKER_BUSY, ErrorCode, MessageType,
)
from sleap_rtc.core.transport_errors import (
    AnswerTimeoutError,
    ConnectionFailedError,
    IceFailedError,
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
ICE_CHECK_TIMEOUT = 6.0
"""Seconds the ICE connectivity checks may take once both SDPs are set, before the attempt
is declared dead (aioice alone would take ~31 s)."""
CREDENTIAL_REFRESH_MARGIN = 120.0
"""TURN credentials expiring within this many seconds are fetched again before gathering."""
REFRESH_TIMEOUT = 3.0
"""Cap (seconds) on asking the signaling server for fresh ICE servers."""

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


def split_entries(servers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """RTCIceServer-shaped dicts with one URL each (credentials kept), duplicates dropped."""
    out: list[dict[str, Any]] = []
    for server in servers:
        for url in _server_urls(server):
            entry: dict[str, Any] = {"urls": url}
            if url.lower().startswith("turn"):
                for key in ("username", "credential"):
                    if server.get(key) is not None:
                        entry[key] = server[key]
            if not any(e["urls"] == url for e in out):
                out.append(entry)
    return out


def resolve_ice_servers(ice_servers: list[dict[str, Any]] | None, signaling: Any) -> list[dict[str, Any]]:
    """The ICE servers to use, one URL per entry: the signaling server's list first, then
    this machine's (``ice_servers``, else the config file's); none by default.

    A URL both lists name is taken from the server (its credentials are minted for us). A
    local TURN server the signaling server does not hand out is logged: the other peer will
    not have it, and a relay on one side only needs STUN on the other.
    """
    reg = getattr(signaling, "registration", None)
    sent = split_entries(list(getattr(reg, "ice_servers", None) or []))
    if ice_servers is None:
        try:
            ice_servers = ice_servers_from_config()
        except ConfigError as exc:
            log.warning("ignoring ice_servers from the config file: %s", exc)
            ice_servers = []
    local = [e for e in split_entries(list(ice_servers)) if not any(s["urls"] == e["urls"] for s in sent)]
    if local and any(e["urls"].lower().startswith("turn") for e in local):
        log.info("ICE servers from this machine's config that the signaling server does not hand out "
                 "(the other peer will not use them): %s", [e["urls"] for e in local])
    return sent + local


async def refresh_ice_servers(signaling: Any, now: float | None = None) -> None:
    """Ask the signaling server for fresh ICE servers when its TURN credentials expire soon.

    TURN REST usernames start with their expiry (``<unix time>:<peer id>``). Nothing is
    asked for when no credential is near its expiry, or of a server that cannot answer.
    """
    reg = getattr(signaling, "registration", None)
    servers = list(getattr(reg, "ice_servers", None) or [])
    now = time.time() if now is None else now
    expiries = [_expiry(s.get("username")) for s in servers]
    if not any(e is not None and e - now < CREDENTIAL_REFRESH_MARGIN for e in expiries):
        return
    try:
        reply = await signaling.request({"type": MessageType.GET_ICE_SERVERS.value}, timeout=REFRESH_TIMEOUT)
    except Exception as exc:  # an old server, or the link is down: gather with what we have
        log.info("could not refresh the ICE servers: %s", exc)
        return
    fresh = reply.get("ice_servers") if isinstance(reply, dict) else None
    if isinstance(fresh, list):
        reg.ice_servers = [s for s in fresh if isinstance(s, dict)]


def _expiry(username: Any) -> float | None:
    head = username.partition(":")[0] if isinstance(username, str) else ""
    return float(head) if head.isdigit() else None


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
    """The URLs of ``servers`` that answer within ``timeout``, one entry each, in order.

    Each URL is judged on its own (an entry listing UDP and TCP TURN with UDP blocked keeps
    only the TCP URL, which is the one aiortc must be handed). All probes run in parallel.
    """
    entries = split_entries(servers)
    if not entries:
        return []
    oks = await asyncio.gather(*(_probe_url(e["urls"], timeout) for e in entries))
    for entry, ok in zip(entries, oks):
        if not ok:
            log.warning("ICE server %s did not answer within %.1f s; leaving it out", entry["urls"], timeout)
    return [e for e, ok in zip(entries, oks) if ok]


@dataclass
class _Attempt:
    """One connection attempt: its backend connection and what is needed to explain a failure."""

    conn: Connection
    configured: list[str]
    answered: list[str]
    states: StateLog = field(default_factory=StateLog)
    started: float = 0.0
    local_sdp: str | None = None
    servers: list[dict[str, Any]] = field(default_factory=list)
    """The ICE servers that answered the probe (what the connection uses)."""

    @property
    def pc(self) -> Any:
        """aiortc's RTCPeerConnection (its state events explain failures); None for other backends."""
        return getattr(self.conn, "pc", None) if self.conn.backend == "aiortc" else None


PROBE_REUSE_S = 30.0
"""An extra connection opened within this many seconds of its primary's probe uses the servers
that answered it instead of probing again (one round trip less at set-up)."""


async def _peer_connection(signaling: Any, ice_servers: list[dict[str, Any]] | None, backend: str | None = None,
                           probed: tuple[float, list[dict[str, Any]]] | None = None) -> _Attempt:
    backend = choose_backend(backend)
    loop = asyncio.get_running_loop()
    started = loop.time()
    if backend == "memory":  # the in-process test pair needs no network at all
        return _Attempt(make_connection(backend, []), [], [], started=started)
    if backend == "aiortc":  # libdatachannel does use loopback; aioice never does
        check_not_loopback_only()
    if probed is not None and started - probed[0] < PROBE_REUSE_S:
        configured = servers = probed[1]
    else:
        await refresh_ice_servers(signaling)
        configured = resolve_ice_servers(ice_servers, signaling)
        servers = await probe_ice_servers(configured)  # again on every attempt: the network changes
    attempt = _Attempt(make_connection(backend, servers), [e["urls"] for e in configured],
                       [e["urls"] for e in servers], started=started, servers=servers)
    if attempt.pc is not None:
        attempt.states.attach(attempt.pc)
    return attempt


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
    ice_check_timeout: float = ICE_CHECK_TIMEOUT,
    backend: str | None = None,
    stripes: int = 1,
) -> PeerChannel:
    """Open a data channel to ``target_peer_id`` through the room (client side).

    ``signaling`` is a registered ``SignalingClient``. ``timeout`` bounds the whole set-up
    (offer -> answer -> ICE/DTLS -> hello); the ICE checks alone get ``ice_check_timeout``
    once the answer is in. ``receive_dir``/``cache_dir``: where incoming files and the
    transfer cache go. ``version`` is for tests of the hello exchange. ``backend`` forces
    a transport backend (default: ``backends.choose_backend``). ``stripes`` > 1 opens that
    many connections in all for striped transfers, the extra ones as soon as the worker's
    answer grants them, in parallel with the first one's handshakes (``stripes.ensure``
    returns once they are open); the worker may refuse them, which costs nothing here.
    They start before the path is known, so the TURN-relay cap (``stripes.RELAY_MAX_CONNECTIONS``)
    holds only for growth afterwards: ask for more than that only on a direct path.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    attempt = await _peer_connection(signaling, ice_servers, backend)
    conn = attempt.conn
    channel: PeerChannel | None = None
    try:
        channel = PeerChannel(
            conn, local_peer_id=signaling.peer_id, remote_peer_id=target_peer_id, role="client",
            receive_dir=receive_dir, cache_dir=cache_dir, version=version,
        )
        attempt.local_sdp = await conn.offer(CHANNEL_LABEL)  # gathers (non-trickle)
        frame = await exchange_offer(signaling, target_peer_id, attempt.local_sdp, deadline, timeout)
        await conn.accept_answer(frame["sdp"])
        channel.stripes.opener = functools.partial(
            open_stripe, signaling, target_peer_id, ice_servers=ice_servers, timeout=timeout, backend=backend,
            probed=(attempt.started, attempt.servers),
        )
        channel.stripes.granted(frame.get(STRIPE_GRANT))
        channel.stripes.open_early(stripes)
        await _open(attempt, channel.start, deadline, loop.time() + ice_check_timeout, target_peer_id, "client", frame["sdp"])
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
        mine = frame.get(OFFER_REF) in (None, offer_id)  # an answer to another offer in flight is not ours
        if kind == MessageType.ANSWER and frame.get("sender") == target_peer_id and mine:
            reply.set_result(frame)
        elif kind == MessageType.ERROR and (
            frame.get("id") == offer_id or frame.get(OFFER_REF) == offer_id
            or (frame.get("reason") == WORKER_BUSY and from_target and mine)
        ):
            reply.set_result(frame)

    remove = signaling.add_listener(on_frame)
    try:
        await signaling.send(
            {"type": MessageType.OFFER.value, "sender": signaling.peer_id, "target": target_peer_id,
             "sdp": sdp, "id": offer_id, OFFER_REF: offer_id, **extra}
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
    probed: tuple[float, list[dict[str, Any]]] | None = None,
) -> Connection:
    """Open one extra peer connection to ``target_peer_id`` for striped file payload (client
    side): an ``offer`` carrying the worker's stripe ``token`` (``stripes``), through the same
    room. ``probed``: ``(loop time, servers)`` of the primary's ICE server probe, reused
    within ``PROBE_REUSE_S``. Returns the open backend ``Connection`` (its handlers are set
    by the caller)."""
    from sleap_rtc.core.stripes import STRIPE_LABEL, wait_open

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    conn = (await _peer_connection(signaling, ice_servers, backend, probed)).conn
    try:
        opened = wait_open(conn)
        sdp = await conn.offer(STRIPE_LABEL)
        frame = await exchange_offer(signaling, target_peer_id, sdp, deadline, timeout, **{STRIPE_TOKEN: token})
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
    conn = (await _peer_connection(signaling, ice_servers, backend)).conn
    try:
        opened = wait_open(conn)
        answer_sdp = await conn.answer(sdp)
        await signaling.send({"type": MessageType.ANSWER.value, "sender": signaling.peer_id, "target": sender,
                              "sdp": answer_sdp, OFFER_REF: offer_frame.get(OFFER_REF)})
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
    ice_check_timeout: float = ICE_CHECK_TIMEOUT,
    backend: str | None = None,
    on_channel: Callable[[PeerChannel], None] | None = None,
) -> PeerChannel:
    """Answer a relayed ``offer`` frame and return the open channel (worker side).

    ``on_channel(channel)`` runs once the channel exists, before the answer goes out: the
    runtime registers it (its stripe offers may come before it opens) and may allow
    striping (``stripes.allow``), in which case the answer carries the grant.
    Raises ``IceFailedError`` as soon as the attempt is dead (ICE failed, or no working
    path within ``ice_check_timeout`` of the answer), so the caller can free the worker."""
    sender = offer_frame.get("sender")
    sdp = offer_frame.get("sdp")
    if not isinstance(sender, str) or not isinstance(sdp, str):
        raise ConnectionFailedError("The offer frame has no 'sender' or no 'sdp'.")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    attempt = await _peer_connection(signaling, ice_servers, backend)
    conn = attempt.conn
    channel = PeerChannel(conn, local_peer_id=signaling.peer_id, remote_peer_id=sender, role="worker",
                          receive_dir=receive_dir, cache_dir=cache_dir, version=version)
    try:
        if on_channel is not None:
            on_channel(channel)
        attempt.local_sdp = await conn.answer(sdp)
        answer = {"type": MessageType.ANSWER.value, "sender": signaling.peer_id, "target": sender,
                  "sdp": attempt.local_sdp, OFFER_REF: offer_frame.get(OFFER_REF)}
        if channel.stripes.token is not None:
            answer[STRIPE_GRANT] = channel.stripes.grant_fields()
        await signaling.send(answer)
        await _open(attempt, channel.start, deadline, loop.time() + ice_check_timeout, sender, "worker", sdp)
        return channel
    except BaseException:
        await channel.abort("connection set-up failed")
        raise


async def _open(
    attempt: _Attempt, start: Callable[[float], Awaitable[None]], deadline: float, ice_deadline: float,
    peer: str, role: str, remote_sdp: str,
) -> None:
    """Run ``start(remaining)`` (data channel open + hello) under two deadlines: the ICE
    checks must succeed by ``ice_deadline``, everything by ``deadline``; ICE ``failed``
    ends it at once. On failure raise ``IceFailedError`` with the states before teardown."""
    loop = asyncio.get_running_loop()
    pc = attempt.pc
    if pc is None:  # a backend without aiortc's state events: the overall deadline alone
        try:
            await start(max(0.1, deadline - loop.time()))
            return
        except (TimeoutError, asyncio.TimeoutError, PeerClosedError) as exc:
            report = _report(attempt, peer, role, remote_sdp, not isinstance(exc, PeerClosedError), loop.time())
            text = f"{report.message()} The {attempt.conn.backend} connection reported: {exc}"
            log.warning("%s", text)
            raise IceFailedError(text, report) from None
    failed = loop.create_future()

    def on_state() -> None:
        attempt.states.record()
        if (pc.iceConnectionState == "failed" or pc.connectionState == "failed") and not failed.done():
            failed.set_result(None)

    pc.on("iceconnectionstatechange", on_state)
    pc.on("connectionstatechange", on_state)
    task = asyncio.ensure_future(start(max(0.1, deadline - loop.time())))
    timed_out = False
    try:
        while True:
            attempt.states.record()
            limit = deadline if attempt.states.ice_connected else min(ice_deadline, deadline)
            done, _ = await asyncio.wait({task, failed}, timeout=max(0.0, limit - loop.time()),
                                         return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                try:
                    task.result()
                    return
                except (TimeoutError, asyncio.TimeoutError, PeerClosedError):
                    timed_out = not failed.done()
                    break
            if failed in done:
                break
            attempt.states.record()
            if attempt.states.ice_connected and loop.time() < deadline:
                continue  # the path works; DTLS/SCTP/hello get the rest of the time
            timed_out = True
            break
    finally:
        pc.remove_listener("iceconnectionstatechange", on_state)
        pc.remove_listener("connectionstatechange", on_state)
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    report = _report(attempt, peer, role, remote_sdp, timed_out, loop.time())
    log.warning("%s", report.message())
    raise IceFailedError(report.message(), report)


def _report(attempt: _Attempt, peer: str, role: str, remote_sdp: str, timed_out: bool, now: float) -> IceReport:
    states = attempt.states
    local = attempt.local_sdp
    return IceReport(
        peer=peer, role=role, elapsed=now - attempt.started, ice_state=states.ice,
        connection_state=states.connection, dtls_state=states.dtls, ice_connected=states.ice_connected,
        local_types=candidate_types(local), remote_types=candidate_types(remote_sdp),
        configured=attempt.configured, answered=attempt.answered, timed_out=timed_out,
    )


def _error_from_frame(frame: dict[str, Any], target: str) -> TransportError:
    message = str(frame.get("message") or frame.get("reason") or "refused")
    if frame.get("reason") == WORKER_BUSY:
        return WorkerBusyError(message, status=frame.get("status"), frame=frame)
    if frame.get("code") in (ErrorCode.PEER_NOT_FOUND, ErrorCode.PEER_NOT_IN_ROOM):
        return PeerNotFoundError(f"Peer {target} is not in this room: {message}")
    return ConnectionFailedError(f"The signaling server refused the offer to {target}: {message}")
