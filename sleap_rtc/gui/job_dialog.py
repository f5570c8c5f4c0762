"""The job panel: one remote job, shown inside the Remote Training dock (never modal).

A ``JobPanel`` displays a core ``JobPhases`` (it only subscribes; whatever drives the job
advances it): the steps, the worker, the elapsed time, the current model, epoch and loss,
and Stop early / Cancel. SLEAP's main window and the dock stay usable the whole time: the
panel is an ordinary child widget of the dock, so there is no modal window to block them.

The panel presents a ``RemoteJobController`` (``present``): core's ``RemoteJob`` decides
what happens after a busy, vanished or lost worker (its one retry table); when the table
asks, the panel says why (``show_problem``) and offers three ways on, all inside it:

* **Try next best**: auto-select without the worker(s) that failed;
* **Choose another…**: a live list of the room's workers right there;
* **Wait for a free worker**: core waits on room events; the panel lists who is busy and
  since when (core's ``Waiting``), and the first worker that frees up takes the job.

An unanswered problem times out after ``SELECTION_TIMEOUT_S`` (``selection_timed_out``),
which the controller treats as Cancel. Cancel emits ``cancel_requested``, Stop early
``stop_requested``; Dismiss (once finished) removes the panel.
"""

from __future__ import annotations

import time
from typing import Any

from qtpy import QtCore, QtWidgets

from sleap_rtc.core.phases import TERMINAL, JobPhases, Phase, PhaseChange
from sleap_rtc.core.room import RoomView, WorkerInfo
from sleap_rtc.gui.worker_model import WorkerTableModel

SELECTION_TIMEOUT_S = 300.0
"""How long a problem (busy/vanished worker) may stay unanswered before the job is cancelled."""

WAIT_FOR_FREE_WORKER_S = 4 * 3600.0
"""How long "Wait for a free worker" waits at most (a GPU job elsewhere can take hours);
then the panel asks again."""

# Phases listed in the panel, in order, with their base label.
STEPS: list[tuple[Phase, str]] = [
    (Phase.JOINING, "Joining the room"),
    (Phase.DISCOVERING, "Discovering workers"),
    (Phase.SELECTING, "Choosing a worker"),
    (Phase.RESERVING, "Reserving"),
    (Phase.CONNECTING, "Connecting"),
    (Phase.UPLOADING, "Uploading"),
    (Phase.TRAINING, "Training"),
    (Phase.PREDICTING, "Predicting"),
    (Phase.DOWNLOADING, "Downloading results"),
]
_ORDER = {phase: i for i, (phase, _) in enumerate(STEPS)}
_ROW = {Phase.WAITING: Phase.SELECTING}
"""Phases shown on another phase's row (waiting for a free worker is part of choosing one)."""
_SELECTION_PHASES = frozenset({Phase.DISCOVERING, Phase.SELECTING})
_RUNNING = frozenset({Phase.UPLOADING, Phase.TRAINING, Phase.PREDICTING, Phase.DOWNLOADING})

DONE_MARK, CURRENT_MARK, PENDING_MARK, FAILED_MARK = "✔", "▶", "○", "✖"


def phase_text(phase: Phase, detail: str = "") -> str:
    """One step's label with its detail: ``Reserving gpu-1``, ``Uploading 42%``, ``Training: epoch 3 of 10``."""
    base = dict(STEPS).get(phase, phase.value.capitalize())
    if not detail or phase == Phase.JOINING:
        return base
    if phase == Phase.RESERVING:
        return f"Reserving {detail}"
    if phase == Phase.CONNECTING and detail.startswith("connected to "):
        return "Connected to " + detail.removeprefix("connected to ")
    if phase in (Phase.UPLOADING, Phase.DOWNLOADING):
        return f"{base} {detail}" if detail.endswith("%") else base
    return f"{base}: {detail}"


def format_elapsed(seconds: float) -> str:
    """``4:05`` or ``1:02:03``."""
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def format_since(since: float | None, now: float | None = None) -> str:
    """``since 11:42 (12 min)`` for a wall-clock time; ``""`` when unknown."""
    if since is None:
        return ""
    now = time.time() if now is None else now
    minutes = int(max(0, now - since) // 60)
    ago = f"{minutes} min" if minutes else "under a minute"
    return f"since {time.strftime('%H:%M', time.localtime(since))} ({ago})"


def format_eta(seconds: float | None) -> str:
    """``7s``, ``3m 05s``, ``2h 04m`` (SLEAP's own inference dialog's ETA style); ``""`` if unknown."""
    if seconds is None or seconds < 0:
        return ""
    minutes, secs = divmod(int(seconds), 60)
    if minutes >= 60:
        hours, minutes = divmod(minutes, 60)
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def inference_line(done: int, total: int | None, fps: float | None, eta_s: float | None, video: str = "") -> str:
    """``Predicted 120/300 frames · 25.3 FPS · ETA 7s · video 1 of 2`` (SLEAP's progress words)."""
    parts = [f"Predicted {done:,}/{total:,} frames" if total else f"Predicted {done:,} frames"]
    if fps is not None:
        parts.append(f"{fps:.1f} FPS")
    eta = format_eta(eta_s)
    if eta:
        parts.append(f"ETA {eta}")
    if video:
        parts.append(video)
    return " · ".join(parts)


def training_line(model: str, index: int, total: int, epoch: int, max_epochs: int | None,
                  train_loss: float | None, val_loss: float | None) -> str:
    """``centroid (model 1 of 2) · epoch 3 of 10 · loss 0.0123 · val 0.015`` (epoch from 1)."""
    parts = [model + (f" (model {index} of {total})" if total > 1 else "")] if model else []
    if epoch:
        parts.append(f"epoch {epoch}" + (f" of {max_epochs}" if max_epochs else ""))
    if train_loss is not None:
        parts.append(f"loss {train_loss:.4g}")
    if val_loss is not None:
        parts.append(f"val {val_loss:.4g}")
    return " · ".join(parts)


class JobPanel(QtWidgets.QFrame):
    """Shows one ``JobPhases`` with recovery (next / choose / wait), Stop early and Cancel."""

    try_next = QtCore.Signal()
    """The user chose "Try next best" after a problem."""
    choose_another = QtCore.Signal()
    """The user chose "Choose another…" (the live list opens in the panel)."""
    wait_requested = QtCore.Signal()
    """The user chose "Wait for a free worker"."""
    worker_picked = QtCore.Signal(str)
    """The peer id the user picked in the panel's list."""
    cancel_requested = QtCore.Signal()
    """The user pressed Cancel (any phase)."""
    stop_requested = QtCore.Signal()
    """The user pressed Stop early (finish the current model's epoch and keep it)."""
    selection_timed_out = QtCore.Signal()
    """A problem stayed unanswered for the selection timeout."""
    dismissed = QtCore.Signal()
    """The user dismissed the finished job's panel."""
    phase_changed = QtCore.Signal(object)
    """Every ``PhaseChange`` of the phases shown (also across a retry's fresh phases)."""

    def __init__(
        self,
        phases: JobPhases,
        parent: QtWidgets.QWidget | None = None,
        *,
        title: str = "Remote training",
        selection_timeout_s: float = SELECTION_TIMEOUT_S,
        room: RoomView | None = None,
    ):
        super().__init__(parent)
        self.setObjectName("sleap_rtc_job_panel")
        self.setFrameShape(QtWidgets.QFrame.StyledPanel)
        self.phases = phases
        self.title = title
        self.room = room
        self.worker_name = ""
        self.started_at = time.monotonic()
        self.ended_at: float | None = None
        self._details: dict[Phase, str] = {}
        self._reached: set[Phase] = set()
        self._exclude: frozenset[str] = frozenset()
        self.model_names: list[str] = []  # the run's models in order (names for the epoch line)
        self.max_epochs: dict[str, int | None] = {}
        self._model_index = 0
        self._model_name = ""
        self._predicting_shown = False  # the bar shows frames predicted (not the upload's %)
        self.ctl: Any = None

        self.title_label = QtWidgets.QLabel(f"<b>{title}</b>")
        self.title_label.setObjectName("job_title")
        self.elapsed_label = QtWidgets.QLabel("0:00")
        self.elapsed_label.setObjectName("elapsed")
        self.elapsed_label.setToolTip("Time since Run")
        header = QtWidgets.QHBoxLayout()
        header.addWidget(self.title_label, 1)
        header.addWidget(self.elapsed_label)

        self.worker_label = QtWidgets.QLabel("Worker: not chosen yet")
        self.worker_label.setObjectName("job_worker")
        self.worker_label.setWordWrap(True)

        self.steps = QtWidgets.QListWidget()
        self.steps.setObjectName("steps")
        self.steps.setSelectionMode(QtWidgets.QAbstractItemView.NoSelection)
        self.steps.setFocusPolicy(QtCore.Qt.NoFocus)
        self.steps.setHorizontalScrollBarPolicy(QtCore.Qt.ScrollBarAlwaysOff)
        self.steps.setTextElideMode(QtCore.Qt.ElideMiddle)
        self.steps.setWordWrap(True)
        for _phase, label in STEPS:
            self.steps.addItem(f"{PENDING_MARK}  {label}")
        rows = self.steps.sizeHintForRow(0) or 18
        self.steps.setFixedHeight(rows * len(STEPS) + 6)

        self.training_label = QtWidgets.QLabel()
        self.training_label.setObjectName("training")
        self.training_label.setWordWrap(True)
        self.training_label.setVisible(False)
        self.progress = QtWidgets.QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setVisible(False)

        self.status_label = QtWidgets.QLabel()
        self.status_label.setObjectName("status")
        self.status_label.setWordWrap(True)
        self.status_label.setTextInteractionFlags(QtCore.Qt.TextSelectableByMouse)

        # ---- problem: why, and the three ways on
        self.problem_box = QtWidgets.QFrame()
        self.problem_box.setObjectName("problem")
        self.problem_box.setFrameShape(QtWidgets.QFrame.StyledPanel)
        self.problem_label = QtWidgets.QLabel()
        self.problem_label.setObjectName("problem_text")
        self.problem_label.setWordWrap(True)
        self.try_next_button = QtWidgets.QPushButton("Try next best")
        self.try_next_button.setObjectName("try_next")
        self.choose_button = QtWidgets.QPushButton("Choose another…")
        self.choose_button.setObjectName("choose_another")
        self.wait_button = QtWidgets.QPushButton("Wait for a free worker")
        self.wait_button.setObjectName("wait_free")
        self.try_next_button.clicked.connect(self._on_try_next)
        self.choose_button.clicked.connect(self._on_choose)
        self.wait_button.clicked.connect(self._on_wait)
        pl = QtWidgets.QVBoxLayout(self.problem_box)
        pl.addWidget(self.problem_label)
        row = QtWidgets.QHBoxLayout()
        row.addWidget(self.try_next_button)
        row.addWidget(self.choose_button)
        row.addWidget(self.wait_button)
        row.addStretch(1)
        pl.addLayout(row)
        self.problem_box.setVisible(False)

        # ---- choose another: the room's workers, live, right here
        self.chooser_box = QtWidgets.QFrame()
        self.chooser_box.setObjectName("chooser")
        self.chooser_model = WorkerTableModel(parent=self)
        self.chooser_model.set_show_busy(True)
        self.chooser_table = QtWidgets.QTableView()
        self.chooser_table.setObjectName("chooser_table")
        self.chooser_table.setModel(self.chooser_model)
        self.chooser_table.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectRows)
        self.chooser_table.setSelectionMode(QtWidgets.QAbstractItemView.SingleSelection)
        self.chooser_table.verticalHeader().setVisible(False)
        self.chooser_table.horizontalHeader().setStretchLastSection(True)
        self.chooser_table.setEditTriggers(QtWidgets.QAbstractItemView.NoEditTriggers)
        self.chooser_table.setMinimumHeight(90)
        self.chooser_table.selectionModel().selectionChanged.connect(self._on_chooser_selection)
        self.chooser_table.doubleClicked.connect(lambda *_: self._on_use_picked())
        self.use_button = QtWidgets.QPushButton("Use this worker")
        self.use_button.setObjectName("use_worker")
        self.use_button.setEnabled(False)
        self.use_button.clicked.connect(self._on_use_picked)
        cl = QtWidgets.QVBoxLayout(self.chooser_box)
        cl.setContentsMargins(0, 0, 0, 0)
        cl.addWidget(QtWidgets.QLabel("Pick a worker for this job (busy ones are greyed):"))
        cl.addWidget(self.chooser_table)
        crow = QtWidgets.QHBoxLayout()
        crow.addStretch(1)
        crow.addWidget(self.use_button)
        cl.addLayout(crow)
        self.chooser_box.setVisible(False)

        # ---- waiting for a free worker: who is busy, since when
        self.waiting_label = QtWidgets.QLabel()
        self.waiting_label.setObjectName("waiting")
        self.waiting_label.setWordWrap(True)
        self.waiting_label.setVisible(False)

        self.timeout_label = QtWidgets.QLabel()
        self.timeout_label.setObjectName("timeout_warning")
        self.timeout_label.setWordWrap(True)
        self.timeout_label.setVisible(False)

        self.stop_button = QtWidgets.QPushButton("Stop early")
        self.stop_button.setObjectName("stop_early")
        self.stop_button.setToolTip("Finish the current model's epoch on the worker, keep it, and go on")
        self.stop_button.clicked.connect(self._on_stop)
        self.stop_button.setEnabled(False)
        self.cancel_button = QtWidgets.QPushButton("Cancel")
        self.cancel_button.setObjectName("cancel")
        self.cancel_button.clicked.connect(self._on_cancel)
        self.close_button = QtWidgets.QPushButton("Dismiss")
        self.close_button.setObjectName("dismiss")
        self.close_button.clicked.connect(self._on_dismiss)
        self.close_button.setVisible(False)
        buttons = QtWidgets.QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.stop_button)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.close_button)

        layout = QtWidgets.QVBoxLayout(self)
        layout.addLayout(header)
        layout.addWidget(self.worker_label)
        layout.addWidget(self.steps)
        layout.addWidget(self.training_label)
        layout.addWidget(self.progress)
        layout.addWidget(self.status_label)
        layout.addWidget(self.problem_box)
        layout.addWidget(self.chooser_box)
        layout.addWidget(self.waiting_label)
        layout.addWidget(self.timeout_label)
        layout.addLayout(buttons)

        self.selection_timer = QtCore.QTimer(self)
        self.selection_timer.setSingleShot(True)
        self.selection_timer.setInterval(int(selection_timeout_s * 1000))
        self.selection_timer.timeout.connect(self._on_selection_timeout)
        self._selection_timeout_s = selection_timeout_s
        self.clock = QtCore.QTimer(self)
        self.clock.setInterval(1000)
        self.clock.timeout.connect(self._tick)
        self.clock.start()

        self._unsubscribe = lambda: None
        self.set_room(room)
        self.set_phases(phases)

    # ------------------------------------------------------------------ API for the driver

    def set_phases(self, phases: JobPhases) -> None:
        """Display ``phases`` (a retry's fresh state machine) instead of the current one."""
        self._unsubscribe()
        self.phases = phases
        self._details.clear()
        self._reached.clear()
        for i, (_phase, label) in enumerate(STEPS):
            self.steps.item(i).setText(f"{PENDING_MARK}  {label}")
        self.cancel_button.setVisible(True)
        self.cancel_button.setEnabled(True)
        self.cancel_button.setText("Cancel")
        self.close_button.setVisible(False)
        self.status_label.setText("")
        self._unsubscribe = phases.subscribe(self._on_change)
        self._on_change(PhaseChange(phases.phase, phases.phase, phases.detail))

    def set_room(self, room: RoomView | None) -> None:
        """The live room the chooser and the waiting list follow."""
        self.room = room
        self.chooser_model.set_room(room)

    def set_worker(self, worker: WorkerInfo | str | None) -> None:
        """Show which worker has the job (a ``WorkerInfo``, a name, or ``None``)."""
        if isinstance(worker, WorkerInfo):
            self.worker_name = worker.name
            text = f"Worker: {worker.name} ({worker.gpu_model})"
        elif worker:
            self.worker_name = str(worker)
            text = f"Worker: {worker}"
        else:
            text = "Worker: not chosen yet"
        self.worker_label.setText(text)

    def set_training(self, text: str) -> None:
        """The current model, epoch and loss (one line under the steps)."""
        self.training_label.setText(text)
        self.training_label.setVisible(bool(text))

    def set_inference_progress(self, done: int, total: int | None, fps: float | None = None,
                               eta_s: float | None = None, video: str = "") -> None:
        """Frames predicted so far, FPS and ETA (the line under the steps) and the progress bar."""
        self.set_training(inference_line(done, total, fps, eta_s, video))
        self._predicting_shown = bool(total)
        if total:
            self.progress.setVisible(True)
            self.progress.setValue(int(100 * min(done, total) / total))

    def hide_step(self, phase: Phase) -> None:
        """Leave a step out of the list (an inference job has no Training step)."""
        self.steps.item(_ORDER[phase]).setHidden(True)
        rows = self.steps.sizeHintForRow(0) or 18
        shown = sum(not self.steps.item(i).isHidden() for i in range(self.steps.count()))
        self.steps.setFixedHeight(rows * shown + 6)

    def set_summary(self, text: str) -> None:
        """The one-line end summary (where the model went, how many frames were predicted)."""
        self.status_label.setText(text)

    def show_problem(self, message: str, *, can_try_next: bool = True, can_wait: bool = True, exclude: frozenset[str] = frozenset()) -> None:
        """Say why the worker could not be used and offer the ways on; restarts the timer."""
        self._exclude = frozenset(exclude)
        self.problem_label.setText(message)
        self.try_next_button.setEnabled(can_try_next)
        self.wait_button.setEnabled(can_wait and self.room is not None)
        self.choose_button.setEnabled(True)
        self.problem_box.setVisible(True)
        self.chooser_box.setVisible(False)
        self.waiting_label.setVisible(False)
        self.selection_timer.start()

    def clear_problem(self) -> None:
        """Hide the problem, the chooser and the waiting list (a new attempt started)."""
        self.problem_box.setVisible(False)
        self.chooser_box.setVisible(False)
        self.waiting_label.setVisible(False)
        if self.status_label.text().startswith("Pick a worker"):
            self.status_label.setText("")

    def mark_step(self, phase: Phase, done: bool, note: str = "") -> None:
        """After the end: tick a step the phases did not pass through (predictions that came
        back with the training results), or say why it did not happen (``note``)."""
        if done:
            self._reached.add(phase)
        elif note:
            self._details[phase] = note
        if self.phases.phase == Phase.DONE:
            self._mark(current=len(STEPS), current_mark=DONE_MARK)

    def step_text(self, phase: Phase) -> str:
        """The text currently shown for ``phase`` (tests and screenshots read it)."""
        return self.steps.item(_ORDER[phase]).text()

    @property
    def finished(self) -> bool:
        """Whether the job shown reached an end state."""
        return self.phases.finished

    # ------------------------------------------------------------------ presenting a job

    def present(self, ctl: Any) -> None:
        """Show ``ctl`` (a ``RemoteJobController``) and send the user's answers back to it."""
        self.ctl = ctl
        self.cancel_requested.connect(ctl.cancel)
        self.selection_timed_out.connect(ctl.cancel)
        self.stop_requested.connect(ctl.stop)
        self.try_next.connect(ctl.try_next_best)
        self.worker_picked.connect(ctl.choose_worker)
        self.wait_requested.connect(lambda: ctl.wait_for_free(WAIT_FOR_FREE_WORKER_S))
        ctl.choice_needed.connect(self._on_choice_needed)
        ctl.choice_made.connect(self.clear_problem)
        ctl.waiting.connect(self.show_waiting)
        ctl.model_started.connect(self._on_model_started)
        ctl.epoch.connect(self._on_epoch)
        ctl.restarted.connect(self._on_restarted)

    def set_models(self, names: list[str], max_epochs: dict[str, int | None] | None = None) -> None:
        """The run's models in training order, and each one's Max Epochs (for the epoch line)."""
        self.model_names = list(names)
        self.max_epochs = dict(max_epochs or {})

    def _on_choice_needed(self, request: Any) -> None:
        from sleap_rtc.gui.remote_run import explain

        self.set_room(request.room)
        nobody = not [w for w in request.room.workers if w.available and w.peer_id not in request.tried]
        self.show_problem(explain(request), can_try_next=not nobody, exclude=frozenset(request.tried))

    def _on_model_started(self, model: Any) -> None:
        self._model_index = model.index
        names = self.model_names
        self._model_name = names[model.index - 1] if 0 < model.index <= len(names) else model.name
        self.set_training(training_line(self._model_name, model.index, len(names), 0, None, None, None) + " · starting")
        self.reset_stop()
        if getattr(model, "worker", ""):
            self.set_worker(self._worker_info(model.worker))

    def _on_epoch(self, epoch: Any) -> None:
        total = len(self.model_names)
        name = self._model_name or epoch.model
        self.set_training(training_line(name, self._model_index or 1, total, epoch.epoch, self.max_epochs.get(name),
                                        epoch.train_loss, epoch.val_loss))

    def _on_restarted(self, note: Any) -> None:
        self.set_worker(self._worker_info(note.worker))
        self.status_label.setText(f"Restarted on {note.worker}: {note.previous} {note.reason}.")

    def _worker_info(self, name: str) -> WorkerInfo | str:
        room = self.room
        if room is not None:
            for w in room.workers:
                if name in (w.name, w.peer_id):
                    return w
        return name

    def open_chooser(self) -> None:
        """Show the live list of the room's workers (Choose another…)."""
        self.selection_timer.start()
        self.problem_box.setVisible(False)
        self.chooser_model.set_room(self.room)
        self.chooser_table.clearSelection()
        self.use_button.setEnabled(False)
        self.chooser_box.setVisible(True)
        self.status_label.setText("Pick a worker in the list, then press Use this worker (or Cancel).")

    def show_waiting(self, state: Any) -> None:
        """Core is waiting for a free worker: who is busy, since when (a core ``Waiting``)."""
        self.selection_timer.stop()
        self.problem_box.setVisible(False)
        self.chooser_box.setVisible(False)
        self._waiting = state
        self._refresh_waiting()
        self.waiting_label.setVisible(True)

    def waiting_text(self) -> str:
        """What the waiting list says now (tests read it)."""
        return self.waiting_label.text()

    def _refresh_waiting(self) -> None:
        state = getattr(self, "_waiting", None)
        busy = list(getattr(state, "busy", []) or [])
        if not busy:
            body = "No worker is in the room now; the first one that joins and is free takes the job."
        else:
            body = "<br>".join(f"• {w.name}: {w.status} {format_since(w.since)}".rstrip() for w in busy)
        until = getattr(state, "deadline", 0) or 0
        tail = f"<br>Waiting until {time.strftime('%H:%M', time.localtime(until))} at most." if until else ""
        self.waiting_label.setText(
            f"<b>Waiting for a free worker…</b> The first one that becomes available takes the job.<br>{body}{tail}"
        )

    # ------------------------------------------------------------------ updates

    def _on_change(self, change: PhaseChange) -> None:
        phase = _ROW.get(change.new, change.new)
        if change.new in _ROW:
            change = PhaseChange(change.old, phase, change.detail or change.new.value)
        if phase in _ORDER:
            self._details[phase] = change.detail
            self._reached.add(phase)
            self._mark(current=_ORDER[phase], current_mark=CURRENT_MARK)
        if phase in (Phase.UPLOADING, Phase.DOWNLOADING) and change.detail.endswith("%"):
            self.progress.setVisible(True)
            try:
                self.progress.setValue(int(float(change.detail.rstrip("%"))))
            except ValueError:
                pass
        elif not (phase == Phase.PREDICTING and self._predicting_shown):
            self.progress.setVisible(False)
        if phase == Phase.RESERVING and change.detail:
            self.set_worker(change.detail)
        if phase in _SELECTION_PHASES:
            if not self.selection_timer.isActive() and self.problem_box.isVisible():
                self.selection_timer.start()
        elif not self.problem_box.isVisible():
            self.selection_timer.stop()
        if phase in (Phase.RESERVING, Phase.CONNECTING):
            self.clear_problem()
        self.stop_button.setEnabled(phase in (Phase.TRAINING,) and self.stop_button.text() == "Stop early")
        if phase in TERMINAL:
            self._end(change)
        elif change.detail and phase not in _ORDER:
            self.status_label.setText(change.detail)
        self.phase_changed.emit(change)

    def _mark(self, current: int, current_mark: str) -> None:
        for i, (p, _label) in enumerate(STEPS):
            if i < current and p in self._reached:
                mark = DONE_MARK
            elif i == current:
                mark = current_mark
            else:
                mark = PENDING_MARK
            self.steps.item(i).setText(f"{mark}  {phase_text(p, self._details.get(p, ''))}")

    def _end(self, change: PhaseChange) -> None:
        phase = change.new
        self.ended_at = time.monotonic()
        self._tick()
        self.clock.stop()
        self.selection_timer.stop()
        self.cancel_button.setVisible(False)
        self.stop_button.setVisible(False)
        self.close_button.setVisible(True)
        self.chooser_box.setVisible(False)
        self.waiting_label.setVisible(False)
        self.chooser_model.set_room(None)  # nothing to choose any more
        last = max((_ORDER[p] for p in self._reached), default=-1)
        if phase == Phase.DONE:
            # Every step the job went through is done; none keeps an arrow.
            self._mark(current=len(STEPS), current_mark=DONE_MARK)
            self.problem_box.setVisible(False)
            if not self.status_label.text() or self.status_label.text().startswith("Pick a worker"):
                self.status_label.setText("Finished.")
        else:
            if last >= 0:
                self._mark(current=last, current_mark=FAILED_MARK)
            if phase == Phase.CANCELLED:
                self.problem_box.setVisible(False)
                self.status_label.setText("Cancelled; the worker was released.")
            else:
                self.problem_box.setVisible(False)
                self.status_label.setText(f"Failed: {change.detail}" if change.detail else "Failed.")

    def _tick(self) -> None:
        end = self.ended_at if self.ended_at is not None else time.monotonic()
        self.elapsed_label.setText(format_elapsed(end - self.started_at))
        if self.waiting_label.isVisible():
            self._refresh_waiting()

    def _on_try_next(self) -> None:
        self.clear_problem()
        self.try_next.emit()

    def _on_choose(self) -> None:
        self.open_chooser()
        self.choose_another.emit()

    def _on_wait(self) -> None:
        self.problem_box.setVisible(False)
        self.selection_timer.stop()
        self.wait_requested.emit()

    def _picked_worker(self) -> WorkerInfo | None:
        rows = self.chooser_table.selectionModel().selectedRows()
        return self.chooser_model.worker_at(rows[0].row()) if rows else None

    def _on_chooser_selection(self, *_: object) -> None:
        worker = self._picked_worker()
        self.use_button.setEnabled(worker is not None and worker.available and worker.peer_id not in self._exclude)
        if worker is not None and worker.peer_id in self._exclude:
            self.use_button.setToolTip(f"{worker.name} already refused this job")
        else:
            self.use_button.setToolTip("")

    def _on_use_picked(self) -> None:
        worker = self._picked_worker()
        if worker is None or not worker.available or worker.peer_id in self._exclude:
            return
        self.chooser_box.setVisible(False)
        self.status_label.setText("")
        self.worker_picked.emit(worker.peer_id)

    def _on_stop(self) -> None:
        self.stop_button.setEnabled(False)
        self.stop_button.setText("Stopping…")
        self.stop_requested.emit()

    def reset_stop(self) -> None:
        """Stop early is available again (the next model of a multi-model run started)."""
        self.stop_button.setText("Stop early")
        self.stop_button.setEnabled(self.phases.phase == Phase.TRAINING)

    def _on_cancel(self) -> None:
        self.selection_timer.stop()
        self.cancel_button.setEnabled(False)
        self.cancel_button.setText("Cancelling…")
        self.cancel_requested.emit()

    def _on_dismiss(self) -> None:
        self.chooser_model.set_room(None)  # the room outlives this panel: stop following it
        self._unsubscribe()
        self.dismissed_by_user = True
        self.hide()
        self.dismissed.emit()
        self.deleteLater()

    def _on_selection_timeout(self) -> None:
        minutes = self._selection_timeout_s / 60
        self.timeout_label.setText(
            f'<span style="color:#ef6c00">⚠ No worker was chosen within {minutes:g} minute(s): the job was '
            "cancelled and no worker is reserved. Press Run again when a worker is free.</span>"
        )
        self.timeout_label.setVisible(True)
        self.selection_timed_out.emit()
