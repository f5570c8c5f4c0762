"""How a remote job chooses its worker: the selection policies and the chooser protocol.

A ``RemoteJob`` takes exactly one policy:

* ``DirectWorker(peer_id)``: that worker of the room, nobody to ask (``--worker-id``);
* ``SessionWorker(peer_id)``: the worker a session string names, connected to straight;
* ``Interactive(chooser, first=...)``: ask a chooser (the CLI picker, the GUI panel); the
  GUI starts with the worker selected in its dock, or with auto-select;
* ``Auto(exclude, min_gpu_memory_mb, wait, max_attempts)``: the best available worker,
  the next best after a refusal, waiting up to ``wait`` seconds when none is free.

A chooser is ``async def choose(request: ChoiceRequest) -> Choice``. It sees the live
room, why it is asked (``request.notice``, ``request.outcome``), which workers already
failed (``request.tried``), and answers with a worker to try (``Pick``), ``NextBest()``
(auto-select without the tried ones) or ``WaitForFree(timeout_s)`` (wait on room events
for the first worker that frees up). It gives up by raising ``SelectionCancelled`` (or by
the job's task being cancelled). ``asked_by_worker_choice`` adapts the CLI-style
``async (room, notice) -> WorkerInfo`` pickers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Union

from sleap_rtc.core.retry import Outcome
from sleap_rtc.core.room import RoomView, WorkerInfo
from sleap_rtc.core.selection import DEFAULT_MAX_ATTEMPTS, SelectionError

DEFAULT_JOB_ATTEMPTS = 3
"""How many workers one job may run on in all (a worker lost mid-job counts one)."""


class SelectionCancelled(SelectionError):
    """The chooser gave up (the user pressed Cancel or quit the picker)."""


# --------------------------------------------------------------------------- choices


@dataclass(frozen=True)
class Pick:
    """Try this worker (picked by the user)."""

    worker: WorkerInfo


@dataclass(frozen=True)
class NextBest:
    """Auto-select the best available worker, the ones that already failed excluded."""


@dataclass(frozen=True)
class WaitForFree:
    """Wait on room events (at most ``timeout_s``) for a worker to become available, then
    take the first one that does (``peer_id`` set: wait for that worker only)."""

    timeout_s: float
    peer_id: str | None = None


Choice = Union[Pick, NextBest, WaitForFree]
"""What a chooser answers."""


@dataclass(frozen=True)
class ChoiceRequest:
    """What the chooser is told: the live room, why it is asked, what already failed.

    ``outcome`` is ``None`` the first time (no attempt yet); ``worker`` is the worker of
    the failed attempt, if any; ``tried`` the peer ids that failed in this job.
    """

    room: RoomView
    notice: str = ""
    outcome: Outcome | None = None
    worker: WorkerInfo | None = None
    tried: frozenset[str] = frozenset()


Chooser = Callable[[ChoiceRequest], Awaitable[Choice]]
"""``await choose(request) -> Choice``; raises ``SelectionCancelled`` to give up."""


def asked_by_worker_choice(pick: Callable[[RoomView, str], Awaitable[WorkerInfo]]) -> Chooser:
    """A ``Chooser`` from a picker that only ever returns a worker (the CLI's table)."""

    async def choose(request: ChoiceRequest) -> Choice:
        return Pick(await pick(request.room, request.notice))

    return choose


# --------------------------------------------------------------------------- policies


@dataclass(frozen=True)
class DirectWorker:
    """Exactly this worker of the room; busy -> wait for it (with ``wait``) or fail."""

    peer_id: str
    wait: float = 0.0


@dataclass(frozen=True)
class SessionWorker:
    """The worker a session string names: connect straight to it, no room discovery.

    ``fingerprint``: the worker's identity key when the session string carries one (the
    worker must prove exactly that key).
    """

    peer_id: str
    fingerprint: str | None = None


@dataclass(frozen=True)
class Interactive:
    """Ask ``chooser``; ``first`` is the first move without asking (the GUI's dock
    selection as a ``Pick``, or ``NextBest()`` for its "auto-select" default), ``None``
    asks at once (the CLI picker). ``wait`` first waits that long for an available worker.
    """

    chooser: Chooser
    first: Pick | NextBest | None = None
    min_gpu_memory_mb: int | None = None
    wait: float = 0.0
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    max_job_attempts: int = DEFAULT_JOB_ATTEMPTS


@dataclass(frozen=True)
class Auto:
    """The best available worker (most GPU memory, then oldest), skipping ``exclude``.

    A refusal moves on to the next best (at most ``max_attempts`` workers per selection);
    a worker lost mid-job runs the job again on the next best (at most
    ``max_job_attempts`` workers in all); with no worker free, waits up to ``wait``
    seconds in all (on room events) for one to become available.
    """

    exclude: frozenset[str] = field(default_factory=frozenset)
    min_gpu_memory_mb: int | None = None
    wait: float = 0.0
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    max_job_attempts: int = DEFAULT_JOB_ATTEMPTS


SelectionPolicy = Union[DirectWorker, SessionWorker, Interactive, Auto]
"""One of the four policies above."""


__all__ = [
    "Auto", "Choice", "ChoiceRequest", "Chooser", "DEFAULT_JOB_ATTEMPTS", "DirectWorker", "Interactive",
    "NextBest", "Pick", "SelectionCancelled", "SelectionPolicy", "SessionWorker", "WaitForFree",
    "asked_by_worker_choice",
]
