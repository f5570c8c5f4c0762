"""Drive one remote job from the GUI: its job panel, stop/cancel, busy recovery.

The job itself runs in a *runner*: ``async runner(request, events) -> JobOutcome``. The
production runner (``core_runner``) hands the package to core's client flow
(``sleap_rtc.core.remote_job.run_remote_job``); tests inject a fake one. Keeping the
runner injected means the GUI never re-implements selection, upload or result download.

``RemoteJobController`` starts the runner as a background task, shows a ``JobPanel`` (in
the dock, never modal) over the job's ``JobPhases``, and:

* on a busy, vanished or lost worker, or no free worker (``WorkerBusyError`` /
  ``WorkerUnavailableError`` / ``NoWorkersError`` / ``WorkerLostError`` …) says why in
  the panel and waits for "Try next best" (auto-select without that worker), "Choose
  another" (the panel's live list) or "Wait for a free worker" (room events); an
  unanswered problem is cancelled after the panel's selection timeout;
* maps Cancel (panel, LossViewer) to cancelling the task: the runner's ``finally``
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
from sleap_rtc.core.remote_job import WorkerLostError
from sleap_rtc.core.selection import (
    BUSY_ERRORS,
    GONE_ERRORS,
    AllWorkersBusyError,
    NoWorkersError,
    UnknownWorkerError,
    WorkerUnavailableError,
)
from sleap_rtc.core.transport_errors import WorkerBusyError
from sleap_rtc.gui.bridge import run_coro
from sleap_rtc.gui.job_dialog import JobPanel

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
    NoWorkersError, WorkerLostError,
)
"""Errors meaning "no worker can take the job now": the panel offers next / choose / wait."""


def _worker_name(room: Any, peer_id: str | None) -> str:
    worker = room.get(peer_id) if room is not None and peer_id else None
    return worker.name if worker is not None else (peer_id or "the selected worker")


def explain_busy(exc: BaseException, worker_id: str | None, room: Any = None) -> str:
    """Why no worker could be used, in the GUI's words (never a command-line flag)."""
    name = _worker_name(room, worker_id)
    workers = list(room.workers) if room is not None else []
    busy = [w for w in workers if not w.available]
    if isinstance(exc, WorkerBusyError):
        status = exc.status or "busy"
        return f"Worker {name} is {status}: another job got it first."
    if isinstance(exc, WorkerLostError):
        return (f"Worker {exc.worker} stopped responding during {exc.stage}; the job did not finish there. "
                "Run it again on another worker:")
    if isinstance(exc, GONE_ERRORS) or isinstance(exc, UnknownWorkerError):
        return f"Worker {name} left the room or did not answer."
    if isinstance(exc, (AllWorkersBusyError, NoWorkersError)) or (isinstance(exc, WorkerUnavailableError) and not worker_id):
        if not workers:
            return "No worker is in this room now. Wait for one to join, or start a worker on a GPU machine."
        if busy and len(busy) == len(workers):
            names = ", ".join(f"{w.name} ({w.status})" for w in busy)
            return f"Every worker of this room is busy: {names}. Wait for a free worker, or choose one to wait for."
        return "No available worker accepted the job. Try again, choose a worker, or wait for a free one."
    if isinstance(exc, WorkerUnavailableError):
        worker = room.get(worker_id) if room is not None and worker_id else None
        status = worker.status if worker is not None else "not available"
        return f"Worker {name} is {status}. Wait for it to be free, or take another worker."
    return f"Worker {name} cannot take the job."


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
    """Runs one remote job with its panel; emits ``succeeded(JobOutcome)`` or ``ended(str)``.

    ``choose_worker(exclude)`` (optional) gives the worker the user picks for "Choose
    another": a peer id, ``None`` for auto-select, or an awaitable of either. By default it
    is the panel's own live list (``JobPanel.pick``). ``panel`` is the same object as
    ``dialog`` (the name tests and older callers use).
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
        self.dialog = self.panel = JobPanel(self.phases, None, room=request.room, **kwargs)
        self.panel.set_room(request.room)
        self.choose_worker = choose_worker or self.panel.pick
        self.panel.cancel_requested.connect(self.cancel)
        self.panel.stop_requested.connect(self.stop)
        self.panel.selection_timed_out.connect(self.cancel)
        self.panel.try_next.connect(lambda: self._decide("next"))
        self.panel.choose_another.connect(lambda: self._decide("choose"))
        self.panel.wait_requested.connect(lambda: self._decide("wait"))
        self.panel.phase_changed.connect(self._on_phase)
        self.task: asyncio.Task | None = None
        self.outcome: JobOutcome | None = None
        self.error: str = ""
        self._decision: asyncio.Future | None = None

    # ------------------------------------------------------------------ control

    def start(self) -> asyncio.Task:
        """Start the job in the background (the owner shows ``panel``, e.g. in the dock)."""
        if self.panel.parent() is None:
            self.panel.show()  # not placed anywhere: an ordinary (non-modal) window
        self.task = run_coro(self._run(), on_error=self._on_error)
        return self.task

    @property
    def running(self) -> bool:
        """Whether the job has not ended yet."""
        return self.task is not None and not self.task.done()

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
            self.phases.update(f"epoch {int(event.get('epoch', 0)) + 1}")
        self.progress.emit(event)

    def _on_phase(self, change: Any) -> None:
        if change.new == Phase.RESERVING and change.detail:
            room = self.request.room
            worker = None
            if room is not None:
                worker = next((w for w in room.workers if change.detail in (w.name, w.peer_id)), None)
            self.panel.set_worker(worker or change.detail)

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
                    if not isinstance(exc, WorkerLostError) and self.phases.phase in (
                        Phase.TRAINING, Phase.PREDICTING, Phase.DOWNLOADING
                    ):
                        raise  # the job had started: not a selection problem
                    # Core ends the attempt's phases (possibly in FAILED, which is final):
                    # the retry gets fresh phases, shown by the same panel.
                    tried = set(request.exclude) | ({request.worker_id} if request.worker_id else set())
                    if isinstance(exc, WorkerLostError):
                        tried.add(exc.peer_id)
                    nobody = isinstance(exc, (NoWorkersError, AllWorkersBusyError))
                    self.phases = JobPhases()
                    self.panel.set_phases(self.phases)
                    self.panel.show_problem(
                        explain_busy(exc, request.worker_id, request.room),
                        can_try_next=not nobody, exclude=frozenset(tried),
                    )
                    self._decision = asyncio.get_running_loop().create_future()
                    choice = await self._decision
                    worker = None
                    if choice == "choose" and self.choose_worker is not None:
                        self.panel.status_label.setText("Pick a worker in the list (Cancel to give up).")
                        picked = self.choose_worker(frozenset(tried))
                        worker = await picked if asyncio.iscoroutine(picked) or isinstance(picked, asyncio.Future) else picked
                        self.panel.clear_problem()
                    elif choice == "wait":
                        # The refused worker may free up too: wait for any worker.
                        worker = await self.panel.wait_for_free(frozenset())
                        self.panel.clear_problem()
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
