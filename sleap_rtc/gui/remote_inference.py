"""Present one remote inference in the GUI: core's ``RemoteInference`` with Qt signals.

``RemoteInferenceController`` is a ``RemoteJobController`` (same chooser, retry answers,
Cancel, panel in the dock) whose runner is core's ``RemoteInference`` on an
``InferenceRequest`` instead of a ``RemoteJob`` on a package. Its panel leaves out the
Training step and shows, while the worker predicts, frames done of the total, FPS and ETA
(sleap-nn's own counter, per video), and per video how it travelled (sent, already on the
worker, read from a data root). Each video's predictions file is re-emitted as soon as it
lands (``video_predictions``), so the caller merges it while later videos still run; a job
that ends early keeps what arrived (``returned``).
"""

from __future__ import annotations

from typing import Any

from qtpy import QtCore

from sleap_rtc.core.inference import (
    InferenceCallbacks,
    InferenceProgress,
    InferenceRequest,
    RemoteInference,
    VideoPredictions,
    VideoUpload,
)
from sleap_rtc.core.phases import Phase
from sleap_rtc.gui.remote_run import RemoteJobController, _Signals


class _InferenceSignals(_Signals, InferenceCallbacks):
    """Core's inference callbacks, re-emitted as the controller's Qt signals."""

    def video_upload(self, upload: VideoUpload) -> None:
        self.ctl.video_uploaded.emit(upload)

    def inference_progress(self, progress: InferenceProgress) -> None:
        self.ctl.inference_progress.emit(progress)

    def video_predictions(self, predictions: VideoPredictions) -> None:
        self.ctl.video_predictions.emit(predictions)


def upload_text(upload: VideoUpload, n_videos: int) -> str:
    """How a video travels: ``video 1 of 2: already on the worker`` / ``… 40%``."""
    which = f"video {upload.index + 1} of {n_videos}" if n_videos > 1 else "video"
    if upload.root:
        return f"{which}: read from the worker's data root {upload.root}"
    if upload.cached:
        return f"{which}: already on the worker, nothing to send"
    pct = int(100 * upload.done / upload.total) if upload.total else 100
    return f"{which}: {pct}%"


class RemoteInferenceController(RemoteJobController):
    """Runs one remote inference (core's ``RemoteInference``) and presents it in a ``JobPanel``.

    ``package`` is the ``InferenceRequest``; everything else as ``RemoteJobController``.
    """

    PANEL_TITLE = "Remote inference"

    video_uploaded = QtCore.Signal(object)
    """Per-video upload state (core ``VideoUpload``: bytes, or ``cached`` / ``root``)."""
    inference_progress = QtCore.Signal(object)
    """Per-video inference progress (core ``InferenceProgress``: frames, FPS, ETA)."""
    video_predictions = QtCore.Signal(object)
    """A video's predictions landed (core ``VideoPredictions``): merge it now."""

    def __init__(self, request: InferenceRequest, results_dir: Any, **kwargs: Any):
        self.request = request
        self.uploads: dict[int, VideoUpload] = {}
        """The last upload state of each video (tests and the summary read it)."""
        self.frames_seen: list[InferenceProgress] = []
        """Every inference progress report, in order."""
        super().__init__(request, results_dir, **kwargs)
        self.video_uploaded.connect(self._on_upload)
        self.inference_progress.connect(self._on_progress)
        if self.panel is not None:
            self.panel.hide_step(Phase.TRAINING)

    def _make_runner(self, package: Any, **kwargs: Any) -> RemoteInference:
        return RemoteInference(package, callbacks=_InferenceSignals(self), **kwargs)

    @property
    def returned(self) -> list[VideoPredictions]:
        """The videos whose predictions came back so far (kept when the job ends early)."""
        return list(self.runner.returned)

    def _on_upload(self, upload: VideoUpload) -> None:
        self.uploads[upload.index] = upload
        if self.panel is not None:
            self.panel.set_summary(upload_text(upload, len(self.request.videos)))

    def _on_progress(self, progress: InferenceProgress) -> None:
        self.frames_seen.append(progress)
        if self.panel is None:
            return
        n = len(self.request.videos)
        which = f"video {progress.index + 1} of {n}" if n > 1 else ""
        self.panel.set_inference_progress(progress.frames_done, progress.frames_total or None,
                                          progress.fps or None, progress.eta_s, which)
        if self.phases.phase == Phase.PREDICTING and progress.frames_total:
            self.phases.update(f"{progress.frames_done}/{progress.frames_total} frames")


__all__ = ["RemoteInferenceController", "upload_text"]
