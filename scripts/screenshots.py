"""Render the GUI's screenshots into docs/images/ from the real SLEAP window on a real X display.

    make screenshots        # or: QT_QPA_PLATFORM=xcb SLEAP_SKIP_QT_FIX=1 python scripts/screenshots.py

It starts a private Xvfb + openbox display (``tests/window/xdisplay.py``; the X tools are
installed as root when missing), a loopback signaling server with in-process stand-in
workers (``tests/gui/fakes.py`` for the room's list, ``tests/job_fakes.py`` for the jobs),
and SLEAP 1.6.6 on the demo project (``labels.slp`` on a real ``tiny.mp4``). Whole-screen
and window pictures are taken by the X server (ImageMagick ``import``), so they show what a
user sees: the window manager's stacking, the LossViewer on top, the job panel in the dock.
HOME is a temp dir for SLEAP.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "images"
sys.path[:0] = [str(ROOT / "tests" / "window"), str(ROOT / "tests" / "gui"), str(ROOT / "tests"), str(ROOT)]

from xdisplay import XDisplay, ensure_tools  # noqa: E402

os.environ["HOME"] = tempfile.mkdtemp(prefix="sleap-rtc-shots-home-")
os.environ.setdefault("SLEAP_SKIP_QT_FIX", "1")
os.environ["QT_QPA_PLATFORM"] = "xcb"
os.environ.setdefault("MPLBACKEND", "QtAgg")


async def settle(seconds: float = 0.4) -> None:
    await asyncio.sleep(seconds)


async def wait_for(predicate, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError("the GUI did not get there in time")
        await asyncio.sleep(0.05)


def save_screen(display: XDisplay, name: str) -> None:
    display.capture("root", OUT / name)
    print("wrote", (OUT / name).relative_to(ROOT))


def save_window(display: XDisplay, widget, name: str) -> None:
    display.capture(int(widget.winId()), OUT / name)
    print("wrote", (OUT / name).relative_to(ROOT))


def save_widget(widget, name: str) -> None:
    widget.grab().save(str(OUT / name))  # a part of a window, drawn by Qt's xcb platform
    print("wrote", (OUT / name).relative_to(ROOT))


async def main(display: XDisplay) -> None:
    from fakes import start_fake_worker
    from job_fakes import FakeWorkers, ScriptedChannel
    from sleap_rtc.core.credentials import encode_session_string
    from sleap_rtc.demo import gui_project
    from sleap_rtc.gui.credentials_dialog import CredentialsDialog
    from sleap_rtc.gui.sleap_attach import create_window
    from sleap_rtc.gui.training_panel import PANEL_OBJECT_NAME, RemoteTrainingPanel
    from sleap_rtc.server.app import start_server

    OUT.mkdir(parents=True, exist_ok=True)
    server = await start_server("127.0.0.1", 0)
    room = await server.create_room()
    release = asyncio.Event()

    async def train_slowly(ch: ScriptedChannel) -> None:
        import io
        import zipfile

        import yaml

        with zipfile.ZipFile(io.BytesIO(ch.package)) as zf:
            runs = [Path(job["run_path"]).name for job in yaml.safe_load(zf.read("jobs.yaml"))["training"]]
        await ch.accept()
        for model in ("centroid", "centered_instance"):
            await ch.event({"event": "train_begin", "what": model})
            for epoch in range(6):
                await asyncio.sleep(0.15)
                await ch.epoch(model, epoch, 0.02 / (epoch + 1))
            await release.wait()
        for run in runs:  # a worker may only return the runs the package trains
            await ch.result_model(run, {"best.ckpt": b"w"})
        await ch.complete()

    jobs = FakeWorkers(default=train_slowly)
    members = []
    win = None
    try:
        project = gui_project(Path(tempfile.mkdtemp(prefix="sleap-rtc-shots-")) / "demo")
        win = create_window(str(project), server_url=server.url, connect=jobs.connect)
        win.showMaximized()
        await settle(1.5)
        dock = win.remote.dock

        # the dock with no worker yet: the exact command, token masked
        await win.remote.session.join(*room)
        dock.show()
        dock.raise_()
        await settle()
        save_widget(dock, "dock-empty.png")

        members.append(await start_fake_worker(server.url, room, "gpu-a", gpu="NVIDIA RTX A5000", memory_mb=24576))
        members.append(await start_fake_worker(server.url, room, "gpu-b", gpu="NVIDIA A100-SXM4-80GB", memory_mb=81920))
        members.append(await start_fake_worker(server.url, room, "cpu-box", gpu="CPU", memory_mb=0))
        await wait_for(lambda: dock.model.rowCount() == 3)
        dock.table.resizeColumnsToContents()
        await settle()
        save_screen(display, "sleap-main-window.png")
        save_widget(dock, "dock.png")

        # Join room: a pasted banner, then a cut-short session string
        dlg = CredentialsDialog(win)
        dlg.resize(520, 460)
        dlg.show()
        dlg.paste_edit.setPlainText(f"sleap-rtc worker gpu-a ready\nRoom ID: {room[0]}\nToken: {room[1]}\n")
        await settle()
        save_window(display, dlg, "credentials-dialog.png")
        dlg.paste_edit.setPlainText("")
        dlg.session_edit.setText(encode_session_string(room[0], room[1], "worker-gpu-a")[:-7])
        await settle()
        save_window(display, dlg, "credentials-dialog-bad-session.png")
        dlg.close()

        # SLEAP's training dialog: the Remote training panel, its worker chooser and notes
        win._show_learning_dialog("training")
        tdlg = win._child_windows["training"]
        panel = tdlg.findChild(RemoteTrainingPanel, PANEL_OBJECT_NAME)
        panel.remote_check.setChecked(True)
        dropdown = tdlg.frame_target_selector.target_dropdown
        dropdown.setCurrentIndex(dropdown.findData("video"))
        dock.select_worker("worker-cpu-box")
        await settle(1.0)
        save_window(display, tdlg, "sleap-training-dialog.png")

        # Run with SLEAP's defaults (Current frame; top-down, two models) on gpu-b
        dropdown.setCurrentIndex(dropdown.findData("frame"))
        dock.select_worker("worker-gpu-b")
        tdlg.run_button.click()
        await wait_for(lambda: win.remote_jobs and win.remote_jobs[-1].epochs_forwarded >= 4)
        job = win.remote_jobs[-1]
        await settle(1.0)
        save_screen(display, "demo-gui.png")  # the LossViewer on top, the job panel in the dock
        job.viewer.move(20, 420)
        await settle(0.6)
        save_screen(display, "sleap-remote-job.png")
        save_widget(job.ctl.panel, "job-panel-training.png")
        release.set()
        await wait_for(lambda: job.closed, 30)
        await settle()
        save_widget(job.ctl.panel, "job-panel-finished.png")
        job.ctl.panel.close_button.click()

        # a picked worker refuses: the ways on, the live list
        jobs.behaviour["worker-gpu-a"] = "busy"
        release.clear()
        package = Path(win.state["filename"]).parent / "any.zip"
        import zipfile

        with zipfile.ZipFile(package, "w") as zf:
            zf.writestr("jobs.yaml", "training: []\ninference: []\n")
        dock.select_worker("worker-gpu-a")
        ctl = win.remote.submit(package)
        await wait_for(lambda: ctl.panel.problem_box.isVisible())
        await settle()
        save_widget(ctl.panel, "job-panel-busy.png")
        ctl.panel.choose_button.click()
        await settle()
        save_widget(ctl.panel, "job-panel-choose.png")
        ctl.cancel()
        await settle()
        ctl.panel.close_button.click()

        # every worker busy: wait for a free one
        for member in members:
            await member.update_metadata({"properties": {"status": "busy"}})
        await wait_for(lambda: not win.remote.session.room.available())
        dock.select_worker(None)
        ctl = win.remote.submit(package)
        await wait_for(lambda: ctl.panel.problem_box.isVisible())
        ctl.panel.wait_button.click()
        await wait_for(lambda: ctl.panel.waiting_label.isVisible())
        await settle()
        save_widget(ctl.panel, "job-panel-waiting.png")
        ctl.cancel()
        await settle()
    finally:
        if win is not None:
            for ctl in win.remote.jobs:
                ctl.cancel()
            await settle()
            await win.remote.session.leave()
            win._close_decided = True
            win.close()
        for member in members:
            await member.close()
        await server.stop()


if __name__ == "__main__":
    reason = ensure_tools()
    if reason:
        sys.exit(f"screenshots: {reason}")
    display = XDisplay()
    display.start()
    try:
        from sleap_rtc.gui import bridge
        from sleap_rtc.gui.sleap_attach import create_app

        app = create_app()
        app.setQuitOnLastWindowClosed(False)
        loop = bridge.make_loop(app)
        with loop:
            loop.run_until_complete(asyncio.wait_for(main(display), 240))
    finally:
        display.stop()
