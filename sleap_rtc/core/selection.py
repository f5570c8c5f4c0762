"""Choosing a worker in a room: ordering, auto-select with fallback, direct ids, waiting.

Everything here works on a live ``RoomView`` and an injected *connect attempt*: an async
callable ``connect(worker) -> T`` (in production a wrapper around ``transport.connect``
returning a ``PeerChannel``). Keeping the attempt injected lets the CLI, the GUI and the
unit tests share the same decisions without WebRTC.

Ordering (``rank_workers``), best first:

1. workers whose key this client already used (trust on first use, ``Trust.KNOWN``)
   before new ones: advertised numbers are claims, and a newcomer claiming a huge GPU
   must not outrank the workers the user already ran jobs on;
2. most GPU memory (``gpu_memory_mb``; a worker without a GPU counts as 0);
3. then the worker that has been in the room longest (smallest ``connected_at``): a
   long-lived worker is less likely to be a half-started or flapping one;
4. then ``peer_id`` alphabetically, so the order is fully deterministic.

Only workers whose status is ``available`` and whose advertised facts are believable
(``WorkerInfo.valid``) are candidates. Auto-select never picks a worker whose key changed
(``Trust.CHANGED``): it says so and moves on; the user can still choose it by hand.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from sleap_rtc.core.known_workers import Trust
from sleap_rtc.core.room import RoomView, WorkerInfo
from sleap_rtc.core.transport_errors import AnswerTimeoutError, PeerNotFoundError, WorkerBusyError, WorkerIdentityError

log = logging.getLogger(__name__)

T = TypeVar("T")

ConnectAttempt = Callable[[WorkerInfo], Awaitable[T]]
"""``await connect(worker)`` opens the job connection to one worker, or raises."""

TrustLookup = Callable[[WorkerInfo], Trust]
"""``trust(worker)``: how its key compares with the remembered one (``RoomView.trust``)."""

DecisionListener = Callable[[str], object]
"""Receives one human-readable line per selection decision (the CLI prints them)."""

DEFAULT_MAX_ATTEMPTS = 3
"""How many workers auto-select tries before giving up (bounded so it never loops)."""


# --------------------------------------------------------------------------- errors


class SelectionError(Exception):
    """No worker could be selected; ``str(exc)`` is the message to show the user."""


class NoWorkersError(SelectionError):
    """The room has no available worker (matching the filters)."""


class SelectionTimeout(SelectionError):
    """The user (or ``--wait``) did not get a worker in time."""


class UnknownWorkerError(SelectionError):
    """``--worker-id`` names a peer that is not a worker of this room."""


class WorkerUnavailableError(SelectionError):
    """The chosen worker is busy, reserved or in maintenance, or refused the connection."""


class AllWorkersBusyError(SelectionError):
    """Every worker tried by auto-select was busy or vanished."""


# --------------------------------------------------------------------------- helpers


def describe(worker: WorkerInfo) -> str:
    """Short human description: ``name (GPU, 24576 MB, key abcdef1234)``."""
    key = f", key {worker.short_fingerprint}" if worker.short_fingerprint else ""
    return f"{worker.name} ({worker.gpu_model}, {worker.gpu_memory_mb} MB{key})"


_TRUST_ORDER = {Trust.KNOWN: 0, Trust.NEW: 1, Trust.NONE: 2, Trust.CHANGED: 3}

TRUST_WORDS = {
    Trust.KNOWN: "used before",
    Trust.NEW: "never used from here",
    Trust.NONE: "advertises no identity key",
    Trust.CHANGED: "IDENTITY KEY CHANGED",
}
"""How each trust state is said in CLI lines and the GUI's tooltips."""


def _no_trust(_worker: WorkerInfo) -> Trust:
    return Trust.NEW


def rank_key(worker: WorkerInfo, trust: TrustLookup | None = None) -> tuple[int, int, float, str]:
    """Sort key of the documented ordering (see the module docstring)."""
    return (_TRUST_ORDER[(trust or _no_trust)(worker)], -worker.gpu_memory_mb, worker.connected_at, worker.peer_id)


def rank_workers(workers: Iterable[WorkerInfo], trust: TrustLookup | None = None) -> list[WorkerInfo]:
    """The available, valid workers, best first (see the module docstring).

    Workers whose key changed stay in the list (last): ``auto_select`` skips them itself,
    saying why, so the user learns about it.
    """
    return sorted((w for w in workers if w.available and w.valid), key=lambda w: rank_key(w, trust))


def room_trust(room: object) -> TrustLookup | None:
    """The room's ``trust`` lookup when it has one (``RoomView`` does; test fakes may not)."""
    trust = getattr(room, "trust", None)
    return trust if callable(trust) else None


def min_memory_hint(min_gpu_memory_mb: int | None) -> str:
    """`` with at least N MB of GPU memory`` when a memory filter is active, else ``""``."""
    return f" with at least {min_gpu_memory_mb} MB of GPU memory" if min_gpu_memory_mb else ""


def no_workers_message(room: RoomView, *, min_gpu_memory_mb: int | None = None, waited: float = 0) -> str:
    """The message for an empty room: what is there, what to check, how to wait."""
    where = f"in room {room.signaling.room_id}"
    text = f"No available workers{min_memory_hint(min_gpu_memory_mb)} {where}"
    text += f" after waiting {waited:g} s." if waited else "."
    others = [w for w in room.workers if not w.available]
    if others:
        states = ", ".join(f"{w.name}: {w.status}" for w in others)
        text += f" Workers present but not available: {states}."
    invalid = [w for w in room.workers if w.available and not w.valid]
    if invalid:
        text += " Ignored as invalid: " + ", ".join(f"{w.name} ({'; '.join(w.problems)})" for w in invalid) + "."
    hint = " Check that your workers are running and connected to the same room"
    hint += ", or lower --min-gpu-memory" if min_gpu_memory_mb else ""
    hint += "; or pass --wait SECONDS to wait for one." if not waited else "."
    return text + hint


BUSY_ERRORS: tuple[type[BaseException], ...] = (WorkerBusyError,)
"""Connect errors meaning "this worker refused: busy"; auto-select tries the next one."""

GONE_ERRORS: tuple[type[BaseException], ...] = (PeerNotFoundError, AnswerTimeoutError)
"""Connect errors meaning "this worker vanished or never answered"; tried next too."""

IDENTITY_ERRORS: tuple[type[BaseException], ...] = (WorkerIdentityError,)
"""Connect errors meaning "this worker failed the identity check"; auto-select moves on
(nothing was uploaded to it), a direct choice fails with the error's message."""


@dataclass
class Selection(Generic[T]):
    """The outcome of a selection: the worker, what ``connect`` returned, and the log."""

    worker: WorkerInfo
    connection: T
    decisions: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- waiting


async def wait_for_available(
    room: RoomView, *, wait: float = 0.0, min_gpu_memory_mb: int | None = None
) -> list[WorkerInfo]:
    """The ranked available workers; with ``wait > 0`` wait (via room events) for one.

    Raises ``NoWorkersError`` when there is none (after ``wait`` seconds).
    """
    trust = room_trust(room)
    ranked = rank_workers(room.workers, trust)
    if ranked:
        return ranked
    if wait > 0:
        try:
            return await room.wait_for(lambda r: rank_workers(r.workers, trust), wait)
        except asyncio.TimeoutError:
            raise NoWorkersError(no_workers_message(room, min_gpu_memory_mb=min_gpu_memory_mb, waited=wait)) from None
    raise NoWorkersError(no_workers_message(room, min_gpu_memory_mb=min_gpu_memory_mb))


# --------------------------------------------------------------------------- auto-select


async def auto_select(
    room: RoomView,
    connect: ConnectAttempt[T],
    *,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    wait: float = 0.0,
    min_gpu_memory_mb: int | None = None,
    busy_errors: tuple[type[BaseException], ...] = BUSY_ERRORS,
    gone_errors: tuple[type[BaseException], ...] = GONE_ERRORS,
    identity_errors: tuple[type[BaseException], ...] = IDENTITY_ERRORS,
    on_decision: DecisionListener | None = None,
) -> Selection[T]:
    """Connect to the best available worker, falling back to the next best.

    Candidates are re-ranked from the live room before every attempt, so a worker that
    turned busy or left meanwhile is skipped without trying it. A ``busy_errors`` exception
    (the worker refused: ``worker_busy``), a ``gone_errors`` one (it vanished or never
    answered) or an ``identity_errors`` one (it failed the identity check) moves on to the
    next worker; any other exception propagates. A worker whose key changed since this
    client last used it is skipped without trying it. At most ``max_attempts`` workers are
    tried. Each decision is logged and given to ``on_decision``.
    """
    decisions: list[str] = []

    def decide(text: str) -> None:
        decisions.append(text)
        log.info("%s", text)
        if on_decision:
            on_decision(text)

    await wait_for_available(room, wait=wait, min_gpu_memory_mb=min_gpu_memory_mb)
    trust = room_trust(room) or _no_trust
    invalid = [w for w in room.workers if w.available and not w.valid]
    if invalid:
        decide("Ignoring worker(s) with unbelievable metadata: "
               + ", ".join(f"{w.name} ({'; '.join(w.problems)})" for w in invalid) + ".")
    tried: set[str] = set()
    failures: list[str] = []
    attempt = 0
    while attempt < max_attempts:
        candidates = [w for w in rank_workers(room.workers, trust) if w.peer_id not in tried]
        if not candidates:
            break
        worker = candidates[0]
        if trust(worker) == Trust.CHANGED:
            tried.add(worker.peer_id)
            failures.append(f"{worker.name}: its identity key changed")
            decide(
                f"Skipping {describe(worker)}: its identity key is not the one this computer used before "
                "(reinstalled, or someone posing as it). Choose it yourself with --worker-id to accept the new key."
            )
            continue
        attempt += 1
        tried.add(worker.peer_id)
        others = len(candidates) - 1
        decide(
            f"Trying {describe(worker)}, {TRUST_WORDS[trust(worker)]}: best of {others + 1} available "
            f"worker(s) (attempt {attempt}/{max_attempts})."
        )
        try:
            connection = await connect(worker)
        except busy_errors as exc:  # type: ignore[misc]  # a tuple of classes is fine
            failures.append(f"{worker.name}: busy")
            decide(f"{worker.name} is busy ({exc}); trying the next best worker.")
            continue
        except gone_errors as exc:  # type: ignore[misc]
            failures.append(f"{worker.name}: did not answer")
            decide(f"{worker.name} did not answer ({exc}); trying the next best worker.")
            continue
        except identity_errors as exc:  # type: ignore[misc]
            failures.append(f"{worker.name}: failed the identity check")
            decide(f"Refused {worker.name}: {exc} Nothing was sent to it; trying the next best worker.")
            continue
        decide(f"Connected to {describe(worker)}.")
        return Selection(worker, connection, decisions)
    if not failures:
        raise NoWorkersError(no_workers_message(room, min_gpu_memory_mb=min_gpu_memory_mb))
    hint = "Try again in a moment, or pass --wait SECONDS to wait for a free worker."
    if all("identity" in failure for failure in failures):
        hint = "No worker could prove the identity this computer expects; check the workers' fingerprints."
    raise AllWorkersBusyError(f"Could not start the job on any worker ({'; '.join(failures)}). {hint}")


# --------------------------------------------------------------------------- direct id


def check_direct(room: RoomView, worker_id: str) -> WorkerInfo:
    """The worker named by ``--worker-id`` if it is in the room and available.

    Raises ``UnknownWorkerError`` (listing the ids there are) or ``WorkerUnavailableError``.
    """
    worker = room.get(worker_id)
    if worker is None:
        ids = ", ".join(w.peer_id for w in room.workers) or "none"
        raise UnknownWorkerError(f"No worker '{worker_id}' in room {room.signaling.room_id}. Workers in this room: {ids}.")
    if not worker.available:
        raise WorkerUnavailableError(unavailable_message(worker))
    return worker


def unavailable_message(worker: WorkerInfo) -> str:
    """Why a chosen worker cannot take the job, and what to do instead."""
    return (
        f"Worker {worker.name} ({worker.peer_id}) is {worker.status}. "
        "Wait until it is free, choose another one, or use --auto-select."
    )


async def connect_direct(
    room: RoomView,
    worker_id: str,
    connect: ConnectAttempt[T],
    *,
    busy_errors: tuple[type[BaseException], ...] = BUSY_ERRORS,
    gone_errors: tuple[type[BaseException], ...] = GONE_ERRORS,
) -> Selection[T]:
    """Connect to exactly ``worker_id`` (no fallback: the user asked for that one)."""
    worker = check_direct(room, worker_id)
    try:
        connection = await connect(worker)
    except busy_errors:  # type: ignore[misc]
        raise WorkerUnavailableError(
            f"Worker {worker.name} ({worker.peer_id}) is busy. "
            "Wait until it is free, choose another one, or use --auto-select."
        ) from None
    except gone_errors:  # type: ignore[misc]
        raise WorkerUnavailableError(
            f"Worker {worker.name} ({worker.peer_id}) did not answer; it may have left the room."
        ) from None
    return Selection(worker, connection, [f"Connected to {describe(worker)}."])
