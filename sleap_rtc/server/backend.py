"""What the signaling server shares between instances: rooms, presence, limits, relays.

The hub (``server/hub.py``) owns the protocol rules; a ``Backend`` owns the state those
rules read and write, so that one process or several behave the same:

* **rooms**: which rooms exist, their salted token hashes and expiry;
* **presence**: the live view of a room (``Peer`` records: who is registered, with which
  role and metadata, on which instance), changed only through ``claim`` / ``update`` /
  ``release`` so that a backend can make each change atomic across instances;
* **limits** shared by every instance (failed registrations, room creations), so that
  adding instances does not multiply an attacker's budget;
* **relays** to a peer registered on another instance (``forward``) and the changes other
  instances make (delivered to the hub through ``BackendListener``).

``LocalBackend`` is the single-process server: views in memory, rooms in SQLite, nothing
to forward. ``server/backend_redis.py`` is the shared one.
"""

from __future__ import annotations

import hashlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sleap_rtc.core.credentials import NewRoom
from sleap_rtc.core.protocol import ErrorCode, dumps, peer_info
from sleap_rtc.server.limits import FailureCounter
from sleap_rtc.server.rooms import Access, RoomStore


def resume_hash(secret: str) -> str:
    """What a backend keeps of a resume secret (never the secret itself)."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(eq=False)
class Peer:
    """A registered peer as every instance sees it.

    ``conn`` is the hub's connection when the peer is registered on this instance, and
    ``None`` for a peer on another instance (reach it with ``Backend.forward``).
    """

    peer_id: str
    room_id: str
    role: str
    metadata: dict[str, Any]
    connected_at: float
    events: bool
    resume_hash: str
    instance: str = ""
    batch: bool = False
    """Whether this watcher takes room events batched into ``room_events`` frames."""
    seq: int = 0
    """Position of this record's last change in its room's change order (newer wins)."""
    conn: Any = field(default=None, repr=False)
    info_bytes: int = 0
    """Encoded size of ``info()``, kept current with the metadata (for the byte budgets)."""

    def info(self) -> dict[str, Any]:
        """How this peer appears in ``peer_list`` and room events."""
        return peer_info(self.peer_id, self.role, self.metadata, self.connected_at)

    def measure(self) -> None:
        """Refresh ``info_bytes`` after a metadata change."""
        self.info_bytes = len(dumps(self.info()))

    def record(self) -> dict[str, Any]:
        """The fields another instance needs (everything but the connection)."""
        return {
            "peer_id": self.peer_id,
            "room_id": self.room_id,
            "role": self.role,
            "metadata": self.metadata,
            "connected_at": self.connected_at,
            "events": self.events,
            "batch": self.batch,
            "resume_hash": self.resume_hash,
            "instance": self.instance,
        }

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> Peer:
        """Rebuild a remote peer from ``record()`` (plus the ``seq`` a backend adds)."""
        peer = cls(
            peer_id=str(data["peer_id"]),
            room_id=str(data["room_id"]),
            role=str(data["role"]),
            metadata=data.get("metadata") if isinstance(data.get("metadata"), dict) else {},
            connected_at=float(data.get("connected_at") or 0.0),
            events=data.get("events") is True,
            resume_hash=str(data.get("resume_hash") or ""),
            instance=str(data.get("instance") or ""),
            batch=data.get("batch") is True,
            seq=int(data.get("seq") or 0),
        )
        peer.measure()
        return peer


@dataclass(frozen=True)
class Caps:
    """The room limits a claim must respect atomically."""

    max_peers: int
    max_watchers: int


class BackendListener(Protocol):
    """How a backend tells the hub what other instances did."""

    def peer_changed(self, old: Peer | None, new: Peer | None) -> None:
        """A peer of a followed room joined (``old`` None), changed, or left (``new`` None)."""

    def relayed(self, room_id: str, peer_id: str, frame: dict[str, Any]) -> None:
        """Another instance relays ``frame`` to ``peer_id`` registered here."""

    def lease_lost(self) -> None:
        """This instance's presence lease lapsed: its peers may have been removed."""


class SharedCounter(Protocol):
    """A sliding-window event counter (``FailureCounter`` semantics) a backend may share."""

    async def retry_after(self, key: str) -> float:
        """0 when ``key`` is under its limit, else seconds until the oldest event expires."""

    async def add(self, key: str) -> None:
        """Record one event for ``key``."""


class Backend(ABC):
    """The state the hub reads and changes; see the module docstring."""

    instance_id: str = "local"

    # -- life

    async def start(self, listener: BackendListener) -> None:  # noqa: B027 - optional hook
        """Begin delivering other instances' changes to ``listener``."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Stop delivering; release what this instance holds."""

    # -- rooms

    @abstractmethod
    async def create_room(self) -> NewRoom:
        """Create a room (``RoomStore.create`` semantics; may raise ``RoomLimitError``)."""

    @abstractmethod
    async def check_room(self, room_id: str, token: str) -> tuple[ErrorCode | None, Access | None]:
        """``(None, access)`` when ``token`` opens ``room_id``, else ``(code, None)``."""

    @abstractmethod
    async def mark_used(self, room_id: str) -> None:
        """A peer registered in ``room_id``: it no longer expires as unused."""

    @abstractmethod
    async def expire_unused(self) -> int:
        """Forget rooms that expired unused; returns how many."""

    @abstractmethod
    async def count_rooms(self) -> int:
        """Number of stored rooms (for ``/metrics``)."""

    # -- limits

    @abstractmethod
    def counter(self, name: str, limit: int, window: float, clock: Callable[[], float]) -> SharedCounter:
        """A sliding-window counter shared by every instance (``clock`` for local ones)."""

    # -- presence

    @abstractmethod
    def view(self, room_id: str) -> dict[str, Peer]:
        """The peers of a room this instance follows (empty when it follows none there)."""

    @abstractmethod
    def views(self) -> dict[str, dict[str, Peer]]:
        """Every followed room's view (rooms with at least one peer)."""

    @abstractmethod
    async def follow(self, room_id: str) -> dict[str, Peer]:
        """Start (or keep) following ``room_id``; returns its view, ``settle``d."""

    async def settle(self, room_id: str) -> None:  # noqa: B027 - a single process is always settled
        """Wait (briefly) until the view of ``room_id`` holds every change committed before
        this call, on any instance: what a peer reads here is never older than what it
        (or anyone) wrote elsewhere before asking."""

    @abstractmethod
    async def claim(self, peer: Peer, expected_resume_hash: str | None, caps: Caps) -> ErrorCode | None:
        """Make ``peer`` the room's record for its id, atomically.

        Refused (``PEER_ID_TAKEN``, ``ROOM_FULL``, ``TOO_MANY_WATCHERS``) when the room
        changed since the hub checked its view: another instance registered the same id,
        or filled the room.
        """

    @abstractmethod
    async def update(self, peer: Peer) -> None:
        """Publish ``peer``'s new metadata."""

    @abstractmethod
    async def release(self, peer: Peer) -> bool:
        """Remove ``peer`` if this very record still owns its id; returns whether it did."""

    def forward(self, peer: Peer, frame: dict[str, Any]) -> None:
        """Relay ``frame`` to ``peer``, registered on another instance (in send order)."""
        raise NotImplementedError("a single-process backend has no other instance")


class _LocalCounter:
    """``FailureCounter`` behind the ``SharedCounter`` interface, on the hub's clock."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float]):
        self._counter = FailureCounter(limit, window)
        self._clock = clock

    async def retry_after(self, key: str) -> float:
        return self._counter.retry_after(key, self._clock())

    async def add(self, key: str) -> None:
        self._counter.add(key, self._clock())


class LocalBackend(Backend):
    """One process: views in memory, rooms in a ``RoomStore`` (SQLite)."""

    def __init__(self, rooms: RoomStore):
        self.rooms = rooms
        self._views: dict[str, dict[str, Peer]] = {}
        self._seq = 0

    async def create_room(self) -> NewRoom:
        return self.rooms.create()

    async def check_room(self, room_id: str, token: str) -> tuple[ErrorCode | None, Access | None]:
        return self.rooms.check(room_id, token)

    async def mark_used(self, room_id: str) -> None:
        self.rooms.mark_used(room_id)

    async def expire_unused(self) -> int:
        return self.rooms.expire_unused()

    async def count_rooms(self) -> int:
        return self.rooms.count()

    def counter(self, name: str, limit: int, window: float, clock: Callable[[], float]) -> SharedCounter:
        return _LocalCounter(limit, window, clock)

    def view(self, room_id: str) -> dict[str, Peer]:
        return self._views.get(room_id, {})

    def views(self) -> dict[str, dict[str, Peer]]:
        return self._views

    async def follow(self, room_id: str) -> dict[str, Peer]:
        return self.view(room_id)

    async def claim(self, peer: Peer, expected_resume_hash: str | None, caps: Caps) -> ErrorCode | None:
        # One process, no await between the hub's check and this: the view is the truth.
        self._seq += 1
        peer.seq = self._seq
        self._views.setdefault(peer.room_id, {})[peer.peer_id] = peer
        return None

    async def update(self, peer: Peer) -> None:
        self._seq += 1
        peer.seq = self._seq

    async def release(self, peer: Peer) -> bool:
        room = self._views.get(peer.room_id)
        if room is None or room.get(peer.peer_id) is not peer:
            return False
        del room[peer.peer_id]
        if not room:
            del self._views[peer.room_id]
        return True


def wall_clock() -> float:
    """Seconds since the epoch: the one clock instances on different machines share."""
    return time.time()
