"""The "Remote training" panel inserted into SLEAP's training dialog (qtpy only, no SLEAP).

It shows whether Run goes to a remote worker, the room, and the worker (or auto-select).
It is a view of the ``RoomSession`` and the dock's selection; ``sleap_attach`` inserts it
with ``dlg.layout().insertWidget(1, panel)`` and reads ``remote_enabled()`` when Run is pressed.
"""

from __future__ import annotations

from qtpy import QtCore, QtWidgets

from sleap_rtc.core.room import WorkerInfo
from sleap_rtc.gui.dock import AUTO_SELECT, RemoteTrainingDock
from sleap_rtc.gui.session import SessionState

PANEL_OBJECT_NAME = "sleap_rtc_remote_training_panel"
"""objectName of the panel (how ``sleap_attach`` recognises an already-injected dialog)."""


class RemoteTrainingPanel(QtWidgets.QGroupBox):
    """"Train on a remote worker" checkbox, room and worker; ``join_requested`` asks to join."""

    join_requested = QtCore.Signal()
    """The user pressed "Join room…" in the panel (not in a room yet)."""

    def __init__(self, dock: RemoteTrainingDock, parent: QtWidgets.QWidget | None = None):
        super().__init__("Remote training", parent)
        self.setObjectName(PANEL_OBJECT_NAME)
        self.dock = dock
        self.session = dock.session
        self.remote_check = QtWidgets.QCheckBox("Train on a remote worker")
        self.remote_check.setObjectName("remote_check")
        self.remote_check.setToolTip("Run sends the training package to a GPU worker of the room.")
        self.room_label = QtWidgets.QLabel()
        self.room_label.setObjectName("room_label")
        self.worker_label = QtWidgets.QLabel()
        self.worker_label.setObjectName("worker_label")
        self.join_button = QtWidgets.QPushButton("Join room…")
        self.join_button.clicked.connect(self.join_requested)

        layout = QtWidgets.QGridLayout(self)
        layout.addWidget(self.remote_check, 0, 0, 1, 2)
        layout.addWidget(QtWidgets.QLabel("Room:"), 1, 0)
        layout.addWidget(self.room_label, 1, 1)
        layout.addWidget(self.join_button, 1, 2)
        layout.addWidget(QtWidgets.QLabel("Worker:"), 2, 0)
        layout.addWidget(self.worker_label, 2, 1, 1, 2)
        layout.setColumnStretch(1, 1)

        self.session.state_changed.connect(self._refresh)
        dock.worker_chosen.connect(self._refresh)
        self.remote_check.toggled.connect(self._refresh)
        self._refresh()

    def remote_enabled(self) -> bool:
        """Whether Run should train remotely."""
        return self.remote_check.isChecked()

    def chosen_worker(self) -> WorkerInfo | None:
        """The worker picked in the dock (``None``: auto-select)."""
        return self.dock.selected_worker()

    def _refresh(self, *_: object) -> None:
        creds = self.session.credentials
        connected = self.session.state == SessionState.CONNECTED and creds is not None
        self.room_label.setText(creds.room_id if connected else "not in a room")
        self.join_button.setVisible(not connected)
        worker = self.dock.selected_worker()
        self.worker_label.setText(f"{worker.name} ({worker.gpu_model})" if worker else AUTO_SELECT)
        for w in (self.room_label, self.worker_label):
            w.setEnabled(self.remote_check.isChecked())
