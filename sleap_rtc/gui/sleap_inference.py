"""SLEAP's *Run Inference…* on a remote worker: the Inference dialog's panel, request and merge.

With ``sleap_attach`` the only module of ``sleap_rtc.gui`` that touches SLEAP: it reads
SLEAP 1.6's Inference dialog (``LearningDialog`` in ``"inference"`` mode, opened by
Predict > Run Inference…) and merges predictions into the open project. Attached the way
training is (``sleap_attach.RemoteMainWindow._show_learning_dialog``):

* the "Remote inference" panel (``RemoteTrainingPanel`` with inference words) is inserted
  once, Run re-routed: unticked it is SLEAP's own ``dlg.run()``; ticked, the dialog's
  Inference Target becomes frames per video (``inference_targets``), its trained models
  (or the worker-held copy of a model trained remotely) and its inference options a
  request, and the job runs on a worker, shown in the dock's non-modal ``JobPanel``;
* before Run the panel's notes say, in SLEAP's words, what the worker cannot serve (a
  pipeline without models, a video with no file to send) and Run refuses it;
* each video's predictions are merged as they arrive with SLEAP's own merge (its
  ``InferenceTask.merge_results``: empty instances dropped, *Replace* / *Add* / *Clear all
  first*, user instances kept), so a job interrupted later keeps what came back.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qtpy import QtCore

from sleap_rtc.core.phases import Phase
from sleap_rtc.gui.inference_targets import (
    TARGET_LABELS,
    TargetError,
    count_frames,
    frames_per_video,
    inference_options,
    unservable_pipeline_text,
    user_labeled_frames,
)

log = logging.getLogger(__name__)

INFERENCE_PANEL_TITLE = "Remote inference"
INFERENCE_CHECK_TEXT = "Predict on a remote worker"


@dataclass
class VideoToPredict:
    """One video of the project to predict remotely: its index, local file and frames."""

    index: int
    path: Path
    frames: list[int] | None  # None: every frame
    n_frames: int


@dataclass
class DialogInference:
    """What SLEAP's Inference dialog asks for, ready for a core inference request."""

    target: str
    videos: list[VideoToPredict]
    model_dirs: list[Path]
    options: dict[str, Any]
    prediction_mode: str = "add"
    clear_all_first: bool = False
    total_frames: int = 0
    form: dict[str, Any] = field(default_factory=dict)


def target_name(key: str) -> str:
    """SLEAP's name of an Inference Target key."""
    return TARGET_LABELS.get(key, key)


def video_file(video: Any) -> Path | None:
    """The one local file holding a SLEAP video's frames, or ``None`` when it has none to send.

    Embedded frames (a ``.pkg.slp``'s HDF5 dataset) and image sequences have no single video
    file; a file that is not on this computer cannot be sent either.
    """
    filename = getattr(video, "filename", None)
    if not isinstance(filename, (str, Path)):
        return None
    path = Path(filename)
    if path.suffix == ".slp" or getattr(getattr(video, "backend", None), "dataset", None):
        return None
    return path if path.is_file() else None


def video_problem(video: Any, index: int) -> str:
    """Why this video cannot be predicted remotely, in SLEAP's words; ``""`` if it can."""
    if video_file(video) is not None:
        return ""
    filename = getattr(video, "filename", None)
    name = f"Video {index + 1}"
    if isinstance(filename, (list, tuple)):
        return f"{name} is an image sequence: only video files can be sent to a worker."
    if isinstance(filename, (str, Path)) and (Path(filename).suffix == ".slp" or getattr(getattr(video, "backend", None), "dataset", None)):
        return (f"{name}'s frames are embedded in {Path(filename).name}: there is no video file to send. "
                "Add the original video file (File ▸ Add Videos…) to predict it remotely.")
    return f"{name}'s file {filename} is not on this computer (File ▸ Replace Videos… points SLEAP at it)."


def _selection(dlg: Any) -> tuple[dict[str, Any], Any]:
    form = dlg.pipeline_form_widget.get_form_data()
    selection = dlg.frame_target_selector.get_selection()
    form["_prediction_mode"] = selection.prediction_mode
    return form, selection


def read_targets(dlg: Any, labels: Any) -> DialogInference:
    """The frames, options and merge settings of SLEAP's learning dialog (Training or
    Inference), without models (``model_dirs`` empty); ``TargetError`` in SLEAP's words."""
    form, selection = _selection(dlg)
    target = selection.target_key
    selected = dlg.get_selected_frames_to_predict(form)
    frames = frames_per_video(selected, labels.videos, target=target, user_labeled=user_labeled_frames(labels.labeled_frames),
                              exclude_user_labeled=bool(form.get("_exclude_user_labeled")))
    if not frames:
        raise TargetError(f"Inference Target <i>{target_name(target)}</i> selects no frame to predict. Choose another target.")
    videos = []
    for index, idx in frames.items():
        video = labels.videos[index]
        problem = video_problem(video, index)
        if problem:
            raise TargetError(problem)
        videos.append(VideoToPredict(index, video_file(video), idx, int(len(video))))
    return DialogInference(
        target=target, videos=videos, model_dirs=[], options=inference_options(form),
        prediction_mode=selection.prediction_mode, clear_all_first=bool(form.get("_clear_all_first")),
        total_frames=count_frames(frames, labels.videos), form=form,
    )


def read_dialog(dlg: Any, labels: Any) -> DialogInference:
    """The remote request SLEAP's Inference dialog describes (raises ``TargetError`` with SLEAP's words)."""
    # The full key ("tracking-only", "movenet-lightning"): the form's short "_pipeline" is "" for them.
    problem = unservable_pipeline_text(getattr(dlg.pipeline_form_widget, "current_pipeline_key", "") or "")
    if problem:
        raise TargetError(problem)
    asked = read_targets(dlg, labels)
    for info in dlg.get_every_head_config_data(asked.form):
        path = getattr(info, "path", None)
        if not path or not getattr(info, "has_trained_model", True):
            raise TargetError(f"The {info.head_name} model is not trained yet: choose a trained model in its tab.")
        p = Path(path)
        asked.model_dirs.append(p.parent if p.suffix in (".yaml", ".yml", ".json") else p)
    return asked


def inference_notes(dlg: Any, labels: Any, worker: Any = None, candidates: list | None = None) -> list[str]:
    """The panel's notes before Run: what the worker cannot serve, in SLEAP's words.

    ``worker`` is the one picked (``None``: auto-select among ``candidates``, the room's
    available workers): a worker that cannot run this inference is named with why (core's
    ``explain_unsupported``); under auto-select only when none of them can.
    """
    try:
        asked = read_dialog(dlg, labels)
    except TargetError as exc:
        return [str(exc)]
    except Exception:  # the dialog is mid-edit (a tab not built yet): nothing to say
        return []
    from sleap_rtc.core.inference import explain_unsupported

    request = core_request(asked)
    targets = [worker] if worker is not None else list(candidates or [])
    problems = [explain_unsupported(w, request) for w in targets]
    if not targets or not all(problems):
        return []
    if worker is not None:
        return problems[0]
    return ["No available worker of this room can run this inference: " + " ".join(p for ps in problems for p in ps)]


def merge_video_predictions(labels: Any, labeled_frames: Any, video_index: int, prediction_mode: str) -> int:
    """Merge one video's predicted frames (``sleap_io.LabeledFrame``) into the open labels, as SLEAP does.

    The frames land on the project's own video ``video_index`` (the worker's copy has
    another path). Like SLEAP's ``InferenceTask.merge_results``: instances without visible
    points and frames left empty are dropped, and ``Labels.merge`` keeps user instances,
    replacing earlier predictions with *Replace* and keeping them with *Add*.
    Returns the number of frames with new predictions.
    """
    import sleap_io as sio

    video = labels.videos[video_index]
    frames = []
    for lf in labeled_frames:
        preds = [inst for inst in lf.instances if isinstance(inst, sio.PredictedInstance)]
        frame = sio.LabeledFrame(video=video, frame_idx=int(lf.frame_idx), instances=preds)
        frame.remove_empty_instances()
        if frame.instances:
            frames.append(frame)
    if not frames:
        return 0
    mode = "replace_predictions" if prediction_mode == "replace" else "keep_both"
    labels.merge(sio.Labels(labeled_frames=frames), track="name", frame=mode)
    return len(frames)


# ---------------------------------------------------------------------------------- dialog


def inject_inference_panel(window: Any, dlg: Any) -> Any:
    """Insert the Remote inference panel into SLEAP's Inference dialog once; re-route Run."""
    from sleap_rtc.gui.sleap_attach import _require, wire_panel
    from sleap_rtc.gui.training_panel import PANEL_OBJECT_NAME, RemoteTrainingPanel

    existing = dlg.findChild(RemoteTrainingPanel, PANEL_OBJECT_NAME)
    if existing is not None:
        return existing
    run_button = _require(dlg, "run_button", "LearningDialog")
    panel = RemoteTrainingPanel(window.remote.dock, dlg, title=INFERENCE_PANEL_TITLE, check_text=INFERENCE_CHECK_TEXT,
                                tooltip="Run sends the videos (or only what the worker lacks) and the models to a worker of the room.")
    panel.join_requested.connect(window.remote.open_join_dialog)
    dlg.layout().insertWidget(1, panel)
    refresh = lambda *_: refresh_inference_notes(window, dlg, panel)  # noqa: E731
    dlg.pipeline_form_widget.updatePipeline.connect(refresh)  # a model picked changes what can run
    wire_panel(dlg, panel, run_button, refresh, lambda *_: on_inference_run_clicked(window, dlg, panel))
    return panel


def refresh_inference_notes(window: Any, dlg: Any, panel: Any) -> None:
    """The panel's notes while "Predict on a remote worker" is ticked (none otherwise)."""
    if not panel.remote_enabled():
        panel.set_notes([])
        return
    room = panel.session.room
    panel.set_notes(inference_notes(dlg, window.labels, panel.chosen_worker(), room.available() if room is not None else []))


def on_inference_run_clicked(window: Any, dlg: Any, panel: Any) -> None:
    """Plain slot for Run: SLEAP's own inference unless "Predict on a remote worker" is ticked."""
    from sleap_rtc.gui.bridge import show_error

    if not panel.remote_enabled():
        dlg.run()
        return
    try:
        RemoteInferenceRun.start(window, dlg, panel)
    except Exception as exc:  # shown, never swallowed; the dialog stays usable
        log.info("remote inference could not start: %s", exc)
        show_error(dlg if dlg.isVisible() else window, "Remote inference", exc)


# ---------------------------------------------------------------------------------- the job


def core_request(asked: DialogInference) -> Any:
    """Core's ``InferenceRequest`` for what the dialog asked (``key``: the project's video index)."""
    from sleap_rtc.core.inference import InferenceOptions, InferenceRequest, ModelSource, VideoTarget

    opts = dict(asked.options)
    fixed = {name: opts.pop(name, None) for name in ("peak_threshold", "batch_size", "max_instances")}
    tracking = bool(opts.pop("tracking", False))
    return InferenceRequest(
        videos=tuple(VideoTarget(v.path, frames=None if v.frames is None else tuple(v.frames), key=str(v.index))
                     for v in asked.videos),
        models=tuple(ModelSource(path=p) for p in asked.model_dirs),
        options=InferenceOptions(tracking=tracking, tracker=opts, **fixed),
    )


def unsent_options(asked: DialogInference) -> list[str]:
    """SLEAP inference settings that sleap-nn's ``track`` on the worker does not take."""
    from sleap_rtc.core.inference import unsupported_options

    return unsupported_options(asked.options)


class RemoteInferenceRun(QtCore.QObject):
    """One remote inference started from SLEAP (Run Inference…, or after a remote training).

    Merges each video's predictions into the open project as it lands, with SLEAP's merge
    (``merge_video_predictions``), tells SLEAP's window (its ``_handle_learning_finished``:
    redraw, an undoable "new predictions" change) and keeps the file in the project's
    ``predictions/`` folder under SLEAP's own name. What was merged stays if the job later
    fails or is cancelled. The job's temporary folder is removed when it ends.
    """

    def __init__(self, window: Any, dlg: Any, asked: DialogInference):
        super().__init__(window)
        self.window, self.dlg, self.asked = window, dlg, asked
        self.project_dir = Path(window.state["filename"]).parent
        self.out_dir = Path(tempfile.mkdtemp(prefix="sleap-rtc-infer-results-"))
        self.ctl: Any = None
        self.merged: dict[int, int] = {}
        """Frames with new predictions per project video index, as merged so far."""
        self.kept: list[Path] = []
        """The predictions files kept in the project's ``predictions/`` folder."""
        self.summary = ""
        self._cleared = False

    @classmethod
    def start(cls, window: Any, dlg: Any, panel: Any) -> RemoteInferenceRun:
        """Validate the dialog, close it, and run the inference on a worker (from a plain slot)."""
        from sleap_rtc.gui.session import SessionState

        if window.remote.session.state != SessionState.CONNECTED:
            raise RuntimeError("Join a room first: Remote ▸ Join room… (or untick 'Predict on a remote worker').")
        asked = read_dialog(dlg, window.labels)
        room = window.remote.session.room
        refused = inference_notes(dlg, window.labels, panel.chosen_worker(), room.available() if room is not None else [])
        if refused:
            raise TargetError(" ".join(refused))
        dlg.accept()
        return cls.submit(window, dlg, asked)

    @classmethod
    def submit(cls, window: Any, dlg: Any, asked: DialogInference, worker_id: str | None = None) -> RemoteInferenceRun:
        """Run ``asked`` remotely (on ``worker_id`` if given) and present it in the dock."""
        run = cls(window, dlg, asked)
        request = core_request(asked)
        try:
            run.ctl = window.remote.submit_inference(request, run.out_dir, worker_id=worker_id)
        except BaseException:
            shutil.rmtree(run.out_dir, ignore_errors=True)
            raise
        run.ctl.video_predictions.connect(run.on_video_predictions)
        run.ctl.succeeded.connect(run._on_success)
        run.ctl.ended.connect(run._on_ended)
        if run.ctl.panel is not None:
            n = len(asked.videos)
            what = f"{target_name(asked.target)}" + (f", {n} videos" if n > 1 else "")
            run.ctl.panel.title_label.setText(f"<b>Predicting: {what}</b>")
            dropped = unsent_options(asked)
            if dropped:
                run.ctl.panel.set_summary("Not available on the worker, left at sleap-nn's default: " + ", ".join(dropped))
        window.remote_jobs.append(run)
        return run

    # ------------------------------------------------------------------ predictions

    def on_video_predictions(self, found: Any) -> None:
        """A video's predictions landed: merge them now, keep the file in ``predictions/``."""
        import sleap_io as sio

        try:
            index = int(found.video.key)
            predicted = sio.load_slp(str(found.path))
            labels = self.window.labels
            if self.asked.clear_all_first and not self._cleared:
                labels.remove_predictions()
            self._cleared = True
            n = merge_video_predictions(labels, predicted.labeled_frames, index, self.asked.prediction_mode)
            self.merged[index] = self.merged.get(index, 0) + n
            self.kept.append(self._keep(Path(found.path), labels.videos[index]))
        except Exception as exc:
            log.exception("could not merge remote predictions")
            from sleap_rtc.gui.bridge import show_error

            show_error(self.window, "Remote inference", exc)
            return
        # SLEAP's own "inference finished" path: redraw and an undoable "new predictions" change.
        self.dlg._handle_learning_finished.emit(n)

    def _keep(self, path: Path, video: Any) -> Path:
        """Move the predictions into ``<project>/predictions/`` as SLEAP names its own."""
        from sleap_rtc.core.files import place_new

        folder = self.project_dir / "predictions"
        folder.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%y%m%d_%H%M%S")
        source = Path(str(getattr(video, "filename", "") or path.name)).name
        return place_new(path, folder / f"{source}.{stamp}.predictions.slp")

    @property
    def new_frames(self) -> int:
        """Frames with new predictions merged so far."""
        return sum(self.merged.values())

    def summary_text(self, finished: bool) -> str:
        """One line: frames predicted, and for an early end what was kept."""
        n = self.new_frames
        videos = len(self.merged)
        text = f"{n} frame{'s' if n != 1 else ''} predicted"
        if len(self.asked.videos) > 1:
            text += f" in {videos} of {len(self.asked.videos)} videos"
        if finished:
            return f"Finished: {text}."
        return f"Kept what came back: {text}." if n else "No predictions came back."

    def _on_success(self, summary: Any) -> None:
        self.summary = self.summary_text(True)
        moved = getattr(summary, "video_bytes_sent", None)
        if moved == 0:
            self.summary += " No video was sent: the worker had them."
        if self.ctl is not None and self.ctl.panel is not None:
            self.ctl.panel.mark_step(Phase.PREDICTING, True)
            self.ctl.panel.set_summary(self.summary)
        self._status(self.summary)
        self._finish()

    def _on_ended(self, phase: str) -> None:
        self.summary = self.summary_text(False)
        if self.ctl is not None and self.ctl.panel is not None and self.merged:
            text = self.ctl.panel.status_label.text()
            self.ctl.panel.set_summary(f"{text} {self.summary}".strip())
        self._status(self.summary)
        self._finish()

    def _status(self, text: str) -> None:
        status_bar = getattr(self.window, "statusBar", None)
        if callable(status_bar):
            status_bar().showMessage(text, 15000)

    def _finish(self) -> None:
        shutil.rmtree(self.out_dir, ignore_errors=True)
