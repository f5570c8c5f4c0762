"""Drive one remote job from the GUI: the connect/retry dialog, stop/cancel, busy recovery.

The job itself runs in a *runner*: ``async runner(request, events) -> JobOutcome``. The
production runner (``core_runner``) hands the package to core's client flow
(``sleap_rtc.core.remote_job.run_remote_job``); tests inject a fake one. Keeping the
runner injected means the GUI never re-implements selection, upload or result download.

``RemoteJobController`` starts the runner as a background task, shows a ``JobDialog`` over
the job's ``JobPhases``, and:

* on a busy or vanished worker (``WorkerBusyError`` / ``WorkerUnavailableError`` /
  ``PeerNotFoundError`` …) moves the phases back to *choosing a worker*, says why, and
  waits for "Try next best" (auto-select without that worker) or "Choose another" (the
  dock's selection); a 5-minute selection timeout then cancels;
* maps Cancel (dialog, LossViewer) to cancelling the task: the runner's ``finally``
  releases the reservation, so no worker stays reserved; Stop (LossViewer) to the
  runner's graceful stop (finish the epoch, save, send results).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qtpy import QtCore, QtWidgets

from sleap_rtc.core.phases import JobPhases, Phase
from sleap_rtc.core.selection import (
    BUSY_ERRORS,
    GONE_ERRORS,
    AllWorkersBusyError,
    UnknownWorkerError,
    WorkerUnavailableError,
)
from sleap_rtc.core.transport_errors import WorkerBusyError
from sleap_rtc.gui.bridge import run_coro
from sleap_rtc.gui.job_dialog import JobDialog

log = logging.getLogger(__name__)


@dataclass
class JobRequest:
    """What to run: the package, where, on which worker (``None``: auto-select), results dir."""

    package: Path
    server_url: str
    room_id: str
    token: str
    worker_id: str | None
    results_dir: Path
    phases: JobPhases
    exclude: frozenset[str] = frozenset()
    room: Any = None  # the live RoomView, when the GUI already follows the room
    signaling: Any = None  # its SignalingClient


@dataclass
class JobEvents:
    """Callbacks the runner calls: training events, log lines, and its stop/cancel hooks."""

    on_progress: Callable[[dict[str, Any]], Any] = lambda event: None
    on_log: Callable[[str], Any] = lambda line: None
    stop_hook: Callable[[], Awaitable[Any]] | None = None  # set by the runner once connected


@dataclass
class JobOutcome:
    """What came back: the result files, the models folder and the predictions, if any."""

    files: list[Path] = field(default_factory=list)
    models_dir: Path | None = None
    predictions: Path | None = None
    stopped_early: bool = False


JobRunner = Callable[[JobRequest, JobEvents], Awaitable[JobOutcome]]


UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    *BUSY_ERRORS, *GONE_ERRORS, WorkerUnavailableError, UnknownWorkerError, AllWorkersBusyError,
)
"""Errors meaning "this worker cannot take the job": the dialog offers another one."""


def explain_busy(exc: BaseException, worker_id: str | None) -> str:
    """Why the worker could not be used, in the user's words."""
    name = worker_id or "the selected worker"
    if isinstance(exc, WorkerBusyError):
        status = exc.status or "busy"
        return f"Worker {name} is {status}: another job got it first."
    if isinstance(exc, GONE_ERRORS):
        return f"Worker {name} left the room or did not answer."
    return str(exc) or f"Worker {name} cannot take the job."


async def core_runner(request: JobRequest, events: JobEvents) -> JobOutcome:
    """The production runner: core's client flow (``sleap_rtc.core.remote_job.RemoteJob``).

    Selection, reservation, upload, streaming and result download all happen in core;
    ``events.stop_hook`` is set to the job's graceful stop; cancelling the task cancels it.
    """
    try:
        from sleap_rtc.core.remote_job import RemoteJob
    except ImportError as exc:
        raise RuntimeError("Remote jobs need sleap_rtc.core.remote_job, which is not importable here.") from exc
    job = RemoteJob(
        request.package,
        server_url=request.server_url,
        room_id=request.room_id,
        token=request.token,
        results_dir=request.results_dir,
        worker_id=request.worker_id,
        exclude=request.exclude,
        phases=request.phases,
        on_log=events.on_log,
        on_progress=events.on_progress,
    )
    events.stop_hook = job.stop
    summary = await job.run()
    return JobOutcome(
        files=list(summary.files),
        models_dir=summary.models_dir,
        predictions=summary.predictions,
        stopped_early=summary.stopped_early,
    )


class RemoteJobController(QtCore.QObject):
    """Runs one remote job with its dialog; emits ``succeeded(JobOutcome)`` or ``ended(str)``.

    ``choose_worker(exclude)`` (optional) gives the worker the user picks for "Choose
    another": a peer id, ``None`` for auto-select, or an awaitable of either (the GUI waits
    for a pick in the dock that is not in ``exclude``).
    """

    succeeded = QtCore.Signal(object)
    """The job finished; carries the ``JobOutcome``."""
    ended = QtCore.Signal(str)
    """The job failed or was cancelled; carries the phase value (``failed``/``cancelled``)."""
    progress = QtCore.Signal(dict)
    """Each training event from the worker (``job_progress``), unchanged."""

    def __init__(
        self,
        request: JobRequest,
        runner: JobRunner | None = None,
        *,
        parent_widget: QtWidgets.QWidget | None = None,
        choose_worker: Callable[[frozenset[str]], Any] | None = None,
        selection_timeout_s: float | None = None,
    ):
        super().__init__(parent_widget)
        self.request = request
        self.runner = runner or core_runner
        self.phases = request.phases
        self.choose_worker = choose_worker
        self.events = JobEvents(on_progress=self._on_progress)
        kwargs = {} if selection_timeout_s is None else {"selection_timeout_s": selection_timeout_s}
        self.dialog = JobDialog(self.phases, parent_widget, **kwargs)
        self.dialog.cancel_requested.connect(self.cancel)
        self.dialog.selection_timed_out.connect(self.cancel)
        self.dialog.try_next.connect(lambda: self._decide("next"))
        self.dialog.choose_another.connect(lambda: self._decide("choose"))
        self.task: asyncio.Task | None = None
        self.outcome: JobOutcome | None = None
        self.error: str = ""
        self._decision: asyncio.Future | None = None

    # ------------------------------------------------------------------ control

    def start(self) -> asyncio.Task:
        """Open the dialog (non-modal ``open()``) and start the job in the background."""
        self.dialog.open()
        self.task = run_coro(self._run(), on_error=self._on_error)
        return self.task

    def cancel(self) -> None:
        """Cancel now at any phase; the runner releases any reservation as it unwinds."""
        if self._decision is not None and not self._decision.done():
            self._decision.cancel()
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def stop(self) -> None:
        """Ask the worker to finish the current epoch, save and send results."""
        hook = self.events.stop_hook
        if hook is not None:
            run_coro(hook(), title="Stop remote training")

    # ------------------------------------------------------------------ internals

    def _on_progress(self, event: dict[str, Any]) -> None:
        if event.get("event") == "epoch_end" and self.phases.phase == Phase.TRAINING:
            self.phases.update(f"{int(event.get('epoch', 0)) + 1}")
        self.progress.emit(event)

    def _decide(self, choice: str) -> None:
        if self._decision is not None and not self._decision.done():
            self._decision.set_result(choice)

    async def _run(self) -> None:
        busy = UNAVAILABLE_ERRORS
        request = self.request
        try:
            while True:
                try:
                    self.outcome = await self.runner(request, self.events)
                    break
                except busy as exc:  # type: ignore[misc]
                    if self.phases.phase in (Phase.TRAINING, Phase.PREDICTING, Phase.DOWNLOADING):
                        raise  # the job had started: not a selection problem
                    # Core ends the attempt's phases (possibly in FAILED, which is final):
                    # the retry gets fresh phases, shown by the same dialog.
                    tried = set(request.exclude) | ({request.worker_id} if request.worker_id else set())
                    self.phases = JobPhases()
                    self.dialog.set_phases(self.phases)
                    self.dialog.show_problem(explain_busy(exc, request.worker_id))
                    self._decision = asyncio.get_running_loop().create_future()
                    choice = await self._decision
                    worker = None
                    if choice == "choose" and self.choose_worker is not None:
                        self.dialog.show_problem(
                            "Pick a worker in the Remote Training dock (Cancel to give up).", can_try_next=False
                        )
                        picked = self.choose_worker(frozenset(tried))
                        worker = await picked if asyncio.iscoroutine(picked) else picked
                        self.dialog.clear_problem()
                    request = JobRequest(
                        **{**request.__dict__, "worker_id": worker, "exclude": frozenset(tried), "phases": self.phases}
                    )
        except asyncio.CancelledError:
            if not self.phases.finished:
                self.phases.advance(Phase.CANCELLED)
            self.ended.emit(Phase.CANCELLED.value)
            raise
        if not self.phases.finished:
            self.phases.advance(Phase.DONE) if self.phases.phase == Phase.DOWNLOADING else None
        self.succeeded.emit(self.outcome)

    def _on_error(self, exc: BaseException) -> None:
        self.error = str(exc) or exc.__class__.__name__
        log.error("remote job failed: %s", self.error, exc_info=exc)
        if not self.phases.finished:
            self.phases.advance(Phase.FAILED, self.error)
        self.ended.emit(Phase.FAILED.value)
