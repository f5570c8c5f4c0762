"""Render the GUI's screenshots into docs/images/ (offscreen; ``widget.grab().save()``).

    QT_QPA_PLATFORM=offscreen SLEAP_SKIP_QT_FIX=1 python scripts/screenshots.py

Runs a loopback signaling server with three in-process fake workers (one busy), joins the
room, and saves: the dock (``dock.png``, ``dock-busy-shown.png``, ``dock-empty.png``), the
credentials dialog with a pasted banner and with a bad session string, the connect/retry
dialog (mid-upload and after a busy refusal), and, when SLEAP is installed, SLEAP's
training dialog with the Remote training panel (``sleap-training-dialog.png``) and the
main window with the dock (``sleap-main-window.png``). HOME is a temp dir for SLEAP.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("SLEAP_SKIP_QT_FIX", "1")
os.environ["HOME"] = tempfile.mkdtemp(prefix="sleap-rtc-shots-home-")

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "images"
sys.path.insert(0, str(ROOT / "tests" / "gui"))  # the fake workers of the tests


def save(widget, name: str) -> None:
    widget.adjustSize() if widget.width() < 50 else None
    path = OUT / name
    widget.grab().save(str(path))
    print("wrote", path.relative_to(ROOT))


async def settle(seconds: float = 0.2) -> None:
    await asyncio.sleep(seconds)


async def main() -> None:
    from qtpy import QtWidgets

    from fakes import start_fake_worker
    from sleap_rtc.core.credentials import encode_session_string
    from sleap_rtc.core.phases import JobPhases, Phase
    from sleap_rtc.gui.credentials_dialog import CredentialsDialog
    from sleap_rtc.gui.dock import RemoteTrainingDock
    from sleap_rtc.gui.job_dialog import JobDialog
    from sleap_rtc.gui.session import RoomSession
    from sleap_rtc.server.app import start_server

    OUT.mkdir(parents=True, exist_ok=True)
    server = await start_server("127.0.0.1", 0)
    room = await server.create_room()
    workers = []
    try:
        # empty room
        session = RoomSession(server.url)
        dock = RemoteTrainingDock(session)
        dock.resize(460, 520)
        dock.show()
        await session.join(*room)
        await settle()
        save(dock, "dock-empty.png")

        workers.append(await start_fake_worker(server.url, room, "gpu-a", gpu="NVIDIA RTX A5000", memory_mb=24576))
        workers.append(await start_fake_worker(server.url, room, "gpu-b", gpu="NVIDIA A100-SXM4-80GB", memory_mb=81920))
        workers.append(await start_fake_worker(server.url, room, "gpu-c", gpu="NVIDIA GeForce RTX 4090", memory_mb=24564))
        await workers[2].update_metadata({"properties": {"status": "busy"}})
        await settle()
        dock.table.resizeColumnsToContents()
        dock.select_worker("worker-gpu-b")
        save(dock, "dock.png")
        dock.show_busy_check.setChecked(True)
        dock.table.resizeColumnsToContents()
        await settle()
        save(dock, "dock-busy-shown.png")
        dock.show_busy_check.setChecked(False)

        dlg = CredentialsDialog()
        dlg.resize(480, 420)
        dlg.show()
        dlg.paste_edit.setPlainText(f"sleap-rtc worker gpu-a ready\nRoom ID: {room[0]}\nToken: {room[1]}\n")
        await settle()
        save(dlg, "credentials-dialog.png")
        dlg.paste_edit.setPlainText("")
        dlg.session_edit.setText(encode_session_string(room[0], room[1], "worker-gpu-a")[:-7])
        await settle()
        save(dlg, "credentials-dialog-bad-session.png")
        dlg.close()

        async def job_dialog(*steps: tuple) -> JobDialog:
            """A connect/retry dialog walked through ``steps`` ((phase, detail) pairs)."""
            phases = JobPhases()
            dialog = JobDialog(phases)
            dialog.show()
            for phase, *detail in ((Phase.JOINING,), (Phase.DISCOVERING,), (Phase.SELECTING,), *steps):
                phases.advance(phase, *detail)
            await settle()
            return dialog

        jd = await job_dialog((Phase.RESERVING, "gpu-b"), (Phase.CONNECTING,), (Phase.UPLOADING, "42%"))
        save(jd, "job-dialog-uploading.png")
        jd.close()
        jd2 = await job_dialog((Phase.RESERVING, "gpu-c"), (Phase.SELECTING, "gpu-c is busy"))
        jd2.show_problem("Worker gpu-c is busy: another job got it first.")
        await settle()
        save(jd2, "job-dialog-busy.png")
        jd2.close()
        await session.leave()
        dock.close()

        await sleap_shots(server, room)
    finally:
        for w in workers:
            await w.close()
        await server.stop()


async def sleap_shots(server, room) -> None:
    try:
        import sleap.gui.app  # noqa: F401
    except ImportError:
        print("SLEAP not installed: skipping the SLEAP screenshots")
        return
    from test_sleap_attach import make_project

    from sleap_rtc.gui.sleap_attach import create_window
    from sleap_rtc.gui.training_panel import PANEL_OBJECT_NAME, RemoteTrainingPanel

    folder = Path(tempfile.mkdtemp(prefix="sleap-rtc-shots-"))
    project = make_project(folder)
    win = create_window(str(project), server_url=server.url)
    win.resize(1400, 850)
    win.show()
    await win.remote.session.join(*room)
    win.remote.dock.show()
    win.remote.dock.raise_()
    await settle(0.5)
    save(win, "sleap-main-window.png")
    win._show_learning_dialog("training")
    dlg = win._child_windows["training"]
    panel = dlg.findChild(RemoteTrainingPanel, PANEL_OBJECT_NAME)
    panel.remote_check.setChecked(True)
    dlg.resize(900, 900)
    await settle(0.5)
    save(dlg, "sleap-training-dialog.png")
    dlg.reject()
    await win.remote.session.leave()
    win.close()


if __name__ == "__main__":
    from sleap_rtc.gui import bridge

    app = bridge.ensure_app()
    app.setQuitOnLastWindowClosed(False)
    loop = bridge.make_loop(app)
    with loop:
        loop.run_until_complete(asyncio.wait_for(main(), 120))
