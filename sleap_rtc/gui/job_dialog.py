"""The connect/retry dialog: every phase of a remote job, and what to do when a worker fails.

It displays a core ``JobPhases`` (it only subscribes; whatever drives the job advances it).
When the chosen worker refuses (``worker_busy``) or vanishes, ``show_problem`` says why and
offers "Try next best" and "Choose another". While a worker must be chosen a selection
timer runs (5 minutes by default): on expiry it warns and emits ``selection_timed_out``.
Cancel emits ``cancel_requested``; the driver cancels the job, which releases the worker.
"""

from __future__ import annotations

from qtpy import QtCore, QtWidgets

from sleap_rtc.core.phases import TERMINAL, JobPhases, Phase, PhaseChange

SELECTION_TIMEOUT_S = 300.0
"""How long the user (or auto-select) may take to get a worker before the warning."""

# Phases listed in the dialog, in order, with their base label.
STEPS: list[tuple[Phase, str]] = [
    (Phase.JOINING, "Joining room"),
    (Phase.DISCOVERING, "Discovering workers"),
    (Phase.SELECTING, "Choosing a worker"),
    (Phase.RESERVING, "Reserving worker"),
    (Phase.CONNECTING, "Connecting"),
    (Phase.UPLOADING, "Uploading"),
    (Phase.TRAINING, "Training"),
    (Phase.PREDICTING, "Predicting"),
    (Phase.DOWNLOADING, "Downloading results"),
]
_ORDER = {phase: i for i, (phase, _) in enumerate(STEPS)}
_SELECTION_PHASES = frozenset({Phase.DISCOVERING, Phase.SELECTING})

DONE_MARK, CURRENT_MARK, PENDING_MARK = "✔", "▶", "○"


def phase_text(phase: Phase, detail: str = "") -> str:
    """One step's label with its detail: ``Reserving worker gpu-1``, ``Uploading 42%``, ``Training epoch 3/10``."""
    base = dict(STEPS).get(phase, phase.value.capitalize())
    if not detail:
        return base
    if phase == Phase.RESERVING:
        return f"Reserving worker {detail}"
    if phase == Phase.TRAINING and detail[:1].isdigit():
        return f"Training epoch {detail}"
    return f"{base} {detail}" if phase in (Phase.UPLOADING, Phase.DOWNLOADING) else f"{base}: {detail}"


class JobDialog(QtWidgets.QDialog):
    """Shows a ``JobPhases`` step by step, with busy/vanished recovery and Cancel."""

    try_next = QtCore.Signal()
    """The user chose "Try next best" after a refusal."""
    choose_another = QtCore.Signal()
    """The user chose "Choose another" (pick a worker by hand)."""
    cancel_requested = QtCore.Signal()
    """The user pressed Cancel (any phase)."""
    selection_timed_out = QtCore.Signal()
    """No worker was obtained within the selection timeout."""

    def __init__(
        self,
        phases: JobPhases,
        parent: QtWidgets.QWidget | None = None,
        *,
        title: str = "Remote training",
        selection_timeout_s: float = SELECTION_TIMEOUT_S,
    ):
        super().__init__(parent)
        self.setObjectName("sleap_rtc_job_dialog")
        self.setWindowTitle(title)
        self.phases = phases
        self._details: dict[Phase, str] = {}
        self._reached: set[Phase] = set()

        self.steps = QtWidgets.QListWidget()
        self.steps.setObjectName("steps")
        self.steps.setSelectionMode(QtWidgets.QAbstractItemView.NoSelection)
        self.steps.setFocusPolicy(QtCore.Qt.NoFocus)
        for _phase, label in STEPS:
            self.steps.addItem(f"{PENDING_MARK}  {label}")
        self.progress = QtWidgets.QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setVisible(False)

        self.status_label = QtWidgets.QLabel()
        self.status_label.setObjectName("status")
        self.status_label.setWordWrap(True)

        self.problem_box = QtWidgets.QFrame()
        self.problem_box.setObjectName("problem")
        self.problem_box.setFrameShape(QtWidgets.QFrame.StyledPanel)
        self.problem_label = QtWidgets.QLabel()
        self.problem_label.setWordWrap(True)
        self.try_next_button = QtWidgets.QPushButton("Try next best")
        self.choose_button = QtWidgets.QPushButton("Choose another…")
        self.try_next_button.clicked.connect(self._on_try_next)
        self.choose_button.clicked.connect(self._on_choose)
        pl = QtWidgets.QVBoxLayout(self.problem_box)
        pl.addWidget(self.problem_label)
        row = QtWidgets.QHBoxLayout()
        row.addStretch(1)
        row.addWidget(self.try_next_button)
        row.addWidget(self.choose_button)
        pl.addLayout(row)
        self.problem_box.setVisible(False)

        self.timeout_label = QtWidgets.QLabel()
        self.timeout_label.setObjectName("timeout_warning")
        self.timeout_label.setWordWrap(True)
        self.timeout_label.setVisible(False)

        self.cancel_button = QtWidgets.QPushButton("Cancel")
        self.cancel_button.clicked.connect(self._on_cancel)
        self.close_button = QtWidgets.QPushButton("Close")
        self.close_button.clicked.connect(self.accept)
        self.close_button.setVisible(False)
        buttons = QtWidgets.QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.close_button)

        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(self.steps)
        layout.addWidget(self.progress)
        layout.addWidget(self.status_label)
        layout.addWidget(self.problem_box)
        layout.addWidget(self.timeout_label)
        layout.addLayout(buttons)
        self.resize(420, 380)

        self.selection_timer = QtCore.QTimer(self)
        self.selection_timer.setSingleShot(True)
        self.selection_timer.setInterval(int(selection_timeout_s * 1000))
        self.selection_timer.timeout.connect(self._on_selection_timeout)
        self._selection_timeout_s = selection_timeout_s

        self._unsubscribe = lambda: None
        self.finished.connect(lambda *_: self._unsubscribe())
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

    def show_problem(self, message: str, *, can_try_next: bool = True) -> None:
        """Say why the worker could not be used and offer the two ways on; restarts the timer."""
        self.problem_label.setText(message)
        self.try_next_button.setEnabled(can_try_next)
        self.problem_box.setVisible(True)
        self.selection_timer.start()

    def clear_problem(self) -> None:
        """Hide the problem panel (a new attempt started)."""
        self.problem_box.setVisible(False)

    def step_text(self, phase: Phase) -> str:
        """The text currently shown for ``phase`` (tests and screenshots read it)."""
        return self.steps.item(_ORDER[phase]).text()

    # ------------------------------------------------------------------ updates

    def _on_change(self, change: PhaseChange) -> None:
        phase = change.new
        if phase in _ORDER:
            self._details[phase] = change.detail
            self._reached.add(phase)
            current = _ORDER[phase]
            for i, (p, _label) in enumerate(STEPS):
                if i < current and p in self._reached:
                    mark = DONE_MARK
                elif i == current:
                    mark = CURRENT_MARK
                else:
                    mark = PENDING_MARK
                self.steps.item(i).setText(f"{mark}  {phase_text(p, self._details.get(p, ''))}")
        if phase in (Phase.UPLOADING, Phase.DOWNLOADING) and change.detail.endswith("%"):
            self.progress.setVisible(True)
            try:
                self.progress.setValue(int(float(change.detail.rstrip("%"))))
            except ValueError:
                pass
        elif phase not in (Phase.UPLOADING, Phase.DOWNLOADING):
            self.progress.setVisible(False)
        if phase in _SELECTION_PHASES:
            if not self.selection_timer.isActive():
                self.selection_timer.start()
        elif phase in (Phase.RESERVING, Phase.CONNECTING) or phase in TERMINAL or _ORDER.get(phase, -1) > _ORDER[Phase.CONNECTING]:
            if phase not in _SELECTION_PHASES and not self.problem_box.isVisible():
                self.selection_timer.stop()
        if phase in (Phase.RESERVING, Phase.CONNECTING):
            self.clear_problem()
        if phase in TERMINAL:
            self.selection_timer.stop()
            self.cancel_button.setVisible(False)
            self.close_button.setVisible(True)
            self.problem_box.setVisible(False) if phase != Phase.FAILED else None
            text = {Phase.DONE: "Finished.", Phase.CANCELLED: "Cancelled; the worker was released."}.get(phase, "")
            if phase == Phase.FAILED:
                text = f"Failed: {change.detail}" if change.detail else "Failed."
            self.status_label.setText(text)
        elif change.detail and phase not in _ORDER:
            self.status_label.setText(change.detail)

    def _on_try_next(self) -> None:
        self.clear_problem()
        self.try_next.emit()

    def _on_choose(self) -> None:
        self.clear_problem()
        self.choose_another.emit()

    def _on_cancel(self) -> None:
        self.selection_timer.stop()
        self.cancel_button.setEnabled(False)
        self.cancel_button.setText("Cancelling…")
        self.cancel_requested.emit()

    def _on_selection_timeout(self) -> None:
        minutes = self._selection_timeout_s / 60
        self.timeout_label.setText(
            f'<span style="color:#ef6c00">⚠ No worker could be reserved within {minutes:g} minute(s). '
            "The job was not started; no worker is reserved. Start a worker or try again later.</span>"
        )
        self.timeout_label.setVisible(True)
        self.selection_timed_out.emit()

    def reject(self) -> None:
        """Escape / window close = Cancel while the job runs; close once it finished."""
        if not self.phases.finished:
            if self.cancel_button.isEnabled():
                self._on_cancel()
            return
        super().reject()
