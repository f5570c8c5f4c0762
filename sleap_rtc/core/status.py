"""The worker's status state machine, its offer guard and the reservation lease.

A worker is ``available`` until a client's offer reserves it, ``busy`` while a job runs,
and ``available`` again afterwards; ``maintenance`` takes it out of service. Every allowed
move is in ``TRANSITIONS`` (one place); anything else raises ``StatusError``.

The guard is ``StatusGuard.try_reserve``: it checks and reserves in one synchronous step
(no ``await`` between the check and the change), so on one asyncio loop N simultaneous
offers give exactly one ``Reservation``. A reservation is a lease: unless it is confirmed
(the data channel opened) within ``lease_timeout`` seconds, it expires and the worker is
available again. ``release`` ends a reservation or a job (client vanished, job done).

Reservations are cheap to take (one relayed offer frame), so they are not free to waste: a
reservation that ends before its client asked for a job (``note_submit``) puts that client
in back-off. Its next offers are refused for ``BACKOFF_START`` seconds, doubling with each
wasted reservation up to ``BACKOFF_MAX``; a job (``mark_busy``) clears it. Replaying one
offer therefore holds the worker for one lease, then less and less often. The back-off
table is bounded (``BACKOFF_TABLE_MAX`` clients, oldest forgotten first). Client peer ids
are self-chosen, so a client with many ids is bounded only by the short lease.

Listeners are called synchronously, in registration order, after every change, with a
``StatusChange``; the worker publishes the new status from there (``update_metadata``).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sleap_rtc.core.protocol import WorkerStatus

log = logging.getLogger(__name__)

DEFAULT_LEASE_TIMEOUT = 15.0
"""Seconds a reservation waits for the data channel to open before it expires."""
BACKOFF_START = 30.0
"""Seconds a client's offers are refused after its first reservation that ended without a job."""
BACKOFF_MAX = 900.0
"""Longest back-off (it doubles per wasted reservation up to this)."""
BACKOFF_FORGET = 3600.0
"""A client's back-off level is forgotten this long after its last wasted reservation."""
BACKOFF_TABLE_MAX = 1024
"""Most clients remembered in the back-off table."""

TRANSITIONS: dict[WorkerStatus, frozenset[WorkerStatus]] = {
    WorkerStatus.AVAILABLE: frozenset({WorkerStatus.RESERVED, WorkerStatus.MAINTENANCE}),
    WorkerStatus.RESERVED: frozenset({WorkerStatus.BUSY, WorkerStatus.AVAILABLE, WorkerStatus.MAINTENANCE}),
    WorkerStatus.BUSY: frozenset({WorkerStatus.AVAILABLE, WorkerStatus.MAINTENANCE}),
    WorkerStatus.MAINTENANCE: frozenset({WorkerStatus.AVAILABLE}),
}
"""Every allowed status change: ``TRANSITIONS[old]`` is the set of statuses ``old`` may move to."""


class StatusError(RuntimeError):
    """A status change that ``TRANSITIONS`` does not allow, or a stale reservation."""


_reservation_ids = itertools.count(1)


@dataclass
class Reservation:
    """One client's hold on the worker, from its offer until the job ends."""

    client_peer_id: str
    id: int = field(default_factory=lambda: next(_reservation_ids))
    created_at: float = field(default_factory=time.monotonic)
    confirmed: bool = False
    submitted: bool = False
    """The client asked for a job on it (a ``job_submit`` arrived), accepted or not."""
    replaced: bool = False
    """Its client came back on a new connection: ending it is no abandonment (no back-off)."""


@dataclass(frozen=True)
class StatusChange:
    """What a listener receives: old and new status, the reservation involved, and why."""

    old: WorkerStatus
    new: WorkerStatus
    reservation: Reservation | None
    reason: str = ""


StatusListener = Callable[[StatusChange], Any]


class StatusGuard:
    """The worker's status, the atomic offer guard and the reservation lease.

    Must be used from one asyncio loop (the worker's); the lease timer needs a running loop
    when ``try_reserve`` is called, and without one the lease never expires on its own.
    """

    def __init__(self, *, lease_timeout: float = DEFAULT_LEASE_TIMEOUT, status: WorkerStatus = WorkerStatus.AVAILABLE):
        if lease_timeout <= 0:
            raise ValueError("lease_timeout must be positive")
        self.lease_timeout = lease_timeout
        self._status = WorkerStatus(status)
        self._reservation: Reservation | None = None
        self._lease: asyncio.TimerHandle | None = None
        self._listeners: list[StatusListener] = []
        # client peer id -> (refused until, current back-off seconds, last wasted at)
        self._backoff: collections.OrderedDict[str, tuple[float, float, float]] = collections.OrderedDict()
        self.clock: Callable[[], float] = time.monotonic

    # ------------------------------------------------------------------ reading

    @property
    def status(self) -> WorkerStatus:
        """The current status."""
        return self._status

    @property
    def reservation(self) -> Reservation | None:
        """The current reservation (while reserved or busy), else ``None``."""
        return self._reservation

    def add_listener(self, listener: StatusListener) -> Callable[[], None]:
        """Call ``listener(change)`` after every status change; returns a remover."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def is_current(self, reservation: Reservation | None) -> bool:
        """Whether ``reservation`` is the one holding the worker right now."""
        return reservation is not None and reservation is self._reservation

    # ------------------------------------------------------------------ the guard

    def try_reserve(self, client_peer_id: str) -> Reservation | None:
        """Reserve the worker for ``client_peer_id`` if it is available, else ``None``.

        Atomic on the event loop: nothing is awaited between the check and the change.
        """
        if self._status != WorkerStatus.AVAILABLE or self.backoff_remaining(client_peer_id) > 0:
            return None
        reservation = Reservation(client_peer_id=client_peer_id)
        self._reservation = reservation
        self._start_lease(reservation)
        self._move(WorkerStatus.RESERVED, reservation, f"offer from {client_peer_id}")
        return reservation

    def backoff_remaining(self, client_peer_id: str) -> float:
        """Seconds ``client_peer_id``'s offers are still refused for (0 when none)."""
        entry = self._backoff.get(client_peer_id)
        return max(0.0, entry[0] - self.clock()) if entry else 0.0

    def note_submit(self, reservation: Reservation) -> None:
        """The client asked for a job on ``reservation``: ending it is no longer a waste."""
        if self.is_current(reservation):
            reservation.submitted = True

    def _penalise(self, client_peer_id: str) -> float:
        now = self.clock()
        old = self._backoff.pop(client_peer_id, None)
        if old is not None and now - old[2] < BACKOFF_FORGET:
            delay = min(BACKOFF_MAX, old[1] * 2)
        else:
            delay = BACKOFF_START
        self._backoff[client_peer_id] = (now + delay, delay, now)
        while len(self._backoff) > BACKOFF_TABLE_MAX:
            self._backoff.popitem(last=False)
        return delay

    def confirm(self, reservation: Reservation) -> bool:
        """The data channel opened: the lease no longer expires. False if it already did."""
        if not self.is_current(reservation):
            return False
        reservation.confirmed = True
        self._cancel_lease()
        return True

    def mark_busy(self, reservation: Reservation) -> None:
        """A job starts for this reservation (confirms it); raises ``StatusError`` if stale."""
        if not self.is_current(reservation):
            raise StatusError("This reservation is no longer current (expired or released).")
        self.confirm(reservation)
        reservation.submitted = True
        self._backoff.pop(reservation.client_peer_id, None)  # a real job: all is forgiven
        if self._status != WorkerStatus.BUSY:
            self._move(WorkerStatus.BUSY, reservation, "job started")

    def release(self, reservation: Reservation | None, reason: str = "released") -> bool:
        """End ``reservation`` (job done, client gone): available again. False if stale.

        A reservation that ends without a ``job_submit`` puts its client in back-off."""
        if not self.is_current(reservation):
            return False
        self._cancel_lease()
        self._reservation = None
        if not reservation.submitted and not reservation.replaced:
            delay = self._penalise(reservation.client_peer_id)
            reason = f"{reason}; no job asked for, offers from {reservation.client_peer_id} refused for {delay:g} s"
        if self._status in (WorkerStatus.RESERVED, WorkerStatus.BUSY):
            self._move(WorkerStatus.AVAILABLE, reservation, reason)
        return True

    # ------------------------------------------------------------------ maintenance

    def enter_maintenance(self, reason: str = "maintenance") -> None:
        """Take the worker out of service; a current reservation is dropped."""
        if self._status == WorkerStatus.MAINTENANCE:
            return
        self._cancel_lease()
        old_reservation, self._reservation = self._reservation, None
        self._move(WorkerStatus.MAINTENANCE, old_reservation, reason)

    def leave_maintenance(self) -> None:
        """Back in service (available)."""
        if self._status != WorkerStatus.MAINTENANCE:
            raise StatusError(f"Not in maintenance (status is {self._status.value}).")
        self._move(WorkerStatus.AVAILABLE, None, "maintenance over")

    # ------------------------------------------------------------------ internals

    def _move(self, new: WorkerStatus, reservation: Reservation | None, reason: str) -> None:
        old = self._status
        if new not in TRANSITIONS[old]:
            raise StatusError(f"Cannot move from {old.value} to {new.value}.")
        self._status = new
        change = StatusChange(old, new, reservation, reason)
        log.info("worker status %s -> %s (%s)", old.value, new.value, reason)
        for listener in list(self._listeners):
            try:
                listener(change)
            except Exception:  # one broken listener must not wedge the guard
                log.exception("status listener failed")

    def _start_lease(self, reservation: Reservation) -> None:
        self._cancel_lease()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (plain synchronous use): the lease is released explicitly
        self._lease = loop.call_later(self.lease_timeout, self._expire, reservation)

    def _cancel_lease(self) -> None:
        if self._lease is not None:
            self._lease.cancel()
            self._lease = None

    def _expire(self, reservation: Reservation) -> None:
        self._lease = None
        if self.is_current(reservation) and not reservation.confirmed:
            self.release(reservation, f"lease expired: no data channel within {self.lease_timeout:g} s")
