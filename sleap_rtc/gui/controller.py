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
from typing import Any

from qtpy import QtCore, QtWidgets

from sleap_rtc.core.job_runner import ConnectFn
from sleap_rtc.gui.bridge import run_coro, show_error
from sleap_rtc.gui.credentials_dialog import CredentialsDialog
from sleap_rtc.gui.dock import RemoteTrainingDock
from sleap_rtc.gui.remote_run import RemoteJobController
from sleap_rtc.gui.session import RoomSession, SessionState

log = logging.getLogger(__name__)


class RemoteGui(QtCore.QObject):
    """The sleap-rtc part of a window: session + dock + Remote menu + job submission.

    ``connect`` is core's connect attempt for jobs (WebRTC by default; tests inject one).
    A click on a worker in the dock answers any job that is asking for a worker.
    """

    def __init__(self, window: QtWidgets.QMainWindow, server_url: str | None = None, connect: ConnectFn | None = None):
        super().__init__(window)
        self.window = window
        self.session = RoomSession(server_url, self)
        self.dock = RemoteTrainingDock(self.session, window)
        self.connect = connect
        self.jobs: list[RemoteJobController] = []
        self.dock.worker_chosen.connect(self._on_worker_chosen)
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
            running = [ctl for ctl in self.jobs if not ctl.phases.finished]
            if running and (self.session.credentials is None or self.session.credentials.room_id != room_id):
                raise RuntimeError("A remote job is running in this room: let it finish, or cancel it, "
                                   "before switching to another room.")
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

    def submit(self, package: str | Path, results_dir: str | Path | None = None, *, on_progress: Callable | None = None,
               show_dialog: bool = True) -> RemoteJobController:
        """Run a package on a worker of the current room (the dock's selection, else the best).

        The job runs on the session's live connection; the returned controller presents it.
        """
        return self._submit(RemoteJobController, Path(package), results_dir, on_progress=on_progress, show_dialog=show_dialog)

    def submit_inference(self, request: Any, results_dir: str | Path | None = None, *,
                         worker_id: str | None = None) -> RemoteJobController:
        """Run core's ``InferenceRequest`` on a worker of the room (``worker_id``, else the dock's
        selection, else the best); the returned ``RemoteInferenceController`` presents it."""
        from sleap_rtc.gui.remote_inference import RemoteInferenceController

        return self._submit(RemoteInferenceController, request, results_dir, worker_id=worker_id)

    def _submit(self, controller: type, what: Any, results_dir: str | Path | None, *, on_progress: Callable | None = None,
                show_dialog: bool = True, worker_id: str | None = None) -> RemoteJobController:
        creds = self.session.credentials
        if creds is None or self.session.state != SessionState.CONNECTED or self.session.signaling is None:
            raise RuntimeError("Join a room first (Remote ▸ Join room…).")
        worker = self.dock.selected_worker()
        if worker_id is not None:
            room = self.session.room
            worker = room.get(worker_id) if room is not None else None
        ctl = controller(
            what,
            Path(results_dir) if results_dir else Path(tempfile.mkdtemp(prefix="sleap-rtc-results-")),
            credentials=creds,
            signaling=self.session.signaling,
            room=self.session.room,
            server_url=self.session.server_url,
            worker_id=worker.peer_id if worker else worker_id,
            connect=self.connect,
            parent_widget=self.window,
            show_dialog=show_dialog,
        )
        if on_progress is not None:
            ctl.progress.connect(on_progress)
        ctl.choice_needed.connect(lambda _request: self._raise_dock())
        if ctl.panel is not None:
            if worker is not None:
                ctl.panel.set_worker(worker)
            # The panel lives in the dock: nothing modal, SLEAP stays usable during the job.
            self.dock.add_job_panel(ctl.panel)
        self.jobs.append(ctl)
        ctl.start()
        return ctl

    def running_jobs(self) -> list[RemoteJobController]:
        """Jobs that have not ended."""
        return [ctl for ctl in self.jobs if ctl.running]

    def _on_worker_chosen(self, worker: object) -> None:
        """A click in the dock answers the job that is asking for a worker (newest first)."""
        peer_id = getattr(worker, "peer_id", None)
        if not peer_id:
            return
        for ctl in reversed(self.jobs):
            if ctl.pending is not None and ctl.choose_worker(peer_id):
                return

    def _raise_dock(self) -> None:
        self.dock.show()
        self.dock.raise_()
