"""The issue's "Done when", for real: SLEAP's own window and training dialog, one real worker.

SLEAP 1.6.6's main window (our ``sleap_attach`` subclass) opens a copy of the bundled tiny
project (``resources/tiny/labels.pkg.slp``) and joins a room of a ``LocalRoom``: a real
``sleap-rtc server`` and one real ``sleap-rtc worker`` process on loopback, training with
the real sleap-nn on this CPU. The test then does what a user does: Predict > Run
Training..., picks the single-animal pipeline, makes the model tiny through the dialog's
own fields (epochs, filters, max stride, batch size, CPU accelerator, no preview images),
asks for predictions on the user-labeled frames, ticks "Train on a remote worker" and
presses Run. It checks that

* the dock's live worker list shows the worker turn busy during the job and available after;
* SLEAP's ``LossViewer`` plotted an ``epoch_end`` of the ``single_instance`` model with a
  real (finite, positive) train loss, for every epoch;
* the trained model folder, with ``best.ckpt``, is in ``models/`` next to the labels;
* the returned predictions (a real .slp) were merged into the open labels, instance for instance;
* no server, worker or sleap-nn process survives the ``LocalRoom``.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import time
from pathlib import Path

import psutil
import pytest

from sleap_rtc.core.phases import Phase
from sleap_rtc.gui.training_panel import PANEL_OBJECT_NAME, RemoteTrainingPanel
from real_room import window_with_room
from sleap_rtc.local_room import LocalRoom

pytestmark = [pytest.mark.sleap, pytest.mark.slow, pytest.mark.own_process]

TINY_LABELS = Path(__file__).resolve().parents[2] / "resources" / "tiny" / "labels.pkg.slp"
WORKER = "cpu-worker"
EPOCHS = 2

TINY_MODEL = {
    # The single-instance tab ("Single Instance Model Configuration") of SLEAP's dialog.
    "trainer_config.max_epochs": EPOCHS,
    "model_config.backbone_config.unet.filters": 8,
    "model_config.backbone_config.unet.max_stride": 8,
    "trainer_config.train_data_loader.batch_size": 4,
    "trainer_config.early_stopping.stop_training_on_plateau": False,
}
TINY_PIPELINE = {
    # The dialog's pipeline form (first tab): hardware and outputs.
    "trainer_config.trainer_accelerator": "cpu",
    "trainer_config.visualize_preds_during_training": False,
}


def _tree(pid: int) -> set[int]:
    try:
        proc = psutil.Process(pid)
        return {pid} | {p.pid for p in proc.children(recursive=True)}
    except psutil.Error:
        return set()


def _loss(event: dict, split: str) -> float | None:
    """An epoch_end's loss as SLEAP's LossViewer reads it (sleap-nn or legacy key)."""
    logs = event.get("logs") or {}
    return logs.get(f"{split}/loss", logs.get(f"{split}_loss"))


def _alive(pids: set[int]) -> list[str]:
    left = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{pid} {' '.join(proc.cmdline())[:160]}")
        except psutil.Error:
            pass
    return left


@pytest.mark.timeout(420)
async def test_run_training_in_sleap_trains_on_a_real_remote_worker(qapp, sleap_home, qtbot, tmp_path, wait_until, monkeypatch):
    # ``qapp`` first: SLEAP's GUI imported before a QApplication exists on a machine without
    # a display picks matplotlib's Agg canvas, and its LossViewer cannot be built at all.
    from sleap.gui.widgets import mpl

    import sleap_io as sio

    from sleap_rtc.gui.sleap_attach import RemoteTraining

    # The job's temporary folder (and the predictions file in it) is removed once the job
    # ends, so the returned predictions are read at the moment they are merged.
    returned_files: list = []
    merge = RemoteTraining.merge_predictions

    def recording_merge(self, outcome):
        if outcome.predictions is not None and Path(outcome.predictions).is_file():
            returned_files.append(sio.load_slp(str(outcome.predictions)))
        return merge(self, outcome)

    monkeypatch.setattr(RemoteTraining, "merge_predictions", recording_merge)

    assert hasattr(mpl.Canvas, "setSizePolicy"), f"SLEAP's plots fell back to {mpl.Canvas.__name__} (headless import)"

    t0 = time.monotonic()
    project = tmp_path / "project"
    project.mkdir()
    labels_path = project / "labels.pkg.slp"
    shutil.copy(TINY_LABELS, labels_path)

    seen_pids: set[int] = set()
    room = LocalRoom(tmp_path / "room")
    with room:
        win = await window_with_room(room, labels_path, WORKER)
        qtbot.addWidget(win)
        seen_pids |= {child.popen.pid for child in room.children}
        try:
            await _train_remotely(win, room, labels_path, seen_pids, wait_until, returned_files)
        finally:
            await win.remote.session.leave()
            for dlg in list(win._child_windows.values()):
                if dlg is not None:
                    dlg.close()
            # "Don't save": with unsaved predictions SLEAP's closeEvent asks in a modal
            # QMessageBox.exec(), which nobody answers offscreen.
            win.state["has_changes"] = False
            win.close()
            for child in room.children:
                seen_pids |= _tree(child.popen.pid)
    # LocalRoom's context manager stopped everything: nothing it started survives.
    deadline = time.monotonic() + 10
    while _alive(seen_pids) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert not _alive(seen_pids), f"processes survived the LocalRoom: {_alive(seen_pids)}"
    print(f"whole test: {time.monotonic() - t0:.1f} s; {len(seen_pids)} processes checked")


async def _train_remotely(win, room: LocalRoom, labels_path: Path, seen_pids: set[int], wait_until, returned_files: list) -> None:
    # --- join the room; the dock lists the worker as available
    await win.remote.session.join(room.room_id, room.token)
    dock = win.remote.dock
    model = dock.model
    dock.show_busy_check.setChecked(True)  # keep the worker listed while it is busy
    statuses: list[str] = []

    def record(*_: object) -> None:
        now = [w.status for w in model.workers if w.name == WORKER]
        if now and (not statuses or statuses[-1] != now[0]):
            statuses.append(now[0])

    for sig in (model.dataChanged, model.modelReset, model.rowsInserted, model.rowsRemoved):
        sig.connect(record)
    await wait_until(lambda: [w.status for w in model.workers] == ["available"], 10)
    record()

    # --- Predict > Run Training...
    win._menu_actions["training"].trigger()
    dlg = win._child_windows["training"]
    assert dlg.isVisible()
    panel = dlg.findChild(RemoteTrainingPanel, PANEL_OBJECT_NAME)
    assert panel is not None
    # "Training/Inference Pipeline Type": single animal
    dlg.pipeline_form_widget.current_pipeline = "single"
    assert dlg.shown_tab_names == ["single_instance"]
    dlg.tabs["single_instance"].set_fields_from_key_val_dict(TINY_MODEL)
    dlg.pipeline_form_widget.set_form_data(TINY_PIPELINE)
    # "Predict On": the user-labeled frames (predictions come back and are merged)
    dropdown = dlg.frame_target_selector.target_dropdown
    idx = dropdown.findData("user_labeled")
    assert idx >= 0, [dropdown.itemData(i) for i in range(dropdown.count())]
    dropdown.setCurrentIndex(idx)
    assert dlg.frame_target_selector.get_selection().target_key == "user_labeled"
    panel.remote_check.setChecked(True)
    before = {lf.frame_idx: len(lf.predicted_instances) for lf in win.labels.labeled_frames}
    assert set(before.values()) == {0}

    # --- Run
    t_run = time.monotonic()
    dlg.run_button.click()
    assert len(win.remote_jobs) == 1, "Run did not start a remote job (an error dialog?)"
    job = win.remote_jobs[0]
    viewer = job.viewer
    plotted: list[tuple[list[float], list[float]]] = []

    def on_epoch() -> None:  # what the viewer's plot holds after each epoch_end
        series = viewer.canvas.series
        plotted.append(tuple([float(y) for y in series[name].get_data()[1]] for name in ("train_loss", "val_loss")))


    viewer.on_epoch.connect(on_epoch)
    events: list[dict] = []
    job.ctl.progress.connect(events.append)  # what the worker's sleap-nn published

    worker = room.workers[WORKER]
    while not job.ctl.phases.finished:
        seen_pids.update(_tree(worker.popen.pid))  # sleap-nn, while it runs
        record()
        await asyncio.sleep(0.1)
        assert time.monotonic() - t_run < 300, f"job still in {job.ctl.phases.phase} after 300 s"
    print(f"remote job: {time.monotonic() - t_run:.1f} s; statuses {statuses}")
    assert job.ctl.phases.phase == Phase.DONE, job.ctl.error
    await wait_until(lambda: job.closed, 10)

    # --- the LossViewer plotted every epoch of the single_instance model, with real losses
    epoch_ends = [e for e in events if e.get("event") == "epoch_end"]
    assert [e["epoch"] for e in epoch_ends] == list(range(EPOCHS)), events
    assert job.epochs_forwarded == EPOCHS
    # sleap-nn 0.3.5 publishes "val/loss" at every epoch_end but "train/loss" only from the
    # second one on (the first epoch's train metric is not aggregated yet when its
    # epoch_end goes out): SLEAP's own local runs show the same.
    val_losses = [_loss(e, "val") for e in epoch_ends]
    train_losses = [v for v in (_loss(e, "train") for e in epoch_ends) if v is not None]
    assert len(val_losses) == EPOCHS and train_losses, [sorted(e["logs"]) for e in epoch_ends]
    assert all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in val_losses + train_losses), epoch_ends
    # SLEAP's viewer, opened for the single_instance model, plotted every epoch's losses.
    # (sleap-nn 0.3.5 publishes ``what: ""``; SLEAP's own local runs get the same.)
    assert "single_instance" in viewer.windowTitle()
    assert len(plotted) == EPOCHS, plotted
    assert plotted[-1] == (train_losses, val_losses), (plotted, epoch_ends)

    # --- the model is in the project's models folder
    run_name = Path(job.package.run_paths["single_instance"]).name
    model_dir = labels_path.parent / "models" / run_name
    assert (model_dir / "best.ckpt").stat().st_size > 10_000, sorted(p.name for p in model_dir.parent.rglob("*"))
    assert (model_dir / "training_config.yaml").is_file()

    # --- the predictions came back and exactly what they hold was merged into the open labels.
    # (How many instances a 2-epoch model finds varies from run to run, sometimes none: the
    # merge is checked against the returned file, not against a count.)
    assert len(returned_files) == 1, "the predictions file came back and was merged once"
    returned = returned_files[0]
    assert [s.node_names for s in returned.skeletons] == [["head", "tail"]]
    predicted = {lf.frame_idx: sum(type(i).__name__ == "PredictedInstance" for i in lf.instances)
                 for lf in returned.labeled_frames}
    after = {lf.frame_idx: len(lf.predicted_instances) for lf in win.labels.labeled_frames}
    assert job.new_frames == sum(1 for n in predicted.values() if n), (predicted, after)
    assert sum(after.values()) == sum(predicted.values()), (predicted, after)
    if job.new_frames:
        assert win.state["has_changes"]  # SLEAP took the new predictions as an unsaved change

    # --- the worker was busy during the job and is available again
    await wait_until(lambda: [w.status for w in model.workers] == ["available"], 10)
    record()
    assert "busy" in statuses and statuses[-1] == "available", statuses
