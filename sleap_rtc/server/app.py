"""The signaling server's aiohttp application: WebSocket and HTTP on one port.

Routes: WebSocket on ``/`` and ``/ws`` (a plain ``GET /`` answers a small JSON info),
``GET /health``, ``GET /metrics`` (Prometheus text) and ``POST /create-room``. The protocol
rules live in ``server/hub.py``; this module moves frames between sockets and the hub.
Each connection has a bounded send queue drained by its own writer task, so one slow
receiver never stalls the sender of a fan-out; a receiver that falls too far behind (in
frames or in bytes) is disconnected.

Below HTTP, ``server/sockets.py`` caps TCP connections per address and in all; aiohttp's
keep-alive timeout closes connections that never complete a request (slow or silent
headers). Creating a room needs the server's room-creation secret or a room's worker
token, except on a loopback-only server without a secret (the demo, the tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import os
import shutil
import ssl
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from sleap_rtc.core.credentials import NewRoom
from sleap_rtc.core.protocol import SIGNALING_VERSION, ErrorCode, MessageType, dumps, error_frame
from sleap_rtc.core.tasks import spawn
from sleap_rtc.server.hub import EVENT_FLUSH_INTERVAL, Forward, Close, Hub, Send
from sleap_rtc.server.backend import Backend, Peer, SharedCounter
from sleap_rtc.server.ice import IceSettings
from sleap_rtc.server.limits import Limits, address_key
from sleap_rtc.server.metrics import render
from sleap_rtc.server.rooms import MAX_ROOMS, UNUSED_ROOM_TTL, Access, RoomLimitError, RoomStore
from sleap_rtc.server.sockets import GuardedProtocol, SocketGuard, default_max_sockets, raise_fd_limit

log = logging.getLogger(__name__)

HUB_KEY = web.AppKey("hub", Hub)
STATE_KEY = web.AppKey("server_state", object)
_PING_TEXT = dumps({"type": MessageType.PING.value})

FRAME_SLACK_BYTES = 16 * 1024
"""A frame up to this much over ``max_frame_bytes`` gets ``FRAME_TOO_LARGE``; beyond it
the socket is closed (1009) before the frame is buffered or decoded."""

SWEEP_INTERVAL = 60.0
"""Seconds between sweeps of rooms that expired unused."""

ENV_CREATE_ROOM_SECRET = "SLEAP_RTC_CREATE_ROOM_SECRET"
"""Environment variable holding the room-creation secret (server and workers)."""


class RoomCreation:
    """Who may ``POST /create-room``: the policy names accepted by ``start_server``."""

    AUTO = "auto"  # open on a loopback-only server without a secret, else "secret"
    OPEN = "open"  # anyone (still rate-limited per address, and capped in all)
    SECRET = "secret"  # the server's secret, or the worker token of a room on this server


class _Writer:
    """The send side of one WebSocket: a bounded queue and the task that drains it."""

    def __init__(self, ws: web.WebSocketResponse, max_frames: int, max_bytes: int):
        self.ws = ws
        self.queue: asyncio.Queue[str | None] = asyncio.Queue(max_frames)
        self.max_bytes = max_bytes
        self.queued_bytes = 0
        self.task = asyncio.get_running_loop().create_task(self._drain())

    def enqueue(self, text: str) -> None:
        """Queue one frame; a receiver too slow to keep up is disconnected."""
        if self.queued_bytes + len(text) > self.max_bytes:
            log.warning("disconnecting a receiver with %d bytes queued", self.queued_bytes)
            self.close_soon("send queue full")
            return
        try:
            self.queue.put_nowait(text)
        except asyncio.QueueFull:
            log.warning("disconnecting a receiver that fell %d frames behind", self.queue.maxsize)
            self.close_soon("send queue full")
            return
        self.queued_bytes += len(text)

    def close_soon(self, reason: str) -> None:
        """Close the socket from outside its handler (e.g. a peer that resumed elsewhere)."""
        if not self.ws.closed:
            spawn(self.ws.close(code=WSCloseCode.POLICY_VIOLATION, message=reason[:100].encode()))

    async def _drain(self) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError, asyncio.CancelledError):
            while True:
                text = await self.queue.get()
                if text is None or self.ws.closed:
                    return
                self.queued_bytes -= len(text)
                await self.ws.send_str(text)


@dataclass
class _ServerState:
    sockets: set[web.WebSocketResponse] = field(default_factory=set)
    room_creations: SharedCounter | None = None
    tasks: list[asyncio.Task] = field(default_factory=list)
    room_creation: str = RoomCreation.AUTO
    create_room_secret: str | None = None
    trusted_proxies: frozenset[str] = frozenset()
    backend: Backend | None = None
    encode_failures: int = 0


def _encode(frame: dict[str, Any]) -> str | None:
    try:
        return json.dumps(frame, separators=(",", ":"), allow_nan=False)
    except (ValueError, TypeError, RecursionError) as exc:
        # The hub checks what it relays, so this is a bug or a new hole: drop this one
        # frame and keep the connection and the room alive.
        log.error("dropping an unencodable %s frame: %s", frame.get("type"), exc.__class__.__name__)
        return None


def _dispatch(actions: list, state: _ServerState | None = None) -> None:
    for action in actions:
        if isinstance(action, Send):
            text = _encode(action.frame)
            if text is None:
                if state is not None:
                    state.encode_failures += 1
                continue
            for conn in action.targets:
                if conn.transport is not None:
                    conn.transport.enqueue(text)
        elif isinstance(action, Close) and action.conn.transport is not None:
            action.conn.transport.close_soon(action.reason)
        elif isinstance(action, Forward) and state is not None and state.backend is not None:
            state.backend.forward(action.target, action.frame)


class _HubListener:
    """Feeds what other instances did (through the backend) into the hub, and its actions out."""

    def __init__(self, hub: Hub, state: _ServerState):
        self.hub = hub
        self.state = state

    def peer_changed(self, old: Peer | None, new: Peer | None) -> None:
        _dispatch(self.hub.peer_changed(old, new), self.state)

    def relayed(self, room_id: str, peer_id: str, frame: dict[str, Any]) -> None:
        _dispatch(self.hub.relayed(room_id, peer_id, frame), self.state)

    def lease_lost(self) -> None:
        _dispatch(self.hub.lease_lost(), self.state)


async def _websocket_or_info(request: web.Request) -> web.StreamResponse:
    hub = request.app[HUB_KEY]
    state: _ServerState = request.app[STATE_KEY]
    ws = web.WebSocketResponse(
        compress=False,  # permessage-deflate costs ~30x throughput for small JSON frames
        max_msg_size=hub.limits.max_frame_bytes + FRAME_SLACK_BYTES,
        heartbeat=hub.ping_interval,
        timeout=2.0,
    )
    if not ws.can_prepare(request).ok:
        return web.json_response({"name": "sleap-rtc signaling server", "protocol": SIGNALING_VERSION, "websocket": "/ws"})
    await ws.prepare(request)
    conn = hub.connect(client_address(request, state.trusted_proxies))
    conn.transport = _Writer(ws, hub.limits.send_queue_frames, hub.limits.send_queue_bytes)
    state.sockets.add(ws)
    try:
        async for msg in ws:
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                _dispatch(await hub.handle(conn, msg.data), state)
            elif msg.type == WSMsgType.ERROR:
                break
    finally:
        state.sockets.discard(ws)
        _dispatch(await hub.disconnect(conn), state)
        writer = conn.transport
        if writer.queue.full():
            writer.task.cancel()
        else:
            writer.queue.put_nowait(None)  # let queued frames (e.g. a last error) go out first
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(writer.task, 1.0)
    return ws


async def _health(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    return web.json_response(
        {
            "status": "ok",
            "protocol": SIGNALING_VERSION,
            "connections": len(hub.connections),
            "rooms_active": len(hub.live),
            "peers": hub.peers_by_role(),
        }
    )


async def _metrics(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    text = render(
        hub.metrics,
        connections=len(hub.connections),
        rooms_active=len(hub.live),
        rooms_stored=await hub.backend.count_rooms(),
        peers_by_role=hub.peers_by_role(),
    )
    return web.Response(text=text, content_type="text/plain", charset="utf-8", headers={"X-Prometheus-Format": "0.0.4"})


async def _creation_allowed(request: web.Request, state: _ServerState, hub: Hub) -> bool:
    """Whether this request may create a room under the server's policy."""
    if state.room_creation == RoomCreation.OPEN:
        return True
    body: Any = None
    if request.can_read_body:
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            body = await request.json()
    body = body if isinstance(body, dict) else {}
    secret = body.get("secret")
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        secret = auth[7:].strip()
    if state.create_room_secret and isinstance(secret, str) and hmac.compare_digest(
        secret.encode("utf-8", "surrogatepass"), state.create_room_secret.encode("utf-8", "surrogatepass")
    ):
        return True
    room_id, worker_token = body.get("room_id"), body.get("worker_token")
    if isinstance(room_id, str) and isinstance(worker_token, str):
        problem, access = await hub.backend.check_room(room_id, worker_token)
        return problem is None and access == Access.WORKER
    return False


async def _create_room(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    state: _ServerState = request.app[STATE_KEY]
    address = client_address(request, state.trusted_proxies)
    key = address_key(address)
    wait = await state.room_creations.retry_after(key)
    if wait:
        body = error_frame(ErrorCode.RATE_LIMITED, f"Too many rooms created: retry in {wait:.0f} s.", retry_after=round(wait, 3))
        return web.json_response(body, status=429, headers={"Retry-After": str(int(wait) + 1)})
    await state.room_creations.add(key)
    if not await _creation_allowed(request, state, hub):
        hub.metrics.errors_sent[ErrorCode.CREATE_ROOM_FORBIDDEN.value] += 1
        body = error_frame(
            ErrorCode.CREATE_ROOM_FORBIDDEN,
            "This server creates rooms only with its room-creation secret (--create-room-secret, "
            f"{ENV_CREATE_ROOM_SECRET}) or the worker token of a room on it.",
        )
        return web.json_response(body, status=403)
    try:
        room = await hub.backend.create_room()
    except RoomLimitError as exc:
        return web.json_response(error_frame(ErrorCode.TOO_MANY_ROOMS, str(exc)), status=503)
    hub.metrics.rooms_created += 1
    log.info("created room %s for %s", room.room_id, address)
    # No ICE/TURN servers here: they go only to registered peers (registered_auth).
    return web.json_response({"room_id": room.room_id, "token": room.token, "worker_token": room.worker_token})


async def _ping_ticker(hub: Hub, state: _ServerState) -> None:
    # One timer for all sockets: pings go out between one interval and one tick after it.
    tick = min(1.0, hub.ping_interval / 4, hub.limits.register_timeout / 4)
    next_sweep = hub.clock() + SWEEP_INTERVAL
    while True:
        await asyncio.sleep(tick)
        now = hub.clock()
        for conn in hub.due_pings(now):
            if conn.transport is not None:
                conn.transport.enqueue(_PING_TEXT)
        _dispatch(hub.overdue(now), state)
        if now >= next_sweep:
            next_sweep = now + SWEEP_INTERVAL
            try:
                removed = await hub.backend.expire_unused()
            except Exception:  # the state file is shared with nothing else; keep serving
                log.exception("sweeping unused rooms failed")
            else:
                if removed:
                    log.info("removed %d rooms that expired unused", removed)


async def _event_flusher(hub: Hub, state: _ServerState) -> None:
    # Batched room events leave at most once per interval per watcher (bounded bursts).
    while True:
        await asyncio.sleep(EVENT_FLUSH_INTERVAL)
        _dispatch(hub.flush_events(), state)


async def _on_startup(app: web.Application) -> None:
    hub = app[HUB_KEY]
    state: _ServerState = app[STATE_KEY]
    loop = asyncio.get_running_loop()
    state.tasks += [loop.create_task(_ping_ticker(hub, state)), loop.create_task(_event_flusher(hub, state))]


async def _on_shutdown(app: web.Application) -> None:
    state: _ServerState = app[STATE_KEY]
    for task in state.tasks:
        task.cancel()
    sockets = list(state.sockets)
    if sockets:
        await asyncio.gather(*(ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown") for ws in sockets), return_exceptions=True)


def client_address(request: web.Request, trusted_proxies: frozenset[str]) -> str:
    """The peer's address: the TCP peer, or, when that is a trusted proxy (a load balancer
    in front of several instances), the last untrusted address of ``X-Forwarded-For``."""
    address = request.remote or "?"
    if address not in trusted_proxies:
        return address
    hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",") if h.strip()]
    while hops and hops[-1] in trusted_proxies:
        hops.pop()
    return hops[-1][:64] if hops else address


def build_app(
    hub: Hub, *, room_creation: str = RoomCreation.OPEN, create_room_secret: str | None = None, trusted_proxies: frozenset[str] = frozenset(),
) -> web.Application:
    """The aiohttp application serving ``hub`` (WebSocket + HTTP routes)."""
    app = web.Application(client_max_size=64 * 1024)
    app[HUB_KEY] = hub
    app[STATE_KEY] = _ServerState(
        room_creations=hub.backend.counter("room-creations", hub.limits.max_rooms_per_minute, 60.0, hub.clock),
        room_creation=room_creation,
        trusted_proxies=frozenset(trusted_proxies),
        backend=hub.backend,
        create_room_secret=create_room_secret or None,
    )
    app.router.add_get("/", _websocket_or_info)
    app.router.add_get("/ws", _websocket_or_info)
    app.router.add_get("/health", _health)
    app.router.add_get("/metrics", _metrics)
    app.router.add_post("/create-room", _create_room)
    app.on_startup.append(_on_startup)
    app.on_shutdown.append(_on_shutdown)
    return app


class RunningServer:
    """A started signaling server: its addresses, a room-creation shortcut and ``stop()``."""

    def __init__(self, runner: web.AppRunner, hub: Hub, host: str, port: int, tls: bool, tmpdir: str | None, guard: SocketGuard):
        self._guard = guard
        self.runner = runner
        self.hub = hub
        self.host = host
        self.port = port
        self.tls = tls
        self._tmpdir = tmpdir
        self._stopped = False

    @property
    def url(self) -> str:
        """WebSocket URL peers connect to (``ws://host:port/ws``)."""
        return f"{'wss' if self.tls else 'ws'}://{_url_host(self.host)}:{self.port}/ws"

    @property
    def http_url(self) -> str:
        """Base URL of the HTTP routes (``http://host:port``)."""
        return f"{'https' if self.tls else 'http'}://{_url_host(self.host)}:{self.port}"

    @property
    def state_path(self) -> str | None:
        """The SQLite file holding the rooms (``None`` when they are kept in Redis)."""
        return self.hub.rooms.path if self.hub.rooms is not None else None

    async def create_room(self) -> NewRoom:
        """Create a room directly in the store; returns ``(room_id, worker_token)``
        (``.token`` is the client token)."""
        self.hub.metrics.rooms_created += 1
        return await self.hub.backend.create_room()

    @property
    def sockets_refused(self) -> int:
        """TCP connections refused so far by the per-address and total socket caps."""
        return self._guard.refused

    @property
    def sockets_open(self) -> int:
        """TCP connections open now (HTTP and WebSocket)."""
        return self._guard.open

    async def stop(self) -> None:
        """Close every connection, stop listening and close the state file."""
        if self._stopped:
            return
        self._stopped = True
        self.hub.closing = True
        await self.runner.cleanup()
        await self.hub.backend.stop()
        if self.hub.rooms is not None:
            self.hub.rooms.close()
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a listen address) is reachable only from this machine."""
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "" / "0.0.0.0" / a name: assume reachable from elsewhere


class _GuardedSite(web.TCPSite):
    """A ``TCPSite`` whose accepted connections first pass the ``SocketGuard``."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, *, guard: SocketGuard, **kwargs: Any):
        super().__init__(runner, host, port, **kwargs)
        self._guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with the runner
        loop = asyncio.get_running_loop()
        factory = self._runner.server
        guard = self._guard
        self._server = await loop.create_server(
            lambda: GuardedProtocol(factory(), guard), self._host, self._port,
            ssl=self._ssl_context, backlog=self._backlog, reuse_address=self._reuse_address, reuse_port=self._reuse_port,
        )


def tls_context(cert: str | Path, key: str | Path) -> ssl.SSLContext:
    """A server TLS context from a certificate chain and its private key (PEM files)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


async def start_server(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    state_path: str | Path | None = None,
    ping_interval: float = 30.0,
    ssl_context: ssl.SSLContext | None = None,
    ice_servers: list[dict[str, Any]] | None = None,
    ice: IceSettings | None = None,
    room_ttl: float | None = None,
    unused_room_ttl: float = UNUSED_ROOM_TTL,
    max_rooms: int = MAX_ROOMS,
    room_creation: str = RoomCreation.AUTO,
    create_room_secret: str | None = None,
    backlog: int = 4096,
    backend: Backend | None = None,
    trusted_proxies: frozenset[str] | list[str] = frozenset(),
    **limits: Any,
) -> RunningServer:
    """Start a signaling server in the running loop; ``port=0`` picks a free port.

    ``state_path=None`` keeps rooms in a fresh temporary SQLite file removed on ``stop()``;
    pass a path to keep rooms across restarts. ``limits`` are ``Limits`` fields
    (``max_frame_bytes``, ``max_peers_per_room``, ``messages_per_second``, ...).
    ``ice`` (STUN/TURN settings, TURN credentials minted per peer) wins over the static
    ``ice_servers`` list.
    ``room_creation`` is a ``RoomCreation`` policy; ``create_room_secret`` defaults to
    ``$SLEAP_RTC_CREATE_ROOM_SECRET``. ``backend`` replaces the SQLite store with a
    shared one (``server/backend_redis.py``) for several instances. Connections from
    ``trusted_proxies`` are counted under their ``X-Forwarded-For`` client address.
    """
    limits_obj = Limits(**limits)
    secret = create_room_secret if create_room_secret is not None else os.environ.get(ENV_CREATE_ROOM_SECRET) or None
    if room_creation == RoomCreation.AUTO:
        room_creation = RoomCreation.OPEN if is_loopback(host) and not secret else RoomCreation.SECRET
    if room_creation not in (RoomCreation.OPEN, RoomCreation.SECRET):
        raise ValueError(f"room_creation must be auto, open or secret, not {room_creation!r}")
    if not is_loopback(host) and ssl_context is None:
        log.warning(
            "listening on %s without TLS: room tokens and connection offers cross the network in clear text; "
            "pass --tls-cert/--tls-key or put a TLS proxy in front", host or "all interfaces",
        )
    if room_creation == RoomCreation.SECRET and not secret:
        log.warning("room creation needs a worker token of an existing room (no --create-room-secret is set)")
    fd_limit = raise_fd_limit()
    guard = SocketGuard(limits_obj.max_sockets_per_address, limits_obj.max_sockets or default_max_sockets(fd_limit))
    tmpdir = None
    if backend is None:
        if state_path is None:
            tmpdir = tempfile.mkdtemp(prefix="sleap-rtc-server-")
            state_path = Path(tmpdir) / "server.sqlite3"
        store = RoomStore(state_path, room_ttl=room_ttl, unused_ttl=unused_room_ttl, max_rooms=max_rooms)
        hub = Hub(store, limits=limits_obj, ping_interval=ping_interval, ice_servers=ice_servers, ice=ice)
    else:
        hub = Hub(backend, limits=limits_obj, ping_interval=ping_interval, ice_servers=ice_servers, ice=ice)
    app = build_app(hub, room_creation=room_creation, create_room_secret=secret, trusted_proxies=frozenset(trusted_proxies))
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=5.0, keepalive_timeout=limits_obj.http_idle_timeout,
    )
    await runner.setup()
    site = _GuardedSite(runner, host, port, guard=guard, ssl_context=ssl_context, backlog=backlog, reuse_address=True)
    try:
        await hub.backend.start(_HubListener(hub, app[STATE_KEY]))
        await site.start()
    except BaseException:
        await runner.cleanup()
        await hub.backend.stop()
        if hub.rooms is not None:
            hub.rooms.close()
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)
        raise
    bound_port = runner.addresses[0][1]
    server = RunningServer(runner, hub, host, bound_port, ssl_context is not None, tmpdir, guard)
    log.info("signaling server listening on %s", server.url)
    return server
