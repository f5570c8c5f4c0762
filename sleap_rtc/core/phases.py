"""The phases of one remote job as the client sees it, as an explicit state machine.

The CLI's progress lines and the GUI's connect/retry dialog both display a ``JobPhases``;
whatever drives the job calls ``advance`` and every listener sees the same transitions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

log = logging.getLogger(__name__)


class Phase(StrEnum):
    """Where a remote job is, from joining the room to the models on disk."""

    IDLE = "idle"
    JOINING = "joining room"
    DISCOVERING = "discovering workers"
    SELECTING = "choosing a worker"
    WAITING = "waiting for a free worker"
    RESERVING = "reserving worker"
    CONNECTING = "connecting"
    UPLOADING = "uploading"
    TRAINING = "training"
    PREDICTING = "predicting"
    DOWNLOADING = "downloading"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({Phase.DONE, Phase.FAILED, Phase.CANCELLED})
"""Phases a job never leaves."""

# Allowed moves. RESERVING/CONNECTING may go back to SELECTING: the chosen worker was busy
# or vanished and another one is tried. UPLOADING..DOWNLOADING may go back to SELECTING too:
# the worker died mid-job and auto-select runs the job again on the next best worker.
# SELECTING and WAITING alternate while the job waits on room events for a free worker.
# Any non-terminal phase may fail or be cancelled.
TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.IDLE: frozenset({Phase.JOINING, Phase.CONNECTING, Phase.RESERVING}),
    Phase.JOINING: frozenset({Phase.DISCOVERING, Phase.RESERVING}),
    Phase.DISCOVERING: frozenset({Phase.SELECTING}),
    Phase.SELECTING: frozenset({Phase.RESERVING, Phase.DISCOVERING, Phase.WAITING}),
    Phase.WAITING: frozenset({Phase.SELECTING, Phase.RESERVING}),
    Phase.RESERVING: frozenset({Phase.CONNECTING, Phase.SELECTING}),
    Phase.CONNECTING: frozenset({Phase.UPLOADING, Phase.SELECTING}),
    Phase.UPLOADING: frozenset({Phase.TRAINING, Phase.PREDICTING, Phase.SELECTING}),
    Phase.TRAINING: frozenset({Phase.PREDICTING, Phase.DOWNLOADING, Phase.SELECTING}),
    Phase.PREDICTING: frozenset({Phase.DOWNLOADING, Phase.SELECTING}),
    Phase.DOWNLOADING: frozenset({Phase.TRAINING, Phase.PREDICTING, Phase.DONE, Phase.SELECTING}),
}


class PhaseError(RuntimeError):
    """A move the state machine does not allow (a bug in whatever drives the job)."""


@dataclass(frozen=True)
class PhaseChange:
    """One transition, with a human detail ("worker gpu-1", "42%", "epoch 3/10")."""

    old: Phase
    new: Phase
    detail: str = ""


class JobPhases:
    """Current phase plus listeners; ``advance`` checks every move against ``TRANSITIONS``.

    ``update`` re-announces the current phase with new detail (upload percent, epoch).
    """

    def __init__(self) -> None:
        self.phase = Phase.IDLE
        self.detail = ""
        self._listeners: list[Callable[[PhaseChange], Any]] = []

    def subscribe(self, listener: Callable[[PhaseChange], Any]) -> Callable[[], None]:
        """Call ``listener(change)`` on every transition and detail update; returns a remover."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    @property
    def finished(self) -> bool:
        """Whether the job reached a terminal phase."""
        return self.phase in TERMINAL

    def advance(self, new: Phase, detail: str = "") -> None:
        """Move to ``new``; failing or cancelling is allowed from any non-terminal phase."""
        old = self.phase
        if old in TERMINAL:
            raise PhaseError(f"job already {old.value}; cannot move to {new.value}")
        if new not in (Phase.FAILED, Phase.CANCELLED) and new not in TRANSITIONS.get(old, frozenset()):
            raise PhaseError(f"cannot move from {old.value} to {new.value}")
        self.phase, self.detail = new, detail
        self._emit(PhaseChange(old, new, detail))

    def update(self, detail: str) -> None:
        """New detail for the current phase (e.g. upload percent)."""
        self.detail = detail
        self._emit(PhaseChange(self.phase, self.phase, detail))

    def _emit(self, change: PhaseChange) -> None:
        for listener in list(self._listeners):
            try:
                listener(change)
            except Exception:
                log.exception("phase listener failed")
