"""Dialog to enter room credentials: typed, pasted from a worker's banner, or a session string.

Validation runs as the user types: pasting a whole worker banner into the paste box fills
the room ID and token (``core.credentials.parse_room_credentials``); a legacy session
string is decoded on the fly to show which room and worker it targets, or the clear error
for a malformed one. The dialog is opened with ``open()`` and read in ``finished``.
"""

from __future__ import annotations

import re

from qtpy import QtWidgets

from sleap_rtc.core.credentials import (
    CredentialsError,
    RoomCredentials,
    decode_session_string,
    parse_room_credentials,
)

_ID_RE = re.compile(r"[A-Za-z0-9_\-]+")
OK_COLOUR = "#2e7d32"
ERROR_COLOUR = "#c62828"


def _coloured(text: str, colour: str) -> str:
    return f'<span style="color:{colour}">{text}</span>'


class CredentialsDialog(QtWidgets.QDialog):
    """Room ID + token fields, a paste box for a worker banner, and a session-string field.

    After ``accepted``: ``credentials()`` is the room to join; ``target_worker()`` the worker
    named by a session string (``None`` otherwise).
    """

    def __init__(self, parent: QtWidgets.QWidget | None = None, *, session_mode: bool = False):
        super().__init__(parent)
        self.setObjectName("sleap_rtc_credentials_dialog")
        self.setWindowTitle("Join a room")
        self._target: str | None = None

        intro = QtWidgets.QLabel(
            "Paste what a worker printed when it started (its whole banner works), or type the room ID "
            "and token."
        )
        intro.setWordWrap(True)
        self.paste_edit = QtWidgets.QPlainTextEdit()
        self.paste_edit.setObjectName("paste")
        self.paste_edit.setPlaceholderText("Room ID: …\nToken: …")
        self.paste_edit.setMaximumHeight(90)
        self.paste_status = QtWidgets.QLabel()
        self.paste_status.setObjectName("paste_status")
        self.paste_status.setWordWrap(True)

        self.room_edit = QtWidgets.QLineEdit(placeholderText="e.g. 4f9c2a1b")
        self.room_edit.setObjectName("room_id")
        self.token_edit = QtWidgets.QLineEdit(placeholderText="the room's secret token")
        self.token_edit.setObjectName("token")
        self.token_edit.setEchoMode(QtWidgets.QLineEdit.PasswordEchoOnEdit)
        self.fields_status = QtWidgets.QLabel()
        self.fields_status.setObjectName("fields_status")
        self.fields_status.setWordWrap(True)

        form = QtWidgets.QFormLayout()
        form.addRow("Room ID", self.room_edit)
        form.addRow("Token", self.token_edit)

        self.session_box = QtWidgets.QGroupBox("Legacy session string (one specific worker)")
        self.session_box.setCheckable(False)
        self.session_edit = QtWidgets.QLineEdit(placeholderText="sleap-session:…")
        self.session_edit.setObjectName("session_string")
        self.session_status = QtWidgets.QLabel()
        self.session_status.setObjectName("session_status")
        self.session_status.setWordWrap(True)
        sbox = QtWidgets.QVBoxLayout(self.session_box)
        sbox.addWidget(self.session_edit)
        sbox.addWidget(self.session_status)

        self.buttons = QtWidgets.QDialogButtonBox(QtWidgets.QDialogButtonBox.Ok | QtWidgets.QDialogButtonBox.Cancel)
        self.ok_button = self.buttons.button(QtWidgets.QDialogButtonBox.Ok)
        self.ok_button.setText("Join")
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)

        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addWidget(self.paste_edit)
        layout.addWidget(self.paste_status)
        layout.addLayout(form)
        layout.addWidget(self.fields_status)
        layout.addWidget(self.session_box)
        layout.addWidget(self.buttons)

        self.paste_edit.textChanged.connect(self._on_paste)
        self.room_edit.textChanged.connect(self._validate)
        self.token_edit.textChanged.connect(self._validate)
        self.session_edit.textChanged.connect(self._on_session)
        self._validate()
        if session_mode:
            self.setWindowTitle("Use a session string")
            self.session_edit.setFocus()

    # ------------------------------------------------------------------ results

    def credentials(self) -> RoomCredentials | None:
        """The room entered, when the fields are valid."""
        room, token = self.room_edit.text().strip(), self.token_edit.text().strip()
        if _ID_RE.fullmatch(room) and _ID_RE.fullmatch(token):
            return RoomCredentials(room, token)
        return None

    def target_worker(self) -> str | None:
        """The worker peer id of a valid session string (``None``: choose in the room)."""
        return self._target

    # ------------------------------------------------------------------ validation

    def _on_paste(self) -> None:
        text = self.paste_edit.toPlainText()
        if not text.strip():
            self.paste_status.setText("")
            return
        try:
            creds = parse_room_credentials(text)
        except CredentialsError as exc:
            self.paste_status.setText(_coloured(str(exc), ERROR_COLOUR))
            return
        self.room_edit.setText(creds.room_id)
        self.token_edit.setText(creds.token)
        self.paste_status.setText(_coloured(f"Found room {creds.room_id} and its token.", OK_COLOUR))

    def _on_session(self, text: str) -> None:
        self._target = None
        if not text.strip():
            self.session_status.setText("")
            self._validate()
            return
        try:
            target = decode_session_string(text)
        except CredentialsError as exc:
            self.session_status.setText(_coloured(str(exc), ERROR_COLOUR))
            self._validate()
            return
        self._target = target.peer_id
        self.room_edit.setText(target.room_id)
        self.token_edit.setText(target.token)
        self.session_status.setText(
            _coloured(f"Targets worker <b>{target.peer_id}</b> in room <b>{target.room_id}</b>.", OK_COLOUR)
        )
        self._validate()

    def _validate(self, *_: object) -> None:
        room, token = self.room_edit.text().strip(), self.token_edit.text().strip()
        problem = ""
        if self.session_edit.text().strip() and self._target is None:
            problem = "Fix or clear the session string."
        elif not room or not token:
            problem = "Enter both the room ID and the token."
        elif not _ID_RE.fullmatch(room):
            problem = "The room ID may contain only letters, digits, '-' and '_'."
        elif not _ID_RE.fullmatch(token):
            problem = "The token may contain only letters, digits, '-' and '_'."
        self.fields_status.setText(_coloured(problem, ERROR_COLOUR) if problem and (room or token) else "")
        self.ok_button.setEnabled(not problem)

