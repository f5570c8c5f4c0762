"""The window ``sleap-rtc gui`` opens when SLEAP is not installed: the dock plus a job action.

It offers the same Remote Training dock and Remote menu, and "Submit training package…"
for a zip exported from SLEAP (Predict ▸ Run Training ▸ Export training job package).
Results go next to the package, in ``<package>.results/``.
"""

from __future__ import annotations

from pathlib import Path

from qtpy import QtCore, QtWidgets

from sleap_rtc.gui.bridge import show_error
from sleap_rtc.gui.controller import RemoteGui
from sleap_rtc.core.job_runner import ConnectFn
from sleap_rtc.gui.remote_run import RemoteJobController


class StandaloneWindow(QtWidgets.QMainWindow):
    """A small main window around the Remote Training dock."""

    def __init__(self, server_url: str | None = None, connect: ConnectFn | None = None):
        super().__init__()
        self.setObjectName("sleap_rtc_standalone_window")
        self.setWindowTitle("sleap-rtc: Remote Training")
        self.remote = RemoteGui(self, server_url, connect)
        self.addDockWidget(QtCore.Qt.LeftDockWidgetArea, self.remote.dock)
        self.remote.dock.setFeatures(QtWidgets.QDockWidget.NoDockWidgetFeatures)
        file_menu = self.menuBar().addMenu("File")
        self.submit_action = file_menu.addAction("Submit training package…", self.choose_package)
        file_menu.addSeparator()
        file_menu.addAction("Quit", self.close)
        self.remote.build_menu(self.menuBar())
        hint = QtWidgets.QLabel(
            "SLEAP is not installed here. Export a training package from SLEAP "
            "(Predict ▸ Run Training… ▸ Export training job package…), join a room, then use "
            "<b>File ▸ Submit training package…</b>."
        )
        hint.setWordWrap(True)
        hint.setMargin(16)
        hint.setAlignment(QtCore.Qt.AlignTop | QtCore.Qt.AlignLeft)
        self.setCentralWidget(hint)
        self.resize(900, 520)
        self.last_job: RemoteJobController | None = None

    def choose_package(self) -> None:
        """Ask for a package zip (non-modal file dialog) and submit it."""
        dlg = QtWidgets.QFileDialog(self, "Submit training package", "", "SLEAP training package (*.zip)")
        dlg.setFileMode(QtWidgets.QFileDialog.ExistingFile)
        dlg.fileSelected.connect(self.submit_package)
        dlg.open()

    def submit_package(self, path: str) -> RemoteJobController | None:
        """Submit ``path`` to the room (results in ``<package>.results/``)."""
        try:
            package = Path(path)
            self.last_job = self.remote.submit(package, package.with_name(package.name + ".results"))
        except Exception as exc:
            show_error(self, "Submit training package", exc)
            return None
        return self.last_job
