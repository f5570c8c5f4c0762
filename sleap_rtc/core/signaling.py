"""Asyncio client of the signaling server, shared by workers, the CLI client and the GUI.

One reader task owns the WebSocket: it resolves pending requests (matched by the ``id`` our
server echoes, which is unguessable, and by the reply type the request expects; a frame
relayed from another peer, which carries ``sender`` or ``from_peer_id``, never counts as a
reply) and hands every other frame (room events, relayed offers/answers, relayed
errors) to listeners. If the connection drops it reconnects with exponential backoff and
jitter and registers again with the same peer id (proving it with the resume secret) and
its current metadata. A watchdog treats a connection that has been silent for three ping
intervals as dead, because a proxy may answer protocol pings for a dead origin.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import aiohttp

from sleap_rtc.core.config import http_base
from sleap_rtc.core.credentials import NewRoom
from sleap_rtc.core.metadata import merge_metadata
from sleap_rtc.core.protocol import DEFAULT_PING_INTERVAL, FINAL_REGISTRATION_ERRORS, MAX_RECEIVE_BYTES, MessageType, dumps
from sleap_rtc.core.tasks import cancel_and_wait, spawn

log = logging.getLogger(__name__)

# How long close() waits for the reader task to end once cancelled.
READER_CLOSE_TIMEOUT_S = 5.0

Listener = Callable[[dict[str, Any]], Awaitable[None] | None]

REPLY_TYPES: dict[str, str] = {
    MessageType.REGISTER: MessageType.REGISTERED_AUTH,
    MessageType.DISCOVER_PEERS: MessageType.PEER_LIST,
    MessageType.UPDATE_METADATA: MessageType.METADATA_UPDATED,
}
"""The reply type each request expects (an ``error`` is always a possible reply too)."""

_RELAY_MARKS = ("sender", "from_peer_id")


class SignalingError(Exception):
    """The server answered a request with an ``error`` frame, or could not be reached."""

    def __init__(self, message: str, code: str | None = None, frame: dict | None = None):
        super().__init__(message)
        self.code = code
        self.frame = frame or {}


class RegistrationError(SignalingError):
    """Registration was refused (wrong token, unknown room, rate limit, ...)."""


class ConnectionState(StrEnum):
    """Where a ``SignalingClient`` is in its life."""

    IDLE = "idle"
    CONNECTING = "connecting"
    REGISTERED = "registered"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


@dataclass
class Registration:
    """What the server said in ``registered_auth``."""

    room_id: str
    peer_id: str
    resume: str | None = None
    ping_interval: float = DEFAULT_PING_INTERVAL
    ice_servers: list[dict[str, Any]] = field(default_factory=list)
    peers: list[dict[str, Any]] = field(default_factory=list)


async def create_room(
    server_url: str, *, timeout: float = 10.0, ssl: Any = None, secret: str | None = None,
) -> NewRoom:
    """Ask the server for a new room over HTTP; returns ``(room_id, worker_token)``.

    ``secret`` is the server's room-creation secret, when it requires one.
    """
    url = http_base(server_url) + "/create-room"
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http:
            async with http.post(url, ssl=ssl if ssl is not None else True, headers=headers) as resp:
                try:
                    body = await resp.json(content_type=None)
                except ValueError:
                    body = None
                if resp.status != 200 or not isinstance(body, dict) or "room_id" not in body:
                    detail = body.get("message") if isinstance(body, dict) else None
                    raise SignalingError(f"Server refused to create a room: {detail or f'HTTP {resp.status}'}")
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        raise SignalingError(f"Cannot reach the signaling server at {url}: {exc or exc.__class__.__name__}") from None
    if not isinstance(body.get("worker_token"), str):
        raise SignalingError("The server created a room without a worker token (it predates role-bound tokens).")
    return NewRoom(body["room_id"], body["worker_token"])


def new_peer_id(role: str, name: str | None = None) -> str:
    """A fresh peer id: ``worker-<name>-<hex>`` for named workers, else ``<role>-<hex>``."""
    suffix = uuid.uuid4().hex[:12]
    return f"{role}-{name}-{suffix}" if name else f"{role}-{suffix}"


class SignalingClient:
    """One registered peer in one room.

    ``await connect()`` registers (raising ``RegistrationError`` when refused); requests
    (``discover``, ``update_metadata``) wait for their reply with a timeout; ``send``
    sends any frame; ``add_listener`` receives every frame that is not a reply, and
    ``add_state_listener`` every ``ConnectionState`` change (e.g. to re-discover after a
    reconnect).
    """

    def __init__(
        self,
        url: str,
        *,
        room_id: str,
        token: str,
        role: str,
        peer_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        events: bool = True,
        reconnect: bool = True,
        request_timeout: float = 10.0,
        max_backoff: float = 4.0,
        ssl: Any = None,
    ):
        self.url = url
        self.room_id = room_id
        self.token = token
        self.role = role
        self.peer_id = peer_id or new_peer_id(role)
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.events = events
        self.reconnect = reconnect
        self.request_timeout = request_timeout
        self.max_backoff = max_backoff
        self.ssl = ssl
        self.registration: Registration | None = None
        self.state = ConnectionState.IDLE
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task | None = None
        self._pending: dict[str, tuple[asyncio.Future, str | None]] = {}
        self._listeners: list[Listener] = []
        self._state_listeners: list[Callable[[ConnectionState], Any]] = []
        self._closing = False
        self._send_lock = asyncio.Lock()
        self._registered = asyncio.Event()
        self._watchdog_interval = DEFAULT_PING_INTERVAL

    # ------------------------------------------------------------------ public API

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(frame)`` for every unsolicited frame; returns a remover."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def add_state_listener(self, listener: Callable[[ConnectionState], Any]) -> Callable[[], None]:
        """Call ``listener(state)`` on every connection state change; returns a remover."""
        self._state_listeners.append(listener)
        return lambda: self._state_listeners.remove(listener) if listener in self._state_listeners else None

    async def connect(self) -> Registration:
        """Open the WebSocket and register; raises ``RegistrationError`` or ``SignalingError``."""
        self._closing = False
        self._set_state(ConnectionState.CONNECTING)
        try:
            reg = await self._open_and_register()
        except BaseException:
            await self._drop_socket()
            if self._http is not None:  # nothing else will close it: connect() failed
                await self._http.close()
                self._http = None
            self._set_state(ConnectionState.CLOSED)
            raise
        return reg

    async def wait_registered(self, timeout: float) -> None:
        """Wait until registered (e.g. after a reconnect); raises ``TimeoutError``."""
        await asyncio.wait_for(self._registered.wait(), timeout)

    async def close(self) -> None:
        """Leave the room and stop reconnecting."""
        self._closing = True
        reader, self._reader = self._reader, None
        await self._drop_socket()
        if reader and reader is not asyncio.current_task():
            await cancel_and_wait([reader], READER_CLOSE_TIMEOUT_S)
        if self._http:
            await self._http.close()
            self._http = None
        self._fail_pending(SignalingError("Signaling client closed."))
        self._set_state(ConnectionState.CLOSED)

    async def discover(self, filters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """The other peers of the room matching ``filters`` (role, tags, properties)."""
        frame: dict[str, Any] = {"type": MessageType.DISCOVER_PEERS.value, "from_peer_id": self.peer_id}
        if filters:
            frame["filters"] = filters
        reply = await self.request(frame)
        return list(reply.get("peers", []))

    async def update_metadata(self, partial: dict[str, Any]) -> dict[str, Any]:
        """Merge ``partial`` into this peer's metadata; returns the server's merged copy."""
        # Merged locally first (same rules as the server), so a reconnect meanwhile
        # registers with the update already in.
        self.metadata = merge_metadata(self.metadata, partial)
        reply = await self.request(
            {"type": MessageType.UPDATE_METADATA.value, "peer_id": self.peer_id, "metadata": partial}
        )
        merged = reply.get("metadata")
        if isinstance(merged, dict):
            self.metadata = merged
        return self.metadata

    async def send_peer_message(self, to_peer_id: str, payload: dict[str, Any]) -> None:
        """Relay ``payload`` to another peer of the room."""
        await self.send(
            {"type": MessageType.PEER_MESSAGE.value, "from_peer_id": self.peer_id, "to_peer_id": to_peer_id, "payload": payload}
        )

    async def send(self, frame: dict[str, Any]) -> None:
        """Send one frame as is; raises ``SignalingError`` when not connected."""
        ws = self._ws
        if ws is None or ws.closed:
            raise SignalingError("Not connected to the signaling server.")
        async with self._send_lock:
            try:
                await ws.send_str(dumps(frame))
            except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
                raise SignalingError(f"Lost the signaling connection while sending: {exc}") from None

    async def request(self, frame: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """Send a request frame and wait for the reply carrying the same ``id``.

        The id is random (another peer cannot guess it), and only a frame of the reply type
        the request expects (``REPLY_TYPES``) or an ``error``, not relayed from a peer,
        resolves it.
        """
        req_id = "r" + secrets.token_hex(8)
        frame = {**frame, "id": req_id}
        fut = asyncio.get_running_loop().create_future()
        self._pending[req_id] = (fut, REPLY_TYPES.get(frame.get("type")))
        try:
            await self.send(frame)
            reply = await asyncio.wait_for(fut, timeout or self.request_timeout)
        except asyncio.TimeoutError:
            raise SignalingError(f"No reply to '{frame['type']}' within {timeout or self.request_timeout:.0f} s.") from None
        finally:
            self._pending.pop(req_id, None)
        if reply.get("type") == MessageType.ERROR:
            raise SignalingError(str(reply.get("message") or reply.get("reason")), reply.get("code"), reply)
        return reply

    async def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        """Wait for the next unsolicited frame that satisfies ``predicate``."""
        fut = asyncio.get_running_loop().create_future()

        def check(frame: dict[str, Any]) -> None:
            if not fut.done() and predicate(frame):
                fut.set_result(frame)

        remove = self.add_listener(check)
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            remove()

    # ------------------------------------------------------------------ internals

    def _set_state(self, state: ConnectionState) -> None:
        if state == self.state:
            return
        self.state = state
        if state == ConnectionState.REGISTERED:
            self._registered.set()
        else:
            self._registered.clear()
        for listener in list(self._state_listeners):
            try:
                listener(state)
            except Exception:  # a broken listener must not take the connection down
                log.exception("state listener failed")

    async def _open_and_register(self) -> Registration:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        try:
            # Bounded: the session's default handshake timeout is 5 minutes, so a server
            # that accepts TCP but never answers would stall connect() and every reconnect.
            self._ws = await asyncio.wait_for(
                self._http.ws_connect(
                    self.url, heartbeat=20.0, max_msg_size=MAX_RECEIVE_BYTES, timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
                    ssl=self.ssl if self.ssl is not None else True,
                ),
                self.request_timeout,
            )
        except asyncio.TimeoutError:
            raise SignalingError(
                f"Cannot reach the signaling server at {self.url}: no answer within {self.request_timeout:g} s."
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise SignalingError(f"Cannot reach the signaling server at {self.url}: {exc or exc.__class__.__name__}") from None
        self._reader = asyncio.create_task(self._read_loop(self._ws), name=f"signaling-reader-{self.peer_id}")
        frame = {
            "type": MessageType.REGISTER.value,
            "peer_id": self.peer_id,
            "room_id": self.room_id,
            "token": self.token,
            "role": self.role,
            "metadata": self.metadata,
            "events": self.events,
        }
        if self.registration and self.registration.resume:
            frame["resume"] = self.registration.resume
        try:
            reply = await self.request(frame)
        except SignalingError as exc:
            raise RegistrationError(str(exc), exc.code, exc.frame) from None
        self.registration = Registration(
            room_id=reply.get("room_id", self.room_id),
            peer_id=reply.get("peer_id", self.peer_id),
            resume=reply.get("resume") or (self.registration.resume if self.registration else None),
            ping_interval=float(reply.get("ping_interval") or DEFAULT_PING_INTERVAL),
            ice_servers=list(reply.get("ice_servers") or []),
            peers=list(reply.get("peer_list") or []),
        )
        if isinstance(reply.get("peer_metadata"), dict):
            self.metadata = reply["peer_metadata"]
        self._set_state(ConnectionState.REGISTERED)
        return self.registration

    async def _read_loop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            while True:
                interval = self._watchdog_interval
                try:
                    msg = await asyncio.wait_for(ws.receive(), timeout=3 * interval)
                except asyncio.TimeoutError:
                    log.warning("signaling server silent for %.0f s; reconnecting", 3 * interval)
                    break
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                try:
                    frame = json.loads(msg.data)
                except ValueError:
                    log.warning("ignoring a non-JSON frame from the server")
                    continue
                if isinstance(frame, dict):
                    await self._dispatch(frame)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("signaling reader failed")
        finally:
            if ws is self._ws:
                await self._drop_socket()
                self._fail_pending(SignalingError("Lost the signaling connection."))
                if not self._closing:
                    if self.reconnect and self.registration is not None:
                        spawn(self._reconnect_loop(), name=f"signaling-reconnect-{self.peer_id}")
                    else:
                        self._set_state(ConnectionState.CLOSED)

    async def _dispatch(self, frame: dict[str, Any]) -> None:
        if frame.get("type") == MessageType.REGISTERED_AUTH:
            # Read here, not from ``self.registration``: the reader's next wait starts before
            # the registering coroutine resumes, and must already use the server's interval.
            interval = frame.get("ping_interval")
            if isinstance(interval, (int, float)) and not isinstance(interval, bool) and interval > 0:
                self._watchdog_interval = float(interval)
        req_id = frame.get("id")
        if isinstance(req_id, str) and req_id in self._pending and self._is_reply(frame, self._pending[req_id][1]):
            fut, _ = self._pending.pop(req_id)
            if not fut.done():
                fut.set_result(frame)
            return
        if frame.get("type") == MessageType.PING:
            return
        for listener in list(self._listeners):
            try:
                result = listener(frame)
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                log.exception("signaling listener failed on %s", frame.get("type"))

    @staticmethod
    def _is_reply(frame: dict[str, Any], expected: str | None) -> bool:
        if any(mark in frame for mark in _RELAY_MARKS):
            return False  # relayed from a peer: never the server's answer to us
        kind = frame.get("type")
        if kind == MessageType.ERROR:
            return True
        return kind != MessageType.PING and (expected is None or kind == expected)

    async def _reconnect_loop(self) -> None:
        self._set_state(ConnectionState.RECONNECTING)
        delay = 0.25
        while not self._closing:
            # Jitter, but never above max_backoff: a peer is back within max_backoff (+ the
            # registration round trip) of the server's return, however long it was down.
            await asyncio.sleep(min(delay * (0.5 + random.random()), self.max_backoff))
            if self._closing:
                return
            try:
                await self._open_and_register()
                log.info("re-registered %s with the signaling server", self.peer_id)
                return
            except RegistrationError as exc:
                log.warning("re-registration refused: %s", exc)
                await self._drop_socket()
                if exc.code in FINAL_REGISTRATION_ERRORS:
                    self._set_state(ConnectionState.CLOSED)
                    return
            except (SignalingError, OSError) as exc:
                log.debug("reconnect failed: %s", exc)
                await self._drop_socket()
            delay = min(delay * 2, self.max_backoff)

    async def _drop_socket(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None and not ws.closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 2.0)

    def _fail_pending(self, exc: Exception) -> None:
        for fut, _ in self._pending.values():
            if not fut.done():
                fut.set_exception(exc)
        self._pending.clear()
