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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


def read_dialog(dlg: Any, labels: Any) -> DialogInference:
    """The remote request SLEAP's Inference dialog describes (raises ``TargetError`` with SLEAP's words)."""
    form, selection = _selection(dlg)
    target = selection.target_key
    problem = unservable_pipeline_text(form.get("_pipeline", ""))
    if problem:
        raise TargetError(problem)
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
    infos = dlg.get_every_head_config_data(form)
    model_dirs = []
    for info in infos:
        path = getattr(info, "path", None)
        if not path or not getattr(info, "has_trained_model", True):
            raise TargetError(f"The {info.head_name} model is not trained yet: choose a trained model in its tab.")
        p = Path(path)
        model_dirs.append(p.parent if p.suffix in (".yaml", ".yml", ".json") else p)
    return DialogInference(
        target=target, videos=videos, model_dirs=model_dirs, options=inference_options(form),
        prediction_mode=selection.prediction_mode, clear_all_first=bool(form.get("_clear_all_first")),
        total_frames=count_frames(frames, labels.videos), form=form,
    )


def inference_notes(dlg: Any, labels: Any) -> list[str]:
    """The panel's notes before Run: what the worker cannot serve, in SLEAP's words."""
    try:
        read_dialog(dlg, labels)
    except TargetError as exc:
        return [str(exc)]
    except Exception:  # the dialog is mid-edit (a tab not built yet): nothing to say
        return []
    return []


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
    from sleap_rtc.gui.sleap_attach import _hook_error, _require
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
    selector = dlg.frame_target_selector
    selector.valueChanged.connect(refresh)
    selector.target_dropdown.currentIndexChanged.connect(refresh)
    dlg.pipeline_form_widget.updatePipeline.connect(refresh)
    panel.notes_wanted.connect(refresh)
    refresh()
    try:
        run_button.clicked.disconnect(dlg.run)
    except (RuntimeError, TypeError) as exc:  # SLEAP changed how Run is wired
        raise _hook_error("LearningDialog.run_button -> run connection") from exc
    run_button.clicked.connect(lambda *_: on_inference_run_clicked(window, dlg, panel))
    return panel


def refresh_inference_notes(window: Any, dlg: Any, panel: Any) -> None:
    """The panel's notes while "Predict on a remote worker" is ticked (none otherwise)."""
    panel.set_notes(inference_notes(dlg, window.labels) if panel.remote_enabled() else [])


def on_inference_run_clicked(window: Any, dlg: Any, panel: Any) -> None:
    """Plain slot for Run: SLEAP's own inference unless "Predict on a remote worker" is ticked."""
    from sleap_rtc.gui.bridge import show_error

    if not panel.remote_enabled():
        dlg.run()
        return
    try:
        RemoteInference.start(window, dlg, panel)
    except Exception as exc:  # shown, never swallowed; the dialog stays usable
        log.info("remote inference could not start: %s", exc)
        show_error(dlg if dlg.isVisible() else window, "Remote inference", exc)
