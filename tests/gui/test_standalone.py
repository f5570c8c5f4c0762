"""The window ``sleap-rtc gui`` opens without SLEAP, and the launcher's window choice."""

from __future__ import annotations

import zipfile

from qtpy import QtWidgets

from sleap_rtc.core.phases import Phase
from sleap_rtc.gui.launcher import build_window
from job_fakes import FakeWorkers
from sleap_rtc.gui.standalone import StandaloneWindow

from fakes import start_fake_worker


async def test_standalone_submits_a_package(qtbot, tmp_path, signaling_server, room, wait_until):
    async def trains_nothing(ch):  # the package asks for no model: none comes back
        await ch.accept()
        await ch.complete()

    workers = FakeWorkers(default=trains_nothing)
    win = build_window(signaling_server.url, force_standalone=True)
    assert isinstance(win, StandaloneWindow)
    win.remote.connect = workers.connect
    qtbot.addWidget(win)
    assert win.remote.dock.objectName() == "sleap_rtc_remote_training_dock"
    assert [a.text() for a in win.menuBar().actions()] == ["File", "Remote"]
    package = tmp_path / "fly.slp.training_job.zip"
    with zipfile.ZipFile(package, "w") as zf:
        zf.writestr("jobs.yaml", "training: []\n")

    # not in a room yet: a clear message, nothing submitted
    assert win.submit_package(str(package)) is None
    box = win.findChild(QtWidgets.QMessageBox, "sleap_rtc_error_box")
    assert "Join a room first" in box.text()
    box.close()

    worker = await start_fake_worker(signaling_server.url, room, "gpu-a")
    try:
        await win.remote.join(*room)
        await wait_until(lambda: win.remote.dock.model.rowCount() == 1, 3)
        win.remote.dock.select_worker("worker-gpu-a")
        ctl = win.submit_package(str(package))
        await wait_until(lambda: ctl.phases.phase == Phase.DONE, 5)
        assert workers.attempts == ["worker-gpu-a"]
        assert workers.channels[0].package == package.read_bytes()
        assert ctl.job.results_dir == tmp_path / "fly.slp.training_job.zip.results"
        await wait_until(lambda: ctl.outcome is not None, 5)
        assert ctl.outcome.peer_id == "worker-gpu-a" and ctl.outcome.files == []
    finally:
        await win.remote.session.leave()
        await worker.close()


async def test_join_dialog_from_the_menu_joins_the_room(qtbot, signaling_server, room, wait_until):
    win = StandaloneWindow(signaling_server.url)
    qtbot.addWidget(win)
    dlg = win.remote.open_join_dialog()
    dlg.paste_edit.setPlainText(f"Room ID: {room[0]}\nToken: {room[1]}")
    dlg.ok_button.click()
    await wait_until(lambda: win.remote.session.state.value == "connected", 5)
    assert win.remote.dock.credentials.room_edit.text() == room[0]
    assert win.remote.disconnect_action.isEnabled()
    await win.remote.disconnect()
    assert win.remote.session.state.value == "disconnected"
