"""``sleap-rtc track`` targets: which frames of which videos, from a ``.slp`` project or bare
video files, and the predictions brought back into place.

Targets mirror SLEAP's Run Inference: a video file is predicted whole (or ``--frames``);
for a project, ``--only-labeled`` (user-labeled frames), ``--only-suggested`` (suggested
frames without user labels), ``--frames`` (on ``--video N``, default 0), ``--random N``
(N random frames of that video), ``--all-videos`` (every frame of every video). The
project's videos must be files on this computer (a ``.pkg.slp`` with embedded frames goes
the package way: ``client.track_package``).

``place_video_predictions`` points a returned predictions file at the local video (the
worker's copy had another path) and saves it under a new name; ``merge_into`` merges
per-video predictions into a copy of the project with sleap-io's ``replace_predictions``
strategy, SLEAP's semantics after inference: user instances kept, old predictions in those
frames replaced by the new ones. Nothing is ever written over an existing file.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

from sleap_rtc.core.files import place_new
from sleap_rtc.core.inference import VideoTarget


class TargetError(ValueError):
    """The targets cannot be built from the inputs; the message says why."""


@dataclass(frozen=True)
class Targets:
    """What to predict on, and the project it came from (``None`` for bare videos)."""

    videos: tuple[VideoTarget, ...]
    project: Path | None = None


_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def parse_frames(spec: str) -> tuple[int, ...]:
    """``"0-99,120,200-210"`` -> frame indexes (sorted, unique)."""
    frames: set[int] = set()
    for part in str(spec).replace(" ", "").split(","):
        m = _RANGE.match(part)
        if not m:
            raise TargetError(f"--frames {spec!r}: {part!r} is neither a frame nor a range such as 0-99.")
        first, last = int(m.group(1)), int(m.group(2) or m.group(1))
        if last < first:
            raise TargetError(f"--frames {spec!r}: the range {part} runs backwards.")
        if last - first > 10_000_000:
            raise TargetError(f"--frames {spec!r}: the range {part} is too long.")
        frames.update(range(first, last + 1))
    return tuple(sorted(frames))


def targets_for_videos(videos: list[Path], frames: str | None) -> Targets:
    """Bare video files: each whole, or ``frames`` of each."""
    chosen = parse_frames(frames) if frames else None
    return Targets(tuple(VideoTarget(Path(v), chosen, key=str(i)) for i, v in enumerate(videos)))


def targets_for_project(project: Path, *, only_labeled: bool = False, only_suggested: bool = False,
                        frames: str | None = None, video: int | None = None, random_count: int | None = None,
                        all_videos: bool = False, seed: int = 0) -> Targets:
    """The frames of the project's videos a SLEAP target names (module docstring)."""
    import sleap_io as sio

    try:
        labels = sio.load_slp(str(project), open_videos=False)
    except Exception as exc:  # a broken file: any error is the user's message
        raise TargetError(f"{project} cannot be read as a SLEAP project ({exc.__class__.__name__}: {exc}).") from None
    chosen = [video or 0] if not all_videos and (frames or random_count or video is not None) else range(len(labels.videos))
    out = []
    for index in chosen:
        if not 0 <= index < len(labels.videos):
            raise TargetError(f"--video {index}: the project has {len(labels.videos)} video(s).")
        vid = labels.videos[index]
        path = _local_video(project, vid, index)
        wanted: tuple[int, ...] | None
        if only_labeled or only_suggested:
            user = {lf.frame_idx for lf in labels.find(vid) if lf.has_user_instances}
            if only_labeled:
                wanted = tuple(sorted(user))
            else:
                wanted = tuple(sorted({s.frame_idx for s in labels.suggestions if s.video is vid} - user))
            if not wanted:
                continue
        elif frames:
            wanted = parse_frames(frames)
        elif random_count:
            n = _frame_count(path)
            wanted = tuple(sorted(random.Random(seed).sample(range(n), min(random_count, n))))
        else:
            wanted = None
        out.append(VideoTarget(path, wanted, key=str(index)))
    if not out:
        what = "user-labeled" if only_labeled else "unlabeled suggested"
        raise TargetError(f"{project.name} has no {what} frames to predict on.")
    return Targets(tuple(out), project)


def _local_video(project: Path, video, index: int) -> Path:
    name = video.filename if isinstance(video.filename, str) else None
    if not name or name == str(project) or Path(name).suffix == ".slp":
        raise TargetError(f"Video {index} of {project.name} is embedded in a .slp, not a video file: predict on the "
                          "project without a target option (its frames travel in the package).")
    for cand in (Path(name), project.parent / name, project.parent / Path(name).name):
        if cand.is_file():
            return cand
    raise TargetError(f"Video {index} of {project.name} ({name}) is not on this computer.")


def _frame_count(path: Path) -> int:
    import sleap_io as sio

    video = sio.load_video(str(path))
    try:
        return int(video.shape[0])
    finally:
        video.close()


def place_video_predictions(received: Path, video: Path, dest: Path) -> Path:
    """Save ``received`` as ``dest`` (or ``dest-2`` ...) with its video pointing at ``video``."""
    import sleap_io as sio

    labels = sio.load_slp(str(received), open_videos=False)
    for vid in labels.videos:
        vid.replace_filename(str(video.resolve()), open=False)
    target = _save_new(labels, dest)
    received.unlink(missing_ok=True)
    return target


def _save_new(labels, dest: Path) -> Path:
    """Save ``labels`` under a temporary name beside ``dest``, then ``place_new`` it there."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{id(labels):x}.tmp.slp")
    try:
        labels.save(str(tmp))
        return place_new(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def merge_into(project: Path, predictions: list[tuple[int, Path]], dest: Path) -> tuple[Path, int]:
    """Merge ``(video index, predictions file)`` pairs into a copy of ``project`` at ``dest``
    (or a free variant of it); returns the path and the number of predicted frames merged."""
    import sleap_io as sio

    labels = sio.load_slp(str(project), open_videos=False)
    merged = 0
    for index, path in predictions:
        pred = sio.load_slp(str(path), open_videos=False)
        if not pred.videos:
            continue
        pred.replace_videos(old_videos=[pred.videos[0]], new_videos=[labels.videos[index]])
        merged += len(pred.labeled_frames)
        labels.merge(pred, frame="replace_predictions", video="auto")
    return _save_new(labels, dest), merged


__all__ = [
    "TargetError", "Targets", "merge_into", "parse_frames", "place_video_predictions",
    "targets_for_project", "targets_for_videos",
]
