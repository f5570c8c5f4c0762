"""What a remote job tells whoever presents it (the CLI's lines, the GUI's panel and viewer).

``JobCallbacks`` is a class of no-op methods: a presenter subclasses it and overrides what
it shows. ``RemoteJob`` calls them on the event loop, in this order for a normal run:
``phase`` (every transition, also available by subscribing to ``job.phases``), ``decision``
(selection lines), ``waiting`` (while waiting for a free worker), ``upload``, then per model
``model_started`` / ``epoch`` / ``progress`` (every raw sleap-nn event) / ``log``, ``file``
for each result, and ``finished`` with the summary. ``restarted`` says the job started
again on another worker (a presenter resets its plots then; ``model_started`` follows).
An exception raised by a callback is logged and never kills the job.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sleap_rtc.core.phases import PhaseChange

if TYPE_CHECKING:
    from sleap_rtc.core.remote_job import JobSummary, UploadProgress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelStarted:
    """A model of the run started training (``index`` counts from 1; ``name`` is sleap-nn's
    ``what``, e.g. ``centroid``). Sent again after a restart on another worker."""

    name: str
    index: int
    worker: str


@dataclass(frozen=True)
class Epoch:
    """One finished epoch of the current model: ``epoch`` counts from 1, as a person counts."""

    model: str
    epoch: int
    train_loss: float | None
    val_loss: float | None


@dataclass(frozen=True)
class Restarted:
    """The job started again on another worker; ``reason`` says why (in words)."""

    previous: str
    worker: str
    reason: str
    attempt: int


@dataclass(frozen=True)
class BusyWorker:
    """A worker that is in the room but not available, and since when (wall clock, ``None``
    if unknown: it already was when we first saw it)."""

    name: str
    peer_id: str
    status: str
    since: float | None

    def for_how_long(self, now: float | None = None) -> str:
        """``"busy for 3 min"``-style words (``"busy"`` when the start is unknown)."""
        if self.since is None:
            return self.status
        seconds = max(0.0, (now if now is not None else time.time()) - self.since)
        if seconds < 90:
            return f"{self.status} for {seconds:.0f} s"
        if seconds < 5400:
            return f"{self.status} for {seconds / 60:.0f} min"
        return f"{self.status} for {seconds / 3600:.1f} h"


@dataclass(frozen=True)
class Waiting:
    """The job waits for a free worker: who is busy and since when, until when it waits.

    ``deadline`` is wall-clock time; ``peer_id`` is set when waiting for one worker only.
    Sent when the wait starts and again whenever the room changes while waiting.
    """

    busy: list[BusyWorker] = field(default_factory=list)
    deadline: float = 0.0
    peer_id: str | None = None


class JobCallbacks:
    """Presenter hooks of one job (override what you show; every method is a no-op here)."""

    def phase(self, change: PhaseChange) -> None:
        """A phase transition or a new detail of the current phase."""

    def decision(self, text: str) -> None:
        """A selection decision, one human line ("Trying gpu-a: best of 2 …")."""

    def waiting(self, state: Waiting) -> None:
        """The job is waiting for a free worker (see ``Waiting``)."""

    def upload(self, progress: UploadProgress) -> None:
        """Upload progress: bytes done of total, rate, ETA."""

    def model_started(self, model: ModelStarted) -> None:
        """A model (of a multi-model run) started: reset per-model displays."""

    def epoch(self, epoch: Epoch) -> None:
        """An epoch of the current model finished, with its losses."""

    def progress(self, event: dict[str, Any]) -> None:
        """Every training event from sleap-nn, unchanged (for SLEAP's own loss viewer)."""

    def log(self, line: str) -> None:
        """A worker log line (progress-bar redraws already dropped)."""

    def restarted(self, note: Restarted) -> None:
        """The job started again on another worker."""

    def file(self, path: Path) -> None:
        """A result file (or unpacked model folder) landed in the results folder."""

    def finished(self, summary: JobSummary) -> None:
        """The job is done; ``summary`` says what came back."""


def call(callback: Any, *args: Any) -> None:
    """Call a presenter hook; a display problem is logged and never kills the job."""
    try:
        callback(*args)
    except Exception:
        log.exception("job callback %s failed", getattr(callback, "__name__", callback))


class TrainingEvents:
    """Turns sleap-nn's raw events into ``model_started`` / ``epoch`` calls.

    sleap-nn sends ``train_begin`` (with ``what``: the model) then ``epoch_end`` with
    0-based ``epoch`` and ``logs`` (``train/loss`` or the first epoch's ``loss``,
    ``val/loss``). A new ``what`` without a ``train_begin`` (older senders) starts a model
    too. ``reset`` is called when the job restarts elsewhere: the next model counts from 1.
    """

    def __init__(self, callbacks: JobCallbacks):
        self.callbacks = callbacks
        self.worker = ""
        self.model: str | None = None
        self.index = 0

    def reset(self, worker: str) -> None:
        """A fresh run (first worker, or after a restart on another one)."""
        self.worker, self.model, self.index = worker, None, 0

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        what = str(event.get("what") or self.model or "model")
        if kind == "train_begin" or (kind in ("epoch_begin", "epoch_end") and what != self.model):
            self.model = what
            self.index += 1
            call(self.callbacks.model_started, ModelStarted(what, self.index, self.worker))
        if kind == "epoch_end":
            logs = event.get("logs") if isinstance(event.get("logs"), dict) else {}
            epoch = event.get("epoch")
            call(self.callbacks.epoch, Epoch(
                model=what,
                epoch=epoch + 1 if isinstance(epoch, int) and not isinstance(epoch, bool) else 0,
                train_loss=_number(logs.get("train/loss", logs.get("loss"))),
                val_loss=_number(logs.get("val/loss")),
            ))
        call(self.callbacks.progress, event)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


__all__ = ["BusyWorker", "Epoch", "JobCallbacks", "ModelStarted", "Restarted", "TrainingEvents", "Waiting", "call"]
