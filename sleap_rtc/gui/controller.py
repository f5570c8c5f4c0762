"""What both windows (SLEAP's and the standalone one) share: session, dock, Remote menu, jobs.

``RemoteGui`` owns the ``RoomSession`` and the ``RemoteTrainingDock`` of one window, opens
the credentials dialog (``open()`` + ``finished``, never ``exec()``), joins and leaves rooms
in background tasks, and submits a package through a ``RemoteJobController``.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

from qtpy import QtCore, QtWidgets

from sleap_rtc.core.phases import JobPhases
from sleap_rtc.gui.bridge import run_coro, show_error
from sleap_rtc.gui.credentials_dialog import CredentialsDialog
from sleap_rtc.gui.dock import RemoteTrainingDock
from sleap_rtc.gui.remote_run import JobRequest, JobRunner, RemoteJobController
from sleap_rtc.gui.session import RoomSession, SessionState

log = logging.getLogger(__name__)


class RemoteGui(QtCore.QObject):
    """The sleap-rtc part of a window: session + dock + Remote menu + job submission.

    ``runner`` is the job runner (``remote_run.core_runner`` by default; tests inject one).
    """

    def __init__(self, window: QtWidgets.QMainWindow, server_url: str | None = None, runner: JobRunner | None = None):
        super().__init__(window)
        self.window = window
        self.session = RoomSession(server_url, self)
        self.dock = RemoteTrainingDock(self.session, window)
        self.runner = runner
        self.jobs: list[RemoteJobController] = []
        self.dock.join_requested.connect(self.open_join_dialog)
        self.dock.disconnect_requested.connect(self.disconnect)
        self.session.error.connect(lambda msg: log.warning("join failed: %s", msg))

    # ------------------------------------------------------------------ menu

    def build_menu(self, menubar: QtWidgets.QMenuBar) -> QtWidgets.QMenu:
        """Add the "Remote" menu (Join room…, Use session string…, Disconnect)."""
        menu = menubar.addMenu("Remote")
        menu.setObjectName("sleap_rtc_remote_menu")
        self.join_action = menu.addAction("Join room…", self.open_join_dialog)
        self.session_action = menu.addAction("Use session string…", lambda: self.open_join_dialog(session_mode=True))
        menu.addSeparator()
        self.disconnect_action = menu.addAction("Disconnect", self.disconnect)
        self.session.state_changed.connect(self._update_actions)
        self._update_actions()
        return menu

    def _update_actions(self, *_: object) -> None:
        if hasattr(self, "disconnect_action"):
            self.disconnect_action.setEnabled(self.session.state != SessionState.DISCONNECTED)

    # ------------------------------------------------------------------ room

    def open_join_dialog(self, session_mode: bool = False) -> CredentialsDialog:
        """Open the credentials dialog (non-modal ``open()``); join when accepted."""
        dlg = CredentialsDialog(self.window, session_mode=bool(session_mode))
        dlg.setAttribute(QtCore.Qt.WA_DeleteOnClose)

        def finished(result: int) -> None:
            creds = dlg.credentials()
            if result == QtWidgets.QDialog.Accepted and creds is not None:
                self.join(creds.room_id, creds.token, target_worker=dlg.target_worker())

        dlg.finished.connect(finished)
        dlg.open()
        self._last_dialog = dlg
        return dlg

    def join(self, room_id: str, token: str, target_worker: str | None = None):
        """Join a room in the background (errors shown over the window); returns the task."""

        async def go():
            room = await self.session.join(room_id, token, target_worker=target_worker)
            if target_worker:
                # A session string names one worker: preselect it if it is there and free.
                if not self.dock.select_worker(target_worker):
                    show_error(self.window, "Session string", f"Worker {target_worker} is not available in room {room_id}.")
            return room

        return run_coro(go(), parent=self.window, title="Join room")

    def disconnect(self):
        """Leave the room in the background; returns the task."""
        return run_coro(self.session.leave(), parent=self.window, title="Disconnect")

    # ------------------------------------------------------------------ jobs

    def submit(self, package: str | Path, results_dir: str | Path | None = None, *, on_progress: Callable | None = None) -> RemoteJobController:
        """Run a training package on a worker of the current room, with the job dialog."""
        creds = self.session.credentials
        if creds is None or self.session.state != SessionState.CONNECTED:
            raise RuntimeError("Join a room first (Remote ▸ Join room…).")
        worker = self.dock.selected_worker()
        request = JobRequest(
            package=Path(package),
            server_url=self.session.server_url,
            room_id=creds.room_id,
            token=creds.token,
            worker_id=worker.peer_id if worker else None,
            results_dir=Path(results_dir) if results_dir else Path(tempfile.mkdtemp(prefix="sleap-rtc-results-")),
            phases=JobPhases(),
            room=self.session.room,
            signaling=self.session.signaling,
        )
        ctl = RemoteJobController(request, self.runner, parent_widget=self.window)
        if worker is not None:
            ctl.panel.set_worker(worker)
        if on_progress is not None:
            ctl.progress.connect(on_progress)
        self.jobs.append(ctl)
        # The panel lives in the dock: nothing modal, SLEAP stays usable during the job.
        self.dock.add_job_panel(ctl.panel)
        ctl.start()
        return ctl

    def running_jobs(self) -> list[RemoteJobController]:
        """Jobs that have not ended."""
        return [ctl for ctl in self.jobs if ctl.running]
