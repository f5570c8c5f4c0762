"""A live view of the workers in a room, fed by ``peer_list`` and room events.

``RoomView`` is the one model of "who is in the room" that the CLI table and the GUI's Qt
model both subscribe to: it discovers once, then applies ``peer_joined`` / ``peer_left`` /
``peer_updated`` as they arrive, and discovers again after the signaling client reconnects
(events may have been missed meanwhile).

Every number a worker advertises is its own claim, so ``WorkerInfo`` checks each before
anyone ranks or shows it: finite, of the right type, within ``MAX_GPU_MEMORY_MB`` /
``MAX_CONCURRENT_JOBS``. A worker with a bad number is ``valid == False`` (``problems``
says why): listed as invalid, never ranked, never a crash. Its identity key
(``public_key`` + ``fingerprint``) is checked the same way; ``RoomView.trust`` compares it
with the keys this client remembers (``core.known_workers``).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sleap_rtc.core.identity import IdentityError, fingerprint_of, is_fingerprint, short_fingerprint
from sleap_rtc.core.known_workers import KnownWorkers, Trust
from sleap_rtc.core.metadata import matches_filters
from sleap_rtc.core.protocol import EVENT_TYPES, MessageType, Prop, Role, WorkerStatus
from sleap_rtc.core.signaling import ConnectionState, SignalingClient
from sleap_rtc.core.tasks import spawn

log = logging.getLogger(__name__)

MAX_GPU_MEMORY_MB = 4 * 1024 * 1024
"""Largest believable ``gpu_memory_mb`` (4 TiB); more marks the worker invalid."""

MAX_CONCURRENT_JOBS = 1024
"""Largest believable ``max_concurrent_jobs``; more marks the worker invalid."""

MAX_TEXT_CHARS = 200
"""Advertised texts (name, GPU model, host) are cut to this many characters for display."""


def _number_problem(name: str, value: Any, low: int, high: int, *, required: bool = False) -> str | None:
    """Why an advertised number is not believable, or None when it is fine (or absent)."""
    if value is None:
        return f"{name} is missing" if required else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{name} is not a number"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{name} is not finite"
    if not low <= value <= high:
        shown = repr(value) if len(repr(value)) <= 24 else repr(value)[:20] + "..."
        return f"{name} {shown} is outside {low}..{high}"
    return None


def _text(value: Any, default: str) -> str:
    text = value if isinstance(value, str) else default if value is None or value == "" else str(value)
    text = text or default
    return text if len(text) <= MAX_TEXT_CHARS else text[: MAX_TEXT_CHARS - 1] + "…"


def _finite_float(value: Any) -> float:
    try:
        number = float(value or 0.0)
    except (TypeError, ValueError, OverflowError):
        return 0.0
    return number if math.isfinite(number) else 0.0


@dataclass(frozen=True)
class WorkerInfo:
    """One worker as the room describes it (read-only; a new one replaces it on change)."""

    peer_id: str
    role: str
    metadata: dict[str, Any]
    connected_at: float = 0.0

    @classmethod
    def from_peer(cls, peer: dict[str, Any]) -> WorkerInfo:
        """Build from a ``peer_list`` entry or a room event."""
        metadata = peer.get("metadata") if isinstance(peer.get("metadata"), dict) else {}
        return cls(
            peer_id=str(peer.get("peer_id", "")),
            role=str(peer.get("role", "")),
            metadata=metadata,
            connected_at=_finite_float(peer.get("connected_at")),
        )

    @property
    def properties(self) -> dict[str, Any]:
        """The worker's advertised properties."""
        props = self.metadata.get("properties", {})
        return props if isinstance(props, dict) else {}

    @property
    def name(self) -> str:
        """Human name of the worker (its peer id when it gave none)."""
        return _text(self.properties.get(Prop.WORKER_NAME), self.peer_id)

    @property
    def gpu_model(self) -> str:
        """GPU model, ``"CPU"`` for a worker without a GPU."""
        return _text(self.properties.get(Prop.GPU_MODEL), "unknown")

    @property
    def gpu_memory_mb(self) -> int:
        """Total GPU memory in MB; 0 without a GPU, when not advertised, or when not believable."""
        value = self.properties.get(Prop.GPU_MEMORY_MB)
        if _number_problem("gpu_memory_mb", value, 0, MAX_GPU_MEMORY_MB) is not None or value is None:
            return 0
        return int(value)

    @property
    def problems(self) -> list[str]:
        """Why this worker's advertised facts cannot be believed (empty when they can)."""
        props = self.properties
        found = [
            _number_problem("gpu_memory_mb", props.get(Prop.GPU_MEMORY_MB), 0, MAX_GPU_MEMORY_MB),
            _number_problem("max_concurrent_jobs", props.get(Prop.MAX_CONCURRENT_JOBS), 0, MAX_CONCURRENT_JOBS),
            self.identity_problem,
        ]
        return [p for p in found if p]

    @property
    def valid(self) -> bool:
        """Whether the advertised facts are believable (invalid workers are never ranked)."""
        return not self.problems

    @property
    def identity_problem(self) -> str | None:
        """Why the advertised key is unusable (None when it is fine or absent)."""
        public, fingerprint = self.properties.get(Prop.PUBLIC_KEY), self.properties.get(Prop.FINGERPRINT)
        if public is None and fingerprint is None:
            return None
        try:
            computed = fingerprint_of(public) if isinstance(public, str) else None
        except IdentityError:
            computed = None
        if computed is None:
            return "its public_key is malformed"
        if fingerprint is not None and fingerprint != computed:
            return "its fingerprint does not match its public_key"
        return None

    @property
    def fingerprint(self) -> str | None:
        """``SHA256:...`` of the advertised identity key; None without a usable one.

        Only a claim until the data channel's identity proof checked it (``core.channel``).
        """
        if self.identity_problem is not None:
            return None
        public = self.properties.get(Prop.PUBLIC_KEY)
        return fingerprint_of(public) if isinstance(public, str) else None

    @property
    def short_fingerprint(self) -> str:
        """The fingerprint's first characters for tables; ``""`` without one."""
        fingerprint = self.fingerprint
        return short_fingerprint(fingerprint) if is_fingerprint(fingerprint) else ""

    @property
    def cuda_version(self) -> str:
        """CUDA driver version, empty when there is none."""
        return _text(self.properties.get(Prop.CUDA_VERSION), "")

    @property
    def hostname(self) -> str:
        """Host the worker runs on."""
        return _text(self.properties.get(Prop.HOSTNAME), "")

    @property
    def status(self) -> str:
        """``available`` / ``reserved`` / ``busy`` / ``maintenance`` (``unknown`` if absent)."""
        return _text(self.properties.get(Prop.STATUS), "unknown")

    @property
    def available(self) -> bool:
        """Whether the worker currently accepts a job."""
        return self.status == WorkerStatus.AVAILABLE


@dataclass(frozen=True)
class RoomChange:
    """What changed in a ``RoomView``: ``joined``, ``left``, ``updated`` or ``reset``."""

    kind: str
    worker: WorkerInfo | None = None


RoomListener = Callable[[RoomChange], Any]

def worker_filters(min_gpu_memory_mb: int | None = None) -> dict[str, Any]:
    """Discovery filters for workers, optionally with at least that much GPU memory."""
    filters: dict[str, Any] = {"role": Role.WORKER.value}
    if min_gpu_memory_mb:
        filters["properties"] = {Prop.GPU_MEMORY_MB.value: {"$gte": int(min_gpu_memory_mb)}}
    return filters


class RoomView:
    """The workers of one room, kept current from discovery and room events.

    Listeners are called synchronously with a ``RoomChange`` after each change. ``filters``
    (see ``worker_filters``) apply to the initial discovery, to every refresh and to events.
    ``known`` is the trust-on-first-use store (the user's own by default) behind ``trust``.
    """

    def __init__(self, signaling: SignalingClient, filters: dict[str, Any] | None = None,
                 known: KnownWorkers | None = None):
        self.signaling = signaling
        self.filters = filters if filters is not None else worker_filters()
        self.known = known if known is not None else KnownWorkers()
        self._workers: dict[str, WorkerInfo] = {}
        self._listeners: list[RoomListener] = []
        self._removers: list[Callable[[], None]] = []
        self._changed = asyncio.Event()

    # ------------------------------------------------------------------ reading

    @property
    def workers(self) -> list[WorkerInfo]:
        """Every worker that passes the filters, in join order."""
        return list(self._workers.values())

    def available(self) -> list[WorkerInfo]:
        """Workers whose status is ``available``."""
        return [w for w in self._workers.values() if w.available]

    def get(self, peer_id: str) -> WorkerInfo | None:
        """The worker with that peer id, if it is in the room."""
        return self._workers.get(peer_id)

    def trust(self, worker: WorkerInfo) -> Trust:
        """How the worker's advertised key compares with the key remembered for its name."""
        return self.known.check(str(self.signaling.room_id), worker.name, worker.fingerprint)

    def subscribe(self, listener: RoomListener) -> Callable[[], None]:
        """Call ``listener(change)`` after every change; returns a remover."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> list[WorkerInfo]:
        """Start following room events and discover the current workers."""
        if not self._removers:
            self._removers.append(self.signaling.add_listener(self._on_frame))
            self._removers.append(self.signaling.add_state_listener(self._on_state))
        return await self.refresh()

    def close(self) -> None:
        """Stop following the room."""
        for remove in self._removers:
            remove()
        self._removers.clear()

    async def refresh(self) -> list[WorkerInfo]:
        """Discover again (e.g. the user pressed ``r``) and replace the whole list."""
        peers = await self.signaling.discover(self.filters)
        self._workers = {}
        for peer in peers:
            info = WorkerInfo.from_peer(peer)
            if info.peer_id:
                self._workers[info.peer_id] = info
        self._emit(RoomChange("reset"))
        return self.workers

    async def wait_for(self, predicate: Callable[[RoomView], Any], timeout: float) -> Any:
        """Wait until ``predicate(self)`` is truthy (re-checked on every change); return it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            result = predicate(self)
            if result:
                return result
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise asyncio.TimeoutError()
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    # ------------------------------------------------------------------ events

    def _on_frame(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind not in EVENT_TYPES:
            return
        info = WorkerInfo.from_peer(frame)
        if not info.peer_id:
            return
        # A worker whose update makes it fail a filter leaves this view like one that left.
        if kind == MessageType.PEER_LEFT or not matches_filters(info.role, info.metadata, self.filters):
            gone = self._workers.pop(info.peer_id, None)
            if gone is not None:
                self._emit(RoomChange("left", gone))
            return
        known = info.peer_id in self._workers
        self._workers[info.peer_id] = info
        self._emit(RoomChange("updated" if known else "joined", info))

    def _on_state(self, state: ConnectionState) -> None:
        if state == ConnectionState.REGISTERED and self._removers:
            spawn(self._refresh_quietly(), name="room-refresh")

    async def _refresh_quietly(self) -> None:
        try:
            await self.refresh()
        except Exception as exc:  # the next event or reconnect tries again
            log.warning("could not refresh the worker list after reconnecting: %s", exc)

    def _emit(self, change: RoomChange) -> None:
        self._changed.set()
        for listener in list(self._listeners):
            try:
                listener(change)
            except Exception:
                log.exception("room listener failed")
