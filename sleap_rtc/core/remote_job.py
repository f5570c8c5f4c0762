"""The client side of one remote job, shared by the CLI and the GUI.

Two layers:

* ``JobSession`` runs a job over an open ``PeerChannel``: upload the package (progress with
  bytes, rate and ETA), ``job_submit``, stream ``job_log`` / ``job_progress`` (training
  events passed on unchanged) to callbacks, receive each announced result file into the
  output directory, and finish on ``job_complete`` / ``job_failed``. ``stop()`` asks the
  worker to finish the current epoch and keep the model; ``cancel()`` kills the job.
* the job's errors (``JobError`` and its kinds, ``WorkerLostError``) and its
  ``JobSummary``, and the placement of result files in the output directory.

The whole flow (join, select, retry, this session) is ``RemoteJob`` in
``core/job_runner.py``. ``JobSession`` drives the job's ``JobPhases``, so the CLI's lines
and the GUI's panel show the same phases.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sleap_rtc.core import jobs_wire
from sleap_rtc.core.files import sanitize_name
from sleap_rtc.core.phases import JobPhases, Phase
from sleap_rtc.core.protocol import ChannelType, JobKind, ResultKind
from sleap_rtc.core.room import WorkerInfo
from sleap_rtc.core.transport_errors import PeerClosedError, TransportError

log = logging.getLogger(__name__)

TRAIN, TRACK = JobKind.TRAIN, JobKind.TRACK
"""Job kinds: train a package, or run inference (``client-track``)."""


class JobError(Exception):
    """The job did not complete; ``str(exc)`` is the message for the user."""


class JobRejectedError(JobError):
    """The worker refused the job (bad package, unsupported kind, ...)."""


class JobFailedError(JobError):
    """The job failed on the worker, or the connection to it was lost."""


class JobCancelledError(JobError):
    """The job was cancelled (by the user)."""


class WorkerLostError(JobFailedError):
    """The worker stopped responding (died, or its connection closed) before the job finished.

    ``stage`` says when: ``"upload"``, ``"training"``, ``"inference"`` or ``"download"``;
    ``worker`` is its name and ``peer_id`` its id. What follows is the retry table's
    (``core/retry.py``): next best under auto-select, the chooser asked when the user
    picked the worker, otherwise this is the user's error message.
    """

    def __init__(self, message: str, *, worker: str, peer_id: str, stage: str, reason: str):
        super().__init__(message)
        self.worker, self.peer_id, self.stage, self.reason = worker, peer_id, stage, reason


@dataclass(frozen=True)
class UploadProgress:
    """Upload state for a progress bar: bytes done of total, rate (B/s), ETA (s or None)."""

    done: int
    total: int
    rate: float
    eta_s: float | None


@dataclass
class JobSummary:
    """What a finished job left behind, for the final summary and the GUI."""

    worker: str
    peer_id: str
    duration_s: float
    files: list[Path] = field(default_factory=list)
    models_dir: Path | None = None
    predictions: Path | None = None
    stopped_early: bool = False


LogCallback = Callable[[str], Any]
ProgressCallback = Callable[[dict[str, Any]], Any]
UploadCallback = Callable[[UploadProgress], Any]


def _call(callback: Callable[..., Any] | None, *args: Any) -> None:
    if callback is None:
        return
    try:
        callback(*args)
    except Exception:  # a display problem must not kill the job
        log.exception("job callback failed")


# ------------------------------------------------------------------------ one job


class JobSession:
    """One job over an open channel; ``run()`` returns a ``JobSummary`` or raises ``JobError``."""

    def __init__(
        self,
        channel: Any,
        package: Path,
        *,
        output_dir: Path,
        kind: str = TRAIN,
        worker: WorkerInfo | None = None,
        phases: JobPhases | None = None,
        on_upload: UploadCallback | None = None,
        on_log: LogCallback | None = None,
        on_progress: ProgressCallback | None = None,
        on_file: Callable[[Path], Any] | None = None,
        result_timeout: float = 600.0,
        models_subdir: str = "models",
    ):
        self.channel = channel
        self.package = Path(package)
        self.output_dir = Path(output_dir)
        self.kind = kind
        self.worker = worker
        self.phases = phases or JobPhases()
        self.on_upload = on_upload
        self.on_log = on_log
        self.on_progress = on_progress
        self.on_file = on_file
        self.result_timeout = result_timeout
        self.models_subdir = models_subdir
        self.job_id = f"job-{uuid.uuid4().hex[:12]}"
        self.stop_requested = False
        self.cancel_requested = False
        self._submitted = False

    @property
    def running_phase(self) -> Phase:
        """TRAINING or PREDICTING, by job kind."""
        return Phase.TRAINING if self.kind == TRAIN else Phase.PREDICTING

    async def stop(self) -> None:
        """Finish the current epoch, keep the model, and send the results."""
        self.stop_requested = True
        if self._submitted and not self.channel.closed:
            with contextlib.suppress(TransportError):
                await self.channel.send(jobs_wire.job_stop(self.job_id))

    async def cancel(self) -> None:
        """Kill the job now; no results."""
        self.cancel_requested = True
        if self._submitted and not self.channel.closed:
            with contextlib.suppress(TransportError):
                await self.channel.send(jobs_wire.job_cancel(self.job_id))

    async def run(self) -> JobSummary:
        """Upload, submit, follow the job, download the results."""
        started = time.monotonic()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        try:
            receipt = await self._upload()
            await self.channel.send(
                jobs_wire.job_submit(self.job_id, {"sha256": receipt.sha256, "name": receipt.name}, {"kind": self.kind})
            )
            self._submitted = True
            if self.stop_requested:  # asked during the upload: the worker applies it at once
                await self.stop()
            summary = await self._follow(started)
        except PeerClosedError as exc:
            if self.cancel_requested:
                raise self._fail(JobCancelledError("Job cancelled.")) from None
            # Not marked FAILED here: RemoteJob may run the job again on another worker.
            raise self._worker_lost(exc) from None
        except asyncio.CancelledError:
            # The caller gave up (GUI Cancel, Ctrl-C): tell the worker so it frees itself.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.cancel(), 2.0)
            if not self.phases.finished:
                self.phases.advance(Phase.CANCELLED, "cancelled")
            raise
        return summary

    @property
    def stage(self) -> str:
        """What the job was doing, in words: upload, training, inference or download."""
        if self.phases.phase == Phase.DOWNLOADING:
            return "download"
        if self.phases.phase in (Phase.TRAINING, Phase.PREDICTING):
            return "training" if self.kind == TRAIN else "inference"
        return "upload"

    def _worker_lost(self, exc: PeerClosedError) -> WorkerLostError:
        name = self.worker.name if self.worker else self.channel.remote_peer_id
        peer_id = self.worker.peer_id if self.worker else self.channel.remote_peer_id
        reason = str(getattr(self.channel, "close_reason", "") or exc)
        stage = self.stage
        return WorkerLostError(
            f"Worker {name} stopped responding during {stage} ({reason}); the job did not finish.",
            worker=name, peer_id=peer_id, stage=stage, reason=reason,
        )

    def _fail(self, exc: JobError) -> JobError:
        if not self.phases.finished:
            cancelled = isinstance(exc, JobCancelledError)
            self.phases.advance(Phase.CANCELLED if cancelled else Phase.FAILED, str(exc))
        return exc

    async def _upload(self) -> Any:
        total = self.package.stat().st_size
        self.phases.advance(Phase.UPLOADING, f"{self.package.name} ({total:,} bytes)")
        t0 = time.monotonic()

        def progress(done: int, size: int) -> None:
            elapsed = max(time.monotonic() - t0, 1e-6)
            rate = done / elapsed
            eta = (size - done) / rate if rate > 0 else None
            _call(self.on_upload, UploadProgress(done, size, rate, eta))
            self.phases.update(f"{100 * done // max(size, 1)}%")

        receipt = await self.channel.send_file(self.package, progress=progress)
        _call(self.on_upload, UploadProgress(total, total, total / max(time.monotonic() - t0, 1e-6), 0.0))
        return receipt

    async def _follow(self, started: float) -> JobSummary:
        files: list[Path] = []
        summary = JobSummary(
            worker=self.worker.name if self.worker else self.channel.remote_peer_id,
            peer_id=self.worker.peer_id if self.worker else self.channel.remote_peer_id,
            duration_s=0.0,
            files=files,
        )
        while True:
            msg = await self.channel.receive()
            kind = msg.get("type")
            if msg.get("job_id") not in (None, self.job_id):
                continue  # an old job's straggler
            if kind == ChannelType.JOB_ACCEPTED:
                self.phases.advance(self.running_phase, "started on " + summary.worker)
            elif kind == ChannelType.JOB_REJECTED:
                raise self._fail(JobRejectedError(f"The worker refused the job: {msg.get('reason')}"))
            elif kind == ChannelType.JOB_LOG:
                self._back_to_running()
                # Progress-bar redraws (tqdm/rich frames) are noise in a log view: skipped.
                if not msg.get("redraw"):
                    _call(self.on_log, str(msg.get("line", "")))
            elif kind == ChannelType.JOB_PROGRESS:
                self._back_to_running()
                event = msg.get("event") if isinstance(msg.get("event"), dict) else {}
                _call(self.on_progress, event)
            elif kind == ChannelType.JOB_RESULT:
                files.append(await self._receive_result(msg, summary))
            elif kind == ChannelType.JOB_COMPLETE:
                if self.phases.phase != Phase.DOWNLOADING:
                    self._to(Phase.DOWNLOADING, "")
                summary.duration_s = time.monotonic() - started
                summary.stopped_early = self.stop_requested
                self.phases.advance(Phase.DONE, f"{len(files)} file(s) in {self.output_dir}")
                return summary
            elif kind == ChannelType.JOB_FAILED:
                reason = str(msg.get("reason") or "unknown reason")
                if self.cancel_requested:
                    raise self._fail(JobCancelledError("Job cancelled."))
                raise self._fail(JobFailedError(f"The job failed on the worker: {reason}"))

    def _to(self, phase: Phase, detail: str) -> None:
        if self.phases.phase == Phase.UPLOADING and phase == Phase.DOWNLOADING:
            # Results without an explicit accept (e.g. a cached job): pass through running.
            self.phases.advance(self.running_phase, "")
        self.phases.advance(phase, detail)

    def _back_to_running(self) -> None:
        if self.phases.phase in (Phase.UPLOADING, Phase.DOWNLOADING):
            self.phases.advance(self.running_phase, "")

    async def _receive_result(self, msg: dict[str, Any], summary: JobSummary) -> Path:
        name = str(msg.get("name"))
        if self.phases.phase != Phase.DOWNLOADING:
            self._to(Phase.DOWNLOADING, name)
        received = await self.channel.receive_file(timeout=self.result_timeout)
        if received.sha256 != msg.get("sha256"):
            raise self._fail(JobFailedError(f"Result {name} did not match what the worker announced."))
        try:
            # Unzipping a model can take a while: off the loop, so heartbeats keep flowing.
            path = await asyncio.to_thread(
                _place_result, Path(received.path), self.output_dir, str(msg.get("kind", "")), name, self.models_subdir
            )
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError, OSError) as exc:
            # The zip comes from another machine: a broken one is the job's failure, not a crash.
            raise self._fail(JobFailedError(
                f"Result {name} could not be unpacked into {self.output_dir} ({exc.__class__.__name__}: {exc})."
            )) from None
        if path.suffix == ".slp":
            summary.predictions = path
        elif path.is_dir():
            summary.models_dir = path.parent
        _call(self.on_file, path)
        return path


def _place_result(received: Path, output_dir: Path, kind: str, name: str, models_subdir: str = "models") -> Path:
    """Move a received file into ``output_dir``; a model zip is unpacked into ``<models_subdir>/<run>``.

    The worker zips a model folder as ``<run>/...``; that top folder is not repeated (the
    model lands in ``<run>/best.ckpt``, not ``<run>/<run>/best.ckpt``). Entries that would
    land outside the target are skipped (the zip comes from another machine).
    """
    safe = sanitize_name(name, fallback=received.name)  # never "..", never a path
    if safe.endswith(".zip") and kind == ResultKind.MODEL:
        run = safe[: -len(".zip")]
        target = output_dir / models_subdir / run if models_subdir else output_dir / run
        target.mkdir(parents=True, exist_ok=True)
        root = target.resolve()
        with zipfile.ZipFile(received) as zf:
            members = [m for m in zf.infolist() if not m.is_dir()]
            tops = {Path(m.filename).parts[0] for m in members if Path(m.filename).parts}
            strip = tops == {run} and all(len(Path(m.filename).parts) > 1 for m in members)
            for member in members:
                parts = Path(member.filename).parts[1 if strip else 0 :]
                if not parts:
                    continue
                dest = (target / Path(*parts)).resolve()
                if not dest.is_relative_to(root) or dest == root:  # never write outside
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, dest.open("wb") as out:
                    shutil.copyfileobj(src, out)
        received.unlink(missing_ok=True)
        return target
    target = output_dir / safe
    if received.resolve() != target.resolve():
        shutil.move(received, target)
    return target


__all__ = [
    "JobCancelledError", "JobError", "JobFailedError", "JobRejectedError", "JobSession", "JobSummary",
    "TRACK", "TRAIN", "UploadProgress", "WorkerLostError",
]
