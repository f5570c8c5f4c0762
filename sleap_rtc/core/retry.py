"""The one retry table of a remote job: what each failed attempt leads to.

An *attempt* is one try to get a job done on one worker: reserve it (connect), then run
the job on it. When an attempt fails, ``classify`` names its ``Outcome`` and
``RETRY_TABLE`` says what may happen next, by how the worker had been chosen (``Origin``).
Each entry lists ``Move``s in order of preference; ``next_move`` takes the first one the
job's policy allows right now (``ASK`` needs a chooser, ``WAIT`` a wait budget left,
``NEXT_BEST`` job attempts left, ``RECONNECT`` same-worker reconnects left). ``FAIL``
is always allowed and ends every entry, so the job never loops without a bound.

The rule behind the table: a worker the *user* picked is never replaced without asking
(``PICKED`` asks the chooser, ``DIRECT`` and ``SESSION`` fail with a clear error, or wait
for that same worker); a worker that auto-select picked is replaced by the next best.

``LINK_LOST`` (the data channel dropped but the worker is still in the room, e.g. a
network outage on either side) has a ``RECONNECT`` move first: reconnect to the same worker
within ``RemoteJob.reconnect_grace`` (at most ``MAX_RECONNECTS`` times per job) and follow
the job it kept running (``job_attach``). When the worker does not come back in time, left
the room or took another job, the attempt counts as ``LOST`` and that entry applies.

``RemoteJob`` (``core/job_runner.py``) is the only caller; ``auto_select``
(``core/selection.py``) is how ``NEXT_BEST`` is carried out.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from sleap_rtc.core.selection import (
    AllWorkersBusyError,
    NoWorkersError,
    UnknownWorkerError,
    WorkerUnavailableError,
)
from sleap_rtc.core.transport_errors import AnswerTimeoutError, PeerNotFoundError, WorkerBusyError, WorkerIdentityError


class Outcome(StrEnum):
    """Why an attempt did not finish the job."""

    BUSY = "busy"
    """The worker refused the reservation (busy, reserved, maintenance)."""
    VANISHED = "vanished"
    """The worker was not there or never answered the offer (it left, or the id is wrong)."""
    NONE_FREE = "none free"
    """No worker of the room was available (none there, or all busy)."""
    LOST = "lost"
    """The worker stopped responding mid-job and left the room (killed, crashed)."""
    LINK_LOST = "link lost"
    """The data channel dropped mid-job but the worker is still in the room."""
    UNTRUSTED = "untrusted"
    """The worker failed the identity check (nothing was uploaded to it)."""


class Origin(StrEnum):
    """How the worker of the failed attempt had been chosen."""

    AUTO = "auto"
    """By auto-select (the policy is ``Auto``, or the user said "next best" / "wait")."""
    PICKED = "picked"
    """By the user through the chooser (the GUI panel, the CLI picker)."""
    DIRECT = "direct"
    """Named up front by peer id, with no chooser to ask (``--worker-id``)."""
    SESSION = "session"
    """Named by a session string (connect straight to it, no room discovery)."""


class Move(StrEnum):
    """What the job does after a failed attempt."""

    NEXT_BEST = "next best"
    """Auto-select among the other available workers (the failed one excluded)."""
    ASK = "ask"
    """Ask the chooser, with a notice saying what happened."""
    WAIT = "wait"
    """Wait on room events for a worker to become available, then go on."""
    RECONNECT = "reconnect"
    """Reconnect to the same worker and resume the job (grace period after an outage)."""
    FAIL = "fail"
    """Give up: the job fails with the attempt's error."""


RETRY_TABLE: dict[tuple[Origin, Outcome], tuple[Move, ...]] = {
    # auto-select picked it: replace it, or wait for one when none is free
    (Origin.AUTO, Outcome.BUSY): (Move.NEXT_BEST, Move.WAIT, Move.ASK, Move.FAIL),
    (Origin.AUTO, Outcome.VANISHED): (Move.NEXT_BEST, Move.WAIT, Move.ASK, Move.FAIL),
    (Origin.AUTO, Outcome.NONE_FREE): (Move.WAIT, Move.ASK, Move.FAIL),
    (Origin.AUTO, Outcome.LOST): (Move.NEXT_BEST, Move.ASK, Move.FAIL),
    (Origin.AUTO, Outcome.LINK_LOST): (Move.RECONNECT, Move.NEXT_BEST, Move.ASK, Move.FAIL),
    (Origin.AUTO, Outcome.UNTRUSTED): (Move.NEXT_BEST, Move.ASK, Move.FAIL),
    # the user picked it: ask them again, never swap behind their back
    (Origin.PICKED, Outcome.BUSY): (Move.ASK, Move.FAIL),
    (Origin.PICKED, Outcome.VANISHED): (Move.ASK, Move.FAIL),
    (Origin.PICKED, Outcome.NONE_FREE): (Move.ASK, Move.FAIL),
    (Origin.PICKED, Outcome.LOST): (Move.ASK, Move.FAIL),
    (Origin.PICKED, Outcome.LINK_LOST): (Move.RECONNECT, Move.ASK, Move.FAIL),
    (Origin.PICKED, Outcome.UNTRUSTED): (Move.ASK, Move.FAIL),
    # named up front with nobody to ask: wait for that very worker, or fail clearly
    (Origin.DIRECT, Outcome.BUSY): (Move.WAIT, Move.FAIL),
    (Origin.DIRECT, Outcome.VANISHED): (Move.FAIL,),
    (Origin.DIRECT, Outcome.NONE_FREE): (Move.WAIT, Move.FAIL),
    (Origin.DIRECT, Outcome.LOST): (Move.FAIL,),
    (Origin.DIRECT, Outcome.LINK_LOST): (Move.RECONNECT, Move.FAIL),
    (Origin.DIRECT, Outcome.UNTRUSTED): (Move.FAIL,),
    # a session string names one worker and no discovery is done
    (Origin.SESSION, Outcome.BUSY): (Move.FAIL,),
    (Origin.SESSION, Outcome.VANISHED): (Move.FAIL,),
    (Origin.SESSION, Outcome.NONE_FREE): (Move.FAIL,),
    (Origin.SESSION, Outcome.LOST): (Move.FAIL,),
    (Origin.SESSION, Outcome.LINK_LOST): (Move.RECONNECT, Move.FAIL),
    (Origin.SESSION, Outcome.UNTRUSTED): (Move.FAIL,),
}
"""``(origin, outcome) -> moves in order of preference``; every entry ends with ``FAIL``."""


@dataclass(frozen=True)
class Allowed:
    """Which moves the job's policy allows right now (``next_move`` skips the others)."""

    ask: bool = False
    """A chooser exists."""
    wait: bool = False
    """Some of the wait budget is left."""
    attempts: bool = False
    """More job attempts are allowed (``NEXT_BEST``)."""
    reconnect: bool = False
    """Same-worker reconnects are left (and the grace period is not zero)."""

    def permits(self, move: Move) -> bool:
        """Whether ``move`` may be taken."""
        return {
            Move.ASK: self.ask,
            Move.WAIT: self.wait,
            Move.NEXT_BEST: self.attempts,
            Move.RECONNECT: self.reconnect,
            Move.FAIL: True,
        }[move]


def next_move(origin: Origin, outcome: Outcome, allowed: Allowed) -> Move:
    """The first move of ``RETRY_TABLE[(origin, outcome)]`` that ``allowed`` permits."""
    for move in RETRY_TABLE[(origin, outcome)]:
        if allowed.permits(move):
            return move
    return Move.FAIL


def classify(exc: BaseException) -> Outcome | None:
    """The outcome an attempt's exception stands for; ``None``: not a retry matter.

    A lost worker (``WorkerLostError``) is classified by the caller, which knows whether
    the worker is still in the room (``LINK_LOST``) or not (``LOST``).
    """
    if isinstance(exc, WorkerIdentityError):
        return Outcome.UNTRUSTED
    if isinstance(exc, (NoWorkersError, AllWorkersBusyError)):
        return Outcome.NONE_FREE
    if isinstance(exc, (WorkerBusyError, WorkerUnavailableError)):
        return Outcome.BUSY
    if isinstance(exc, (PeerNotFoundError, AnswerTimeoutError, UnknownWorkerError)):
        return Outcome.VANISHED
    return None


__all__ = ["Allowed", "Move", "Origin", "Outcome", "RETRY_TABLE", "classify", "next_move"]
