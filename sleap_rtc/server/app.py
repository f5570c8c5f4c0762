"""The signaling server's aiohttp application: WebSocket and HTTP on one port.

Routes: WebSocket on ``/`` and ``/ws`` (a plain ``GET /`` answers a small JSON info),
``GET /health``, ``GET /metrics`` (Prometheus text) and ``POST /create-room``. The protocol
rules live in ``server/hub.py``; this module moves frames between sockets and the hub.
Each connection has a bounded send queue drained by its own writer task, so one slow
receiver never stalls the sender of a fan-out; a receiver that falls too far behind is
disconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import ssl
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from sleap_rtc.core.protocol import SIGNALING_VERSION, ErrorCode, MessageType, dumps, error_frame
from sleap_rtc.core.tasks import spawn
from sleap_rtc.server.hub import Close, Connection, Hub, Send
from sleap_rtc.server.ice import IceSettings
from sleap_rtc.server.limits import FailureCounter, Limits
from sleap_rtc.server.metrics import render
from sleap_rtc.server.rooms import RoomStore

log = logging.getLogger(__name__)

HUB_KEY = web.AppKey("hub", Hub)
STATE_KEY = web.AppKey("server_state", object)
_PING_TEXT = dumps({"type": MessageType.PING.value})
_AIOHTTP_MSG_CAP = 4 * 1024 * 1024


class _Writer:
    """The send side of one WebSocket: a bounded queue and the task that drains it."""

    def __init__(self, ws: web.WebSocketResponse, max_frames: int):
        self.ws = ws
        self.queue: asyncio.Queue[str | None] = asyncio.Queue(max_frames)
        self.task = asyncio.get_running_loop().create_task(self._drain())

    def enqueue(self, text: str) -> None:
        """Queue one frame; a receiver too slow to keep up is disconnected."""
        try:
            self.queue.put_nowait(text)
        except asyncio.QueueFull:
            log.warning("disconnecting a receiver that fell %d frames behind", self.queue.maxsize)
            self.close_soon("send queue full")

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
                await self.ws.send_str(text)


@dataclass
class _ServerState:
    sockets: set[web.WebSocketResponse] = field(default_factory=set)
    room_creations: FailureCounter | None = None
    ticker: asyncio.Task | None = None


def _dispatch(actions: list) -> None:
    for action in actions:
        if isinstance(action, Send):
            text = dumps(action.frame)
            for conn in action.targets:
                if conn.transport is not None:
                    conn.transport.enqueue(text)
        elif isinstance(action, Close) and action.conn.transport is not None:
            action.conn.transport.close_soon(action.reason)


async def _websocket_or_info(request: web.Request) -> web.StreamResponse:
    hub = request.app[HUB_KEY]
    state: _ServerState = request.app[STATE_KEY]
    ws = web.WebSocketResponse(
        compress=False,  # permessage-deflate costs ~30x throughput for small JSON frames
        max_msg_size=max(_AIOHTTP_MSG_CAP, 2 * hub.limits.max_frame_bytes),
        heartbeat=hub.ping_interval,
        timeout=2.0,
    )
    if not ws.can_prepare(request).ok:
        return web.json_response({"name": "sleap-rtc signaling server", "protocol": SIGNALING_VERSION, "websocket": "/ws"})
    await ws.prepare(request)
    conn = hub.connect(request.remote or "?")
    conn.transport = _Writer(ws, hub.limits.send_queue_frames)
    state.sockets.add(ws)
    try:
        async for msg in ws:
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                _dispatch(hub.handle(conn, msg.data))
            elif msg.type == WSMsgType.ERROR:
                break
    finally:
        state.sockets.discard(ws)
        _dispatch(hub.disconnect(conn))
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
        rooms_stored=hub.rooms.count(),
        peers_by_role=hub.peers_by_role(),
    )
    return web.Response(text=text, content_type="text/plain", charset="utf-8", headers={"X-Prometheus-Format": "0.0.4"})


async def _create_room(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    state: _ServerState = request.app[STATE_KEY]
    address = request.remote or "?"
    now = hub.clock()
    wait = state.room_creations.retry_after(address, now)
    if wait:
        body = error_frame(ErrorCode.RATE_LIMITED, f"Too many rooms created: retry in {wait:.0f} s.", retry_after=round(wait, 3))
        return web.json_response(body, status=429, headers={"Retry-After": str(int(wait) + 1)})
    state.room_creations.add(address, now)
    room_id, token = hub.rooms.create()
    hub.metrics.rooms_created += 1
    log.info("created room %s for %s", room_id, address)
    return web.json_response({"room_id": room_id, "token": token})


async def _ping_ticker(hub: Hub) -> None:
    # One timer for all sockets: pings go out between one interval and one tick after it.
    tick = min(1.0, hub.ping_interval / 4)
    while True:
        await asyncio.sleep(tick)
        for conn in hub.due_pings(hub.clock()):
            if conn.transport is not None:
                conn.transport.enqueue(_PING_TEXT)


async def _on_startup(app: web.Application) -> None:
    app[STATE_KEY].ticker = asyncio.get_running_loop().create_task(_ping_ticker(app[HUB_KEY]))


async def _on_shutdown(app: web.Application) -> None:
    state: _ServerState = app[STATE_KEY]
    if state.ticker:
        state.ticker.cancel()
    sockets = list(state.sockets)
    if sockets:
        await asyncio.gather(*(ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown") for ws in sockets), return_exceptions=True)


def build_app(hub: Hub) -> web.Application:
    """The aiohttp application serving ``hub`` (WebSocket + HTTP routes)."""
    app = web.Application(client_max_size=64 * 1024)
    app[HUB_KEY] = hub
    app[STATE_KEY] = _ServerState(room_creations=FailureCounter(hub.limits.max_rooms_per_minute, 60.0))
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

    def __init__(self, runner: web.AppRunner, hub: Hub, host: str, port: int, tls: bool, tmpdir: str | None):
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
    def state_path(self) -> str:
        """The SQLite file holding the rooms."""
        return self.hub.rooms.path

    async def create_room(self) -> tuple[str, str]:
        """Create a room directly in the store; returns ``(room_id, token)``."""
        self.hub.metrics.rooms_created += 1
        return self.hub.rooms.create()

    async def stop(self) -> None:
        """Close every connection, stop listening and close the state file."""
        if self._stopped:
            return
        self._stopped = True
        self.hub.closing = True
        await self.runner.cleanup()
        self.hub.rooms.close()
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


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
    backlog: int = 4096,
    **limits: Any,
) -> RunningServer:
    """Start a signaling server in the running loop; ``port=0`` picks a free port.

    ``state_path=None`` keeps rooms in a fresh temporary SQLite file removed on ``stop()``;
    pass a path to keep rooms across restarts. ``limits`` are ``Limits`` fields
    (``max_frame_bytes``, ``max_peers_per_room``, ``messages_per_second``, ...).
    ``ice`` (STUN/TURN settings, TURN credentials minted per peer) wins over the static
    ``ice_servers`` list.
    """
    tmpdir = None
    if state_path is None:
        tmpdir = tempfile.mkdtemp(prefix="sleap-rtc-server-")
        state_path = Path(tmpdir) / "server.sqlite3"
    hub = Hub(RoomStore(state_path, room_ttl=room_ttl), limits=Limits(**limits), ping_interval=ping_interval, ice_servers=ice_servers, ice=ice)
    runner = web.AppRunner(build_app(hub), access_log=None, handle_signals=False, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context, backlog=backlog, reuse_address=True)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        hub.rooms.close()
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)
        raise
    bound_port = runner.addresses[0][1]
    server = RunningServer(runner, hub, host, bound_port, ssl_context is not None, tmpdir)
    log.info("signaling server listening on %s", server.url)
    return server
