"""Attach sleap-rtc to the SLEAP 1.6 GUI: the ONLY module of ``sleap_rtc.gui`` importing SLEAP.

SLEAP has no plugin mechanism, so we attach from our own launcher through private hooks
(each checked by ``check_hooks`` with a clear error; pin ``sleap>=1.6,<1.7``):

* a ``MainWindow`` *subclass* (never rebind ``sleap.gui.app.MainWindow``: its
  ``super(MainWindow, self)`` call would recurse) adding the Remote Training dock (tabbed
  with the Instances dock, listed in View) and a "Remote" menu;
* ``_show_learning_dialog``: after SLEAP builds or reuses the dialog (cached in
  ``_child_windows[mode]``) we insert the Remote training panel once, at
  ``layout().insertWidget(1, …)`` (never as a tab: ``remove_tabs()`` deletes tabs);
* Run is re-routed (``run_button.clicked.disconnect(dlg.run)`` + a plain slot): unticked,
  it calls SLEAP's own ``dlg.run()`` untouched; ticked, it builds the package from the
  dialog's configs (no sleap-nn needed), runs it remotely and shows progress in SLEAP's own
  ``LossViewer`` (Stop/Cancel map to the remote job), then installs models/predictions.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from qtpy import QtCore, QtWidgets

from sleap_rtc.gui.bridge import show_error
from sleap_rtc.gui.controller import RemoteGui
from sleap_rtc.gui.loss_feed import LossFeed
from sleap_rtc.gui.remote_run import JobOutcome, JobRunner, RemoteJobController
from sleap_rtc.gui.session import SessionState
from sleap_rtc.gui.training_package import HeadConfig, InferenceRequest, PackageInfo, build_training_package
from sleap_rtc.gui.training_panel import PANEL_OBJECT_NAME, RemoteTrainingPanel

log = logging.getLogger(__name__)

SUPPORTED = ">=1.6,<1.7"


class SleapHookError(RuntimeError):
    """A private SLEAP hook we rely on is missing: this SLEAP version is not supported."""


def _hook_error(what: str) -> SleapHookError:
    import sleap

    return SleapHookError(
        f"sleap-rtc cannot attach to SLEAP {getattr(sleap, '__version__', '?')}: {what} is missing. "
        f"Supported SLEAP versions: {SUPPORTED}."
    )


def _prefer_qt_matplotlib() -> None:
    """Pick matplotlib's Qt backend before SLEAP's GUI modules import pyplot.

    ``sleap.gui.widgets.mpl`` (the ``LossViewer`` plot) calls ``matplotlib.use("QtAgg")``
    at import time, after ``sleap.gui.app`` has already imported pyplot. Imported before a
    ``QApplication`` exists on a machine without a display (offscreen, CI, a headless
    demo), matplotlib refuses Qt as "headless" and SLEAP falls back to ``FigureCanvasAgg``:
    every ``LossViewer`` then fails with ``'FigureCanvasAgg' has no attribute
    'setSizePolicy'``. Choosing the backend while pyplot is not imported only records it
    (no check), which is what SLEAP asks for anyway (it honours ``MPLBACKEND=Agg``).
    """
    import os
    import sys

    if os.environ.get("MPLBACKEND") == "Agg" or "matplotlib.pyplot" in sys.modules:
        return
    try:
        import matplotlib
    except ImportError:  # SLEAP requires it; nothing to prepare without it
        return
    matplotlib.use("QtAgg")


def check_hooks() -> None:
    """Check that every private SLEAP hook used here exists (raise ``SleapHookError`` if not)."""
    _prefer_qt_matplotlib()
    from sleap.gui import app
    from sleap.gui.learning import dialog, runners
    from sleap.gui.widgets import monitor

    for owner, name in (
        (app.MainWindow, "_show_learning_dialog"),
        (dialog.LearningDialog, "run"),
        (dialog.LearningDialog, "get_every_head_config_data"),
        (dialog.LearningDialog, "get_items_for_inference"),
        (dialog.LearningDialog, "_handle_learning_finished"),
        (runners, "run_learning_pipeline"),
        (monitor, "LossViewer"),
    ):
        if not hasattr(owner, name):
            raise _hook_error(f"{getattr(owner, '__name__', owner)}.{name}")


def _require(obj: Any, name: str, where: str) -> Any:
    if not hasattr(obj, name):
        raise _hook_error(f"{where}.{name}")
    return getattr(obj, name)


# ---------------------------------------------------------------------------------- app


def create_app() -> QtWidgets.QApplication:
    """SLEAP's own ``QApplication`` (name, icon), reused by our launcher."""
    _prefer_qt_matplotlib()
    from sleap.gui.app import create_app as sleap_create_app

    return sleap_create_app()


def label_parser():
    """SLEAP's ``sleap-label`` argument parser (our launcher adds the room options)."""
    _prefer_qt_matplotlib()
    from sleap.gui.app import create_sleap_label_parser

    return create_sleap_label_parser()


# ---------------------------------------------------------------------------------- window


def attach_dock(window: QtWidgets.QMainWindow, dock: QtWidgets.QDockWidget) -> None:
    """Add the dock on the right, tabbed with SLEAP's Instances dock, listed in View."""
    window.addDockWidget(QtCore.Qt.RightDockWidgetArea, dock)
    instances = getattr(window, "instances_dock", None)
    if instances is not None:
        window.tabifyDockWidget(instances, dock)
    view_menu = _require(window, "viewMenu", "MainWindow")
    view_menu.addAction(dock.toggleViewAction())


_WINDOW_CLASS: type | None = None


def window_class() -> type:
    """The ``MainWindow`` subclass with the dock, the Remote menu and the panel hook."""
    global _WINDOW_CLASS
    if _WINDOW_CLASS is not None:
        return _WINDOW_CLASS
    check_hooks()
    from sleap.gui.app import MainWindow

    class RemoteMainWindow(MainWindow):
        """SLEAP's main window plus sleap-rtc (dock, Remote menu, remote Run)."""

        def __init__(self, *args: Any, server_url: str | None = None, runner: JobRunner | None = None, **kwargs: Any):
            kwargs.setdefault("no_usage_data", True)
            super().__init__(*args, **kwargs)
            self.remote = RemoteGui(self, server_url, runner)
            attach_dock(self, self.remote.dock)
            self.remote.build_menu(self.menuBar())
            self.remote_jobs: list[RemoteTraining] = []

        def _show_learning_dialog(self, mode: str) -> None:
            super()._show_learning_dialog(mode)
            dlg = self._child_windows.get(mode)
            if mode == "training" and dlg is not None:
                inject_panel(self, dlg)

    _WINDOW_CLASS = RemoteMainWindow
    return RemoteMainWindow


def create_window(labels_path: str | None = None, *, server_url: str | None = None, runner: JobRunner | None = None, **kwargs: Any) -> QtWidgets.QMainWindow:
    """SLEAP's main window with sleap-rtc attached (usage data off)."""
    return window_class()(labels_path=labels_path, server_url=server_url, runner=runner, **kwargs)


# ---------------------------------------------------------------------------------- dialog


def inject_panel(window: Any, dlg: QtWidgets.QDialog) -> RemoteTrainingPanel:
    """Insert the Remote training panel into SLEAP's training dialog once; re-route Run."""
    existing = dlg.findChild(RemoteTrainingPanel, PANEL_OBJECT_NAME)
    if existing is not None:
        return existing
    run_button = _require(dlg, "run_button", "LearningDialog")
    panel = RemoteTrainingPanel(window.remote.dock, dlg)
    panel.join_requested.connect(window.remote.open_join_dialog)
    dlg.layout().insertWidget(1, panel)
    try:
        run_button.clicked.disconnect(dlg.run)
    except (RuntimeError, TypeError) as exc:  # SLEAP changed how Run is wired
        raise _hook_error("LearningDialog.run_button -> run connection") from exc
    run_button.clicked.connect(lambda *_: on_run_clicked(window, dlg, panel))
    return panel


def on_run_clicked(window: Any, dlg: Any, panel: RemoteTrainingPanel) -> None:
    """Plain slot for Run: SLEAP's own path unless "Train on a remote worker" is ticked."""
    if not panel.remote_enabled():
        dlg.run()
        return
    try:
        RemoteTraining.start(window, dlg, panel)
    except Exception as exc:  # shown, never swallowed; the dialog stays usable
        log.exception("remote training could not start")
        show_error(dlg if dlg.isVisible() else window, "Remote training", exc)


def _plain_config(cfg: Any) -> dict[str, Any]:
    """SLEAP's GUI config (OmegaConf) as a plain dict sleap-nn reads, without sleap-nn."""
    from omegaconf import OmegaConf
    from sleap.gui.config_utils import filter_cfg

    return OmegaConf.to_container(filter_cfg(cfg), resolve=True)


REMOTE_PREDICT_TARGETS = {"suggestions": "suggested frames", "user_labeled": "user-labeled frames"}
"""Prediction targets a remote job can serve: only these frames travel inside the package."""


def remote_inference_request(target: str | None) -> InferenceRequest | None:
    """What to predict remotely for the dialog's "Predict On" choice; ``None``: train only.

    Frames outside the package (current frame, random frames, a clip, whole videos) are not
    on the worker, so those choices are refused with a message instead of silently
    predicting something else.
    """
    if target in (None, "", "nothing"):
        return None
    if target not in REMOTE_PREDICT_TARGETS:
        choices = " or ".join(REMOTE_PREDICT_TARGETS.values())
        raise RuntimeError(
            f"Remote training can predict on {choices} only: those frames travel inside the training "
            f"package, other frames stay on this computer. Choose one of them under 'Predict On', "
            f"or 'nothing' to only train."
        )
    return InferenceRequest(only_suggested_frames=target == "suggestions", only_labeled_frames=target == "user_labeled")


def package_from_dialog(window: Any, dlg: Any, out_dir: Path) -> tuple[PackageInfo, dict[str, Any]]:
    """Build the training package from the dialog's own configs and the open labels."""
    selection = dlg.frame_target_selector.get_selection()
    form = dlg.pipeline_form_widget.get_form_data()
    form["_prediction_mode"] = selection.prediction_mode
    infos = dlg.get_every_head_config_data(form)
    heads = [HeadConfig(info.head_name, _plain_config(info.config)) for info in infos if not info.dont_retrain]
    if len(heads) != len(infos):
        raise RuntimeError("Remote training with an already-trained model is not supported yet; untick 'Use trained model'.")
    target = form.get("_predict_target") or selection.target_key
    inference = remote_inference_request(target)
    labels_file = Path(window.state["filename"])
    labels = window.labels
    info = build_training_package(
        out_dir / f"{labels_file.name}.training_job.zip",
        labels_stem=labels_file.name.removesuffix(".slp").removesuffix(".pkg"),  # "x.pkg.slp" -> "x"
        save_labels=lambda path: labels.save(str(path), embed=True),
        heads=heads,
        n_labeled=len(labels.user_labeled_frames),
        inference=inference,
    )
    return info, form


def _unwrap_run(run: Path) -> Path:
    """The folder holding the model files: a zip of the run folder unpacks as ``<run>/<run>/``."""
    children = list(run.iterdir())
    if len(children) == 1 and children[0].is_dir() and children[0].name == run.name:
        return children[0]
    return run


class RemoteTraining(QtCore.QObject):
    """One remote training started from SLEAP's dialog: package, LossViewer, job, results."""

    def __init__(self, window: Any, dlg: Any, package: PackageInfo, form: dict[str, Any]):
        super().__init__(window)
        from sleap.gui.widgets.monitor import LossViewer

        self.window, self.dlg, self.package, self.form = window, dlg, package, form
        self.project_dir = Path(window.state["filename"]).parent
        self.viewer = LossViewer(zmq_ports={"publish_port": 9001, "controller_port": 9000})
        self.viewer.resize(600, 400)
        self.heads = list(package.run_paths)
        self._reset_viewer(self.heads[0])
        self.viewer.show()
        self.ctl: RemoteJobController | None = None
        self.feed = LossFeed(
            self.viewer.zmq_ports["publish_port"], self.viewer.zmq_ports.get("controller_port"), on_stop=self._stop, parent=self
        )
        self.epochs_forwarded = 0
        self._head_index = -1  # index in self.heads of the model now training
        self.new_frames = 0
        self.closed = False

    @classmethod
    def start(cls, window: Any, dlg: Any, panel: RemoteTrainingPanel) -> RemoteTraining:
        """Validate, build the package, open the LossViewer and submit (all from a plain slot)."""
        if window.remote.session.state != SessionState.CONNECTED:
            raise RuntimeError("Join a room first: Remote ▸ Join room… (or untick 'Train on a remote worker').")
        out_dir = Path(tempfile.mkdtemp(prefix="sleap-rtc-pkg-"))
        package, form = package_from_dialog(window, dlg, out_dir)
        dlg.accept()
        job = cls(window, dlg, package, form)
        job.ctl = window.remote.submit(package.path, out_dir / "results", on_progress=job.on_event)
        job.ctl.succeeded.connect(job._on_success)
        job.ctl.ended.connect(job._on_ended)
        window.remote_jobs.append(job)
        return job

    # ------------------------------------------------------------------ LossViewer

    def _reset_viewer(self, what: str) -> None:
        self.viewer.reset(what=what)
        self.viewer.setWindowTitle(f"Training Model - {what} (remote)")
        self.viewer.set_message("Training on a remote worker…")
        # reset() rebuilds the buttons: re-wire Cancel each time (Stop goes through ZMQ).
        if self.viewer.cancel_button is not None:
            self.viewer.cancel_button.clicked.connect(self._cancel)

    def on_event(self, event: dict[str, Any]) -> None:
        """Forward one worker training event to the LossViewer.

        sleap-nn 0.3.5 sends ``what: ""``; the viewer keys its plot on ``what``, so an empty
        one is filled with the head being trained (the heads train in package order, one
        ``train_begin`` each), or a top-down job's two models would share one plot.
        """
        if event.get("event") == "train_begin":
            self._head_index += 1
        what = event.get("what")
        if not what and self.heads:
            what = self.heads[min(max(self._head_index, 0), len(self.heads) - 1)]
            event = {**event, "what": what}
        if event.get("event") == "train_begin" and what:
            # No reset here: the viewer may still hold the previous head's queued events,
            # and it follows train_begin's "what" by itself.
            self.viewer.setWindowTitle(f"Training Model - {what} (remote)")
        if event.get("event") == "epoch_end":
            self.epochs_forwarded += 1
        self.feed.publish(event)

    def _stop(self) -> None:
        if self.ctl is not None:
            self.ctl.stop()

    def _cancel(self) -> None:
        if self.ctl is not None:
            self.ctl.cancel()

    # ------------------------------------------------------------------ results

    def _on_success(self, outcome: JobOutcome) -> None:
        try:
            self.install_models(outcome)
            self.new_frames = self.merge_predictions(outcome)
        except Exception as exc:
            log.exception("could not install remote results")
            show_error(self.window, "Remote training", exc)
        finally:
            self._finish()
        self.dlg._handle_learning_finished.emit(self.new_frames)

    def _on_ended(self, _phase: str) -> None:
        self._finish()

    def _finish(self) -> None:
        # Let the last epochs reach the plot before the viewer closes.
        self.feed.drain_then(self._close_viewer)

    def _close_viewer(self) -> None:
        self.feed.close()
        self.viewer.close()
        self.closed = True

    def install_models(self, outcome: JobOutcome) -> list[Path]:
        """Copy each trained run folder into the project's ``models/`` folder.

        An existing ``models/<run>`` is never touched: the copy goes to ``<run>-2`` ... (it is
        copied beside the project first, then moved into place whole)."""
        from sleap_rtc.core.files import place_new

        installed = []
        src = outcome.models_dir
        if src is None or not Path(src).is_dir():
            return installed
        dest_root = self.project_dir / "models"
        dest_root.mkdir(parents=True, exist_ok=True)
        for run in sorted(Path(src).iterdir()):
            if run.is_dir() and not run.is_symlink() and not run.name.startswith("."):
                staging = dest_root / f".installing-{run.name}"
                shutil.rmtree(staging, ignore_errors=True)
                shutil.copytree(_unwrap_run(run), staging, symlinks=True)
                try:
                    installed.append(place_new(staging, dest_root / run.name))
                finally:
                    shutil.rmtree(staging, ignore_errors=True)
        return installed

    def merge_predictions(self, outcome: JobOutcome) -> int:
        """Merge returned predictions into the open labels (videos matched by position)."""
        if outcome.predictions is None or not Path(outcome.predictions).is_file():
            return 0
        import sleap_io as sio

        predicted = sio.load_slp(str(outcome.predictions))
        labels = self.window.labels
        frames = []
        for lf in predicted.labeled_frames:
            idx = predicted.videos.index(lf.video)
            if idx >= len(labels.videos):
                continue
            preds = [inst for inst in lf.instances if type(inst).__name__ == "PredictedInstance"]
            if preds:
                frames.append(sio.LabeledFrame(video=labels.videos[idx], frame_idx=lf.frame_idx, instances=preds))
        if not frames:
            return 0
        new = sio.Labels(labeled_frames=frames, videos=list(labels.videos), skeletons=list(labels.skeletons))
        mode = "replace_predictions" if self.form.get("_prediction_mode") == "replace" else "keep_both"
        labels.merge(new, track="name", frame=mode)
        return len(frames)
