"""SLEAP's Inference Target and inference options, as a remote inference request's parts (no SLEAP import).

SLEAP's main window hands its learning dialog ``frame_selection``: per target key
(``frame``, ``clip``, ``video``, ``all_videos``, ``random``, ``suggestions``, ``user``,
``predicted`` …) a ``{video: frames}`` dict, where ``frames`` is a list of frame indices or
a ``(start, -stop)`` pair meaning ``range(start, stop)`` (SLEAP's own encoding). The dialog's
``get_selected_frames_to_predict`` resolves the chosen target (it samples the random ones).
This module turns that resolved dict into frames per video index of the project
(``None``: every frame of the video), applies the target's "skip user-labeled frames"
the way sleap-nn's ``--exclude_user_labeled`` does, and reads SLEAP's inference options
(peak threshold, batch size, max instances, tracking, overlap filtering) from the dialog's
form, with the same meaning as SLEAP's own ``InferenceTask.make_predict_cli_call``.

It works on anything list-like with ``index`` (``labels.videos``) and on any video with a
``len``; SLEAP's ``Labels`` and ``sleap_io`` objects are what the GUI passes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

WHOLE_VIDEO_TARGETS = frozenset({"video", "all_videos"})
"""Targets that ask for every frame of a video (sent as "all frames", not as a list)."""

TARGET_LABELS = {
    "frame": "Current frame",
    "clip": "Selected clip",
    "video": "Entire video",
    "all_videos": "All videos",
    "random_video": "Random sample (current video)",
    "random": "Random sample (all videos)",
    "suggestions": "Suggestions",
    "user_labeled": "User labeled",
    "predicted": "Frames with predictions",
    "nothing": "Nothing",
}
"""SLEAP 1.6's names for its Inference Target keys (its dropdown's labels)."""


class TargetError(ValueError):
    """The Inference Target cannot be predicted remotely; the text says why in SLEAP's terms."""


def decode_frames(frames: Any, n_frames: int | None) -> list[int] | None:
    """A SLEAP frame list as sorted unique indices; ``None`` when it is the whole video.

    ``(start, -stop)`` is SLEAP's range encoding (``[start, stop)``); ``(0, 0)`` is an
    empty clip. Indices outside ``[0, n_frames)`` are dropped when the length is known.
    """
    if frames is None:
        return None
    frames = list(frames)
    if len(frames) == 2 and frames[1] < 0:
        start, stop = int(frames[0]), -int(frames[1])
        if n_frames is not None and start <= 0 and stop >= n_frames:
            return None
        out = range(max(start, 0), stop if n_frames is None else min(stop, n_frames))
        return list(out)
    if frames == [0, 0]:
        return []
    idx = sorted({int(i) for i in frames if int(i) >= 0})
    if n_frames is not None:
        idx = [i for i in idx if i < n_frames]
    return idx


def _length(video: Any) -> int | None:
    try:
        return int(len(video))
    except Exception:  # a video that cannot be opened here: its length is unknown
        return None


def frames_per_video(
    selected: Mapping[Any, Any],
    videos: Sequence[Any],
    *,
    target: str = "",
    user_labeled: Mapping[Any, Iterable[int]] | None = None,
    exclude_user_labeled: bool = False,
) -> dict[int, list[int] | None]:
    """``{video index: frames or None (all)}`` for the dialog's resolved ``{video: frames}``.

    ``videos`` is the project's video list (the index is the position in it, as SLEAP's
    ``--video_index``). ``user_labeled`` gives each video's user-labeled frame indices,
    removed when ``exclude_user_labeled`` (a whole video then becomes an explicit list).
    Videos with no frame left are left out; the order is the project's.
    """
    out: dict[int, list[int] | None] = {}
    for video, frames in selected.items():
        try:
            index = videos.index(video)
        except ValueError:
            continue  # a video no longer in the project (removed while the dialog was open)
        n = _length(video)
        decoded = None if target in WHOLE_VIDEO_TARGETS and n is not None else decode_frames(frames, n)
        skip = set(user_labeled.get(video, ())) if (exclude_user_labeled and user_labeled) else set()
        if skip:
            if decoded is None:
                if n is None:
                    raise TargetError("The video's length is unknown here, so its user-labeled frames cannot be skipped.")
                decoded = list(range(n))
            decoded = [i for i in decoded if i not in skip]
        if decoded is None or decoded:
            out[index] = decoded
    return dict(sorted(out.items()))


def count_frames(frames: Mapping[int, list[int] | None], videos: Sequence[Any]) -> int:
    """How many frames ``frames_per_video``'s answer covers (whole videos by their length)."""
    total = 0
    for index, idx in frames.items():
        total += (_length(videos[index]) or 0) if idx is None else len(idx)
    return total


def user_labeled_frames(labeled_frames: Iterable[Any]) -> dict[Any, set[int]]:
    """``{video: {frame_idx}}`` of the frames holding a user instance (SLEAP's "user labeled")."""
    out: dict[Any, set[int]] = {}
    for lf in labeled_frames:
        if getattr(lf, "has_user_instances", False):
            out.setdefault(lf.video, set()).add(int(lf.frame_idx))
    return out


def inference_options(form: Mapping[str, Any]) -> dict[str, Any]:
    """SLEAP's inference options from the dialog's form, as sleap-nn ``track`` option names.

    The same choices SLEAP's own runner turns into ``sleap predict`` flags: an option the
    user left at "Default" is absent from the form and so from the answer. The Accelerator
    setting is left out: it names this computer's hardware, and the worker uses its own.
    """
    opts: dict[str, Any] = {}
    for key, name in (("_batch_size", "batch_size"), ("_peak_threshold", "peak_threshold"),
                      ("_max_instances", "max_instances")):
        if form.get(key) is not None:
            opts[name] = form[key]
    tracker = form.get("tracking.tracker") or "none"
    if tracker != "none":
        opts["tracking"] = True
        for key, name in (("tracking.match", "track_matching_method"), ("tracking.track_window", "tracking_window_size")):
            if form.get(key) is not None:
                opts[name] = form[key]
        max_tracks = form.get("tracking.max_tracks")
        if max_tracks is not None:
            opts["candidates_method"] = "local_queues"
            opts["max_tracks"] = max_tracks
        if "flow" in tracker:
            opts["use_flow"] = True
        if form.get("tracking.post_connect_single_breaks") == 1:
            opts["post_connect_single_breaks"] = True
            if max_tracks is not None:
                opts["tracking_target_instance_count"] = max_tracks
        robust = form.get("tracking.robust")
        if robust is None or robust == 1.0:
            opts["scoring_reduction"] = "max"
        else:
            opts["scoring_reduction"] = "robust_quantile"
            opts["robust_best_instance"] = robust
        similarity = form.get("tracking.similarity")
        if similarity in ("centroids", "centroid"):
            opts["features"], opts["scoring_method"] = "centroids", "euclidean_dist"
        elif similarity == "iou":
            opts["features"], opts["scoring_method"] = "bboxes", "iou"
    if form.get("filter_overlapping"):
        opts["filter_overlapping"] = True
        opts["filter_overlapping_method"] = form.get("filter_overlapping_method", "iou")
        opts["filter_overlapping_threshold"] = form.get("filter_overlapping_threshold", 0.8)
    return opts


def unservable_pipeline_text(pipeline: str) -> str:
    """Why a pipeline of SLEAP's Inference dialog cannot run remotely; ``""`` if it can."""
    if pipeline == "tracking-only":
        return ("<i>tracking-only</i> retracks the project's own predictions, which stay on this computer: "
                "run it locally (untick the remote box), or choose a pipeline with trained models.")
    if "movenet" in pipeline:
        return f"<i>{pipeline}</i> is not available on remote workers: choose a pipeline with trained models."
    return ""
