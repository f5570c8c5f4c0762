"""``RemoteTrainingDock``: room credentials, connection state and the live worker list.

The dock is a view: it subscribes to a ``RoomSession`` (state, room) and shows the room's
workers through a ``WorkerTableModel``. When the room has no worker it shows how to start
one, with the exact command for this room.
"""

from __future__ import annotations

from qtpy import QtCore, QtWidgets

from sleap_rtc.core.room import RoomView, WorkerInfo
from sleap_rtc.gui.session import STATE_COLOUR, STATE_TEXT, RoomSession, SessionState
from sleap_rtc.gui.worker_model import WorkerTableModel

DOCK_OBJECT_NAME = "sleap_rtc_remote_training_dock"
"""Unique objectName: window-state save/restore drops docks without one."""

AUTO_SELECT = "Auto-select the best available worker"


def worker_command(room_id: str, token: str) -> str:
    """The exact command that starts a worker in this room."""
    return f"sleap-rtc worker --room-id {room_id} --token {token}"


def _copy(text: str) -> None:
    QtWidgets.QApplication.clipboard().setText(text)


class CredentialsBox(QtWidgets.QGroupBox):
    """Room ID and masked token, each with a copy button; the token has a reveal toggle."""

    def __init__(self, parent: QtWidgets.QWidget | None = None):
        super().__init__("Room", parent)
        self.room_edit = QtWidgets.QLineEdit(readOnly=True, placeholderText="not in a room")
        self.room_edit.setObjectName("room_id")
        self.token_edit = QtWidgets.QLineEdit(readOnly=True)
        self.token_edit.setObjectName("token")
        self.token_edit.setEchoMode(QtWidgets.QLineEdit.Password)
        self.reveal_button = QtWidgets.QToolButton(text="Show", checkable=True)
        self.reveal_button.setToolTip("Show or hide the room token")
        self.reveal_button.toggled.connect(self._reveal)
        self.copy_room_button = QtWidgets.QToolButton(text="Copy")
        self.copy_room_button.setToolTip("Copy the room ID")
        self.copy_room_button.clicked.connect(lambda: _copy(self.room_edit.text()))
        self.copy_token_button = QtWidgets.QToolButton(text="Copy")
        self.copy_token_button.setToolTip("Copy the token (it stays hidden)")
        self.copy_token_button.clicked.connect(lambda: _copy(self.token_edit.text()))

        grid = QtWidgets.QGridLayout(self)
        grid.addWidget(QtWidgets.QLabel("Room ID"), 0, 0)
        grid.addWidget(self.room_edit, 0, 1)
        grid.addWidget(self.copy_room_button, 0, 3)
        grid.addWidget(QtWidgets.QLabel("Token"), 1, 0)
        grid.addWidget(self.token_edit, 1, 1)
        grid.addWidget(self.reveal_button, 1, 2)
        grid.addWidget(self.copy_token_button, 1, 3)
        self.set_credentials("", "")

    def set_credentials(self, room_id: str, token: str) -> None:
        """Show these credentials (empty strings: not in a room)."""
        self.room_edit.setText(room_id)
        self.token_edit.setText(token)
        for w in (self.copy_room_button, self.copy_token_button, self.reveal_button):
            w.setEnabled(bool(room_id))

    def _reveal(self, shown: bool) -> None:
        self.token_edit.setEchoMode(QtWidgets.QLineEdit.Normal if shown else QtWidgets.QLineEdit.Password)
        self.reveal_button.setText("Hide" if shown else "Show")


class RemoteTrainingDock(QtWidgets.QDockWidget):
    """The Remote Training dock: credentials, connection state, workers, empty state.

    ``join_requested`` / ``disconnect_requested`` ask the owner (window or launcher) to act;
    the dock itself never starts network work. ``selected_worker()`` is the chosen worker,
    or ``None`` for auto-select.
    """

    join_requested = QtCore.Signal()
    """The user pressed "Join room…"."""
    disconnect_requested = QtCore.Signal()
    """The user pressed "Disconnect"."""
    worker_chosen = QtCore.Signal(object)
    """Emitted with the chosen ``WorkerInfo`` or ``None`` (auto-select)."""

    def __init__(self, session: RoomSession, parent: QtWidgets.QWidget | None = None):
        super().__init__("Remote Training", parent)
        self.setObjectName(DOCK_OBJECT_NAME)
        self.session = session
        self.model = WorkerTableModel(parent=self)

        body = QtWidgets.QWidget()
        layout = QtWidgets.QVBoxLayout(body)

        self.credentials = CredentialsBox()
        layout.addWidget(self.credentials)

        state_row = QtWidgets.QHBoxLayout()
        self.state_label = QtWidgets.QLabel()
        self.state_label.setObjectName("connection_state")
        self.join_button = QtWidgets.QPushButton("Join room…")
        self.join_button.clicked.connect(self.join_requested)
        self.disconnect_button = QtWidgets.QPushButton("Disconnect")
        self.disconnect_button.clicked.connect(self.disconnect_requested)
        state_row.addWidget(self.state_label, 1)
        state_row.addWidget(self.join_button)
        state_row.addWidget(self.disconnect_button)
        layout.addLayout(state_row)

        workers_header = QtWidgets.QHBoxLayout()
        workers_header.addWidget(QtWidgets.QLabel("<b>Workers</b>"), 1)
        self.show_busy_check = QtWidgets.QCheckBox("Show busy workers")
        self.show_busy_check.setChecked(False)
        self.show_busy_check.toggled.connect(self.model.set_show_busy)
        workers_header.addWidget(self.show_busy_check)
        layout.addLayout(workers_header)

        self.table = QtWidgets.QTableView()
        self.table.setObjectName("workers_table")
        self.table.setModel(self.model)
        self.table.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectRows)
        self.table.setSelectionMode(QtWidgets.QAbstractItemView.SingleSelection)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.NoEditTriggers)
        self.table.selectionModel().selectionChanged.connect(self._on_selection)

        self.empty_label = QtWidgets.QLabel()
        self.empty_label.setObjectName("empty_state")
        self.empty_label.setWordWrap(True)
        self.empty_label.setTextInteractionFlags(Qt_TextSelectable())
        self.empty_label.setAlignment(QtCore.Qt.AlignTop | QtCore.Qt.AlignLeft)
        self.copy_command_button = QtWidgets.QPushButton("Copy worker command")
        self.copy_command_button.clicked.connect(self._copy_command)
        empty = QtWidgets.QWidget()
        empty_layout = QtWidgets.QVBoxLayout(empty)
        empty_layout.addWidget(self.empty_label)
        empty_layout.addWidget(self.copy_command_button, 0, QtCore.Qt.AlignLeft)
        empty_layout.addStretch(1)

        self.stack = QtWidgets.QStackedWidget()
        self.stack.addWidget(self.table)
        self.stack.addWidget(empty)
        layout.addWidget(self.stack, 1)

        self.choice_label = QtWidgets.QLabel(AUTO_SELECT)
        self.choice_label.setObjectName("worker_choice")
        layout.addWidget(self.choice_label)
        self.setWidget(body)

        self._selected: WorkerInfo | None = None
        for signal in (self.model.modelReset, self.model.rowsInserted, self.model.rowsRemoved, self.model.dataChanged):
            signal.connect(self._refresh_list_state)
        session.state_changed.connect(self._on_state)
        session.room_changed.connect(self._on_room)
        self._on_room(session.room)
        self._on_state(session.state.value)

    # ------------------------------------------------------------------ reading

    def selected_worker(self) -> WorkerInfo | None:
        """The worker picked in the table (``None``: auto-select)."""
        return self._selected

    def empty_state_text(self) -> str:
        """The text of the empty state (what the user reads when no worker is there)."""
        return self.empty_label.text()

    def select_worker(self, peer_id: str | None) -> bool:
        """Select the worker with ``peer_id`` (``None`` clears: auto-select); False if not listed."""
        if peer_id is None:
            self.table.clearSelection()
            return True
        row = self.model.row_of(peer_id)
        if row < 0 or not (self.model.flags(self.model.index(row, 0)) & QtCore.Qt.ItemIsSelectable):
            return False
        self.table.selectRow(row)
        return True

    # ------------------------------------------------------------------ updates

    def _on_room(self, room: RoomView | None) -> None:
        self.model.set_room(room)
        creds = self.session.credentials
        if room is not None and creds is not None:
            self.credentials.set_credentials(creds.room_id, creds.token)
        elif room is None and self.session.state == SessionState.DISCONNECTED:
            self.credentials.set_credentials("", "")
        self._refresh_list_state()

    def _on_state(self, state: str) -> None:
        st = SessionState(state)
        text = STATE_TEXT[st]
        if st == SessionState.FAILED and self.session.last_error:
            text += f": {self.session.last_error}"
        if st == SessionState.CONNECTED and self.session.credentials:
            text += f" to room {self.session.credentials.room_id}"
        self.state_label.setText(f'<span style="color:{STATE_COLOUR[st]}">●</span> {text}')
        self.state_label.setToolTip(text)
        self.state_label.setWordWrap(True)
        connected = st in (SessionState.CONNECTED, SessionState.RECONNECTING, SessionState.CONNECTING)
        self.disconnect_button.setEnabled(connected)
        self.join_button.setText("Switch room…" if connected else "Join room…")
        if st == SessionState.DISCONNECTED:
            self.credentials.set_credentials("", "")
        self._refresh_list_state()

    def _refresh_list_state(self, *_: object) -> None:
        creds = self.session.credentials
        in_room = self.model.room is not None
        if not in_room:
            self.empty_label.setText(
                "Not in a room. Press <b>Join room…</b> and paste the room ID and token a worker printed "
                "when it started (or its whole banner)."
            )
            self.copy_command_button.setVisible(False)
            self.stack.setCurrentIndex(1)
        elif self.model.rowCount() == 0:
            command = worker_command(creds.room_id, creds.token) if creds else ""
            if self.model.total_workers:
                lead = (
                    f"All {self.model.total_workers} worker(s) of this room are busy. "
                    "Tick <b>Show busy workers</b> to see them, or start another worker:"
                )
            else:
                lead = "No workers in this room yet. On a GPU machine, start a worker with:"
            self.empty_label.setText(f"{lead}<br><br><code>{command}</code>")
            self.copy_command_button.setVisible(bool(command))
            self.stack.setCurrentIndex(1)
        else:
            self.stack.setCurrentIndex(0)
        # A selected worker that left or turned busy is no longer a valid choice.
        if self._selected is not None:
            row = self.model.row_of(self._selected.peer_id)
            if row < 0 or not self.model.worker_at(row).available:
                self._set_selected(None)
            else:
                self._selected = self.model.worker_at(row)
                if not self.table.selectionModel().isRowSelected(row, QtCore.QModelIndex()):
                    self.table.selectRow(row)

    def _on_selection(self, *_: object) -> None:
        rows = self.table.selectionModel().selectedRows()
        self._set_selected(self.model.worker_at(rows[0].row()) if rows else None)

    def _set_selected(self, worker: WorkerInfo | None) -> None:
        changed = (worker.peer_id if worker else None) != (self._selected.peer_id if self._selected else None)
        self._selected = worker
        self.choice_label.setText(f"Worker: {worker.name} ({worker.gpu_model})" if worker else AUTO_SELECT)
        if changed:
            self.worker_chosen.emit(worker)

    def _copy_command(self) -> None:
        creds = self.session.credentials
        if creds:
            _copy(worker_command(creds.room_id, creds.token))


def Qt_TextSelectable() -> QtCore.Qt.TextInteractionFlag:  # noqa: N802
    """Selectable-by-mouse-and-keyboard text (so the command can be copied by hand)."""
    return QtCore.Qt.TextSelectableByMouse | QtCore.Qt.TextSelectableByKeyboard


