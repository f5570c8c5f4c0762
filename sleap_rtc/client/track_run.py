"""``sleap-rtc track`` on videos (bare files, or a project's video targets): the request,
the job (``core.inference.RemoteInference``) and what the terminal shows.

Per video: one upload line (bytes and rate, or "already on the worker", or "on data root
NAME"), inference progress lines (frames done of total, FPS, ETA; at most one every
``PROGRESS_EVERY_S`` unless the video is done), and a line when its predictions are in
place. Where predictions go: for a bare video, ``<video stem>.predictions.slp`` next to it
(or in ``--output DIR``; ``--output FILE.slp`` for a single video), pointing at the local
video; for a project, ``<project stem>.predictions.slp`` (the project with every video's
predictions merged, ``client.track_targets.merge_into``). Ctrl-C cancels; the videos whose
predictions already came back stay (and are merged for a project).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.markup import escape

from sleap_rtc.client.cli import Display
from sleap_rtc.client.track_targets import (
    TargetError,
    merge_into,
    place_video_predictions,
    targets_for_project,
    targets_for_videos,
)
from sleap_rtc.core.credentials import RoomCredentials
from sleap_rtc.core.data_roots import DataRootError, DataRootMap
from sleap_rtc.core.inference import (
    InferenceCallbacks,
    InferenceOptions,
    InferenceProgress,
    InferenceRequest,
    InferenceRequestError,
    ModelSource,
    RemoteInference,
    VideoPredictions,
    VideoUpload,
)
from sleap_rtc.core.remote_job import JobError
from sleap_rtc.core.selection import SelectionError
from sleap_rtc.core.signaling import SignalingError
from sleap_rtc.core.track_options import TRACK_OPTIONS
from sleap_rtc.core.transport_errors import TransportError

PROGRESS_EVERY_S = 2.0
"""Seconds between two inference progress lines of one video."""
EXIT_FAILED, EXIT_INTERRUPTED = 1, 130


class UsageProblem(ValueError):
    """The command line asks for something that cannot run (a usage error, exit 2)."""


def inference_options(infer: dict[str, Any]) -> InferenceOptions:
    """The CLI's inference flags as ``InferenceOptions`` (``--track-option NAME=VALUE`` parsed as YAML)."""
    tracker: dict[str, Any] = {}
    for spec in infer.get("track_options") or ():
        name, sep, value = str(spec).partition("=")
        if not sep or name not in TRACK_OPTIONS:
            raise UsageProblem(f"--track-option {spec!r}: NAME=VALUE with NAME one of {', '.join(TRACK_OPTIONS)}.")
        tracker[name] = yaml.safe_load(value) if value else None
    options = InferenceOptions(peak_threshold=infer.get("peak_threshold"), batch_size=infer.get("batch_size"),
                               max_instances=infer.get("max_instances"), tracking=bool(infer.get("tracking")),
                               tracker=tracker)
    try:
        options.as_dict()
    except ValueError as exc:
        raise UsageProblem(str(exc)) from None
    return options


class InferenceDisplay(Display, InferenceCallbacks):
    """The terminal lines of an inference (module docstring), on top of the job's ``Display``."""

    def __init__(self, console: Console):
        super().__init__(console)
        self._shown: dict[int, tuple[float, int]] = {}  # video -> (when, frames) of its last line
        self._uploaded: set[int] = set()

    def upload(self, progress: Any) -> None:
        """The package itself is a few hundred bytes: not shown."""

    def video_upload(self, upload: VideoUpload) -> None:
        """One line per video when its upload is settled."""
        name = escape(Path(upload.video.path).name)
        if upload.root is not None:
            self._print(f"  {name}: on the worker's data root {upload.root} (not uploaded)", highlight=False)
        elif upload.cached:
            self._print(f"  {name}: already on the worker (0 bytes sent)", highlight=False)
        elif upload.done >= upload.total and upload.index not in self._uploaded:
            self._uploaded.add(upload.index)
            self._print(f"  {name}: uploaded {upload.total:,} bytes ({upload.rate / 1e6:.1f} MB/s)",
                                 highlight=False)

    def inference_progress(self, p: InferenceProgress) -> None:
        """Frames done of total, FPS and ETA, at most every ``PROGRESS_EVERY_S`` per video."""
        now = time.monotonic()
        done = p.frames_total and p.frames_done >= p.frames_total
        when, frames = self._shown.get(p.index, (0.0, -1))
        if frames == p.frames_done or (not done and now - when < PROGRESS_EVERY_S):
            return
        self._shown[p.index] = (now, p.frames_done)
        eta = f", ETA {p.eta_s:.0f} s" if p.eta_s is not None and not done else ""
        self._print(f"  {escape(Path(p.video.path).name)}: {p.frames_done}/{p.frames_total} frames, "
                             f"{p.fps:.1f} FPS{eta}", highlight=False)

    def video_predictions(self, found: VideoPredictions) -> None:
        """A video's predictions arrived."""
        self._print(f"  {escape(Path(found.video.path).name)}: predictions received", highlight=False)


def _targets(inputs: list[Path], targets: dict[str, Any]):
    try:
        if inputs[0].suffix == ".slp":
            return targets_for_project(inputs[0], only_labeled=targets["only_labeled"],
                                       only_suggested=targets["only_suggested"], frames=targets["frames"],
                                       video=targets["video"], random_count=targets["random_count"],
                                       all_videos=targets["all_videos"])
        if any(targets[k] for k in ("only_labeled", "only_suggested", "video", "random_count", "all_videos")):
            raise UsageProblem("--only-labeled, --only-suggested, --video, --random and --all-videos need a .slp project.")
        return targets_for_videos(inputs, targets["frames"])
    except TargetError as exc:
        raise UsageProblem(str(exc)) from None


def _destinations(inputs: list[Path], output: Path | None, project: Path | None) -> tuple[Path, Path | None]:
    """``(folder, file or None)``: the file is the project's predictions, or the one video's
    ``--output FILE.slp``."""
    if project is not None:
        if output is not None and output.suffix == ".slp":
            if output.exists():
                raise UsageProblem(f"--output {output} already exists; sleap-rtc never writes over a file.")
            return output.parent, output
        folder = output or project.parent
        return folder, folder / f"{project.stem}.predictions.slp"
    if output is not None and output.suffix == ".slp":
        if len(inputs) > 1:
            raise UsageProblem("--output FILE.slp takes one video; give a folder for several.")
        if output.exists():
            raise UsageProblem(f"--output {output} already exists; sleap-rtc never writes over a file.")
        return output.parent, output
    return output or inputs[0].parent, None


async def run_videos(plan: Any, url: str, inputs: list[Path], models: list[Path], model_ids: list[str],
                     output: Path | None, targets: dict[str, Any], infer: dict[str, Any], policy: Any,
                     hint_for: Any) -> int:
    """Run the inference; the exit code (``UsageProblem`` before anything moves)."""
    chosen = _targets(inputs, targets)
    folder, out_file = _destinations(inputs, output, chosen.project)
    if folder.exists() and not folder.is_dir():
        raise UsageProblem(f"--output {folder} is a file, not a folder.")
    try:
        roots = DataRootMap.from_specs(infer.get("data_roots") or (), DataRootMap.load())
        if infer.get("remember_data_roots"):
            roots.save()
    except DataRootError as exc:
        raise UsageProblem(str(exc)) from None
    request = InferenceRequest(
        videos=chosen.videos,
        models=tuple(ModelSource(path=m) for m in models) + tuple(ModelSource(model_id=i) for i in model_ids),
        options=inference_options(infer), data_roots=roots,
    )
    console = Console()
    incoming = Path(tempfile.mkdtemp(prefix=".sleap-rtc-predictions-", dir=_writable(folder)))
    try:
        job = RemoteInference(request, credentials=RoomCredentials(plan.room_id, plan.token), server_url=url,
                              results_dir=incoming, policy=policy, callbacks=InferenceDisplay(console))
    except InferenceRequestError as exc:
        raise UsageProblem(str(exc)) from None
    started = time.monotonic()
    task = asyncio.ensure_future(job.run())
    loop = asyncio.get_running_loop()

    def interrupted() -> None:
        console.print("\nCancelling the job (predictions already received are kept).", highlight=False)
        task.cancel()

    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGINT, interrupted)
    code = 0
    summary = None
    try:
        summary = await task
    except asyncio.CancelledError:
        console.print(f"[yellow]Cancelled[/yellow] after {time.monotonic() - started:.1f} s.")
        code = EXIT_INTERRUPTED
    except (SelectionError, JobError, TransportError, SignalingError) as exc:
        console.print(f"[red]Error:[/red] {escape(str(exc))}{escape(hint_for(exc, plan))}", highlight=False,
                      soft_wrap=True)
        code = EXIT_FAILED
    finally:
        with contextlib.suppress(NotImplementedError):
            loop.remove_signal_handler(signal.SIGINT)
    try:
        placed = _place(job.returned, chosen, folder, out_file, console)
    finally:
        shutil.rmtree(incoming, ignore_errors=True)
    if summary is not None:
        missing = len(chosen.videos) - len(job.returned)
        if missing:
            console.print(f"[red]Error:[/red] the worker finished but sent no predictions for {missing} video(s).",
                          highlight=False)
            code = EXIT_FAILED
        console.print("[green]Done[/green]" if not missing else "[yellow]Partly done[/yellow]", highlight=False)
        console.print(f"  worker     {summary.job.worker} ({summary.job.peer_id})", highlight=False)
        console.print(f"  duration   {summary.job.duration_s:.1f} s", highlight=False)
        console.print(f"  sent       {summary.video_bytes_sent:,} video bytes, {summary.model_bytes_sent:,} model bytes"
                      + (f"; {len(summary.from_roots)} video(s) read from data roots" if summary.from_roots else ""),
                      highlight=False)
        console.print(f"  model ids  {', '.join(summary.model_ids)}", highlight=False)
    elif placed:
        console.print(f"  kept the predictions of {len(job.returned)} video(s) that came back before the end",
                      highlight=False)
    for path in placed:
        console.print(f"  predictions {path}", highlight=False)
    return code


def _writable(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _place(returned: list[VideoPredictions], chosen: Any, folder: Path, out_file: Path | None,
           console: Console) -> list[Path]:
    """Move what came back into place (module docstring); returns the files written."""
    if not returned:
        return []
    if chosen.project is not None:
        pairs = [(int(found.video.key), found.path) for found in sorted(returned, key=lambda f: f.index)]
        path, frames = merge_into(chosen.project, pairs, out_file)
        console.print(f"  merged {frames} predicted frame(s) into {path.name} (user labels kept)", highlight=False)
        return [path]
    out = []
    for found in sorted(returned, key=lambda f: f.index):
        video = Path(found.video.path)
        dest = out_file or folder / f"{video.stem}.predictions.slp"
        out.append(place_video_predictions(found.path, video, dest))
    return out


__all__ = ["InferenceDisplay", "PROGRESS_EVERY_S", "UsageProblem", "inference_options", "run_videos"]
