"""Present one remote job in the GUI: core's ``RemoteJob`` with Qt signals and a chooser.

The GUI does not orchestrate: ``RemoteJobController`` builds a core ``RemoteJob`` (on the
session's live signaling connection and ``RoomView``, so no second connection per job),
with an ``Interactive`` policy whose first move is the worker selected in the dock (or
auto-select), and re-emits the job's ``JobCallbacks`` as Qt signals. What happens after a
busy, vanished or lost worker is core's retry table; when the table says *ask*, the
controller's chooser emits ``choice_needed`` and waits until the user answers through one
of ``try_next_best()``, ``choose_worker(peer_id)``, ``wait_for_free(timeout_s)`` or
``cancel()`` (a panel's buttons and live list, or a click in the dock, call them).

Hooks for a job panel (everything a view needs, nothing it must compute):

* ``phases`` (a core ``JobPhases``: subscribe) and the signals below;
* ``stop()`` (finish the epoch, keep the model), ``cancel()`` (kill the job; the worker is
  released as the job unwinds);
* ``handle()``: the job's identity once a worker took it (``JobHandle``: save it to fetch
  results later), ``worker``: the worker of the current attempt;
* ``explain(request)``: the words for a ``ChoiceRequest`` (no command-line flags).

A ``JobPanel`` (``panel``, also ``dialog``) presents the job by default: the GUI puts it in
the Remote Training dock, never modal (``show_dialog=False`` leaves presenting to others).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from qtpy import QtCore, QtWidgets

from sleap_rtc.core.credentials import RoomCredentials
from sleap_rtc.core.job_events import Epoch, JobCallbacks, ModelStarted, Restarted, Waiting
from sleap_rtc.core.job_policy import (
    Choice,
    ChoiceRequest,
    Interactive,
    NextBest,
    Pick,
    SelectionCancelled,
    WaitForFree,
)
from sleap_rtc.core.job_runner import ConnectFn, JobHandle, RemoteJob
from sleap_rtc.core.phases import JobPhases, Phase
from sleap_rtc.core.remote_job import UploadProgress
from sleap_rtc.core.retry import Outcome
from sleap_rtc.core.room import RoomView
from sleap_rtc.core.selection import NoWorkersError
from sleap_rtc.gui.bridge import run_coro
from sleap_rtc.gui.job_dialog import JobPanel

log = logging.getLogger(__name__)

DEFAULT_WAIT_S = 1800.0
"""How long "Wait for a free worker" waits by default (30 min), before asking again."""


def explain(request: ChoiceRequest) -> str:
    """Why the user is asked to choose, in the GUI's words (never a command-line flag)."""
    worker = request.worker.name if request.worker is not None else "The selected worker"
    if request.outcome == Outcome.BUSY:
        return f"{worker} is busy: another job got it first."
    if request.outcome == Outcome.VANISHED:
        return f"{worker} left the room or did not answer."
    if request.outcome in (Outcome.LOST, Outcome.LINK_LOST):
        return f"{worker} stopped responding; the job did not finish there. Choose where to run it again."
    if request.outcome == Outcome.NONE_FREE:
        busy = [w for w in request.room.workers if not w.available]
        if busy:
            return f"No worker is free right now ({len(busy)} busy). Wait for one, or choose a worker."
        return "No worker is in this room right now. Start a worker, then wait for it or choose it."
    return request.notice or "Choose a worker for this job."


class _Signals(JobCallbacks):
    """Core's callbacks, re-emitted as the controller's Qt signals."""

    def __init__(self, ctl: RemoteJobController):
        self.ctl = ctl

    def decision(self, text: str) -> None:
        self.ctl.decision.emit(text)

    def waiting(self, state: Waiting) -> None:
        self.ctl.waiting.emit(state)

    def upload(self, progress: UploadProgress) -> None:
        self.ctl.uploaded.emit(progress)

    def model_started(self, model: ModelStarted) -> None:
        self.ctl.model_started.emit(model)

    def epoch(self, epoch: Epoch) -> None:
        if self.ctl.phases.phase == Phase.TRAINING:
            self.ctl.phases.update(f"{epoch.model} epoch {epoch.epoch}" if epoch.model else str(epoch.epoch))
        self.ctl.epoch.emit(epoch)

    def progress(self, event: dict[str, Any]) -> None:
        self.ctl.progress.emit(event)

    def log(self, line: str) -> None:
        self.ctl.log_line.emit(line)

    def restarted(self, note: Restarted) -> None:
        self.ctl.restarted.emit(note)

    def file(self, path: Path) -> None:
        self.ctl.file_received.emit(path)


class RemoteJobController(QtCore.QObject):
    """Runs one remote job (core's ``RemoteJob``) and presents it; see the module docstring.

    ``worker_id``: the dock's selection (``None``: auto-select). ``connect``: core's connect
    attempt (tests inject one). ``signaling`` / ``room``: the session's live ones.
    """

    PANEL_TITLE = "Remote training"
    """The title of the job's panel in the dock."""

    succeeded = QtCore.Signal(object)
    """The job finished; carries core's ``JobSummary`` (models_dir, predictions, files …),
    or the runner's own summary (an inference's ``InferenceSummary``)."""
    ended = QtCore.Signal(str)
    """The job failed or was cancelled; carries the phase value (``failed``/``cancelled``)."""
    progress = QtCore.Signal(dict)
    """Each raw training event from the worker (``job_progress``), unchanged."""
    epoch = QtCore.Signal(object)
    """A finished epoch (core ``Epoch``: model, epoch from 1, train/val loss)."""
    model_started = QtCore.Signal(object)
    """A model of the run started (core ``ModelStarted``): reset the loss plot."""
    restarted = QtCore.Signal(object)
    """The job started again on another worker (core ``Restarted``): show a note."""
    waiting = QtCore.Signal(object)
    """Waiting for a free worker (core ``Waiting``: who is busy since when, deadline)."""
    choice_needed = QtCore.Signal(object)
    """The retry table asks the user (core ``ChoiceRequest``); answer with a method below."""
    choice_made = QtCore.Signal()
    """The pending choice was answered (hide the choosing UI)."""
    decision = QtCore.Signal(str)
    """A selection decision line ("Trying gpu-a: best of 2 …")."""
    log_line = QtCore.Signal(str)
    """A worker log line."""
    uploaded = QtCore.Signal(object)
    """Upload progress (core ``UploadProgress``)."""
    file_received = QtCore.Signal(object)
    """A result file or model folder landed (its ``Path``)."""

    def __init__(
        self,
        package: Path,
        results_dir: Path,
        *,
        credentials: RoomCredentials,
        signaling: Any,
        room: RoomView | None = None,
        server_url: str | None = None,
        worker_id: str | None = None,
        connect: ConnectFn | None = None,
        parent_widget: QtWidgets.QWidget | None = None,
        selection_timeout_s: float | None = None,
        show_dialog: bool = True,
    ):
        super().__init__(parent_widget)
        first: Pick | NextBest = NextBest()
        if worker_id and room is not None and room.get(worker_id) is not None:
            first = Pick(room.get(worker_id))  # type: ignore[arg-type]
        elif worker_id:
            from sleap_rtc.core.room import WorkerInfo

            first = Pick(WorkerInfo(worker_id, "worker", {}))
        self.runner = self._make_runner(
            package,
            credentials=credentials,
            results_dir=Path(results_dir),
            policy=Interactive(self._choose, first=first),
            server_url=server_url,
            signaling=signaling,
            room=room,
            connect=connect,
        )
        self.job: RemoteJob = getattr(self.runner, "job", self.runner)
        """Core's ``RemoteJob`` (phases, worker, handle, stop) of what ``runner`` runs."""
        self.phases: JobPhases = self.job.phases
        self.task: asyncio.Task | None = None
        self.outcome: Any = None  # the runner's summary once it finished
        self.error = ""
        self.pending: ChoiceRequest | None = None
        """The question the retry table is asking now (``None``: nothing to answer)."""
        self._answer: asyncio.Future | None = None
        self.dialog: JobPanel | None = None
        if show_dialog:
            kwargs = {} if selection_timeout_s is None else {"selection_timeout_s": selection_timeout_s}
            self.dialog = JobPanel(self.phases, None, room=room, title=self.PANEL_TITLE, **kwargs)
            self.dialog.present(self)
        self.panel = self.dialog

    def _make_runner(self, package: Any, **kwargs: Any) -> Any:
        """What ``start`` runs: core's ``RemoteJob`` on a package (an inference controller
        builds core's ``RemoteInference`` on a request instead)."""
        return RemoteJob(Path(package), callbacks=_Signals(self), **kwargs)

    # ------------------------------------------------------------------ control

    @property
    def worker(self) -> Any:
        """The worker of the current (or last) attempt (core ``WorkerInfo``), if any."""
        return self.job.worker

    def handle(self) -> JobHandle | None:
        """The job's identity once a worker took it (save it to fetch results later)."""
        return self.job.handle

    def start(self) -> asyncio.Task:
        """Start the job in the background; a panel placed nowhere shows as its own window."""
        if self.dialog is not None and self.dialog.parent() is None:
            self.dialog.show()
        self.task = run_coro(self._run(), on_error=self._on_error)
        return self.task

    @property
    def running(self) -> bool:
        """Whether the job has not ended yet."""
        return self.task is not None and not self.task.done()

    def cancel(self) -> None:
        """Cancel now at any phase (also while choosing); the worker is released."""
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(SelectionCancelled("Cancelled while choosing a worker."))
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def stop(self) -> None:
        """Ask the worker to finish the current epoch, save and send results."""
        run_coro(self.job.stop(), title="Stop remote training")

    def try_next_best(self) -> None:
        """Answer the pending choice: auto-select the best worker not tried yet."""
        self._answer_with(NextBest())

    def choose_worker(self, peer_id: str) -> bool:
        """Answer the pending choice with this worker; False if nothing is pending or the
        worker is not in the room."""
        if self.pending is None:
            return False
        worker = self.pending.room.get(peer_id)
        if worker is None:
            return False
        return self._answer_with(Pick(worker))

    def wait_for_free(self, timeout_s: float = DEFAULT_WAIT_S, peer_id: str | None = None) -> None:
        """Answer the pending choice: wait (on room events) for the first worker that frees up."""
        self._answer_with(WaitForFree(timeout_s, peer_id))

    # ------------------------------------------------------------------ internals

    def _answer_with(self, choice: Choice) -> bool:
        if self._answer is None or self._answer.done():
            return False
        self._answer.set_result(choice)
        return True

    async def _choose(self, request: ChoiceRequest) -> Choice:
        """The chooser core's retry table asks: show the problem, wait for the user."""
        self.pending = request
        self._answer = asyncio.get_running_loop().create_future()
        self.choice_needed.emit(request)  # the panel shows the problem and the ways on
        try:
            return await self._answer
        finally:
            self.pending, self._answer = None, None
            self.choice_made.emit()

    async def _run(self) -> None:
        try:
            self.outcome = await self.runner.run()
        except asyncio.CancelledError:
            if not self.phases.finished:
                self.phases.advance(Phase.CANCELLED)
            self.ended.emit(Phase.CANCELLED.value)
            raise
        except SelectionCancelled:
            self.ended.emit(Phase.CANCELLED.value)
            return
        self.succeeded.emit(self.outcome)

    def _on_error(self, exc: BaseException) -> None:
        self.error = gui_message(exc)
        log.error("remote job failed: %s", self.error, exc_info=exc)
        if not self.phases.finished:
            self.phases.advance(Phase.FAILED, self.error)
        self.ended.emit(Phase.FAILED.value)


def gui_message(exc: BaseException) -> str:
    """An error's text for the GUI (core's texts carry no command-line flags already)."""
    if isinstance(exc, NoWorkersError) and not exc.waited:
        return f"{exc} You can wait for a free worker from the job panel."
    return str(exc) or exc.__class__.__name__


__all__ = ["DEFAULT_WAIT_S", "RemoteJobController", "explain", "gui_message"]
