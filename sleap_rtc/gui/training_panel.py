"""The "Remote training" panel inserted into SLEAP's training dialog (qtpy only, no SLEAP).

It shows whether Run goes to a remote worker, the room, and a worker chooser (auto-select
or one of the room's workers, live): SLEAP's training dialog is modal, so the worker must
be pickable right here. The choice is the dock's (one selection, shown in both places).
Notes under it say, before Run, what would not work remotely (an Inference Target that is
not served, a CPU-only worker with many epochs); ``sleap_attach`` computes them, since
they need SLEAP's dialog, and sets them with ``set_notes``.
"""

from __future__ import annotations

from qtpy import QtCore, QtWidgets

from sleap_rtc.core.room import WorkerInfo
from sleap_rtc.gui.dock import AUTO_SELECT, RemoteTrainingDock
from sleap_rtc.gui.session import SessionState

PANEL_OBJECT_NAME = "sleap_rtc_remote_training_panel"
"""objectName of the panel (how ``sleap_attach`` recognises an already-injected dialog)."""

NOTE_COLOUR = "#ef6c00"


class RemoteTrainingPanel(QtWidgets.QGroupBox):
    """"Train on a remote worker" checkbox, room, worker chooser and notes.

    SLEAP's Inference dialog gets the same panel with its own words (``title``, ``check_text``:
    "Remote inference", "Predict on a remote worker")."""

    join_requested = QtCore.Signal()
    """The user pressed "Join room…" in the panel (not in a room yet)."""
    notes_wanted = QtCore.Signal()
    """Something the notes depend on changed (remote ticked, worker, room)."""

    def __init__(self, dock: RemoteTrainingDock, parent: QtWidgets.QWidget | None = None, *,
                 title: str = "Remote training", check_text: str = "Train on a remote worker",
                 tooltip: str = "Run sends the training package to a GPU worker of the room."):
        super().__init__(title, parent)
        self.setObjectName(PANEL_OBJECT_NAME)
        self.dock = dock
        self.session = dock.session
        self.remote_check = QtWidgets.QCheckBox(check_text)
        self.remote_check.setObjectName("remote_check")
        self.remote_check.setToolTip(tooltip)
        self.room_label = QtWidgets.QLabel()
        self.room_label.setObjectName("room_label")
        self.worker_combo = QtWidgets.QComboBox()
        self.worker_combo.setObjectName("worker_combo")
        self.worker_combo.setSizeAdjustPolicy(QtWidgets.QComboBox.AdjustToContents)
        self.worker_combo.activated.connect(self._on_combo)
        self.join_button = QtWidgets.QPushButton("Join room…")
        self.join_button.clicked.connect(self.join_requested)
        self.notes_label = QtWidgets.QLabel()
        self.notes_label.setObjectName("notes")
        self.notes_label.setWordWrap(True)
        self.notes_label.setVisible(False)

        layout = QtWidgets.QGridLayout(self)
        layout.addWidget(self.remote_check, 0, 0, 1, 2)
        layout.addWidget(QtWidgets.QLabel("Room:"), 1, 0)
        layout.addWidget(self.room_label, 1, 1)
        layout.addWidget(self.join_button, 1, 2)
        layout.addWidget(QtWidgets.QLabel("Worker:"), 2, 0)
        layout.addWidget(self.worker_combo, 2, 1, 1, 2)
        layout.addWidget(self.notes_label, 3, 0, 1, 3)
        layout.setColumnStretch(1, 1)

        self.session.state_changed.connect(self._refresh)
        dock.worker_chosen.connect(self._refresh)
        model = dock.model
        for signal in (model.modelReset, model.rowsInserted, model.rowsRemoved, model.dataChanged):
            signal.connect(self._refresh)
        self.remote_check.toggled.connect(self._refresh)
        self._refresh()

    # ------------------------------------------------------------------ reading

    def remote_enabled(self) -> bool:
        """Whether Run should train remotely."""
        return self.remote_check.isChecked()

    def chosen_worker(self) -> WorkerInfo | None:
        """The worker picked (here or in the dock; ``None``: auto-select)."""
        return self.dock.selected_worker()

    def notes(self) -> list[str]:
        """The notes shown (tests read them)."""
        return list(self._notes)

    def set_notes(self, notes: list[str]) -> None:
        """Show these notes (HTML) under the worker, or hide the area when there are none."""
        self._notes = list(notes)
        self.notes_label.setText("<br>".join(f'<span style="color:{NOTE_COLOUR}">⚠ {n}</span>' for n in notes))
        self.notes_label.setVisible(bool(notes))

    # ------------------------------------------------------------------ updates

    def _on_combo(self, index: int) -> None:
        peer_id = self.worker_combo.itemData(index)
        self.dock.select_worker(peer_id or None)
        self._refresh()

    def _refresh(self, *_: object) -> None:
        if not hasattr(self, "_notes"):
            self._notes = []
        creds = self.session.credentials
        connected = self.session.state == SessionState.CONNECTED and creds is not None
        self.room_label.setText(creds.room_id if connected else "not in a room")
        self.join_button.setVisible(not connected)
        chosen = self.dock.selected_worker()
        combo = self.worker_combo
        combo.blockSignals(True)
        combo.clear()
        combo.addItem(AUTO_SELECT, None)
        listed = set()
        for worker in self.dock.model.workers:
            if worker.available:
                combo.addItem(f"{worker.name} ({worker.gpu_model})", worker.peer_id)
                listed.add(worker.peer_id)
        if chosen is not None and chosen.peer_id not in listed:
            state = self.dock.choice_state()
            combo.addItem(f"{chosen.name} ({'left the room' if state == 'gone' else 'busy'})", chosen.peer_id)
        index = combo.findData(chosen.peer_id) if chosen is not None else 0
        combo.setCurrentIndex(max(index, 0))
        combo.blockSignals(False)
        for w in (self.room_label, self.worker_combo):
            w.setEnabled(self.remote_check.isChecked())
        self.notes_wanted.emit()
