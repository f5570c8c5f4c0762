"""Protocol logic of the signaling server, without I/O.

``Hub.handle(conn, text)`` takes one received text frame and returns ``Action``s (what to
send to whom, which socket to close); ``Hub.disconnect(conn)`` does the same for a closed
socket. The aiohttp app (``server/app.py``) only moves bytes, so every rule of the
protocol (identity bound to the connection, rooms as the security boundary, limits) lives
here and is the same whatever carries the frames.

Hostile peers are expected. Limits that hold against them (numbers in ``limits.py`` and
docs/security.md): messages are rate-limited per connection and per address; the bytes
the server sends because of one address's requests (peer lists, room events) come out of
that address's byte budget; metadata is checked for shape and size at register and after
every update; a correct token is never refused because others failed; relayed frames
lose their ``id`` so that nobody can answer another peer's request.

What several server instances must share (rooms, who is registered where, shared limits,
relays to a peer on another instance) is reached through a ``Backend``
(``server/backend.py``): the hub awaits it, but never touches a socket or Redis itself.
Changes made by other instances come back through ``peer_changed`` / ``relayed`` and
produce actions like any frame.
"""

from __future__ import annotations

import hmac
import itertools
import json
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sleap_rtc.core.metadata import check_metadata, matches_filters, merge_metadata, normalize_metadata
from sleap_rtc.core.protocol import (
    ErrorCode,
    MessageType,
    ProtocolError,
    Role,
    error_frame,
    parse_frame,
)
from sleap_rtc.server.backend import Backend, Caps, LocalBackend, Peer, resume_hash
from sleap_rtc.server.ice import IceSettings
from sleap_rtc.server.limits import Limits, TokenBucket, address_key
from sleap_rtc.server.metrics import Metrics
from sleap_rtc.server.rooms import Access, RoomStore

log = logging.getLogger(__name__)

_ROLES = frozenset(r.value for r in Role)
_conn_ids = itertools.count(1)

EVENT_FLUSH_INTERVAL = 0.05
"""Seconds between flushes of batched room events: a watcher that opted into
``batch_events`` hears of a change in a quiet room at once, and of the changes that follow
within this interval in one ``room_events`` frame at the next flush (at most about two
frames per interval, however busy the room)."""

MAX_EVENTS_PER_FRAME = 256
"""Most events in one ``room_events`` frame; the rest go out at the next flush."""

MAX_TRACKED_ADDRESSES = 100_000
"""Addresses whose rate budgets are remembered (least recently seen forgotten first)."""

WORKER_TOKEN_MESSAGE = (
    "Workers must register with the room's worker token (the banner line 'Worker token (for other "
    "workers only)'); the room's client token admits clients only."
)


@dataclass(eq=False)
class Connection:
    """One WebSocket as the hub sees it: who is behind it and its own limits."""

    address: str
    bucket: TokenBucket
    budget: AddressBudget | None = None
    """The rate budgets shared by every connection from this address."""
    conn_id: int = field(default_factory=lambda: next(_conn_ids))
    peer: Peer | None = None
    opened_at: float = 0.0
    refused_in_row: int = 0
    next_ping: float = 0.0
    transport: Any = None
    """Whatever the I/O layer needs to reach the socket (the app's writer)."""
    outbox: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Batched room events not sent yet, one per subject peer (coalesced)."""
    last_events_at: float = float("-inf")
    """When this watcher last got a ``room_events`` frame (hub clock)."""


@dataclass(eq=False)
class AddressBudget:
    """Rate budgets of one address (key), shared by all its connections."""

    messages: TokenBucket
    reply_bytes: TokenBucket


@dataclass
class Send:
    """Send ``frame`` to every connection in ``targets`` (encoded once)."""

    targets: list[Connection]
    frame: dict[str, Any]


@dataclass
class Close:
    """Close ``conn`` (e.g. the stale socket of a peer that resumed on a new one)."""

    conn: Connection
    reason: str


@dataclass
class Forward:
    """Relay ``frame`` to ``target``, a peer registered on another instance."""

    target: Peer
    frame: dict[str, Any]


Action = Send | Close | Forward


class Hub:
    """All live rooms and peers of one server, and the rules for every frame."""

    def __init__(
        self,
        rooms: RoomStore | Backend,
        *,
        limits: Limits | None = None,
        ping_interval: float = 30.0,
        ice_servers: list[dict[str, Any]] | None = None,
        ice: IceSettings | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.backend: Backend = LocalBackend(rooms) if isinstance(rooms, RoomStore) else rooms
        self.rooms = rooms if isinstance(rooms, RoomStore) else None
        """The SQLite room store of a single-process hub (``None`` on a shared backend)."""
        # Set while the server shuts down: sockets closing then are the server going away,
        # not peers leaving, so no peer_left is sent (a peer would abandon healthy jobs).
        self.closing = False
        self.limits = limits or Limits()
        self.ping_interval = ping_interval
        self.ice_servers = list(ice_servers or [])
        self.ice = ice
        """STUN/TURN settings: each peer gets its own list (TURN credentials minted for it)."""
        self.metrics = metrics or Metrics()
        self.clock = clock
        self.connections: set[Connection] = set()
        self._batched: set[Connection] = set()
        """Connections with batched events waiting for ``flush_events``."""
        # Shared by every instance on a shared backend: more instances, same budget.
        self._failed_by_address = self.backend.counter(
            "failed-register-address", self.limits.max_failed_registrations, self.limits.failed_registration_window, clock
        )
        self._budgets: OrderedDict[str, AddressBudget] = OrderedDict()
        self._handlers: dict[str, Callable[[Connection, dict[str, Any]], Awaitable[list[Action]]]] = {
            MessageType.REGISTER: self._register,
            MessageType.DISCOVER_PEERS: self._discover,
            MessageType.UPDATE_METADATA: self._update_metadata,
            MessageType.PEER_MESSAGE: self._peer_message,
            MessageType.OFFER: self._relay,
            MessageType.ANSWER: self._relay,
            MessageType.CANDIDATE: self._relay,
            MessageType.ERROR: self._relay,
            MessageType.GET_ICE_SERVERS: self._get_ice_servers,
        }

    @property
    def live(self) -> dict[str, dict[str, Peer]]:
        """room_id -> peer_id -> Peer of every followed room (peers on any instance)."""
        return self.backend.views()

    # ------------------------------------------------------------------ connections

    def connect(self, address: str) -> Connection:
        """A new socket from ``address``; the hub tracks it until ``disconnect``."""
        now = self.clock()
        conn = Connection(address=address or "?", bucket=TokenBucket(self.limits.messages_per_second, self.limits.message_burst, now))
        conn.budget = self._budget_of(conn.address, now)
        conn.opened_at = now
        conn.next_ping = now + self.ping_interval
        self.connections.add(conn)
        self.metrics.connections_total += 1
        return conn

    async def disconnect(self, conn: Connection) -> list[Action]:
        """The socket closed: remove its peer, unless another socket has taken the peer over."""
        self.connections.discard(conn)
        self._batched.discard(conn)
        peer, conn.peer = conn.peer, None
        if peer is None or self.closing:
            # Closing: the server is going away, not the peer. Its record stays for the
            # grace period so that it can resume on another instance without a peer_left.
            return []
        if not await self.backend.release(peer):
            return []
        log.info("peer %s left room %s", peer.peer_id, peer.room_id)
        return self._event(peer, MessageType.PEER_LEFT)

    def _budget_of(self, address: str, now: float) -> AddressBudget:
        # Kept after the address's sockets close, so reconnecting does not refill it.
        key = address_key(address)
        budget = self._budgets.get(key)
        if budget is None:
            while len(self._budgets) >= MAX_TRACKED_ADDRESSES:
                self._budgets.popitem(last=False)
            lim = self.limits
            budget = self._budgets[key] = AddressBudget(
                TokenBucket(lim.address_messages_per_second, lim.address_message_burst, now),
                TokenBucket(lim.address_bytes_per_second, lim.address_byte_burst, now),
            )
        else:
            self._budgets.move_to_end(key)
        return budget

    def overdue(self, now: float) -> list[Action]:
        """Close every connection that has not registered within ``register_timeout``."""
        cutoff = now - self.limits.register_timeout
        late = [conn for conn in self.connections if conn.peer is None and conn.opened_at <= cutoff]
        for conn in late:
            self.metrics.errors_sent["REGISTER_TIMEOUT"] += 1
        return [Close(conn, "not registered in time") for conn in late]

    def due_pings(self, now: float) -> list[Connection]:
        """Registered connections whose next application ping is due (and schedules the next)."""
        due = []
        for conn in self.connections:
            if conn.peer is not None and conn.next_ping <= now:
                conn.next_ping = now + self.ping_interval
                due.append(conn)
        return due

    # ------------------------------------------------------------------ frames

    async def handle(self, conn: Connection, text: str | bytes) -> list[Action]:
        """Everything that follows from ``conn`` sending ``text``."""
        now = self.clock()
        retry_after = conn.bucket.take(now)
        if not retry_after and conn.budget is not None:
            retry_after = conn.budget.messages.take(now)
        if retry_after:
            conn.refused_in_row += 1
            if conn.refused_in_row > self.limits.max_refused_in_row:
                return [Close(conn, "rate limit ignored")]
            return self._error(conn, None, ErrorCode.RATE_LIMITED, "Too many messages: slow down.", retry_after=round(retry_after, 3))
        conn.refused_in_row = 0
        try:
            frame = parse_frame(text, max_bytes=self.limits.max_frame_bytes)
        except ProtocolError as exc:
            self.metrics.count_message(None)
            return self._error(conn, _id_of(text) if exc.code in _ECHO_ON else None, exc.code, exc.message)
        msg_type = frame["type"]
        self.metrics.count_message(msg_type)
        req_id = frame.get("id")
        if msg_type in (MessageType.PING, MessageType.PONG):
            return []  # keep-alives need no answer; old clients read exactly one frame per request
        if msg_type != MessageType.REGISTER and conn.peer is None:
            return self._error(conn, req_id, ErrorCode.NOT_IN_ROOM, "Register in a room first.")
        try:
            return await self._handlers[msg_type](conn, frame)
        except ProtocolError as exc:
            return self._error(conn, req_id, exc.code, exc.message)

    def _error(self, conn: Connection, req_id: Any, code: ErrorCode | str, message: str, **extra: Any) -> list[Action]:
        self.metrics.errors_sent[str(code)] += 1
        frame = error_frame(code, message, **extra)
        if _echoable(req_id):
            frame["id"] = req_id
        return [Send([conn], frame)]

    def _charge_bytes(self, conn: Connection, size: int) -> float:
        """Spend ``size`` bytes of the address's reply budget; seconds to wait, or 0."""
        if conn.budget is None or size <= 0:
            return 0.0
        return conn.budget.reply_bytes.take(self.clock(), size)

    def _busy(self, conn: Connection, req_id: Any, wait: float) -> list[Action]:
        return self._error(
            conn, req_id, ErrorCode.RATE_LIMITED,
            f"Too much data requested from this address: retry in {wait:.1f} s.", retry_after=round(wait, 3),
        )

    async def _refuse_registration(self, conn: Connection, frame: dict[str, Any], code: ErrorCode, message: str, *, failed: bool, **extra: Any) -> list[Action]:
        self.metrics.rejected_registrations[str(code)] += 1
        if failed:
            await self._failed_by_address.add(address_key(conn.address))
        log.info("refused register of %s in room %s from %s: %s", _short(frame["peer_id"]), _short(frame["room_id"]), conn.address, code)
        return self._error(conn, frame.get("id"), code, message, **extra)

    async def _register(self, conn: Connection, frame: dict[str, Any]) -> list[Action]:
        peer_id, room_id, role = frame["peer_id"], frame["room_id"], frame["role"]
        req_id = frame.get("id")
        if conn.peer is not None:
            return self._error(conn, req_id, ErrorCode.ALREADY_REGISTERED, f"This connection is already registered as {conn.peer.peer_id!r}.")
        if role not in _ROLES:
            return await self._refuse_registration(conn, frame, ErrorCode.INVALID_MESSAGE, f"Role must be one of {sorted(_ROLES)}.", failed=False)
        if not peer_id or len(peer_id) > self.limits.max_peer_id_length:
            return await self._refuse_registration(conn, frame, ErrorCode.INVALID_MESSAGE, f"peer_id must be 1 to {self.limits.max_peer_id_length} characters.", failed=False)
        # The token first: a correct one is admitted whatever others did (a lockout keyed
        # by room would let anyone who knows the room id lock its own peers out).
        problem, access = await self.backend.check_room(room_id, frame["token"])
        if problem is not None:
            wait = await self._failed_by_address.retry_after(address_key(conn.address))
            if wait:
                return await self._refuse_registration(
                    conn, frame, ErrorCode.RATE_LIMITED,
                    f"Too many failed registrations from your address: retry in {wait:.0f} s.",
                    failed=False, retry_after=round(wait, 3),
                )
            text = {ErrorCode.INVALID_TOKEN: "Unknown room or invalid token.", ErrorCode.ROOM_EXPIRED: "Room expired."}[problem]
            return await self._refuse_registration(conn, frame, problem, text, failed=problem == ErrorCode.INVALID_TOKEN)
        if role == Role.WORKER and access != Access.WORKER:
            return await self._refuse_registration(conn, frame, ErrorCode.WORKER_TOKEN_REQUIRED, WORKER_TOKEN_MESSAGE, failed=False)
        metadata = normalize_metadata(frame.get("metadata"))
        try:
            check_metadata(metadata, max_bytes=self.limits.max_metadata_bytes)
        except ProtocolError as exc:
            return await self._refuse_registration(conn, frame, exc.code, exc.message, failed=False)
        room = await self.backend.follow(room_id)
        existing = room.get(peer_id)
        resume = frame.get("resume")
        events = frame.get("events") is True
        if existing is not None:
            if not (isinstance(resume, str) and hmac.compare_digest(resume_hash(resume), existing.resume_hash)):
                return await self._refuse_registration(
                    conn, frame, ErrorCode.PEER_ID_TAKEN,
                    f"Peer id {peer_id!r} is registered on another live connection.",
                    failed=isinstance(resume, str),
                )
        elif len(room) >= self.limits.max_peers_per_room:
            return await self._refuse_registration(conn, frame, ErrorCode.ROOM_FULL, _REFUSALS[ErrorCode.ROOM_FULL](self.limits), failed=False)
        if events and not (existing is not None and existing.events) and _watchers(room) >= self.limits.max_watchers_per_room:
            return await self._refuse_registration(conn, frame, ErrorCode.TOO_MANY_WATCHERS, _REFUSALS[ErrorCode.TOO_MANY_WATCHERS](self.limits), failed=False)

        secret = secrets.token_urlsafe(16)
        peer = Peer(
            peer_id=peer_id,
            room_id=room_id,
            role=role,
            metadata=metadata,
            connected_at=existing.connected_at if existing is not None else time.time(),
            events=events,
            resume_hash=resume_hash(secret),
            instance=self.backend.instance_id,
            batch=events and frame.get("batch_events") is True,
            conn=conn,
        )
        peer.measure()
        others = [p for p in room.values() if p.peer_id != peer_id]
        fan_out = peer.info_bytes * sum(1 for p in others if p.events)
        wait = self._charge_bytes(conn, sum(p.info_bytes for p in others) + fan_out)
        if wait:
            return await self._refuse_registration(
                conn, frame, ErrorCode.RATE_LIMITED,
                f"Too much data requested from this address: retry in {wait:.1f} s.", failed=False, retry_after=round(wait, 3),
            )
        caps = Caps(self.limits.max_peers_per_room, self.limits.max_watchers_per_room)
        refused = await self.backend.claim(peer, existing.resume_hash if existing is not None else None, caps)
        if refused is not None:  # another instance changed the room since we looked
            message = _REFUSALS[refused](self.limits) if refused in _REFUSALS else f"Peer id {peer_id!r} is registered on another live connection."
            return await self._refuse_registration(conn, frame, refused, message, failed=False)
        if conn not in self.connections:  # the socket closed while the backend answered
            await self.backend.release(peer)
            return []
        conn.peer = peer  # before any further await: a close from now on releases the peer
        conn.next_ping = self.clock() + self.ping_interval
        actions: list[Action] = []
        if existing is not None and existing.conn is not None and existing.conn is not conn:
            existing.conn.peer = None  # its socket closing later must not evict the new owner
            actions.append(Close(existing.conn, "peer resumed on another connection"))
        if existing is None:
            await self.backend.mark_used(room_id)
        reply: dict[str, Any] = {
            "type": MessageType.REGISTERED_AUTH.value,
            "room_id": room_id,
            "token": frame["token"],  # v2.0 clients read it back; never logged
            "peer_id": peer_id,
            "resume": secret,
            "ping_interval": self.ping_interval,
            "ice_servers": self.ice_servers_for(peer_id),
            "peer_list": [p.info() for p in self.backend.view(room_id).values() if p is not peer],
            "peer_metadata": peer.metadata,
        }
        if _echoable(req_id):
            reply["id"] = req_id
        actions.append(Send([conn], reply))
        log.info("peer %s (%s) %s room %s", peer_id, role, "resumed in" if existing else "joined", room_id)
        actions += self._event(peer, MessageType.PEER_UPDATED if existing else MessageType.PEER_JOINED)
        return actions

    def ice_servers_for(self, peer_id: str) -> list[dict[str, Any]]:
        """The ICE servers for one registered peer (only registered peers ever get them)."""
        if self.ice is None:
            return self.ice_servers
        return self.ice.for_peer(peer_id, time.time())

    async def _get_ice_servers(self, conn: Connection, frame: dict[str, Any]) -> list[Action]:
        reply: dict[str, Any] = {"type": MessageType.ICE_SERVERS.value, "ice_servers": self.ice_servers_for(conn.peer.peer_id)}
        if _echoable(frame.get("id")):
            reply["id"] = frame["id"]
        return [Send([conn], reply)]

    async def _discover(self, conn: Connection, frame: dict[str, Any]) -> list[Action]:
        me = conn.peer
        await self.backend.settle(me.room_id)
        filters = frame.get("filters")
        found = [p for p in self.backend.view(me.room_id).values() if p is not me and matches_filters(p.role, p.metadata, filters)]
        wait = self._charge_bytes(conn, sum(p.info_bytes for p in found))
        if wait:
            return self._busy(conn, frame.get("id"), wait)
        peers = [p.info() for p in found]
        reply: dict[str, Any] = {"type": MessageType.PEER_LIST.value, "to_peer_id": me.peer_id, "peers": peers, "count": len(peers)}
        if _echoable(frame.get("id")):
            reply["id"] = frame["id"]
        return [Send([conn], reply)]

    async def _update_metadata(self, conn: Connection, frame: dict[str, Any]) -> list[Action]:
        me = conn.peer
        claimed = frame.get("peer_id")
        if claimed is not None and claimed != me.peer_id:
            raise ProtocolError(ErrorCode.FORBIDDEN, "A peer can only update its own metadata.")
        merged = merge_metadata(me.metadata, frame["metadata"])
        check_metadata(merged, max_bytes=self.limits.max_metadata_bytes)  # refused: the old copy stays
        before, me.metadata = me.metadata, merged
        me.measure()
        watchers = sum(1 for p in self.backend.view(me.room_id).values() if p.events and p is not me)
        wait = self._charge_bytes(conn, me.info_bytes * watchers)
        if wait:
            me.metadata = before
            me.measure()
            return self._busy(conn, frame.get("id"), wait)
        await self.backend.update(me)
        reply: dict[str, Any] = {"type": MessageType.METADATA_UPDATED.value, "peer_id": me.peer_id, "metadata": me.metadata}
        if _echoable(frame.get("id")):
            reply["id"] = frame["id"]
        log.debug("peer %s updated its metadata", me.peer_id)
        return [Send([conn], reply), *self._event(me, MessageType.PEER_UPDATED)]

    async def _peer_message(self, conn: Connection, frame: dict[str, Any]) -> list[Action]:
        target = await self._find_target(conn, frame["to_peer_id"])
        return [self._deliver(target, {**_without_id(frame), "from_peer_id": conn.peer.peer_id})]

    async def _relay(self, conn: Connection, frame: dict[str, Any]) -> list[Action]:
        target = await self._find_target(conn, frame["target"])
        log.debug("relay %s %s -> %s", frame["type"], conn.peer.peer_id, target.peer_id)
        return [self._deliver(target, {**_without_id(frame), "sender": conn.peer.peer_id})]

    def _deliver(self, target: Peer, frame: dict[str, Any]) -> Action:
        return Send([target.conn], frame) if target.conn is not None else Forward(target, frame)

    async def _find_target(self, conn: Connection, peer_id: str) -> Peer:
        room_id = conn.peer.room_id
        target = self.backend.view(room_id).get(peer_id)
        if target is None:  # perhaps it registered on another instance a moment ago
            await self.backend.settle(room_id)
            target = self.backend.view(room_id).get(peer_id)
        if target is None:
            raise ProtocolError(ErrorCode.PEER_NOT_FOUND, f"No peer {peer_id[:128]!r} in this room.")
        return target

    def _event(self, peer: Peer, kind: MessageType) -> list[Action]:
        """``kind`` about ``peer`` to this instance's watchers of its room (not to itself)."""
        now_watchers: list[Connection] = []
        quiet_watchers: list[Connection] = []
        frame: dict[str, Any] | None = None
        merged: dict[int, tuple[dict[str, Any], dict[str, Any] | None]] = {}  # watchers in one state share one result
        now = self.clock()
        for p in self.backend.view(peer.room_id).values():
            if not p.events or p is peer or p.conn is None or p.peer_id == peer.peer_id:
                continue
            frame = frame or {"type": kind.value, **peer.info()}
            if not p.batch:
                now_watchers.append(p.conn)
            elif not p.conn.outbox and now - p.conn.last_events_at >= EVENT_FLUSH_INTERVAL:
                # Leading edge: a quiet watcher hears of a change at once; only the changes
                # that follow within the interval wait for the next flush.
                p.conn.last_events_at = now
                quiet_watchers.append(p.conn)
            else:
                _coalesce(p.conn.outbox, peer.peer_id, frame, merged)
                self._batched.add(p.conn)
        actions: list[Action] = []
        if now_watchers:
            actions.append(Send(now_watchers, frame))
        if quiet_watchers:
            actions.append(Send(quiet_watchers, {"type": MessageType.ROOM_EVENTS.value, "events": [frame]}))
        return actions

    def flush_events(self) -> list[Action]:
        """One ``room_events`` frame per watcher with batched events (call every ``EVENT_FLUSH_INTERVAL``).

        A watcher that heard nothing for an interval got its first event at once (``_event``);
        these frames carry what came after it, so each watcher gets at most about one frame
        per interval however busy the room.

        Watchers waiting for the very same events share one ``Send`` (encoded once).
        """
        groups: dict[tuple[int, ...], tuple[list[Connection], list[dict[str, Any]]]] = {}
        now = self.clock()
        for conn in list(self._batched):
            conn.last_events_at = now
            outbox = conn.outbox
            if len(outbox) <= MAX_EVENTS_PER_FRAME:
                events = list(outbox.values())
                outbox.clear()
                self._batched.discard(conn)
            else:
                keys = list(itertools.islice(outbox, MAX_EVENTS_PER_FRAME))
                events = [outbox.pop(k) for k in keys]
            if events and conn.peer is not None:
                groups.setdefault(tuple(map(id, events)), ([], events))[0].append(conn)
        return [Send(targets, {"type": MessageType.ROOM_EVENTS.value, "events": events}) for targets, events in groups.values()]

    # ------------------------------------------------------------------ other instances

    def peer_changed(self, old: Peer | None, new: Peer | None) -> list[Action]:
        """Another instance changed a peer of a room this instance follows."""
        actions: list[Action] = []
        subject = new or old
        if subject is None:
            return []
        if old is not None and old.conn is not None and (new is None or new.conn is None):
            # Our peer resumed on another instance, or was removed while this instance had
            # lost its lease: this socket no longer owns the id.
            stale, old.conn.peer = old.conn, None
            actions.append(Close(stale, "peer resumed on another connection" if new else "registration expired"))
        if self.closing:
            return actions
        if new is None:
            kind = MessageType.PEER_LEFT
        elif old is None:
            kind = MessageType.PEER_JOINED
        else:
            kind = MessageType.PEER_UPDATED
        return actions + self._event(subject, kind)

    def relayed(self, room_id: str, peer_id: str, frame: dict[str, Any]) -> list[Action]:
        """Another instance relays ``frame`` to ``peer_id``; delivered if it is still here."""
        target = self.backend.view(room_id).get(peer_id)
        if target is None or target.conn is None:
            log.debug("dropped a relay to %s: no longer registered here", _short(peer_id))
            return []
        return [Send([target.conn], frame)]

    def lease_lost(self) -> list[Action]:
        """This instance lost its presence lease: close every registered socket so that its
        peers reconnect and register again (on any instance) instead of being ghosts."""
        actions: list[Action] = []
        for conn in list(self.connections):
            if conn.peer is not None:
                conn.peer = None
                actions.append(Close(conn, "server instance lost its lease"))
        return actions

    # ------------------------------------------------------------------ gauges

    def peers_by_role(self) -> dict[str, int]:
        """Peers registered on this instance per role, for ``/metrics`` and ``/health``."""
        counts = dict.fromkeys(sorted(_ROLES), 0)
        for conn in self.connections:
            if conn.peer is not None:
                counts[conn.peer.role] = counts.get(conn.peer.role, 0) + 1
        return counts


_REFUSALS: dict[str, Callable[[Limits], str]] = {
    ErrorCode.ROOM_FULL: lambda limits: f"Room is full ({limits.max_peers_per_room} peers).",
    ErrorCode.TOO_MANY_WATCHERS: lambda limits: (
        f"Room already has {limits.max_watchers_per_room} peers watching its events (the limit): "
        "register without events and poll discover_peers, or ask the server admin to raise "
        "--max-watchers-per-room."
    ),
}


def _watchers(room: dict[str, Peer]) -> int:
    return sum(1 for p in room.values() if p.events)


# What a batched watcher needs to know when several events about one peer wait in its
# outbox: (event waiting, new event) -> the one event to keep (None: nothing to send).
_COALESCE: dict[tuple[str, str], str | None] = {
    (MessageType.PEER_JOINED, MessageType.PEER_UPDATED): MessageType.PEER_JOINED,
    (MessageType.PEER_JOINED, MessageType.PEER_LEFT): None,  # never saw it: no news
    (MessageType.PEER_UPDATED, MessageType.PEER_LEFT): MessageType.PEER_LEFT,
    (MessageType.PEER_LEFT, MessageType.PEER_JOINED): MessageType.PEER_UPDATED,  # knew it, still here
}


def _coalesce(outbox: dict[str, dict[str, Any]], peer_id: str, frame: dict[str, Any], merged: dict[int, tuple[dict[str, Any], dict[str, Any] | None]]) -> None:
    waiting = outbox.get(peer_id)
    if waiting is None:
        outbox[peer_id] = frame
        return
    if id(waiting) not in merged:  # (the waiting event is kept in the memo, so its id stays unique)
        kind = _COALESCE.get((waiting["type"], frame["type"]), frame["type"])
        merged[id(waiting)] = (waiting, None if kind is None else {**frame, "type": str(kind)})
    result = merged[id(waiting)][1]
    if result is None:
        del outbox[peer_id]
    else:
        outbox[peer_id] = result


def _without_id(frame: dict[str, Any]) -> dict[str, Any]:
    # A relayed frame carrying the sender's ``id`` could pass as the reply to one of the
    # target's own requests; the id is a correlation tag between one peer and the server.
    return {k: v for k, v in frame.items() if k != "id"}


def _echoable(req_id: Any) -> bool:
    # Only short scalar ids are echoed: an id is a correlation tag, not a payload channel.
    return isinstance(req_id, (str, int)) and not isinstance(req_id, bool) and len(str(req_id)) <= 128


_ECHO_ON = frozenset({ErrorCode.INVALID_MESSAGE, ErrorCode.UNKNOWN_MESSAGE_TYPE})


def _id_of(text: str | bytes) -> Any:
    # Only reached for a frame that decoded but failed validation: decode again for its id.
    try:
        frame = json.loads(text)
    except ValueError:
        return None
    return frame.get("id") if isinstance(frame, dict) else None


def _short(value: str) -> str:
    return value[:64]
