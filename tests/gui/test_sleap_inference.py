"""SLEAP's Run Inference… with "Predict on a remote worker": SLEAP 1.6.6's real window and
Inference dialog, core's real ``RemoteInference``, an in-memory stand-in worker.

The stand-in answers the inference package like a worker (progress events per video, one
predictions file per video) so the GUI's part is checked fast: the panel, the request made
from SLEAP's Inference Target, the progress in the dock's panel, the per-video merge, and
what an interrupted job keeps. The same path with a real worker process and real sleap-nn
runs in ``test_sleap_real_inference.py``.
"""

from __future__ import annotations

import io
import zipfile

import pytest
import yaml

from inference_fakes import InferringWorker
from job_fakes import ScriptedChannel
from sleap_projects import N0, N1, fake_trained_model, make_two_video_project
from sleap_rtc.core.phases import Phase
from sleap_rtc.gui.training_panel import PANEL_OBJECT_NAME, RemoteTrainingPanel

from fakes import start_fake_worker

pytestmark = pytest.mark.sleap


@pytest.fixture
def project(tmp_path, sleap_home):
    path = make_two_video_project(tmp_path)
    fake_trained_model(path)
    return path


@pytest.fixture
def open_window(qapp):
    """``open_window(project, url, workers)``: SLEAP's window; closed here, without SLEAP's modal
    "save changes?" question (merged predictions are unsaved changes), which nobody answers
    offscreen (so not given to qtbot, which closes its widgets before fixtures end)."""
    from sleap_rtc.gui.bridge import _alive
    from sleap_rtc.gui.sleap_attach import create_window

    opened = []

    def open_(project, url, workers=None):
        win = create_window(str(project), server_url=url, connect=workers.connect if workers else None)
        opened.append(win)
        return win

    yield open_
    for win in opened:
        if _alive(win):
            for dlg in list(win._child_windows.values()):
                if dlg is not None and _alive(dlg):
                    dlg.close()
            win.state["has_changes"] = False
            win._close_decided = True  # no job question either: the session is gone
            win.close()
            win.deleteLater()


def inference_dialog(win, target: str):
    """SLEAP's Inference dialog as Predict > Run Inference… opens it, with ``target`` picked."""
    win._show_learning_dialog("inference")
    dlg = win._child_windows["inference"]
    dlg.pipeline_form_widget.current_pipeline = "single"
    dropdown = dlg.frame_target_selector.target_dropdown
    dropdown.setCurrentIndex(dropdown.findData(target))
    assert dlg.frame_target_selector.get_selection().target_key == target
    return dlg, dlg.findChild(RemoteTrainingPanel, PANEL_OBJECT_NAME)


def qtbot_boxes():
    """The message boxes open now (an error shown instead of a start)."""
    from qtpy import QtWidgets

    return [w for w in QtWidgets.QApplication.topLevelWidgets() if isinstance(w, QtWidgets.QMessageBox) and w.isVisible()]


def _predicted(labels, video) -> dict[int, int]:
    return {lf.frame_idx: len(lf.predicted_instances) for lf in labels.find(video) if lf.predicted_instances}


async def test_all_videos_are_predicted_remotely_and_merged_video_by_video(open_window, project, signaling_server, room, wait_until):
    import sleap_io as sio

    videos = [(project.parent / "a.mp4", N0), (project.parent / "b.mp4", N1)]
    workers = InferringWorker(videos)
    win = open_window(project, signaling_server.url, workers)
    worker = await start_fake_worker(signaling_server.url, room, "gpu-a")
    try:
        await win.remote.session.join(*room)
        await wait_until(lambda: win.remote.dock.model.rowCount() == 1, 5)
        dlg, panel = inference_dialog(win, "all_videos")
        assert panel is not None and panel.title() == "Remote inference"
        dlg.frame_target_selector.skip_user_labeled_cb.setChecked(False)  # predict the labeled frames too
        panel.remote_check.setChecked(True)
        assert panel.notes() == []
        labels = win.labels
        user_before = [(lf.frame_idx, len(lf.user_instances)) for lf in labels.find(labels.videos[0]) if lf.user_instances]
        merges = []
        dlg._handle_learning_finished.connect(merges.append)
        assert dlg.run_button.isEnabled(), dlg.message_widget.text()
        dlg.run_button.click()
        assert not dlg.isVisible(), [w.text() for w in qtbot_boxes()]  # the dialog closed; the job is in the dock
        run = win.remote_jobs[-1]
        ctl = run.ctl
        assert ctl.panel in win.remote.dock.job_panels()
        assert ctl.panel.steps.item(6).isHidden()  # no Training step in an inference
        lines = []
        ctl.inference_progress.connect(lambda _p: lines.append(ctl.panel.training_label.text()))
        await wait_until(lambda: ctl.phases.finished and (run.summary or ctl.error), 30)
        assert ctl.phases.phase == Phase.DONE, ctl.error
        # --- the request: both videos whole, the model from the dialog, sent as files of their own
        entries = workers.plans[0]["inference"]
        assert len(entries) == 2 and all("frames" not in e for e in entries)
        assert all(len(e["model_ids"]) == 1 for e in entries)
        # --- progress in the panel: frames of the total, FPS, ETA, which video
        assert any("Predicted" in t and f"/{N0} frames" in t and "FPS" in t and "ETA" in t and "video 1 of 2" in t for t in lines), lines
        # --- every frame of both videos predicted, merged one video at a time; user instances kept
        assert _predicted(labels, labels.videos[0]).keys() == set(range(N0))
        assert _predicted(labels, labels.videos[1]).keys() == set(range(N1))
        assert [(lf.frame_idx, len(lf.user_instances)) for lf in labels.find(labels.videos[0]) if lf.user_instances] == user_before
        # SLEAP's default merge here is "Replace predictions": frame 9's earlier prediction was replaced
        assert dlg.frame_target_selector.get_selection().prediction_mode == "replace"
        assert _predicted(labels, labels.videos[0])[9] == 1
        assert merges == [N0, N1]
        assert run.summary.startswith(f"Finished: {N0 + N1} frames predicted in 2 of 2 videos")
        assert ctl.panel.status_label.text() == run.summary
        kept = sorted(p.name for p in (project.parent / "predictions").iterdir())
        assert len(kept) == 2 and kept[0].startswith("a.mp4.") and kept[1].startswith("b.mp4.")
        assert sio.load_slp(str(project.parent / "predictions" / kept[0])).videos[0].filename.endswith("a.mp4")
        assert not run.out_dir.exists()
        assert win.state["has_changes"]
    finally:
        await win.remote.session.leave()
        await worker.close()


async def test_a_cancelled_inference_keeps_the_videos_that_came_back(open_window, project, signaling_server, room, wait_until):
    videos = [(project.parent / "a.mp4", N0), (project.parent / "b.mp4", N1)]
    workers = InferringWorker(videos, hold_after=1)
    win = open_window(project, signaling_server.url, workers)
    worker = await start_fake_worker(signaling_server.url, room, "gpu-a")
    try:
        await win.remote.session.join(*room)
        await wait_until(lambda: win.remote.dock.model.rowCount() == 1, 5)
        dlg, panel = inference_dialog(win, "all_videos")
        panel.remote_check.setChecked(True)
        dlg.run_button.click()
        run = win.remote_jobs[-1]
        await wait_until(lambda: run.merged.get(0), 30)
        run.ctl.panel.cancel_button.click()
        await wait_until(lambda: run.ctl.phases.finished and run.summary, 10)
        assert run.ctl.phases.phase == Phase.CANCELLED
        labels = win.labels
        # SLEAP's default here skips user-labeled frames (0, 3, 6): every other frame came back
        assert _predicted(labels, labels.videos[0]).keys() == set(range(N0)) - {0, 3, 6}
        assert _predicted(labels, labels.videos[1]) == {2: 1}  # only the project's own earlier prediction
        assert run.summary == f"Kept what came back: {N0 - 3} frames predicted in 1 of 2 videos."
        assert run.summary in run.ctl.panel.status_label.text()
        assert workers.channels[-1].cancelled.is_set() or workers.channels[-1].closed
    finally:
        await win.remote.session.leave()
        await worker.close()


async def test_a_worker_that_predicts_no_videos_is_explained_before_run(open_window, project, signaling_server, room,
                                                                       wait_until, monkeypatch):
    import sleap_rtc.gui.bridge as bridge

    shown = []
    monkeypatch.setattr(bridge, "show_error", lambda parent, title, exc: shown.append(str(exc)))
    workers = InferringWorker([])
    win = open_window(project, signaling_server.url, workers)
    old = await start_fake_worker(signaling_server.url, room, "old-gpu", inference_inputs=None)
    try:
        await win.remote.session.join(*room)
        await wait_until(lambda: win.remote.dock.model.rowCount() == 1, 5)
        dlg, panel = inference_dialog(win, "all_videos")
        panel.remote_check.setChecked(True)
        notes = " ".join(panel.notes())
        assert "No available worker of this room can run this inference" in notes and "old-gpu runs an older sleap-rtc" in notes
        dlg.run_button.click()
        assert win.remote_jobs == [] and workers.attempts == [] and "older sleap-rtc" in shown[0]
        assert dlg.isVisible()
    finally:
        await win.remote.session.leave()
        await old.close()


async def test_targets_the_worker_cannot_serve_are_explained_before_run(open_window, tmp_path, sleap_home, signaling_server,
                                                                         room, monkeypatch):
    """An embedded (.pkg.slp) video and SLEAP's tracking-only pipeline: notes in SLEAP's words,
    and Run starts nothing."""
    import sleap_rtc.gui.bridge as bridge

    shown = []
    monkeypatch.setattr(bridge, "show_error", lambda parent, title, exc: shown.append(str(exc)))
    project = make_two_video_project(tmp_path)
    import sleap_io as sio

    embedded = tmp_path / "emb.pkg.slp"
    sio.load_slp(str(project)).save(str(embedded), embed=True)
    fake_trained_model(embedded)
    win = open_window(embedded, signaling_server.url)
    try:
        await win.remote.session.join(*room)
        win.state["video"] = win.labels.videos[0]
        dlg, panel = inference_dialog(win, "video")
        panel.remote_check.setChecked(True)
        notes = " ".join(panel.notes())
        assert "Video 1's frames are embedded in emb.pkg.slp" in notes and "File ▸ Add Videos…" in notes
        dlg.run_button.click()
        assert win.remote_jobs == [] and shown and "embedded" in shown[0]
        assert dlg.isVisible()
        combo = dlg.pipeline_form_widget._pipeline_combo  # SLEAP's "Inference Pipeline Type"
        combo.setCurrentIndex(combo.findData("tracking-only"))
        assert "retracks the project's own predictions" in " ".join(panel.notes())
        panel.remote_check.setChecked(False)
        assert panel.notes() == []
    finally:
        await win.remote.session.leave()


class TrainThenInferWorker(InferringWorker):
    """Trains a package's model (one epoch, the model folder back), predicts an inference plan."""

    async def infer(self, ch: ScriptedChannel) -> None:
        with zipfile.ZipFile(io.BytesIO(ch.package)) as zf:
            plan = yaml.safe_load(zf.read("jobs.yaml"))
        if not plan.get("training"):
            return await super().infer(ch)
        self.plans.append(plan)
        await ch.accept()
        for job in plan["training"]:
            await ch.event({"event": "train_begin", "what": "single_instance"})
            await ch.epoch("single_instance", 0, 0.5)
        for job in plan["training"]:
            await ch.result_model(job["run_path"].split("/")[-1], {"best.ckpt": b"weights", "training_config.yaml": b"a: 1\n"})
        await ch.complete()


async def test_entire_video_after_remote_training_is_predicted_on_the_same_worker_with_its_model(
        open_window, tmp_path, sleap_home, signaling_server, room, wait_until):
    project = make_two_video_project(tmp_path)
    workers = TrainThenInferWorker([(tmp_path / "a.mp4", N0)])
    win = open_window(project, signaling_server.url, workers)
    worker = await start_fake_worker(signaling_server.url, room, "gpu-a")
    try:
        await win.remote.session.join(*room)
        await wait_until(lambda: win.remote.dock.model.rowCount() == 1, 5)
        win.state["video"] = win.labels.videos[0]
        win._show_learning_dialog("training")
        dlg = win._child_windows["training"]
        dlg.pipeline_form_widget.current_pipeline = "single"
        dropdown = dlg.frame_target_selector.target_dropdown
        dropdown.setCurrentIndex(dropdown.findData("video"))
        dlg.frame_target_selector.skip_user_labeled_cb.setChecked(False)
        panel = dlg.findChild(RemoteTrainingPanel, PANEL_OBJECT_NAME)
        panel.remote_check.setChecked(True)
        assert panel.notes() == []
        dlg.run_button.click()
        training = win.remote_jobs[-1]
        await wait_until(lambda: training.inference_run is not None, 30)
        run = training.inference_run
        assert "predicting the videos in a Remote inference job" in training.summary
        await wait_until(lambda: run.ctl.phases.finished and run.summary, 30)
        assert run.ctl.phases.phase == Phase.DONE, run.ctl.error
        # the second job: the same worker, the model folder the training just installed, whole video
        assert run.ctl.worker.peer_id == training.ctl.worker.peer_id
        assert run.asked.model_dirs == training.installed
        assert [c.remote_peer_id for c in workers.channels] == [training.ctl.worker.peer_id] * 2
        assert "frames" not in workers.plans[-1]["inference"][0] and not workers.plans[-1].get("training")
        assert _predicted(win.labels, win.labels.videos[0]).keys() == set(range(N0))
    finally:
        await win.remote.session.leave()
        await worker.close()
