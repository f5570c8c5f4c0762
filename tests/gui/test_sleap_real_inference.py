"""The issue's "Done when" for inference, as a SLEAP user does it, with real parts only.

SLEAP 1.6.6's main window (our ``sleap_attach`` subclass) on a project over a real 300-frame
mp4 (``tests/videos.make_video``: a bright square moving across a dark field, labelled on 10
frames), a ``LocalRoom`` (a real ``sleap-rtc server`` and a real ``sleap-rtc worker``
process) and the real sleap-nn on this CPU:

1. Predict > Run Training…, single animal, a tiny model, Inference Target *Nothing*,
   "Train on a remote worker" ticked: the model comes back into ``models/``;
2. Predict > Run Inference… with that model, Inference Target *Entire video*, Peak
   Threshold 0 (SLEAP's own option), "Predict on a remote worker" ticked: the dock's panel
   shows frames done of 300 with FPS and ETA, every frame of the video gets its predicted
   instance in the open project, the video went up once and no model byte moved (the
   worker kept the model it trained);
3. saved, Run Inference… again on the same video: nothing is uploaded (0 video bytes, 0
   model bytes) and every frame is predicted again (SLEAP's "Replace predictions").

Marked ``infer`` (``make test-infer``): two sleap-nn runs and a training take minutes.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from sleap_rtc.core.phases import Phase
from sleap_rtc.gui.training_panel import PANEL_OBJECT_NAME, RemoteTrainingPanel
from real_room import window_with_room
from sleap_rtc.local_room import LocalRoom
from videos import make_video

pytestmark = [pytest.mark.sleap, pytest.mark.slow, pytest.mark.infer]

FRAMES = 300
WORKER = "cpu-worker"
TINY_MODEL = {
    # One epoch: with Peak Threshold 0 even a barely trained model gives every frame its instance.
    "trainer_config.max_epochs": 1,
    "model_config.backbone_config.unet.filters": 8,
    "model_config.backbone_config.unet.max_stride": 8,
    "trainer_config.train_data_loader.batch_size": 4,
    "trainer_config.early_stopping.stop_training_on_plateau": False,
}
TINY_PIPELINE = {"trainer_config.trainer_accelerator": "cpu", "trainer_config.visualize_preds_during_training": False}


def make_square_project(folder: Path) -> Path:
    """``square.slp`` over ``square.mp4``: the square's two ends labelled on 10 frames."""
    import sleap_io as sio

    video_path = make_video(folder / "square.mp4", FRAMES)
    video = sio.load_video(str(video_path))
    skeleton = sio.Skeleton(["head", "tail"], edges=[("head", "tail")])
    lfs = []
    for i in range(0, 30, 3):
        x = 16 + (i * 3) % (128 - 40)  # where make_video draws the 16x16 square
        pts = np.array([[x + 13.0, 64.0], [x + 3.0, 64.0]])
        lfs.append(sio.LabeledFrame(video=video, frame_idx=i, instances=[sio.Instance.from_numpy(pts, skeleton=skeleton)]))
    path = folder / "square.slp"
    sio.save_slp(sio.Labels(labeled_frames=lfs, videos=[video], skeletons=[skeleton]), str(path))
    return path


def _pick(dlg, target: str) -> None:
    dropdown = dlg.frame_target_selector.target_dropdown
    index = dropdown.findData(target)
    assert index >= 0, [dropdown.itemData(i) for i in range(dropdown.count())]
    dropdown.setCurrentIndex(index)


async def _until_finished(ctl, seconds: float) -> None:
    t0 = time.monotonic()
    while not (ctl.phases.finished and (ctl.outcome is not None or ctl.error or ctl.phases.phase != Phase.DONE)):
        assert time.monotonic() - t0 < seconds, f"job still in {ctl.phases.phase} after {seconds} s"
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.3)  # the run's own "succeeded" slot (summary, clean-up) runs next


def _save(win) -> None:
    """File > Save, as the user does before SLEAP opens its dialogs again."""
    if win.state["has_changes"]:
        win.commands.saveProject()
    assert not win.state["has_changes"]


@pytest.mark.timeout(1200)
async def test_run_inference_on_the_entire_video_with_a_remotely_trained_model(qapp, sleap_home, tmp_path, wait_until):
    project = tmp_path / "project"
    project.mkdir()
    labels_path = make_square_project(project)
    video_size = (project / "square.mp4").stat().st_size
    room = LocalRoom(tmp_path / "room")
    with room:
        win = await window_with_room(room, labels_path, WORKER)
        try:
            await win.remote.session.join(room.room_id, room.token)
            await wait_until(lambda: [w.status for w in win.remote.dock.model.workers] == ["available"], 15)

            # --- 1. Predict > Run Training…, remote, Inference Target "Nothing"
            win._menu_actions["training"].trigger()
            dlg = win._child_windows["training"]
            dlg.pipeline_form_widget.current_pipeline = "single"
            dlg.tabs["single_instance"].set_fields_from_key_val_dict(TINY_MODEL)
            dlg.pipeline_form_widget.set_form_data(TINY_PIPELINE)
            _pick(dlg, "nothing")
            dlg.findChild(RemoteTrainingPanel, PANEL_OBJECT_NAME).remote_check.setChecked(True)
            dlg.run_button.click()
            training = win.remote_jobs[-1]
            await _until_finished(training.ctl, 420)
            assert training.ctl.phases.phase == Phase.DONE, training.ctl.error
            await wait_until(lambda: training.installed, 10)
            model_dir = training.installed[0]
            assert (model_dir / "best.ckpt").is_file()
            await wait_until(lambda: [w.status for w in win.remote.dock.model.workers] == ["available"], 15)
            _save(win)

            # --- 2. Predict > Run Inference…, Entire video, Peak Threshold 0, remote
            first = await _run_inference(win, model_dir)
            labels = win.labels
            video = labels.videos[0]
            predicted = {lf.frame_idx: len(lf.predicted_instances) for lf in labels.find(video) if lf.predicted_instances}
            assert sorted(predicted) == list(range(FRAMES)), f"{len(predicted)} of {FRAMES} frames predicted"
            assert set(predicted.values()) == {1}
            assert sum(len(lf.user_instances) for lf in labels.labeled_frames) == 10  # user instances kept
            summary = first.ctl.outcome
            assert summary.video_bytes_sent == video_size
            assert summary.model_bytes_sent == 0, "the worker kept the model it trained: no model bytes"
            # progress in the dock's panel while the worker predicted: frames of 300, FPS, ETA
            shown = first.progress_lines
            assert any(f"/{FRAMES} frames" in t and "FPS" in t for t in shown), shown
            assert any(f"Predicted {FRAMES}/{FRAMES} frames" in t for t in shown), shown[-3:]
            assert first.summary.startswith(f"Finished: {FRAMES} frames predicted"), first.summary
            assert first.ctl.panel.steps.item(6).isHidden()  # an inference has no Training step
            kept = list((project / "predictions").glob("square.mp4.*.predictions.slp"))
            assert len(kept) == 1

            # --- 3. saved, the same again: nothing goes up
            _save(win)
            second = await _run_inference(win, model_dir)
            summary = second.ctl.outcome
            assert (summary.video_bytes_sent, summary.model_bytes_sent) == (0, 0)
            assert "No video was sent" in second.summary
            assert second.ctl.uploads[0].cached
            predicted = {lf.frame_idx: len(lf.predicted_instances) for lf in labels.find(video) if lf.predicted_instances}
            assert sorted(predicted) == list(range(FRAMES)) and set(predicted.values()) == {1}  # replaced, not doubled
        finally:
            await win.remote.session.leave()
            for dlg in list(win._child_windows.values()):
                if dlg is not None:
                    dlg.close()
            win.state["has_changes"] = False  # SLEAP's "save changes?" is modal; nobody answers offscreen
            win.close()


async def _run_inference(win, model_dir: Path):
    """Predict > Run Inference… on the entire current video with the remote box ticked."""
    win.state["video"] = win.labels.videos[0]
    win._menu_actions["inference"].trigger()
    dlg = win._child_windows["inference"]
    assert dlg.isVisible()
    dlg.pipeline_form_widget.current_pipeline = "single"
    trained = dlg.tabs["single_instance"].trained_config_info_to_use
    assert trained is not None and Path(trained.path).parent == model_dir, trained
    dlg.pipeline_form_widget.set_form_data({"_peak_threshold_default": False, "_peak_threshold": 0.0})
    _pick(dlg, "video")
    dlg.frame_target_selector.skip_user_labeled_cb.setChecked(False)
    panel = dlg.findChild(RemoteTrainingPanel, PANEL_OBJECT_NAME)
    panel.remote_check.setChecked(True)
    assert panel.notes() == [], panel.notes()
    n_jobs = len(win.remote_jobs)
    dlg.run_button.click()
    assert len(win.remote_jobs) == n_jobs + 1, "Run did not start a remote inference (an error box?)"
    run = win.remote_jobs[-1]
    assert run.asked.options == {"peak_threshold": 0.0}
    run.progress_lines = []
    run.ctl.inference_progress.connect(lambda _p: run.progress_lines.append(run.ctl.panel.training_label.text()))
    await _until_finished(run.ctl, 300)
    assert run.ctl.phases.phase == Phase.DONE, run.ctl.error
    return run
