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
  ``LossViewer`` (raised on top, reset for each model, Stop Early / Cancel Training map to
  the remote job), then installs models/predictions;
* ``closeEvent``: closing SLEAP while a remote job runs asks what to do with it.

Inference Target (SLEAP's own control in the training dialog): *Current frame*, *Selected
clip*, *Random sample*, *Suggestions*, *User labeled* and *Frames with predictions* are
served remotely (those frames travel in the package, as its suggestions); *Entire video*
and *All videos* are predicted after training by a second, inference job on the worker that
trained the model (``sleap_inference.RemoteInferenceRun``: the videos travel on their own,
the model does not move). A video that cannot be sent is explained in the panel before Run.
"""

from __future__ import annotations

import logging
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

from qtpy import QtCore, QtWidgets

from sleap_rtc.core.job_runner import ConnectFn
from sleap_rtc.core.phases import Phase
from sleap_rtc.core.remote_job import JobSummary
from sleap_rtc.gui.bridge import show_error
from sleap_rtc.gui.controller import RemoteGui
from sleap_rtc.gui.loss_feed import LossFeed
from sleap_rtc.gui.remote_run import RemoteJobController
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


def use_pyside_platform_plugins() -> None:
    """Undo OpenCV's Qt plugin path so Qt loads PySide6's own ``xcb`` plugin.

    SLEAP imports ``cv2``; a pip OpenCV wheel built with Qt sets
    ``QT_QPA_PLATFORM_PLUGIN_PATH`` to its own ``cv2/qt/plugins`` at import, whose ``xcb``
    plugin belongs to another Qt: on a real X display the ``QApplication`` then aborts
    ("Could not load the Qt platform plugin xcb"). SLEAP's own fix re-executes the process,
    which our launcher turns off (``SLEAP_SKIP_QT_FIX``). Call before the app exists.
    """
    import os

    path = os.environ.get("QT_QPA_PLATFORM_PLUGIN_PATH", "")
    if path and f"{os.sep}cv2{os.sep}" in path + os.sep:
        del os.environ["QT_QPA_PLATFORM_PLUGIN_PATH"]
        os.environ.pop("QT_QPA_FONTDIR", None) if "cv2" in os.environ.get("QT_QPA_FONTDIR", "") else None


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

    use_pyside_platform_plugins()
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

        def __init__(self, *args: Any, server_url: str | None = None, connect: ConnectFn | None = None, **kwargs: Any):
            kwargs.setdefault("no_usage_data", True)
            super().__init__(*args, **kwargs)
            self.remote = RemoteGui(self, server_url, connect)
            attach_dock(self, self.remote.dock)
            place_menu_before_help(self.menuBar(), self.remote.build_menu(self.menuBar()))
            self.remote_jobs: list[RemoteTraining] = []
            self._close_decided = False

        def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt's name
            """With a remote job running, ask what to do with it before SLEAP's own close."""
            running = self.remote.running_jobs()
            if running and not self._close_decided:
                event.ignore()
                ask_about_running_jobs(self, running)
                return
            super().closeEvent(event)
            if event.isAccepted():
                for ctl in self.remote.running_jobs():
                    ctl.cancel()

        def _show_learning_dialog(self, mode: str) -> None:
            super()._show_learning_dialog(mode)
            dlg = self._child_windows.get(mode)
            if mode == "training" and dlg is not None:
                inject_panel(self, dlg)
            elif mode == "inference" and dlg is not None:
                from sleap_rtc.gui.sleap_inference import inject_inference_panel

                inject_inference_panel(self, dlg)

    _WINDOW_CLASS = RemoteMainWindow
    return RemoteMainWindow


def place_menu_before_help(menubar: QtWidgets.QMenuBar, menu: QtWidgets.QMenu) -> None:
    """Move ``menu`` just before SLEAP's Help menu (menus end with Help by convention)."""
    actions = menubar.actions()
    help_action = next((a for a in actions if a.text().replace("&", "") == "Help"), None)
    if help_action is not None and menu.menuAction() in actions:
        menubar.removeAction(menu.menuAction())
        menubar.insertMenu(help_action, menu)


CLOSE_KEEP_OPEN, CLOSE_STOP, CLOSE_CANCEL = "keep open", "stop early", "cancel"


def ask_about_running_jobs(window: Any, running: list) -> QtWidgets.QMessageBox:
    """Closing SLEAP with a remote job running: stop it early, cancel it, or keep SLEAP open.

    Opened with ``open()`` (never ``exec()``): the window's close was ignored, and the
    choice closes it again once decided. Stop early waits for the model to arrive (the
    job's panel shows it) and then closes SLEAP.
    """
    n = len(running)
    box = QtWidgets.QMessageBox(window)
    box.setObjectName("sleap_rtc_close_box")
    box.setIcon(QtWidgets.QMessageBox.Question)
    box.setWindowTitle("A remote job is running")
    box.setText(
        ("A remote job is" if n == 1 else f"{n} remote jobs are") + " still running on a worker. "
        "What should happen to " + ("it" if n == 1 else "them") + "?"
    )
    box.setInformativeText(
        "Stop early keeps the model trained so far: SLEAP closes once it has arrived. "
        "Cancel frees the worker at once; nothing comes back. "
        "(Leaving a job running on the worker to fetch later is not available yet.)"
    )
    stop = box.addButton("Stop early, then close", QtWidgets.QMessageBox.AcceptRole)
    cancel = box.addButton("Cancel the job and close", QtWidgets.QMessageBox.DestructiveRole)
    keep = box.addButton("Keep SLEAP open", QtWidgets.QMessageBox.RejectRole)
    stop.setObjectName(CLOSE_STOP)
    cancel.setObjectName(CLOSE_CANCEL)
    keep.setObjectName(CLOSE_KEEP_OPEN)
    box.setDefaultButton(keep)

    def close_when_ended() -> None:
        if not window.remote.running_jobs():
            window._close_decided = True
            QtCore.QTimer.singleShot(0, window.close)

    def decided(button: QtWidgets.QAbstractButton) -> None:
        if button is stop:
            for ctl in running:
                ctl.ended.connect(lambda *_: close_when_ended())
                ctl.succeeded.connect(lambda *_: QtCore.QTimer.singleShot(1500, close_when_ended))
                ctl.stop()
        elif button is cancel:
            for ctl in running:
                ctl.cancel()
            window._close_decided = True
            QtCore.QTimer.singleShot(0, window.close)

    box.buttonClicked.connect(decided)
    box.open()
    return box


def create_window(labels_path: str | None = None, *, server_url: str | None = None, connect: ConnectFn | None = None, **kwargs: Any) -> QtWidgets.QMainWindow:
    """SLEAP's main window with sleap-rtc attached (usage data off)."""
    return window_class()(labels_path=labels_path, server_url=server_url, connect=connect, **kwargs)


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
    wire_panel(dlg, panel, run_button, lambda *_: refresh_panel_notes(dlg, panel),
               lambda *_: on_run_clicked(window, dlg, panel))
    return panel


def wire_panel(dlg: Any, panel: RemoteTrainingPanel, run_button: Any, refresh: Any, on_run: Any) -> None:
    """Keep ``panel``'s notes fresh as the dialog's target changes, and send Run to ``on_run``
    (which calls SLEAP's own ``dlg.run`` while remote is not ticked)."""
    selector = getattr(dlg, "frame_target_selector", None)
    if selector is not None:
        selector.valueChanged.connect(refresh)
        selector.target_dropdown.currentIndexChanged.connect(refresh)
    panel.notes_wanted.connect(refresh)
    refresh()
    try:
        run_button.clicked.disconnect(dlg.run)
    except (RuntimeError, TypeError) as exc:  # SLEAP changed how Run is wired
        raise _hook_error("LearningDialog.run_button -> run connection") from exc
    run_button.clicked.connect(on_run)


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


PACKAGED_TARGETS = frozenset({"frame", "clip", "random", "random_video", "predicted"})
"""Inference Targets served by packing their frames into the package as its suggestions."""

AFTER_TRAINING_TARGETS = frozenset({"video", "all_videos"})
"""Inference Targets predicted after training by a second, inference job on the same worker
with the model it just trained (the videos travel on their own; no model bytes)."""

REMOTE_TARGETS = PACKAGED_TARGETS | AFTER_TRAINING_TARGETS | {"suggestions", "user_labeled", "nothing"}
"""Every Inference Target a remote job serves (keys of SLEAP's ``FrameTargetSelector``)."""

MAX_PACKAGED_FRAMES = 2000
"""Most frames an Inference Target may put in the package (a clip longer than this is refused)."""

CPU_EPOCHS_WARNING = 20
"""Max Epochs above which a CPU-only worker gets a warning (SLEAP's default is 200)."""


def target_label(dlg: Any, key: str) -> str:
    """The Inference Target's name as SLEAP's dropdown shows it (``Entire video``)."""
    dropdown = getattr(getattr(dlg, "frame_target_selector", None), "target_dropdown", None)
    if dropdown is not None:
        index = dropdown.findData(key)
        if index >= 0:
            return dropdown.itemText(index)
    return key


def served_target_labels(dlg: Any) -> list[str]:
    """The Inference Targets of this dialog that remote training serves, in SLEAP's words."""
    dropdown = getattr(getattr(dlg, "frame_target_selector", None), "target_dropdown", None)
    if dropdown is None:
        return []
    return [dropdown.itemText(i) for i in range(dropdown.count()) if dropdown.itemData(i) in REMOTE_TARGETS]


def unserved_target_text(dlg: Any, key: str) -> str:
    """Why this Inference Target is not served remotely, in SLEAP's own control names; ``""`` if it is."""
    if key in AFTER_TRAINING_TARGETS:
        from sleap_rtc.gui.sleap_inference import TargetError, read_targets

        try:
            read_targets(dlg, dlg.labels)
        except TargetError as exc:
            return str(exc)
        except Exception:  # the dialog is mid-edit: nothing to say yet
            return ""
        return ""
    if key in REMOTE_TARGETS or not key:
        return ""
    served = ", ".join(f"<i>{t}</i>" for t in served_target_labels(dlg) if t != target_label(dlg, "nothing"))
    return (
        f"Inference Target <i>{target_label(dlg, key)}</i> is not available for remote training yet: "
        "predicting whole videos needs the videos on the worker. Under <b>Inference Target</b> choose "
        f"{served or 'another target'}, or <i>{target_label(dlg, 'nothing')}</i> to only train."
    )


def remote_inference_request(target: str | None, frames: dict | None = None) -> InferenceRequest | None:
    """What to predict remotely for the dialog's Inference Target; ``None``: train only.

    *Suggestions* and *User labeled* travel in the package already; the other served
    targets (``PACKAGED_TARGETS``) put their ``frames`` ({video: [frame, ...]}) in the
    package as its suggestions. Whole videos (``AFTER_TRAINING_TARGETS``) are predicted by
    a second job after training: the package itself trains only.
    """
    if target in (None, "", "nothing") or target in AFTER_TRAINING_TARGETS:
        return None
    if target == "suggestions":
        return InferenceRequest(only_suggested_frames=True)
    if target == "user_labeled":
        return InferenceRequest(only_labeled_frames=True)
    if target in PACKAGED_TARGETS:
        n = sum(len(v or []) for v in (frames or {}).values())
        if n == 0:
            raise RuntimeError("The Inference Target selects no frame to predict. Choose another target, or Nothing.")
        if n > MAX_PACKAGED_FRAMES:
            raise RuntimeError(
                f"The Inference Target selects {n} frames; remote training can pack at most {MAX_PACKAGED_FRAMES}. "
                "Choose a shorter clip or a smaller random sample."
            )
        return InferenceRequest(only_suggested_frames=True)
    raise RuntimeError(
        f"Inference Target '{target}' is not available for remote training yet (whole videos stay on this computer). "
        "Choose Current frame, a Random sample, Suggestions or User labeled under Inference Target, or Nothing."
    )


def _max_epochs(config: dict[str, Any]) -> int | None:
    value = (config.get("trainer_config") or {}).get("max_epochs")
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _dialog_heads(dlg: Any) -> tuple[list[HeadConfig], dict[str, Any], Any]:
    selection = dlg.frame_target_selector.get_selection()
    form = dlg.pipeline_form_widget.get_form_data()
    form["_prediction_mode"] = selection.prediction_mode
    infos = dlg.get_every_head_config_data(form)
    heads = [HeadConfig(info.head_name, _plain_config(info.config)) for info in infos if not info.dont_retrain]
    if len(heads) != len(infos):
        raise RuntimeError("Remote training with an already-trained model is not supported yet; untick 'Use trained model'.")
    return heads, form, selection


def cpu_epochs_text(dlg: Any, worker: Any, candidates: list) -> str:
    """A warning when the job would go to a CPU-only worker with many epochs; ``""`` otherwise."""
    targets = [worker] if worker is not None else list(candidates)
    if not targets or any(not _is_cpu(w) for w in targets):
        return ""
    try:
        heads, _form, _sel = _dialog_heads(dlg)
    except Exception:  # the dialog is mid-edit: no warning rather than an error
        return ""
    epochs = max((_max_epochs(h.config) or 0) for h in heads) if heads else 0
    if epochs <= CPU_EPOCHS_WARNING:
        return ""
    who = worker.name if worker is not None else "Every worker of this room"
    return (
        f"{who} has no GPU. With <b>Max Epochs</b> {epochs} for {len(heads)} model(s) this would take hours there. "
        f"Lower Max Epochs (e.g. to 5 or 10) under the model's Training tab, or pick a GPU worker."
    )


def _is_cpu(worker: Any) -> bool:
    return str(getattr(worker, "gpu_model", "")).upper() == "CPU"  # how workers without a GPU advertise


def refresh_panel_notes(dlg: Any, panel: RemoteTrainingPanel) -> None:
    """Update the panel's notes: an unserved Inference Target, a CPU worker with many epochs."""
    notes = []
    if panel.remote_enabled():
        selector = getattr(dlg, "frame_target_selector", None)
        key = selector.get_selection().target_key if selector is not None else ""
        notes.append(unserved_target_text(dlg, key))
        room = panel.session.room
        notes.append(cpu_epochs_text(dlg, panel.chosen_worker(), room.available() if room is not None else []))
    panel.set_notes([n for n in notes if n])


def package_from_dialog(window: Any, dlg: Any, out_dir: Path) -> tuple[PackageInfo, dict[str, Any]]:
    """Build the training package from the dialog's own configs and the open labels."""
    heads, form, selection = _dialog_heads(dlg)
    target = form.get("_predict_target") or selection.target_key
    frames = dlg.get_selected_frames_to_predict(form) if target in PACKAGED_TARGETS else None
    inference = remote_inference_request(target, frames)
    labels_file = Path(window.state["filename"])
    labels = window.labels
    if target in AFTER_TRAINING_TARGETS:
        from sleap_rtc.gui.sleap_inference import read_targets

        form["_infer_after"] = read_targets(dlg, labels)  # refused now, before anything is built or sent
    info = build_training_package(
        out_dir / f"{labels_file.name}.training_job.zip",
        labels_stem=labels_file.name.removesuffix(".slp").removesuffix(".pkg"),  # "x.pkg.slp" -> "x"
        save_labels=lambda path: save_package_labels(labels, path, frames),
        heads=heads,
        n_labeled=len(labels.user_labeled_frames),
        inference=inference,
    )
    form["_predict_target"] = target
    form["_max_epochs"] = {h.head: _max_epochs(h.config) for h in heads}
    form["_predict_frames"] = sum(len(v or []) for v in (frames or {}).values())
    return info, form


def save_package_labels(labels: Any, path: Path, frames: dict | None) -> None:
    """Save the labels with embedded frames; ``frames`` ({video: [idx]}) become the copy's suggestions.

    The open project is not changed: its suggestions are swapped only for the save (no
    event runs in between), so the frames to predict travel in the package.
    """
    if not frames:
        labels.save(str(path), embed=True)
        return
    import sleap_io as sio

    original = list(labels.suggestions)
    labels.suggestions = [sio.SuggestionFrame(video=v, frame_idx=int(i)) for v, idx in frames.items() for i in (idx or [])]
    try:
        labels.save(str(path), embed=True)
    finally:
        labels.suggestions = original


def _unwrap_run(run: Path) -> Path:
    """The folder holding the model files: a zip of the run folder unpacks as ``<run>/<run>/``."""
    children = list(run.iterdir())
    if len(children) == 1 and children[0].is_dir() and children[0].name == run.name:
        return children[0]
    return run


def _free_port() -> int:
    """A loopback TCP port nobody listens on now (the OS picks it; a plain socket closes at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RemoteTraining(QtCore.QObject):
    """One remote training started from SLEAP's dialog: package, LossViewer, job, results.

    The ``LossViewer`` behaves as for SLEAP's local training: raised on top when it opens,
    reset before each model of a multi-model run (so Stop Early works for every model and
    the statistics are the model's own), and reset with a visible note when the job
    restarted on another worker. The package's temp folder is removed when the job ends.
    """

    def __init__(self, window: Any, dlg: Any, package: PackageInfo, form: dict[str, Any], out_dir: Path | None = None):
        super().__init__(window)
        from sleap.gui.widgets.monitor import LossViewer

        self.window, self.dlg, self.package, self.form = window, dlg, package, form
        self.out_dir = out_dir
        self.project_dir = Path(window.state["filename"]).parent
        # Ports the OS says are free now: SLEAP's fixed defaults (9000/9001) may be held by
        # another viewer, and its fallback re-binds ports its ZMQ sockets are still releasing.
        self.viewer = LossViewer(zmq_ports={"publish_port": _free_port(), "controller_port": _free_port()})
        self.viewer.resize(600, 400)
        self.heads = list(package.run_paths)
        self.max_epochs: dict[str, int | None] = dict(form.get("_max_epochs") or {})
        self.ctl: RemoteJobController | None = None
        self.epochs_forwarded = 0
        self.resets = 0
        self._head_index = -1  # index in self.heads of the model now training
        self._restart_note = ""  # set when the job moved to another worker mid-run
        self.new_frames = 0
        self.predict_after: Any = None  # the task submitting the inference after training, if any
        self.inference_run: Any = None  # that inference (a ``RemoteInferenceRun``) once submitted
        self.installed: list[Path] = []
        self.summary = ""
        self.closed = False
        self._reset_viewer(self.heads[0])
        self.feed = LossFeed(
            self.viewer.zmq_ports["publish_port"], self.viewer.zmq_ports.get("controller_port"), on_stop=self._stop, parent=self
        )
        self.viewer.show()
        self.raise_viewer()
        # The training dialog closing hands focus back to the main window: raise again after.
        QtCore.QTimer.singleShot(300, self.raise_viewer)

    @classmethod
    def start(cls, window: Any, dlg: Any, panel: RemoteTrainingPanel) -> RemoteTraining:
        """Validate, build the package, open the LossViewer and submit (all from a plain slot)."""
        if window.remote.session.state != SessionState.CONNECTED:
            raise RuntimeError("Join a room first: Remote ▸ Join room… (or untick 'Train on a remote worker').")
        out_dir = Path(tempfile.mkdtemp(prefix="sleap-rtc-pkg-"))
        try:
            package, form = package_from_dialog(window, dlg, out_dir)
        except BaseException:
            shutil.rmtree(out_dir, ignore_errors=True)
            raise
        dlg.accept()
        job = cls(window, dlg, package, form, out_dir)
        try:
            job.ctl = window.remote.submit(package.path, out_dir / "results", on_progress=job.on_event)
        except BaseException:
            job._close_viewer()
            raise
        job.ctl.succeeded.connect(job._on_success)
        job.ctl.ended.connect(job._on_ended)
        job.ctl.model_started.connect(job.on_model_started)
        job.ctl.restarted.connect(job.on_restarted)
        if job.ctl.panel is not None:
            job.ctl.panel.set_models(job.heads, job.max_epochs)
            job.ctl.panel.title_label.setText(f"<b>Training {', '.join(job.heads)}</b>")
        window.remote_jobs.append(job)
        return job

    # ------------------------------------------------------------------ LossViewer

    def raise_viewer(self) -> None:
        """Put the LossViewer on top and give it focus, as SLEAP's local training does."""
        if self.closed:
            return
        self.viewer.show()
        self.viewer.raise_()
        self.viewer.activateWindow()

    def _reset_viewer(self, what: str, note: str = "") -> None:
        self.viewer.reset(what=what)
        self.resets += 1
        self.viewer.setWindowTitle(f"Training Model - {what} (remote)")
        self.viewer.set_message(note or "Training on a remote worker…")
        # reset() rebuilds the buttons: re-wire Cancel each time (Stop goes through ZMQ).
        if self.viewer.cancel_button is not None:
            self.viewer.cancel_button.clicked.connect(self._cancel)

    def on_restarted(self, note: Any) -> None:
        """The job started again on another worker (core ``Restarted``): the next model resets with a note."""
        self._restart_note = f"Restarted on {note.worker}: {note.previous} {note.reason}"

    def on_model_started(self, model: Any) -> None:
        """A model of the run started (core ``ModelStarted``, index from 1): reset the viewer in order.

        The reset waits until every event of the previous model was read by the viewer, so
        the new model's plot and statistics are its own and Stop Early is live again.
        """
        self._head_index = model.index - 1
        what = self.heads[min(self._head_index, len(self.heads) - 1)] if self.heads else model.name
        note, self._restart_note = self._restart_note, ""
        if self._head_index > 0 or note or self.epochs_forwarded:
            self.feed.call_in_order(lambda: self._next_model(what, note))

    def on_event(self, event: dict[str, Any]) -> None:
        """Forward one raw sleap-nn event to the LossViewer.

        sleap-nn 0.3.5 sends ``what: ""``; the viewer keys its plot on ``what``, so an empty
        one is filled with the model being trained (the models train in package order).
        """
        what = event.get("what")
        if not what and self.heads:
            what = self.heads[min(max(self._head_index, 0), len(self.heads) - 1)]
            event = {**event, "what": what}
        if event.get("event") == "epoch_end":
            self.epochs_forwarded += 1
        self.feed.publish(event)

    def _next_model(self, what: str, note: str) -> None:
        self._reset_viewer(what, note)
        if self.ctl is not None and self.ctl.panel is not None:
            self.ctl.panel.reset_stop()
        self.raise_viewer()

    def _stop(self) -> None:
        if self.ctl is not None:
            self.ctl.stop()

    def _cancel(self) -> None:
        if self.ctl is not None:
            self.ctl.cancel()

    # ------------------------------------------------------------------ results

    def _on_success(self, outcome: JobSummary) -> None:
        try:
            self.installed = self.install_models(outcome)
            self.new_frames = self.merge_predictions(outcome)
            self.predict_after = self.start_inference_after(outcome)
            self.summary = self.summary_text(outcome)
            if self.ctl is not None and self.ctl.panel is not None and self.predict_after is not None:
                self.ctl.panel.mark_step(Phase.PREDICTING, False, "next, in the Remote inference job below")
                self.ctl.panel.set_summary(self.summary)
            elif self.ctl is not None and self.ctl.panel is not None:
                predicted = outcome.predictions is not None
                asked = self.form.get("_predict_target") not in (None, "", "nothing")
                self.ctl.panel.mark_step(Phase.PREDICTING, predicted, "" if predicted else
                                         ("no predictions came back" if asked else "not asked (Inference Target: Nothing)"))
                self.ctl.panel.set_summary(self.summary)
            status_bar = getattr(self.window, "statusBar", None)
            if callable(status_bar):
                status_bar().showMessage(self.summary, 15000)
        except Exception as exc:
            log.exception("could not install remote results")
            show_error(self.window, "Remote training", exc)
        finally:
            self._finish()
        self.dlg._handle_learning_finished.emit(self.new_frames)

    INFER_AFTER_WAIT_S = 30.0
    """How long the inference after training waits for the worker to show itself free again."""

    def start_inference_after(self, outcome: JobSummary) -> Any:
        """*Entire video* / *All videos*: predict them now with the models just installed, on
        the worker that trained them (it holds them: no model bytes move); returns the task
        that submits it once the room shows that worker free again. ``None`` otherwise."""
        asked = self.form.get("_infer_after")
        if asked is None or not self.installed:
            return None
        import asyncio
        import contextlib

        from sleap_rtc.gui.bridge import run_coro
        from sleap_rtc.gui.sleap_inference import RemoteInferenceRun

        asked.model_dirs = list(self.installed)
        peer = outcome.peer_id

        async def submit() -> Any:
            room = self.window.remote.session.room
            if room is not None:  # the worker publishes "available" just after the job ends
                with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                    await room.wait_for(lambda view: getattr(view.get(peer), "available", False), self.INFER_AFTER_WAIT_S)
            self.inference_run = RemoteInferenceRun.submit(self.window, self.dlg, asked, worker_id=peer)
            return self.inference_run

        return run_coro(submit(), parent=self.window, title="Remote inference")

    def summary_text(self, outcome: JobSummary) -> str:
        """One line: where the model(s) went and how many frames were predicted."""
        if self.installed:
            where = ", ".join(f"models/{p.name}" for p in self.installed)
            text = f"Finished: {'model' if len(self.installed) == 1 else 'models'} saved to {where}"
        else:
            text = "Finished, but no model came back"
        if outcome.stopped_early:
            text += " (stopped early)"
        if getattr(self, "predict_after", None) is not None:
            text += "; predicting the videos in a Remote inference job"
        elif self.form.get("_predict_target") not in (None, "", "nothing") or self.new_frames:
            text += f"; {self.new_frames} frame{'s' if self.new_frames != 1 else ''} predicted"
        return text + "."

    def _on_ended(self, _phase: str) -> None:
        self._finish()

    def _finish(self) -> None:
        # Let the last epochs reach the plot before the viewer closes.
        self.feed.drain_then(self._close_viewer)

    def _close_viewer(self) -> None:
        self.feed.close()
        self.viewer.close()
        self.closed = True
        if self.out_dir is not None:
            # The package and a copy of the results: the models are in the project now.
            shutil.rmtree(self.out_dir, ignore_errors=True)

    def install_models(self, outcome: JobSummary) -> list[Path]:
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

    def merge_predictions(self, outcome: JobSummary) -> int:
        """Merge returned predictions into the open labels (videos matched by position)."""
        if outcome.predictions is None or not Path(outcome.predictions).is_file():
            return 0
        import sleap_io as sio

        from sleap_rtc.gui.sleap_inference import merge_video_predictions

        predicted = sio.load_slp(str(outcome.predictions))
        labels = self.window.labels
        mode = "replace" if self.form.get("_prediction_mode") == "replace" else "add"
        merged = 0
        for idx, video in enumerate(predicted.videos[: len(labels.videos)]):
            frames = [lf for lf in predicted.labeled_frames if lf.video is video]
            merged += merge_video_predictions(labels, frames, idx, mode)
        return merged
