"""``RemoteTrainingDock``: room credentials, connection state, the live worker list and jobs.

The dock is a view: it subscribes to a ``RoomSession`` (state, room) and shows the room's
workers through a ``WorkerTableModel``. When the room has no worker it shows how to start
one, with the exact command for this room (the token masked on screen, complete when
copied). Each remote job's ``JobPanel`` lives in the dock's Jobs section, so nothing about
a job is modal: SLEAP's window and this dock stay usable while it runs.

The worker the user picked stays picked: when it leaves or turns busy the dock says so
(and Run then offers the ways on) instead of silently moving to another machine.
"""

from __future__ import annotations

from qtpy import QtCore, QtWidgets

from sleap_rtc.core.room import RoomView, WorkerInfo
from sleap_rtc.gui.session import STATE_COLOUR, STATE_TEXT, RoomSession, SessionState
from sleap_rtc.gui.worker_model import WorkerTableModel

DOCK_OBJECT_NAME = "sleap_rtc_remote_training_dock"
"""Unique objectName: window-state save/restore drops docks without one."""

AUTO_SELECT = "Auto-select the best available worker"

TOKEN_MASK = "••••••••"
"""What the on-screen worker command shows instead of the token."""


def worker_command(room_id: str, token: str, server_url: str | None = None, *, masked: bool = False) -> str:
    """The exact command that starts a worker in this room (``masked``: token hidden, for display)."""
    server = f" --server {server_url}" if server_url else ""
    return f"sleap-rtc worker{server} --room-id {room_id} --token {TOKEN_MASK if masked else token}"


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
    jobs_changed = QtCore.Signal()
    """A job panel was added or removed."""

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
        self.choice_label.setWordWrap(True)
        self.auto_button = QtWidgets.QToolButton(text="Auto-select")
        self.auto_button.setObjectName("auto_select")
        self.auto_button.setToolTip("Let Run pick the best available worker")
        self.auto_button.clicked.connect(lambda: self.select_worker(None))
        choice_row = QtWidgets.QHBoxLayout()
        choice_row.addWidget(self.choice_label, 1)
        choice_row.addWidget(self.auto_button)
        layout.addLayout(choice_row)

        self.jobs_box = QtWidgets.QGroupBox("Jobs")
        self.jobs_box.setObjectName("jobs")
        self.jobs_layout = QtWidgets.QVBoxLayout(self.jobs_box)
        self.jobs_box.setVisible(False)
        layout.addWidget(self.jobs_box)

        scroll = QtWidgets.QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QtWidgets.QFrame.NoFrame)
        scroll.setHorizontalScrollBarPolicy(QtCore.Qt.ScrollBarAlwaysOff)
        scroll.setWidget(body)
        self.setWidget(scroll)

        self._selected: WorkerInfo | None = None
        self._model_changing = False
        self._unwatch_room = lambda: None
        # The table's selection model reacts to row removals before our slots run: while
        # the model changes, selection changes are the model's, not the user's choice.
        for signal in (self.model.rowsAboutToBeRemoved, self.model.modelAboutToBeReset, self.model.rowsAboutToBeInserted):
            signal.connect(self._model_about_to_change)
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
            self._set_selected(None)
            return True
        row = self.model.row_of(peer_id)
        if row < 0 or not (self.model.flags(self.model.index(row, 0)) & QtCore.Qt.ItemIsSelectable):
            return False
        self.table.selectRow(row)
        return True

    def add_job_panel(self, panel: QtWidgets.QWidget) -> None:
        """Show a job's panel in the Jobs section (newest first) and bring the dock forward."""
        self.jobs_layout.insertWidget(0, panel)
        self.jobs_box.setVisible(True)
        dismissed = getattr(panel, "dismissed", None)
        if dismissed is not None:
            dismissed.connect(self._refresh_jobs)
        self.jobs_changed.emit()
        self.show()
        self.raise_()

    def job_panels(self) -> list[QtWidgets.QWidget]:
        """The job panels shown, newest first."""
        out = []
        for i in range(self.jobs_layout.count()):
            w = self.jobs_layout.itemAt(i).widget()
            if w is not None and not w.isHidden() and not getattr(w, "dismissed_by_user", False):
                out.append(w)
        return out

    def _refresh_jobs(self, *_: object) -> None:
        self.jobs_box.setVisible(bool(self.job_panels()))
        self.jobs_changed.emit()

    # ------------------------------------------------------------------ updates

    def _on_room(self, room: RoomView | None) -> None:
        if room is not self.model.room and self._selected is not None:
            self._set_selected(None)  # a pick belongs to its room
        self._unwatch_room()
        # Hidden (busy) workers change no row: follow the room itself for the pick's state.
        self._unwatch_room = room.subscribe(lambda _change: self._update_choice_label()) if room is not None else (lambda: None)
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
            command = worker_command(creds.room_id, creds.token, self.session.server_url, masked=True) if creds else ""
            total = self.model.total_workers
            if total:
                lead = (
                    ("The room's only worker is busy. " if total == 1 else f"All {total} workers of this room are busy. ")
                    + "Tick <b>Show busy workers</b> to see them, or start another worker:"
                )
            else:
                lead = "No worker is in this room now. On a GPU machine, start a worker with:"
            self.empty_label.setText(f"{lead}<br><br><code>{command}</code>")
            self.copy_command_button.setVisible(bool(command))
            self.stack.setCurrentIndex(1)
        else:
            self.stack.setCurrentIndex(0)
        self._model_changing = False
        self._sync_selection()

    def _model_about_to_change(self, *_: object) -> None:
        self._model_changing = True

    def _sync_selection(self) -> None:
        """Show the user's pick in the table; never replace it with another worker."""
        chosen = self._selected
        if chosen is None:
            self._update_choice_label()
            return
        row = self.model.row_of(chosen.peer_id)
        worker = self.model.worker_at(row) if row >= 0 else (self.model.room.get(chosen.peer_id) if self.model.room else None)
        if worker is not None:
            self._selected = worker
        selection = self.table.selectionModel()
        self._model_changing = True
        try:
            if row >= 0 and worker is not None and worker.available:
                if not selection.isRowSelected(row, QtCore.QModelIndex()):
                    self.table.selectRow(row)
            else:
                self.table.clearSelection()
        finally:
            self._model_changing = False
        self._update_choice_label()

    def _on_selection(self, *_: object) -> None:
        if self._model_changing:
            return
        rows = self.table.selectionModel().selectedRows()
        if rows:
            self._set_selected(self.model.worker_at(rows[0].row()))

    def _set_selected(self, worker: WorkerInfo | None) -> None:
        changed = (worker.peer_id if worker else None) != (self._selected.peer_id if self._selected else None)
        self._selected = worker
        self._update_choice_label()
        if changed:
            self.worker_chosen.emit(worker)

    def choice_state(self) -> str:
        """``auto``, ``available``, ``busy`` or ``gone``: the state of the user's pick."""
        worker = self._selected
        if worker is None:
            return "auto"
        room = self.model.room
        live = room.get(worker.peer_id) if room is not None else None
        if live is None:
            return "gone"
        return "available" if live.available else "busy"

    def _update_choice_label(self) -> None:
        worker = self._selected
        state = self.choice_state()
        self.auto_button.setVisible(worker is not None)
        if worker is None:
            self.choice_label.setText(AUTO_SELECT)
        elif state == "gone":
            self.choice_label.setText(
                f'Worker: {worker.name} <span style="color:#c62828">(left the room)</span>. '
                "Run will offer another one; or press Auto-select."
            )
        elif state == "busy":
            live = self.model.room.get(worker.peer_id)
            self.choice_label.setText(
                f'Worker: {worker.name} <span style="color:#ef6c00">({live.status})</span>. '
                "Run will offer to wait for it or take another one."
            )
        else:
            self.choice_label.setText(f"Worker: {worker.name} ({worker.gpu_model})")

    def _copy_command(self) -> None:
        creds = self.session.credentials
        if creds:
            _copy(worker_command(creds.room_id, creds.token, self.session.server_url))


def Qt_TextSelectable() -> QtCore.Qt.TextInteractionFlag:  # noqa: N802
    """Selectable-by-mouse-and-keyboard text (so the command can be copied by hand)."""
    return QtCore.Qt.TextSelectableByMouse | QtCore.Qt.TextSelectableByKeyboard


