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
"""

from __future__ import annotations

import hmac
import itertools
import json
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sleap_rtc.core.metadata import check_metadata, matches_filters, merge_metadata, normalize_metadata
from sleap_rtc.core.protocol import (
    ErrorCode,
    MessageType,
    ProtocolError,
    Role,
    dumps,
    error_frame,
    parse_frame,
    peer_info,
)
from sleap_rtc.server.ice import IceSettings
from sleap_rtc.server.limits import FailureCounter, Limits, TokenBucket, address_key
from sleap_rtc.server.metrics import Metrics
from sleap_rtc.server.rooms import Access, RoomStore

log = logging.getLogger(__name__)

_ROLES = frozenset(r.value for r in Role)
_conn_ids = itertools.count(1)

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
    next_ping: float = 0.0
    transport: Any = None
    """Whatever the I/O layer needs to reach the socket (the app's writer)."""


@dataclass(eq=False)
class Peer:
    """A registered peer: its identity, metadata and the one connection that owns it."""

    peer_id: str
    room_id: str
    role: str
    metadata: dict[str, Any]
    connected_at: float
    events: bool
    resume: str
    conn: Connection
    info_bytes: int = 0
    """Encoded size of ``info()``, kept current with the metadata (for the byte budgets)."""

    def info(self) -> dict[str, Any]:
        """How this peer appears in ``peer_list`` and room events."""
        return peer_info(self.peer_id, self.role, self.metadata, self.connected_at)

    def measure(self) -> None:
        """Refresh ``info_bytes`` after a metadata change."""
        self.info_bytes = len(dumps(self.info()))


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


Action = Send | Close


class Hub:
    """All live rooms and peers of one server, and the rules for every frame."""

    def __init__(
        self,
        rooms: RoomStore,
        *,
        limits: Limits | None = None,
        ping_interval: float = 30.0,
        ice_servers: list[dict[str, Any]] | None = None,
        ice: IceSettings | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.rooms = rooms
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
        self.live: dict[str, dict[str, Peer]] = {}
        """room_id -> peer_id -> Peer, only rooms with at least one peer."""
        self.connections: set[Connection] = set()
        self._failed_by_address = FailureCounter(self.limits.max_failed_registrations, self.limits.failed_registration_window)
        self._budgets: OrderedDict[str, AddressBudget] = OrderedDict()
        self._handlers: dict[str, Callable[[Connection, dict[str, Any]], list[Action]]] = {
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

    def disconnect(self, conn: Connection) -> list[Action]:
        """The socket closed: remove its peer, unless another socket has taken the peer over."""
        self.connections.discard(conn)
        peer, conn.peer = conn.peer, None
        if peer is None:
            return []
        room = self.live.get(peer.room_id)
        if room is None or room.get(peer.peer_id) is not peer:
            return []
        del room[peer.peer_id]
        if not room:
            del self.live[peer.room_id]
        log.info("peer %s left room %s", peer.peer_id, peer.room_id)
        return [] if self.closing else self._event(peer, MessageType.PEER_LEFT)

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

    def handle(self, conn: Connection, text: str | bytes) -> list[Action]:
        """Everything that follows from ``conn`` sending ``text``."""
        now = self.clock()
        retry_after = conn.bucket.take(now)
        if not retry_after and conn.budget is not None:
            retry_after = conn.budget.messages.take(now)
        if retry_after:
            return self._error(conn, None, ErrorCode.RATE_LIMITED, "Too many messages: slow down.", retry_after=round(retry_after, 3))
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
            return self._handlers[msg_type](conn, frame)
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

    def _refuse_registration(self, conn: Connection, frame: dict[str, Any], code: ErrorCode, message: str, *, failed: bool, **extra: Any) -> list[Action]:
        self.metrics.rejected_registrations[str(code)] += 1
        if failed:
            self._failed_by_address.add(address_key(conn.address), self.clock())
        log.info("refused register of %s in room %s from %s: %s", _short(frame["peer_id"]), _short(frame["room_id"]), conn.address, code)
        return self._error(conn, frame.get("id"), code, message, **extra)

    def _register(self, conn: Connection, frame: dict[str, Any]) -> list[Action]:
        peer_id, room_id, role = frame["peer_id"], frame["room_id"], frame["role"]
        req_id = frame.get("id")
        if conn.peer is not None:
            return self._error(conn, req_id, ErrorCode.ALREADY_REGISTERED, f"This connection is already registered as {conn.peer.peer_id!r}.")
        if role not in _ROLES:
            return self._refuse_registration(conn, frame, ErrorCode.INVALID_MESSAGE, f"Role must be one of {sorted(_ROLES)}.", failed=False)
        if not peer_id or len(peer_id) > self.limits.max_peer_id_length:
            return self._refuse_registration(conn, frame, ErrorCode.INVALID_MESSAGE, f"peer_id must be 1 to {self.limits.max_peer_id_length} characters.", failed=False)
        now = self.clock()
        # The token first: a correct one is admitted whatever others did (a lockout keyed
        # by room would let anyone who knows the room id lock its own peers out).
        problem, access = self.rooms.check(room_id, frame["token"])
        if problem is not None:
            wait = self._failed_by_address.retry_after(address_key(conn.address), now)
            if wait:
                return self._refuse_registration(
                    conn, frame, ErrorCode.RATE_LIMITED,
                    f"Too many failed registrations from your address: retry in {wait:.0f} s.",
                    failed=False, retry_after=round(wait, 3),
                )
            text = {ErrorCode.INVALID_TOKEN: "Unknown room or invalid token.", ErrorCode.ROOM_EXPIRED: "Room expired."}[problem]
            return self._refuse_registration(conn, frame, problem, text, failed=problem == ErrorCode.INVALID_TOKEN)
        if role == Role.WORKER and access != Access.WORKER:
            return self._refuse_registration(conn, frame, ErrorCode.WORKER_TOKEN_REQUIRED, WORKER_TOKEN_MESSAGE, failed=False)
        metadata = normalize_metadata(frame.get("metadata"))
        try:
            check_metadata(metadata, max_bytes=self.limits.max_metadata_bytes)
        except ProtocolError as exc:
            return self._refuse_registration(conn, frame, exc.code, exc.message, failed=False)
        room = self.live.get(room_id, {})
        existing = room.get(peer_id)
        resume = frame.get("resume")
        if existing is not None:
            if not (isinstance(resume, str) and hmac.compare_digest(resume.encode(), existing.resume.encode())):
                return self._refuse_registration(
                    conn, frame, ErrorCode.PEER_ID_TAKEN,
                    f"Peer id {peer_id!r} is registered on another live connection.",
                    failed=isinstance(resume, str),
                )
        elif len(room) >= self.limits.max_peers_per_room:
            return self._refuse_registration(conn, frame, ErrorCode.ROOM_FULL, f"Room is full ({self.limits.max_peers_per_room} peers).", failed=False)

        peer = Peer(
            peer_id=peer_id,
            room_id=room_id,
            role=role,
            metadata=metadata,
            connected_at=existing.connected_at if existing is not None else time.time(),
            events=frame.get("events") is True,
            resume=secrets.token_urlsafe(16),
            conn=conn,
        )
        peer.measure()
        others = [p for p in room.values() if p.peer_id != peer_id]
        fan_out = peer.info_bytes * sum(1 for p in others if p.events)
        wait = self._charge_bytes(conn, sum(p.info_bytes for p in others) + fan_out)
        if wait:
            return self._refuse_registration(
                conn, frame, ErrorCode.RATE_LIMITED,
                f"Too much data requested from this address: retry in {wait:.1f} s.", failed=False, retry_after=round(wait, 3),
            )
        actions: list[Action] = []
        if existing is not None:
            existing.conn.peer = None  # its socket closing later must not evict the new owner
            actions.append(Close(existing.conn, "peer resumed on another connection"))
        else:
            self.rooms.mark_used(room_id)
        self.live.setdefault(room_id, {})[peer_id] = peer
        conn.peer = peer
        conn.next_ping = now + self.ping_interval
        reply: dict[str, Any] = {
            "type": MessageType.REGISTERED_AUTH.value,
            "room_id": room_id,
            "token": frame["token"],  # v2.0 clients read it back; never logged
            "peer_id": peer_id,
            "resume": peer.resume,
            "ping_interval": self.ping_interval,
            "ice_servers": self.ice_servers_for(peer_id),
            "peer_list": [p.info() for p in self.live[room_id].values() if p is not peer],
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

    def _get_ice_servers(self, conn: Connection, frame: dict[str, Any]) -> list[Action]:
        reply: dict[str, Any] = {"type": MessageType.ICE_SERVERS.value, "ice_servers": self.ice_servers_for(conn.peer.peer_id)}
        if _echoable(frame.get("id")):
            reply["id"] = frame["id"]
        return [Send([conn], reply)]

    def _discover(self, conn: Connection, frame: dict[str, Any]) -> list[Action]:
        me = conn.peer
        filters = frame.get("filters")
        found = [p for p in self.live.get(me.room_id, {}).values() if p is not me and matches_filters(p.role, p.metadata, filters)]
        wait = self._charge_bytes(conn, sum(p.info_bytes for p in found))
        if wait:
            return self._busy(conn, frame.get("id"), wait)
        peers = [p.info() for p in found]
        reply: dict[str, Any] = {"type": MessageType.PEER_LIST.value, "to_peer_id": me.peer_id, "peers": peers, "count": len(peers)}
        if _echoable(frame.get("id")):
            reply["id"] = frame["id"]
        return [Send([conn], reply)]

    def _update_metadata(self, conn: Connection, frame: dict[str, Any]) -> list[Action]:
        me = conn.peer
        claimed = frame.get("peer_id")
        if claimed is not None and claimed != me.peer_id:
            raise ProtocolError(ErrorCode.FORBIDDEN, "A peer can only update its own metadata.")
        merged = merge_metadata(me.metadata, frame["metadata"])
        check_metadata(merged, max_bytes=self.limits.max_metadata_bytes)  # refused: the old copy stays
        before, me.metadata = me.metadata, merged
        me.measure()
        watchers = sum(1 for p in self.live.get(me.room_id, {}).values() if p.events and p is not me)
        wait = self._charge_bytes(conn, me.info_bytes * watchers)
        if wait:
            me.metadata = before
            me.measure()
            return self._busy(conn, frame.get("id"), wait)
        reply: dict[str, Any] = {"type": MessageType.METADATA_UPDATED.value, "peer_id": me.peer_id, "metadata": me.metadata}
        if _echoable(frame.get("id")):
            reply["id"] = frame["id"]
        log.debug("peer %s updated its metadata", me.peer_id)
        return [Send([conn], reply), *self._event(me, MessageType.PEER_UPDATED)]

    def _peer_message(self, conn: Connection, frame: dict[str, Any]) -> list[Action]:
        target = self._find_target(conn, frame["to_peer_id"])
        return [Send([target.conn], {**_without_id(frame), "from_peer_id": conn.peer.peer_id})]

    def _relay(self, conn: Connection, frame: dict[str, Any]) -> list[Action]:
        target = self._find_target(conn, frame["target"])
        log.debug("relay %s %s -> %s", frame["type"], conn.peer.peer_id, target.peer_id)
        return [Send([target.conn], {**_without_id(frame), "sender": conn.peer.peer_id})]

    def _find_target(self, conn: Connection, peer_id: str) -> Peer:
        target = self.live.get(conn.peer.room_id, {}).get(peer_id)
        if target is None:
            raise ProtocolError(ErrorCode.PEER_NOT_FOUND, f"No peer {peer_id[:128]!r} in this room.")
        return target

    def _event(self, peer: Peer, kind: MessageType) -> list[Action]:
        watchers = [p.conn for p in self.live.get(peer.room_id, {}).values() if p.events and p is not peer]
        if not watchers:
            return []
        return [Send(watchers, {"type": kind.value, **peer.info()})]

    # ------------------------------------------------------------------ gauges

    def peers_by_role(self) -> dict[str, int]:
        """Registered peers per role, for ``/metrics`` and ``/health``."""
        counts = dict.fromkeys(sorted(_ROLES), 0)
        for room in self.live.values():
            for peer in room.values():
                counts[peer.role] = counts.get(peer.role, 0) + 1
        return counts


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
