"""Integration with the real SLEAP 1.6.6 GUI (offscreen): panel, local Run, remote Run."""

from __future__ import annotations

import asyncio
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from job_fakes import FakeWorkers, ScriptedChannel
from sleap_rtc.core.phases import Phase
from sleap_rtc.core.remote_job import JobSummary
from sleap_rtc.gui.training_panel import PANEL_OBJECT_NAME, RemoteTrainingPanel

from fakes import start_fake_worker

pytestmark = pytest.mark.sleap


def make_project(folder: Path) -> Path:
    """A tiny saved SLEAP project: an 8-frame 64x64 video and 4 labeled frames."""
    import sleap_io as sio

    frames = (np.random.default_rng(0).random((8, 64, 64, 1)) * 255).astype("uint8")
    sio.save_video(frames, str(folder / "clip.mp4"))
    video = sio.load_video(str(folder / "clip.mp4"))
    skeleton = sio.Skeleton(["head", "tail"])
    lfs = [
        sio.LabeledFrame(video=video, frame_idx=i, instances=[sio.Instance.from_numpy(np.array([[10.0 + i, 10.0], [30.0, 30.0 + i]]), skeleton=skeleton)])
        for i in range(4)
    ]
    path = folder / "proj.slp"
    sio.save_slp(sio.Labels(labeled_frames=lfs, videos=[video], skeletons=[skeleton]), str(path))
    return path


@pytest.fixture
def project(tmp_path, sleap_home):
    return make_project(tmp_path)


@pytest.fixture
def window(qtbot, project, signaling_server, request):
    from sleap_rtc.gui.sleap_attach import create_window

    workers = getattr(request, "param", None)
    win = create_window(str(project), server_url=signaling_server.url, connect=workers.connect if workers else None)
    qtbot.addWidget(win)
    yield win
    for dlg in list(win._child_windows.values()):
        if dlg is not None:
            dlg.close()


def training_dialog(win, predict_on: str | None = None):
    """SLEAP's training dialog as Predict > Run Training opens it; ``predict_on`` picks a
    "Predict On" target by key (e.g. "nothing", "user_labeled")."""
    win._show_learning_dialog("training")
    dlg = win._child_windows["training"]
    if predict_on is not None:
        dropdown = dlg.frame_target_selector.target_dropdown
        index = dropdown.findData(predict_on)
        assert index >= 0, [dropdown.itemData(i) for i in range(dropdown.count())]
        dropdown.setCurrentIndex(index)
    return dlg


async def test_dock_and_menu_are_attached(window):
    from qtpy import QtCore, QtWidgets

    dock = window.remote.dock
    assert window.dockWidgetArea(dock) == QtCore.Qt.RightDockWidgetArea
    assert dock in window.tabifiedDockWidgets(window.instances_dock)
    assert dock.toggleViewAction() in window.viewMenu.actions()
    menu = window.findChild(QtWidgets.QMenu, "sleap_rtc_remote_menu")
    assert [a.text() for a in menu.actions() if a.text()][:3] == ["Join room…", "Use session string…", "Disconnect"]
    titles = [a.text().replace("&", "") for a in window.menuBar().actions()]
    assert titles.index("Remote") == titles.index("Help") - 1, titles  # the Remote menu before Help
    assert window.state["share usage data"] is False


async def test_panel_is_injected_once(window):
    dlg = training_dialog(window)
    dlg.reject()
    again = training_dialog(window)
    assert again is dlg  # SLEAP reuses the dialog
    panels = dlg.findChildren(RemoteTrainingPanel, PANEL_OBJECT_NAME)
    assert len(panels) == 1
    assert dlg.layout().itemAt(1).widget() is panels[0]
    assert not panels[0].remote_enabled()


async def test_run_without_remote_is_sleaps_own_path(window, monkeypatch):
    import sleap.gui.learning.runners as runners

    calls = []

    def fake_pipeline(**kwargs):
        calls.append(kwargs)
        return 0

    monkeypatch.setattr(runners, "run_learning_pipeline", fake_pipeline)
    dlg = training_dialog(window)
    dlg.run_button.click()
    assert len(calls) == 1
    assert calls[0]["labels_filename"] == window.state["filename"]
    assert [c.head_name for c in calls[0]["config_info_list"]]
    assert window.remote_jobs == []


class FakeRemoteWorker(FakeWorkers):
    """Core's connect attempt to in-memory workers that train the package they get: per
    model of its jobs.yaml, sleap-nn's events, then the model folder back (a zip)."""

    def __init__(self, epochs: int = 3):
        super().__init__()
        self.epochs = epochs
        self.packages: list[bytes] = []
        self.default = self.train

    async def train(self, ch: ScriptedChannel) -> None:
        self.packages.append(ch.package)
        with zipfile.ZipFile(io.BytesIO(ch.package)) as zf:
            jobs = yaml.safe_load(zf.read("jobs.yaml"))
        await ch.accept()
        for job in jobs["training"]:
            what = Path(job["cfg"]).stem
            await ch.event({"event": "train_begin", "what": what})
            for epoch in range(self.epochs):
                await asyncio.sleep(0.05)
                await ch.event({"event": "epoch_begin", "what": what, "epoch": epoch})
                await ch.epoch(what, epoch, 1.0 / (epoch + 1))
            await ch.event({"event": "train_end", "what": what})
        for job in jobs["training"]:
            await ch.result_model(Path(job["run_path"]).name, {"best.ckpt": b"weights", "training_config.yaml": b"ok: true\n"})
        await ch.complete()


@pytest.mark.parametrize("window", [FakeRemoteWorker(epochs=3)], indirect=True)
async def test_run_with_remote_trains_on_a_worker(window, signaling_server, room, wait_until, qtbot):
    worker = await start_fake_worker(signaling_server.url, room, "gpu-a")
    try:
        await window.remote.session.join(*room)
        await wait_until(lambda: window.remote.dock.model.rowCount() == 1, 3)
        dlg = training_dialog(window, predict_on="nothing")
        panel = dlg.findChild(RemoteTrainingPanel, PANEL_OBJECT_NAME)
        assert panel.room_label.text() == room[0]
        panel.remote_check.setChecked(True)
        dlg.run_button.click()  # SLEAP's default pipeline: top-down, two models
        assert len(window.remote_jobs) == 1
        job = window.remote_jobs[0]
        epochs = []
        job.viewer.on_epoch.connect(lambda: epochs.append(1))
        heads = job.heads
        await wait_until(lambda: job.ctl.phases.phase == Phase.DONE, 20)
        # the LossViewer (SLEAP's own window) plotted the remote epochs of the last head
        await wait_until(lambda: job.closed, 5)
        assert job.epochs_forwarded == 3 * len(heads)
        assert len(epochs) == job.epochs_forwarded  # every remote epoch reached the LossViewer
        # the package's temp folder is gone once the job ended; the panel has a one-line summary
        assert not job.package.path.parent.exists()
        assert job.summary.startswith("Finished: models saved to models/") and job.summary == job.ctl.panel.status_label.text()
        assert "not asked" in job.ctl.panel.step_text(Phase.PREDICTING)  # Inference Target: Nothing
        # a multi-model run: the viewer was reset for the second model (its own plot, Stop Early live)
        assert len(heads) == 1 or job.resets == len(heads)
        # package: labels with embedded frames + one config per head + jobs.yaml, relative paths
        with zipfile.ZipFile(io.BytesIO(window.remote.connect.__self__.packages[-1])) as zf:
            names = set(zf.namelist())
            assert {"proj.pkg.slp", "jobs.yaml", "train-script.sh"} | {f"{h}.yaml" for h in heads} <= names
            cfg = yaml.safe_load(zf.read(f"{heads[0]}.yaml"))
        assert cfg["data_config"]["train_labels_path"] == ["proj.pkg.slp"]
        assert cfg["trainer_config"]["ckpt_dir"] == "models"
        assert cfg["trainer_config"]["zmq"]["publish_port"] is None
        # the trained models landed in the project's models folder
        project_models = Path(window.state["filename"]).parent / "models"
        for run_path in job.package.run_paths.values():
            assert (project_models / Path(run_path).name / "best.ckpt").read_bytes() == b"weights"
    finally:
        await window.remote.session.leave()
        await worker.close()


class SlowRemoteWorker(FakeRemoteWorker):
    """Trains until stopped (or cancelled); ``controls`` lists which control each job got."""

    def __init__(self):
        super().__init__()
        self.default = self.slow

    @property
    def controls(self) -> list[str]:
        return [("cancel" if ch.cancelled.is_set() else "stop") for ch in self.channels
                if ch.stopped.is_set() or ch.cancelled.is_set()]

    async def slow(self, ch: ScriptedChannel) -> None:
        await ch.accept()
        await ch.event({"event": "train_begin", "what": "single_instance"})
        await asyncio.wait_for(ch.stopped.wait(), 20)
        await ch.complete()


@pytest.mark.parametrize("window", [SlowRemoteWorker()], indirect=True)
async def test_lossviewer_stop_and_cancel_reach_the_remote_job(window, signaling_server, room, wait_until):
    runner = window.remote.connect.__self__
    worker = await start_fake_worker(signaling_server.url, room, "gpu-a")
    await window.remote.session.join(*room)
    try:
        # Stop Early: the viewer publishes {"command": "stop"} on its controller port
        dlg = training_dialog(window, predict_on="nothing")
        dlg.findChild(RemoteTrainingPanel, PANEL_OBJECT_NAME).remote_check.setChecked(True)
        dlg.run_button.click()
        job = window.remote_jobs[-1]
        await wait_until(lambda: job.ctl.phases.phase == Phase.TRAINING, 5)
        await asyncio.sleep(0.6)  # ZMQ slow joiner of our controller SUB
        job.viewer.stop_button.click()
        await wait_until(lambda: job.ctl.phases.phase == Phase.DONE, 5)
        assert runner.controls == ["stop"]

        # Cancel Training: cancels the remote job
        dlg = training_dialog(window)
        dlg.run_button.click()
        job = window.remote_jobs[-1]
        await wait_until(lambda: job.ctl.phases.phase == Phase.TRAINING, 5)
        job.viewer.cancel_button.click()
        await wait_until(lambda: job.ctl.phases.phase == Phase.CANCELLED, 5)
        assert runner.controls == ["stop", "cancel"]
        await wait_until(lambda: job.closed, 5)
    finally:
        await window.remote.session.leave()
        await worker.close()


async def test_remote_run_end_to_end_with_a_real_worker(qtbot, project, signaling_server, room, tmp_path, wait_until):
    """SLEAP's Run -> package -> core client flow -> real WebRTC -> the real worker runtime
    (sleap-nn replaced by the worker tests' fast fake CLI) -> epochs in the LossViewer ->
    model folder in the project's models/."""
    import sys

    from sleap_rtc.gui.sleap_attach import create_window
    from sleap_rtc.worker.app import Worker, WorkerConfig
    from sleap_rtc.worker.capabilities import Capabilities, GpuInfo
    from sleap_rtc.worker.executor import JobExecutor

    fake_nn = Path(__file__).resolve().parents[1] / "worker" / "fake_sleap_nn.py"
    if not fake_nn.is_file():
        pytest.skip("the worker tests' fake sleap-nn CLI is not there")
    caps = Capabilities(worker_name="gpu-a", hostname="testhost", gpu=GpuInfo("Test GPU", 24576, "12.4", 0))
    config = WorkerConfig(
        server_url=signaling_server.url, room_id=room[0], token=room[1], work_dir=tmp_path / "worker",
        executor_factory=lambda jid: JobExecutor(jid, command=[sys.executable, str(fake_nn)]),
    )
    worker = Worker(config, caps)
    await worker.start()
    win = create_window(str(project), server_url=signaling_server.url)  # default connect: real WebRTC
    qtbot.addWidget(win)
    try:
        await win.remote.session.join(*room)
        await wait_until(lambda: win.remote.dock.model.rowCount() == 1, 5)
        dlg = training_dialog(win, predict_on="nothing")
        dlg.findChild(RemoteTrainingPanel, PANEL_OBJECT_NAME).remote_check.setChecked(True)
        dlg.run_button.click()
        job = win.remote_jobs[-1]
        epochs = []
        job.viewer.on_epoch.connect(lambda: epochs.append(1))
        await wait_until(lambda: job.ctl.phases.finished, 60)
        assert job.ctl.phases.phase == Phase.DONE, job.ctl.error
        await wait_until(lambda: job.closed, 5)
        assert job.epochs_forwarded > 0 and len(epochs) > 0
        models = Path(win.state["filename"]).parent / "models"
        assert any(models.glob("*/best.ckpt")), sorted(str(p) for p in models.rglob("*"))
    finally:
        await win.remote.session.leave()
        await worker.close()
        dlg = win._child_windows.get("training")
        if dlg is not None:
            dlg.close()


async def test_returned_predictions_are_merged_into_the_open_labels(window, tmp_path):
    """Predictions come back on the package's embedded video; they land on the project's video."""
    import sleap_io as sio

    from sleap_rtc.gui.sleap_attach import RemoteTraining

    labels = window.labels
    pkg_labels = tmp_path / "proj.pkg.slp"
    labels.save(str(pkg_labels), embed=True)
    embedded = sio.load_slp(str(pkg_labels))
    skeleton = embedded.skeletons[0]
    pred = sio.PredictedInstance.from_numpy(np.array([[5.0, 6.0], [7.0, 8.0]]), skeleton=skeleton, point_scores=np.ones(2), score=0.9)
    out = sio.Labels(labeled_frames=[sio.LabeledFrame(video=embedded.videos[0], frame_idx=6, instances=[pred])],
                     videos=embedded.videos, skeletons=embedded.skeletons)
    predictions = tmp_path / "proj.pkg.slp.predictions.slp"
    sio.save_slp(out, str(predictions), embed=False)

    job = RemoteTraining.__new__(RemoteTraining)  # only the merge step, without a viewer
    job.window, job.form = window, {"_prediction_mode": "add"}
    before = len(labels.labeled_frames)
    assert job.merge_predictions(JobSummary(worker="w", peer_id="w", duration_s=0.0, predictions=predictions)) == 1
    assert len(labels.labeled_frames) == before + 1
    lf = labels.find(labels.videos[0], 6)[0]
    assert lf.video is labels.videos[0]
    assert [type(i).__name__ for i in lf.instances] == ["PredictedInstance"]


@pytest.mark.parametrize("window", [FakeRemoteWorker(epochs=1)], indirect=True)
async def test_whole_video_targets_are_predicted_after_training_unless_the_video_cannot_be_sent(
        window, project, signaling_server, room, wait_until, monkeypatch):
    """"Entire video" trains first and predicts in a second job (the package trains only);
    a video file missing here is explained in SLEAP's words before Run, which starts nothing."""
    import sleap_rtc.gui.sleap_attach as attach

    shown = []
    monkeypatch.setattr(attach, "show_error", lambda parent, title, exc: shown.append(str(exc)))
    await window.remote.session.join(*room)
    video = project.parent / "clip.mp4"
    try:
        dlg = training_dialog(window, predict_on="video")
        dlg.pipeline_form_widget.current_pipeline = "single"
        panel = dlg.findChild(RemoteTrainingPanel, PANEL_OBJECT_NAME)
        panel.remote_check.setChecked(True)
        assert panel.notes() == []
        assert attach.remote_inference_request("video") is None  # the package itself trains only
        video.rename(video.with_suffix(".moved"))
        panel.notes_wanted.emit()
        notes = " ".join(panel.notes())
        assert "Video 1's file" in notes and "is not on this computer" in notes and "File ▸ Replace Videos…" in notes
        dlg.run_button.click()
        assert window.remote_jobs == []
        assert shown and "is not on this computer" in shown[0] and "Predict On" not in shown[0]
        # a target served from the package clears the note
        dropdown = dlg.frame_target_selector.target_dropdown
        dropdown.setCurrentIndex(dropdown.findData("user_labeled"))
        assert panel.notes() == []
        assert attach.remote_inference_request("user_labeled").only_labeled_frames
        assert attach.remote_inference_request("suggestions").only_suggested_frames
        assert attach.remote_inference_request("nothing") is None
    finally:
        if video.with_suffix(".moved").exists():
            video.with_suffix(".moved").rename(video)
        await window.remote.session.leave()


async def test_current_frame_travels_in_the_package_as_its_suggestion(window, tmp_path):
    """SLEAP's default Inference Target (Current frame) is served: that frame is the
    package's suggestion and the worker predicts suggested frames; the project is unchanged."""
    import sleap_io as sio

    from sleap_rtc.gui.sleap_attach import package_from_dialog

    dlg = training_dialog(window)
    assert dlg.frame_target_selector.get_selection().target_key == "frame"  # SLEAP's default
    dlg.pipeline_form_widget.current_pipeline = "single"
    before = list(window.labels.suggestions)
    info, form = package_from_dialog(window, dlg, tmp_path)
    assert list(window.labels.suggestions) == before
    with zipfile.ZipFile(info.path) as zf:
        jobs = yaml.safe_load(zf.read("jobs.yaml"))
        zf.extract(info.labels_name, tmp_path / "x")
    assert jobs["inference"][0]["only_suggested_frames"] is True
    packaged = sio.load_slp(str(tmp_path / "x" / info.labels_name))
    frames = [sf.frame_idx for sf in packaged.suggestions]
    assert len(frames) == 1 and form["_predict_frames"] == 1
    assert packaged.videos[0][frames[0]].shape[:2] == (64, 64)  # the frame itself is embedded


async def test_cpu_worker_warns_about_sleaps_default_epochs(window, signaling_server, room, wait_until):
    worker = await start_fake_worker(signaling_server.url, room, "cpu-box", gpu="CPU", memory_mb=0)
    await window.remote.session.join(*room)
    try:
        await wait_until(lambda: window.remote.dock.model.rowCount() == 1, 3)
        dlg = training_dialog(window, predict_on="nothing")
        panel = dlg.findChild(RemoteTrainingPanel, PANEL_OBJECT_NAME)
        panel.remote_check.setChecked(True)
        notes = " ".join(panel.notes())
        assert "has no GPU" in notes and "Max Epochs</b> 200" in notes
        # the worker can be picked right in the training dialog (SLEAP's dialog is modal)
        combo = panel.worker_combo
        index = combo.findData("worker-cpu-box")
        assert index > 0
        combo.setCurrentIndex(index)
        combo.activated.emit(index)
        assert window.remote.dock.selected_worker().peer_id == "worker-cpu-box"
        assert "cpu-box has no GPU" in " ".join(panel.notes())
    finally:
        await window.remote.session.leave()
        await worker.close()


@pytest.mark.parametrize("window", [SlowRemoteWorker()], indirect=True)
async def test_closing_sleap_with_a_job_running_asks_what_to_do(window, signaling_server, room, wait_until):
    """Closing asks (non-modal box): "Keep SLEAP open" keeps the job; "Cancel" cancels it and closes."""
    from qtpy import QtWidgets

    worker = await start_fake_worker(signaling_server.url, room, "gpu-a")
    await window.remote.session.join(*room)
    try:
        window.show()
        dlg = training_dialog(window, predict_on="nothing")
        dlg.findChild(RemoteTrainingPanel, PANEL_OBJECT_NAME).remote_check.setChecked(True)
        dlg.run_button.click()
        job = window.remote_jobs[-1]
        await wait_until(lambda: job.ctl.phases.phase == Phase.TRAINING, 5)
        window.close()
        box = await wait_until(lambda: window.findChild(QtWidgets.QMessageBox, "sleap_rtc_close_box"), 3)
        assert window.isVisible() and "still running" in box.text()
        assert "not available yet" in box.informativeText()  # detach: said, not pretended
        box.findChild(QtWidgets.QPushButton, "keep open").click()
        await asyncio.sleep(0.2)
        assert window.isVisible() and job.ctl.running
        window.close()
        box = await wait_until(lambda: [b for b in window.findChildren(QtWidgets.QMessageBox, "sleap_rtc_close_box")
                                        if b.isVisible()], 3)
        box[0].findChild(QtWidgets.QPushButton, "cancel").click()
        await wait_until(lambda: job.ctl.phases.phase == Phase.CANCELLED, 5)
    finally:
        await window.remote.session.leave()
        await worker.close()
