"""The real SLEAP 1.6.6 window on a real X display (Xvfb + openbox), driven by xdotool.

What offscreen tests cannot see: modality (does the main window take clicks while a job
runs?), window stacking (is the LossViewer the top window when it opens?), the panel's
Choose another / Wait through real clicks, and a save with Ctrl+S after predictions were
merged. Workers are in-process stand-ins (core's connect attempt, faked: ``job_fakes``)
plus fake room members for the list; training itself is not the subject here.
"""

from __future__ import annotations

import asyncio
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from polling import wait_until
from window_helpers import centre
from fakes import start_fake_worker
from job_fakes import FakeWorkers, ScriptedChannel
from sleap_rtc.core.phases import Phase
from sleap_rtc.core.protocol import ResultKind

pytestmark = [pytest.mark.realwindow, pytest.mark.timeout(180)]

SHOWN_TIMEOUT_S = 10.0
"""Generous bound for a window to be mapped, placed and focused on a loaded machine."""


def demo_project(folder: Path) -> Path:
    """The demo's project (``labels.slp`` on a real ``tiny.mp4``), as ``make demo`` makes it."""
    from sleap_rtc.demo import gui_project

    return gui_project(folder)


class TrainingWorkers(FakeWorkers):
    """In-memory workers that train until stopped or cancelled (``hold``), or at once, and
    send back per model a model folder and, when asked, predictions for the package's
    suggested frames."""

    def __init__(self, hold: bool = False, epochs: int = 2):
        super().__init__()
        self.hold, self.epochs = hold, epochs
        self.default = self.train

    async def train(self, ch: ScriptedChannel) -> None:
        with zipfile.ZipFile(io.BytesIO(ch.package)) as zf:
            jobs = yaml.safe_load(zf.read("jobs.yaml"))
            labels_name = jobs["training"][0]["train_labels"]
            labels_bytes = zf.read(labels_name)
        await ch.accept()
        for job in jobs["training"]:
            what = Path(job["cfg"]).stem
            await ch.event({"event": "train_begin", "what": what})
            for epoch in range(self.epochs):
                await asyncio.sleep(0.05)
                await ch.epoch(what, epoch, 1.0 / (epoch + 1))
            if self.hold:
                await asyncio.wait_for(ch.stopped.wait(), 60)
            await ch.event({"event": "train_end", "what": what})
        for job in jobs["training"]:
            await ch.result_model(Path(job["run_path"]).name, {"best.ckpt": b"weights", "training_config.yaml": b"ok: 1\n"})
        if jobs["inference"]:
            out = jobs["inference"][0]["output_path"]
            await ch.result_file(ResultKind.PREDICTIONS, out, predictions_for(labels_bytes))
        await ch.complete()


def predictions_for(labels_bytes: bytes) -> bytes:
    """A predictions .slp for the package's suggested frames (one instance each)."""
    import tempfile

    import sleap_io as sio

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "pkg.slp"
        src.write_bytes(labels_bytes)
        labels = sio.load_slp(str(src))
        skeleton = labels.skeletons[0]
        frames = [
            sio.LabeledFrame(video=sf.video, frame_idx=sf.frame_idx, instances=[
                sio.PredictedInstance.from_numpy(np.array([[60.0, 60.0], [70.0, 70.0]]), skeleton=skeleton,
                                                 point_scores=np.ones(2), score=0.9)])
            for sf in labels.suggestions
        ]
        out = Path(tmp) / "pred.slp"
        sio.save_slp(sio.Labels(labeled_frames=frames, videos=labels.videos, skeletons=labels.skeletons), str(out),
                     embed=False)
        return out.read_bytes()


async def shown(window, timeout: float = SHOWN_TIMEOUT_S) -> int:
    """Wait until a top-level window is mapped; its X id."""
    await wait_until(lambda: window.isVisible() and window.windowHandle() is not None and window.windowHandle().isExposed(),
                     timeout)
    await asyncio.sleep(0.3)  # the window manager's placement
    return int(window.winId())


async def click(xdisplay, widget) -> None:
    """A real click at the centre of ``widget`` (its window must be on top there)."""
    await asyncio.sleep(0.1)
    xdisplay.click(*centre(widget))
    await asyncio.sleep(0.3)


@pytest.fixture
async def sleap_window(xdisplay, sleap_home, tmp_path, signaling_server, room, request):
    """SLEAP's main window with sleap-rtc on the demo project, maximized, joined to ``room``."""
    from sleap_rtc.gui.sleap_attach import create_window

    workers = getattr(request, "param", None) or TrainingWorkers()
    project = demo_project(tmp_path / "demo")
    win = create_window(str(project), server_url=signaling_server.url, connect=workers.connect)
    win.showMaximized()
    await shown(win)
    await win.remote.session.join(*room)
    members = [await start_fake_worker(signaling_server.url, room, name) for name in ("gpu-a", "gpu-b")]
    win.remote.dock.show()
    win.remote.dock.raise_()
    await wait_until(lambda: win.remote.dock.model.rowCount() == 2, 5)
    try:
        yield win, workers, members
    finally:
        for job in win.remote_jobs:
            if job.ctl is not None:
                job.ctl.cancel()
        await asyncio.sleep(0.3)
        await win.remote.session.leave()
        for member in members:
            await member.close()
        for dlg in list(win._child_windows.values()):
            if dlg is not None:
                dlg.close()
        win._close_decided = True
        win.close()
        await asyncio.sleep(0.2)


def remote_training_dialog(win, target: str = "nothing"):
    """SLEAP's Predict > Run Training… dialog, single animal, with a tiny epoch count."""
    from sleap_rtc.gui.training_panel import PANEL_OBJECT_NAME, RemoteTrainingPanel

    win._show_learning_dialog("training")
    dlg = win._child_windows["training"]
    dlg.pipeline_form_widget.current_pipeline = "single"
    dropdown = dlg.frame_target_selector.target_dropdown
    dropdown.setCurrentIndex(dropdown.findData(target))
    return dlg, dlg.findChild(RemoteTrainingPanel, PANEL_OBJECT_NAME)


async def tick_remote_and_run(xdisplay, win, dlg, panel):
    """Real clicks on SLEAP's (modal) dialog: tick the remote box, press Run; the job started."""
    await shown(dlg)
    await click(xdisplay, panel.remote_check)
    assert panel.remote_check.isChecked(), f"a real click on SLEAP's {dlg.windowTitle()!r} did not land"
    await click(xdisplay, dlg.run_button)
    await wait_until(lambda: win.remote_jobs, 5)
    return win.remote_jobs[-1]


@pytest.mark.parametrize("sleap_window", [TrainingWorkers(hold=True)], indirect=True)
async def test_main_window_stays_usable_and_the_loss_viewer_opens_on_top(xdisplay, sleap_window):
    win, workers, _members = sleap_window
    dock = win.remote.dock
    dlg, panel = remote_training_dialog(win)
    job = await tick_remote_and_run(xdisplay, win, dlg, panel)
    viewer_id = await shown(job.viewer)
    await wait_until(lambda: job.ctl.phases.phase == Phase.TRAINING, 10)
    # the LossViewer is the active and the top window, as for SLEAP's local training
    await wait_until(lambda: xdisplay.active_window() == viewer_id, SHOWN_TIMEOUT_S)
    await wait_until(lambda: xdisplay.stacking() and xdisplay.stacking()[-1] == viewer_id, SHOWN_TIMEOUT_S)
    main_id = int(win.winId())
    assert "_NET_WM_STATE_MODAL" not in "".join(xdisplay.window_state(w) for w in xdisplay.stacking() if w != main_id)

    # the job panel is in the dock; the main window takes real clicks while the job runs
    panels = dock.job_panels()
    assert panels and panels[0] is job.ctl.panel
    job.viewer.move(0, win.height() - job.viewer.height())  # out of the dock's way, as a user would
    await asyncio.sleep(0.5)
    before = dock.show_busy_check.isChecked()
    await click(xdisplay, dock.show_busy_check)
    assert dock.show_busy_check.isChecked() != before, "the dock did not take a click while the job ran"
    await click(xdisplay, dock.table.viewport())  # a row of the worker list
    assert job.ctl.phases.phase == Phase.TRAINING

    # Stop early from the panel reaches the worker; the model comes back; a summary says where
    await click(xdisplay, job.ctl.panel.stop_button)
    await wait_until(lambda: job.ctl.phases.phase == Phase.DONE, 20)
    await wait_until(lambda: job.closed, 10)
    assert workers.channels[-1].stopped.is_set()
    assert "saved to models/" in job.ctl.panel.status_label.text() and "stopped early" in job.summary


async def test_choose_another_and_wait_work_through_the_panel(xdisplay, sleap_window):
    win, workers, members = sleap_window
    dock = win.remote.dock
    workers.behaviour["worker-gpu-a"] = "busy"
    package = Path(win.state["filename"]).parent / "any.zip"
    with zipfile.ZipFile(package, "w") as zf:
        zf.writestr("jobs.yaml", yaml.safe_dump({"training": [{"cfg": "m.yaml", "run_path": "models/m", "train_labels": "x.slp"}],
                                                  "inference": []}))
        zf.writestr("x.slp", b"")
    workers.default = lambda ch: _quick(ch)

    # the user picks gpu-a in the dock with a click; it refuses: the panel offers the ways on
    dock.select_worker(None)
    model = dock.model
    row = model.row_of("worker-gpu-a")
    rect = dock.table.visualRect(model.index(row, 0))
    point = dock.table.viewport().mapToGlobal(rect.center())
    xdisplay.click(point.x(), point.y())
    await wait_until(lambda: dock.selected_worker() is not None and dock.selected_worker().peer_id == "worker-gpu-a", 3)
    ctl = win.remote.submit(package)
    panel = ctl.panel
    await wait_until(lambda: panel.problem_box.isVisible(), 5)
    assert "gpu-a is busy" in panel.problem_label.text()
    await click(xdisplay, panel.choose_button)
    assert panel.chooser_box.isVisible()
    cm = panel.chooser_model
    rect = panel.chooser_table.visualRect(cm.index(cm.row_of("worker-gpu-b"), 0))
    point = panel.chooser_table.viewport().mapToGlobal(rect.center())
    xdisplay.click(point.x(), point.y())
    await asyncio.sleep(0.3)
    await click(xdisplay, panel.use_button)
    await wait_until(lambda: ctl.phases.phase == Phase.DONE, 10)
    assert workers.attempts[-2:] == ["worker-gpu-a", "worker-gpu-b"]
    assert dock.selected_worker().peer_id == "worker-gpu-a"  # the user's pick was not moved

    # every worker busy: Wait for a free worker, through the panel
    for member in members:
        await member.update_metadata({"properties": {"status": "busy"}})
    await wait_until(lambda: not win.remote.session.room.available(), 3)
    dock.select_worker(None)
    ctl = win.remote.submit(package)
    panel = ctl.panel
    await wait_until(lambda: panel.problem_box.isVisible(), 5)
    await click(xdisplay, panel.wait_button)
    await wait_until(lambda: "gpu-a: busy" in panel.waiting_text() and "gpu-b: busy" in panel.waiting_text(), 5)
    tried = len(workers.attempts)
    await members[1].update_metadata({"properties": {"status": "available"}})
    await wait_until(lambda: ctl.phases.phase == Phase.DONE, 10)
    assert workers.attempts[tried:] == ["worker-gpu-b"]


async def _quick(ch: ScriptedChannel) -> None:
    await ch.accept()
    await ch.epoch("m", 0, 0.5)
    await ch.result_model("m", {"best.ckpt": b"w"})
    await ch.complete()


async def test_a_save_after_a_merge_keeps_the_project_trainable(xdisplay, sleap_window, tmp_path):
    """SLEAP's default Inference Target (Current frame) trains and predicts remotely; the
    merged project saved with Ctrl+S still has its video, and trains again."""
    import sleap_io as sio

    win, workers, _members = sleap_window
    win.state["frame_idx"] = 3
    dlg, panel = remote_training_dialog(win, target="frame")  # SLEAP's default target
    assert not panel.notes() or not any("not available" in n for n in panel.notes())
    panel.remote_check.setChecked(True)
    await shown(dlg)
    await click(xdisplay, dlg.run_button)
    await wait_until(lambda: win.remote_jobs, 5)
    job = win.remote_jobs[-1]
    await wait_until(lambda: job.ctl.phases.phase == Phase.DONE, 20)
    await wait_until(lambda: job.closed, 10)
    assert job.new_frames == 1 and "1 frame predicted" in job.summary
    assert job.ctl.panel.step_text(Phase.PREDICTING).startswith("✔")  # predictions came back: ticked
    assert win.state["has_changes"]

    # Ctrl+S in the main window (a real key press), as a user saves
    win.activateWindow()
    win.raise_()
    await wait_until(lambda: xdisplay.active_window() == int(win.winId()), SHOWN_TIMEOUT_S)
    xdisplay.key("ctrl+s")
    await wait_until(lambda: not win.state["has_changes"], 10)
    saved = sio.load_slp(win.state["filename"])
    video = saved.videos[0]
    assert Path(video.filename).name == "tiny.mp4" and Path(video.filename).is_file()
    assert video[3].shape[:2] == (128, 128)  # the frames are still readable
    assert any(type(i).__name__ == "PredictedInstance" for lf in saved.labeled_frames for i in lf.instances)

    # and it trains again (a second remote run builds its package from the saved project)
    dlg, panel = remote_training_dialog(win, target="nothing")
    panel.remote_check.setChecked(True)
    await click(xdisplay, dlg.run_button)
    await wait_until(lambda: len(win.remote_jobs) == 2, 5)
    again = win.remote_jobs[-1]
    await wait_until(lambda: again.ctl.phases.phase == Phase.DONE, 20)


async def test_run_inference_closes_its_dialog_and_the_job_runs_in_the_dock(xdisplay, sleap_home, tmp_path,
                                                                          signaling_server, room):
    """Predict > Run Inference… with the remote box ticked, by real clicks: SLEAP's (modal)
    Inference dialog closes, nothing modal stays, the dock's panel shows the frames done
    while the main window takes clicks, and a real click on Cancel ends the job."""
    from inference_fakes import InferringWorker
    from sleap_projects import fake_trained_model
    from sleap_rtc.gui.sleap_attach import create_window
    from sleap_rtc.gui.training_panel import PANEL_OBJECT_NAME, RemoteTrainingPanel

    project = demo_project(tmp_path / "demo")
    fake_trained_model(project)
    workers = InferringWorker([(project.parent / "tiny.mp4", 20)], hold_after=0)
    win = create_window(str(project), server_url=signaling_server.url, connect=workers.connect)
    win.showMaximized()
    await shown(win)
    await win.remote.session.join(*room)
    member = await start_fake_worker(signaling_server.url, room, "gpu-a")
    try:
        dock = win.remote.dock
        dock.show()
        dock.raise_()
        await wait_until(lambda: dock.model.rowCount() == 1, 5)
        win._menu_actions["inference"].trigger()
        dlg = win._child_windows["inference"]
        dlg.pipeline_form_widget.current_pipeline = "single"
        dropdown = dlg.frame_target_selector.target_dropdown
        dropdown.setCurrentIndex(dropdown.findData("video"))
        run = await tick_remote_and_run(xdisplay, win, dlg, dlg.findChild(RemoteTrainingPanel, PANEL_OBJECT_NAME))
        await wait_until(lambda: "Predicted 10/20 frames" in run.ctl.panel.training_label.text(), 10)
        assert not dlg.isVisible()
        main_id = int(win.winId())
        assert "_NET_WM_STATE_MODAL" not in "".join(xdisplay.window_state(w) for w in xdisplay.stacking() if w != main_id)
        assert dock.job_panels() and dock.job_panels()[0] is run.ctl.panel
        before = dock.show_busy_check.isChecked()
        await click(xdisplay, dock.show_busy_check)
        assert dock.show_busy_check.isChecked() != before, "the dock did not take a click while the inference ran"
        await click(xdisplay, run.ctl.panel.cancel_button)
        await wait_until(lambda: run.ctl.phases.phase == Phase.CANCELLED and run.summary, 10)
        assert run.summary == "No predictions came back."
    finally:
        await win.remote.session.leave()
        await member.close()
        for dlg in list(win._child_windows.values()):
            if dlg is not None:
                dlg.close()
        win.state["has_changes"] = False
        win._close_decided = True
        win.close()
        await asyncio.sleep(0.2)
