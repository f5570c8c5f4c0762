"""Remote inference on whole videos: the request the CLI and the GUI share, and the job
that runs it (``RemoteInference``, on ``core.job_runner.RemoteJob``).

API (kept stable; SLEAP's Run Inference remote path and ``sleap-rtc track`` both use it)::

    request = InferenceRequest(
        videos=(VideoTarget(Path("a.mp4")),                       # every frame
                VideoTarget(Path("b.mp4"), frames=(0, 5, 9))),    # these frames
        models=(ModelSource(path=Path("models/centroid")),        # a folder or .zip here
                ModelSource(model_id="<sha256>")),                # a model the worker holds
        options=InferenceOptions(peak_threshold=0.2, batch_size=8, tracking=True,
                                 tracker={"max_tracks": 2}),
        data_roots=DataRootMap.load(),                            # optional: prefix -> root
    )
    job = RemoteInference(request, credentials=creds, results_dir=out, server_url=url,
                          policy=Auto(), callbacks=my_callbacks)  # or signaling=, room=
    summary = await job.run()          # InferenceSummary; job.cancel() from another task

``InferenceCallbacks`` (a ``JobCallbacks``) adds three hooks, called on the event loop:
``video_upload(VideoUpload)`` (per video: bytes, rate, ETA, ``cached`` when the worker had
it, ``root`` when it reads it from a data root), ``inference_progress(InferenceProgress)``
(per video: frames done, total, FPS, ETA, from sleap-nn's own counter) and
``video_predictions(VideoPredictions)`` (a video's predictions ``.slp`` landed in
``results_dir``, while later videos still run). A job that fails or is cancelled mid-way
keeps the videos already returned (``RemoteInference.returned``). Merging predictions
into an open project is the caller's (SLEAP's own merge; the CLI's ``merge_into``).

How things travel: each video is its own content-addressed file transfer (``core.files``),
so a video crosses the network once per worker: the worker caches it within its cap and a
second run is answered ``cached`` (0 payload bytes); an interrupted upload resumes from the
bytes the worker kept. The client remembers ``(path, size, mtime_ns, inode) -> sha256``
(``core.file_hashes.HashMemo`` in its transfer cache dir), so a second run does not read
the video again to hash it. A video under a mapped data-root prefix that the chosen worker
advertises is not sent at all (``core.data_roots``). Models go as deterministic zips
(``core.package.write_model_zip``: the same folder always gives the same bytes and so the
same id), each its own transfer: a model trained on that worker, or sent once, moves 0
bytes. The package itself holds only ``jobs.yaml``: one inference entry per video that
names the video (sha256 or root reference), its frames, the model ids and the options.
The package is built once the worker is chosen (its data roots decide what is uploaded).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sleap_rtc.core.channel import default_cache_dir
from sleap_rtc.core.credentials import RoomCredentials
from sleap_rtc.core.data_roots import DATA_ROOTS_PROP, DataRootMap
from sleap_rtc.core.file_hashes import HashMemo
from sleap_rtc.core.job_events import JobCallbacks, call
from sleap_rtc.core.package import (
    MAX_FRAME_RANGES,
    MAX_VIDEOS,
    PREDICTIONS_SUFFIX,
    PackageError,
    frame_ranges,
    jobs_document,
    safe_extract,
    write_model_zip,
    write_package,
)
from sleap_rtc.core.remote_job import TRACK, JobRejectedError, JobSummary, Upload, UploadProgress
from sleap_rtc.core.protocol import Prop
from sleap_rtc.core.room import WorkerInfo
from sleap_rtc.core.track_options import TRACK_OPTIONS, check_options

log = logging.getLogger(__name__)

INFERENCE_PROGRESS = "inference_progress"
"""``event`` of a worker's ``job_progress`` during inference: ``video`` (index), ``n_processed``,
``n_total``, ``rate`` (frames/s), ``eta`` (s)."""
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".h264", ".h5", ".hdf5", ".tif", ".tiff")
"""Video file kinds sleap-nn reads that a request may name (by suffix)."""
HASH_MEMO_FILE = "video-hashes.json"
"""The client's hash memo, in its transfer cache dir."""


class InferenceRequestError(ValueError):
    """The request cannot be run as given; the message says what to change."""


@dataclass(frozen=True)
class VideoTarget:
    """One video to predict on: the file on this computer and its frames (``None``: all)."""

    path: Path
    frames: tuple[int, ...] | None = None
    key: str = ""
    """The caller's own label for this video (SLEAP's video index, say), echoed back."""


@dataclass(frozen=True)
class ModelSource:
    """A model: a folder or ``.zip`` on this computer, or the id of one the worker holds."""

    path: Path | None = None
    model_id: str | None = None


@dataclass(frozen=True)
class InferenceOptions:
    """SLEAP's inference settings that sleap-nn 0.3.5 takes (``core.track_options``)."""

    peak_threshold: float | None = None
    batch_size: int | None = None
    max_instances: int | None = None
    tracking: bool = False
    tracker: dict[str, Any] = field(default_factory=dict)
    """Further ``TRACK_OPTIONS`` by name (window size, matching method, max tracks, ...)."""

    def as_dict(self) -> dict[str, Any]:
        """The checked options mapping of the plan (``core.track_options.check_options``)."""
        merged = {"peak_threshold": self.peak_threshold, "batch_size": self.batch_size,
                  "max_instances": self.max_instances, "tracking": self.tracking, **self.tracker}
        return check_options(merged)


@dataclass(frozen=True)
class InferenceRequest:
    """What to predict on, with which models and options (see the module docstring)."""

    videos: tuple[VideoTarget, ...]
    models: tuple[ModelSource, ...]
    options: InferenceOptions = field(default_factory=InferenceOptions)
    data_roots: DataRootMap | None = None


@dataclass(frozen=True)
class VideoUpload:
    """Upload state of one video: bytes done of total, rate (B/s), ETA (s), and how it goes.

    ``cached``: the worker had it, nothing moves; ``root``: read from that data root."""

    index: int
    video: VideoTarget
    done: int
    total: int
    rate: float
    eta_s: float | None
    cached: bool = False
    root: str | None = None


@dataclass(frozen=True)
class InferenceProgress:
    """Inference on one video: frames done of total, frames per second, ETA (s)."""

    index: int
    video: VideoTarget
    frames_done: int
    frames_total: int
    fps: float
    eta_s: float | None


@dataclass(frozen=True)
class VideoPredictions:
    """A video's predictions file, in the results folder."""

    index: int
    video: VideoTarget
    path: Path


class InferenceCallbacks(JobCallbacks):
    """``JobCallbacks`` plus the per-video hooks of an inference (no-ops here)."""

    def video_upload(self, upload: VideoUpload) -> None:
        """Per-video upload progress (also once with ``cached``/``root`` when nothing moves)."""

    def inference_progress(self, progress: InferenceProgress) -> None:
        """Per-video inference progress."""

    def video_predictions(self, predictions: VideoPredictions) -> None:
        """A video's predictions arrived (more may follow)."""


@dataclass
class InferenceSummary:
    """What an inference left behind, and what it moved."""

    job: JobSummary
    predictions: list[VideoPredictions]
    video_bytes_sent: int = 0
    """Video payload bytes that crossed the network (0 on a second run)."""
    model_bytes_sent: int = 0
    from_roots: list[int] = field(default_factory=list)
    """Indexes of the videos the worker read from a data root."""
    model_ids: list[str] = field(default_factory=list)
    """The ids of the models used (pass them as ``ModelSource(model_id=...)`` next time)."""


def predictions_name(index: int, video: Path) -> str:
    """The predictions file of video ``index``: ``<n>.<video stem>.predictions.slp``."""
    stem = "".join(c if c.isalnum() or c in "_.=+-" else "_" for c in Path(video).stem)[:80] or "video"
    return f"{index:03d}.{stem}{PREDICTIONS_SUFFIX}"


def check_request(request: InferenceRequest) -> None:
    """Refuse (``InferenceRequestError``) a request that cannot run, before anything moves."""
    if not request.videos:
        raise InferenceRequestError("Name at least one video to predict on.")
    if len(request.videos) > MAX_VIDEOS:
        raise InferenceRequestError(f"At most {MAX_VIDEOS} videos per inference job.")
    if not request.models:
        raise InferenceRequestError("Give at least one trained model.")
    for video in request.videos:
        path = Path(video.path)
        if not path.is_file():
            raise InferenceRequestError(f"Video {path} is not a file on this computer.")
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            raise InferenceRequestError(f"{path} is not a video sleap-nn reads ({', '.join(VIDEO_SUFFIXES)}).")
        if video.frames is not None:
            if not video.frames:
                raise InferenceRequestError(f"No frames to predict on in {path.name}.")
            if len(frame_ranges(video.frames)) > MAX_FRAME_RANGES:
                raise InferenceRequestError(f"{path.name}: more than {MAX_FRAME_RANGES} separate frame ranges.")
    for model in request.models:
        if (model.path is None) == (model.model_id is None):
            raise InferenceRequestError("A model is either a local path or a worker-held model id.")
        if model.path is not None and not Path(model.path).exists():
            raise InferenceRequestError(f"Model {model.path} does not exist.")
    try:
        request.options.as_dict()
    except ValueError as exc:
        raise InferenceRequestError(str(exc)) from None


def unsupported_options(names: Iterable[str]) -> list[str]:
    """The option names of ``names`` that sleap-nn's ``track`` does not take (to explain
    before Run: SLEAP settings such as the tracker's ``pre_cull`` have no sleap-nn flag)."""
    return [n for n in names if n not in TRACK_OPTIONS]


def explain_unsupported(worker: WorkerInfo, request: InferenceRequest) -> list[str]:
    """Why ``worker`` cannot run ``request``, in sentences for the user (empty: it can).

    For "explained before Run": an older worker that takes only packaged frames (no
    ``inference_inputs`` advertised), one without inference, a model id it cannot know.
    """
    props = (worker.metadata or {}).get("properties", {}) if worker.metadata else {}
    name = worker.name
    problems = []
    types = props.get(Prop.SUPPORTED_JOB_TYPES.value)
    if isinstance(types, list) and "inference" not in types:
        problems.append(f"{name} does not run inference.")
    inputs = props.get(Prop.INFERENCE_INPUTS.value)
    inputs = inputs if isinstance(inputs, list) else []
    if "video" not in inputs:
        problems.append(f"{name} runs an older sleap-rtc that predicts only frames inside a package (a .pkg.slp), "
                        "not whole videos; update it to predict on videos.")
    elif any(m.model_id is not None for m in request.models) and "model_id" not in inputs:
        problems.append(f"{name} cannot use models it holds by id; choose the model folder instead.")
    return problems


class RemoteInference:
    """One remote inference job (module docstring); ``run()`` once, ``cancel()`` any time."""

    def __init__(
        self,
        request: InferenceRequest,
        *,
        credentials: RoomCredentials,
        results_dir: Path,
        policy: Any = None,
        callbacks: InferenceCallbacks | None = None,
        server_url: str | None = None,
        signaling: Any = None,
        room: Any = None,
        connect: Any = None,
        known_workers: Any = None,
        connect_timeout: float = 30.0,
        hash_memo: HashMemo | None = None,
    ):
        check_request(request)
        from sleap_rtc.core.job_runner import RemoteJob  # the runner imports this module's users

        self.request = request
        self.callbacks = callbacks or InferenceCallbacks()
        self.results_dir = Path(results_dir)
        self.returned: list[VideoPredictions] = []
        """Predictions that arrived so far (kept when the job fails or is cancelled later)."""
        self.memo = hash_memo or HashMemo(default_cache_dir() / HASH_MEMO_FILE)
        self._work = Path(tempfile.gettempdir())  # run() makes the job's own folder
        self._names = {predictions_name(i, v.path): i for i, v in enumerate(request.videos)}
        self._from_roots: list[int] = []
        self._model_ids: list[str] = []
        self._model_zips: list[tuple[str, Path | None]] | None = None
        self.job = RemoteJob(
            self._work / "inference.zip", credentials=credentials, results_dir=self.results_dir, policy=policy,
            callbacks=_Relay(self), server_url=server_url, signaling=signaling, room=room, kind=TRACK,
            connect_timeout=connect_timeout, connect=connect, known_workers=known_workers, prepare=self._prepare,
        )

    async def cancel(self) -> None:
        """Cancel the job on the worker; what already came back stays."""
        await self.job.cancel()

    async def run(self) -> InferenceSummary:
        """Select a worker, send what it lacks, follow the inference, collect the predictions.

        Raises what ``RemoteJob.run`` raises, or ``InferenceRequestError`` for a model that
        cannot be zipped (before anything connects)."""
        self._work = Path(tempfile.mkdtemp(prefix="sleap-rtc-infer-"))
        try:
            await self._models()
            summary = await self.job.run()
        finally:
            shutil.rmtree(self._work, ignore_errors=True)
        receipts = self.job.session.receipts if self.job.session is not None else []
        video_bytes = sum(r.bytes_sent for r, kind in receipts if kind == "video")
        model_bytes = sum(r.bytes_sent for r, kind in receipts if kind == "model")
        return InferenceSummary(job=summary, predictions=list(self.returned), video_bytes_sent=video_bytes,
                                model_bytes_sent=model_bytes, from_roots=list(self._from_roots),
                                model_ids=list(self._model_ids))

    # ------------------------------------------------------------------ the package

    async def _models(self) -> list[tuple[str, Path | None]]:
        """``(model id, zip to offer or None)`` per model, zipped once per job."""
        if self._model_zips is None:
            out: list[tuple[str, Path | None]] = []
            for n, model in enumerate(self.request.models):
                if model.model_id is not None:
                    out.append((model.model_id, None))
                    continue
                zip_path, sha = await asyncio.to_thread(_model_zip, Path(model.path), self._work / f"model-{n}")
                out.append((sha, zip_path))
            self._model_zips = out
        return self._model_zips

    async def _prepare(self, worker: WorkerInfo) -> tuple[Path, list[Upload]]:
        """The package and the uploads for ``worker`` (its data roots decide what moves)."""
        problems = explain_unsupported(worker, self.request) if worker.metadata else []
        if problems:
            raise JobRejectedError(" ".join(problems))
        offered = worker.metadata.get("properties", {}).get(DATA_ROOTS_PROP) if worker.metadata else None
        offered = [r for r in offered if isinstance(r, str)] if isinstance(offered, list) else []
        uploads: list[Upload] = []
        entries = []
        models = await self._models()
        self._model_ids = [sha for sha, _ in models]
        for sha, zip_path in models:
            if zip_path is not None:
                uploads.append(Upload(zip_path, f"model-{sha[:12]}.zip", sha, "model"))
        self._from_roots = []
        for i, video in enumerate(self.request.videos):
            entry: dict[str, Any] = {"model_ids": list(self._model_ids), "models": [],
                                     "output_path": predictions_name(i, video.path),
                                     "options": self.request.options.as_dict()}
            if video.frames is not None:
                entry["frames"] = [list(r) for r in frame_ranges(video.frames)]
            ref = None
            if self.request.data_roots is not None and offered:
                ref = await asyncio.to_thread(self.request.data_roots.match, Path(video.path), offered)
            if ref is not None:
                entry["video"] = ref.as_plan()
                self._from_roots.append(i)
                call(self.callbacks.video_upload, VideoUpload(i, video, 0, 0, 0.0, 0.0, root=ref.root))
            else:
                sha = await asyncio.to_thread(self.memo.sha256, video.path)
                entry["video"] = {"sha256": sha, "suffix": Path(video.path).suffix.lower()}
                # The wire name carries the hash: two videos of one name never meet on the worker.
                wire = f"{Path(video.path).stem[:40]}-{sha[:12]}{Path(video.path).suffix.lower()}"
                uploads.append(Upload(Path(video.path), wire, sha, "video",
                                      progress=_video_progress(self.callbacks, i, video)))
            entries.append(entry)
        try:
            package = write_package(self._work / "inference.zip", {}, jobs_document(inference=entries))
        except PackageError as exc:
            raise InferenceRequestError(str(exc)) from None
        return package, uploads

    def _arrived(self, path: Path) -> None:
        index = self._names.get(_base_name(path))
        if index is None or path.suffix != ".slp":
            return
        found = VideoPredictions(index, self.request.videos[index], path)
        self.returned.append(found)
        call(self.callbacks.video_predictions, found)

    def _progress(self, event: dict[str, Any]) -> bool:
        if event.get("event") != INFERENCE_PROGRESS:
            return False
        index = event.get("video")
        if not isinstance(index, int) or not 0 <= index < len(self.request.videos):
            return True
        done, total = _int(event.get("n_processed")), _int(event.get("n_total"))
        rate, eta = _float(event.get("rate")), event.get("eta")
        call(self.callbacks.inference_progress, InferenceProgress(
            index, self.request.videos[index], done, total, rate or 0.0, _float(eta)))
        return True


def _base_name(path: Path) -> str:
    # place_new may have added "-2" when the name was taken: match on the name we asked for.
    name = path.name
    stem = name[: -len(PREDICTIONS_SUFFIX)] if name.endswith(PREDICTIONS_SUFFIX) else name
    head, sep, tail = stem.rpartition("-")
    if sep and tail.isdigit() and f"{head}{PREDICTIONS_SUFFIX}" != name:
        return f"{head}{PREDICTIONS_SUFFIX}"
    return name


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _float(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and value >= 0:
        return float(value)
    return None


def _video_progress(callbacks: InferenceCallbacks, index: int, video: VideoTarget):
    def progress(p: UploadProgress, cached: bool = False) -> None:
        call(callbacks.video_upload, VideoUpload(index, video, p.done, p.total, p.rate, p.eta_s, cached=cached))

    return progress


def _model_zip(path: Path, work: Path) -> tuple[Path, str]:
    """The deterministic zip of a model folder (or of a model ``.zip``'s content) and its sha256."""
    work.mkdir(parents=True, exist_ok=True)
    folder = path
    if path.is_file():
        try:
            folder = safe_extract(path, work / "unpacked", strip_top=path.name.removesuffix(".zip"))
        except PackageError as exc:
            raise InferenceRequestError(f"Model zip {path}: {exc}") from None
    if not folder.is_dir():
        raise InferenceRequestError(f"Model {path} is neither a folder nor a .zip file.")
    try:
        return write_model_zip(folder, work / "model.zip")
    except PackageError as exc:
        raise InferenceRequestError(f"Model {path}: {exc}") from None


class _Relay(JobCallbacks):
    """The ``RemoteJob`` callbacks of an inference: inference events to the per-video hooks,
    everything else to the caller's callbacks unchanged (``__getattribute__``, because
    ``JobCallbacks`` defines every hook, so a plain ``__getattr__`` would never be asked)."""

    def __init__(self, owner: RemoteInference):
        self._owner = owner
        self._cb = owner.callbacks

    def __getattribute__(self, name: str) -> Any:
        if name in ("progress", "file", "_owner", "_cb", "upload"):
            return object.__getattribute__(self, name)
        return getattr(object.__getattribute__(self, "_cb"), name)

    def progress(self, event: dict[str, Any]) -> None:
        """Inference progress to ``inference_progress``; training events passed on."""
        if not self._owner._progress(event):
            call(self._cb.progress, event)

    def file(self, path: Path) -> None:
        """A result landed: predictions to ``video_predictions`` too."""
        self._owner._arrived(path)
        call(self._cb.file, path)

    def upload(self, progress: UploadProgress) -> None:
        """The small package's upload, passed on."""
        call(self._cb.upload, progress)


__all__ = [
    "INFERENCE_PROGRESS", "InferenceCallbacks", "InferenceOptions", "InferenceProgress", "InferenceRequest",
    "InferenceRequestError", "InferenceSummary", "ModelSource", "RemoteInference", "VideoPredictions", "VideoTarget",
    "VideoUpload", "check_request", "explain_unsupported", "predictions_name", "unsupported_options",
]
