"""The client side of one remote job, shared by the CLI and the GUI.

Two layers:

* ``JobSession`` runs a job over an open ``PeerChannel``: upload the package (progress with
  bytes, rate and ETA), ``job_submit``, stream ``job_log`` / ``job_progress`` (training
  events passed on unchanged) to callbacks, receive each announced result file into the
  output directory, and finish on ``job_complete`` / ``job_failed``. Results are hostile
  input (see "Results" below). ``stop()`` asks the
  worker to finish the current epoch and keep the model; ``cancel()`` kills the job.
* the job's errors (``JobError`` and its kinds, ``WorkerLostError``) and its
  ``JobSummary``, and the placement of result files in the output directory.

The whole flow (join, select, retry, this session) is ``RemoteJob`` in
``core/job_runner.py``. ``JobSession`` drives the job's ``JobPhases``, so the CLI's lines
and the GUI's panel show the same phases.
Results: the worker is not trusted with the client's files. The client accepts only the
results the package asked for (``core.package.expected_results``: ``<run>.zip`` for each
trained run, the predictions file name of each inference), each announced in
``job_result`` before its file, at most ``RESULT_MAX_BYTES``; any other file offer is
refused before a byte is written. The client names every result itself: a model is
unpacked by ``core.package.safe_extract`` into a temporary folder inside the output dir
and moved into ``<output>/<models_subdir>/<run>`` only when complete, and predictions
go to ``<output>/<name>``; an existing file or folder is never replaced
(``core.files.place_new`` adds ``-2``, ``-3`` ...). On failure the temporary folder and
this channel's partial files are removed.
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
from sleap_rtc.core.files import place_new, sanitize_name
from sleap_rtc.core.package import (
    RUN_NAME_OK,
    ExpectedResults,
    PackageError,
    expected_results,
    read_plan,
    safe_extract,
)
from sleap_rtc.core.phases import JobPhases, Phase
from sleap_rtc.core.channel_protocol import refused_by_peer
from sleap_rtc.core.protocol import ChannelType, JobKind, ResultKind
from sleap_rtc.core.room import WorkerInfo
from sleap_rtc.core.transport_errors import PeerClosedError, TransportError

log = logging.getLogger(__name__)

TRAIN, TRACK = JobKind.TRAIN, JobKind.TRACK
"""Job kinds: train a package, or run inference (``client-track``)."""

RESULT_MAX_BYTES = 64 * 1024**3
"""Largest result file the client accepts from a worker (declared in ``job_result``)."""
RESULTS_MAX = 64
"""Most result files one job may announce."""
ANNOUNCE_WAIT = 10.0
"""Seconds a result's file offer may wait for its ``job_result`` to be read."""


class ResultRefused(ValueError):
    """A result the worker announced is not one the client accepts; the message says why."""


RECONNECT_GRACE = 60.0
"""Seconds a client keeps trying to reach the same worker after its channel died (an outage
on either network), before that worker counts as gone and the next best is tried."""
RECONNECT_PAUSE = 2.0
"""Seconds between two reconnect attempts to the same worker."""
ATTACH_TIMEOUT = 15.0
"""Seconds to wait for the worker's answer to ``job_attach`` after a reconnect."""
MAX_RECONNECTS = 3
"""Same-worker reconnects per job (a link that keeps flapping then counts as a lost worker)."""
MIB = 1024 * 1024


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


@dataclass(frozen=True)
class Upload:
    """A file sent before the package, on its own (content-addressed: the worker may have it).

    ``kind`` says what it is (``video``, ``model``); ``progress(UploadProgress, cached)`` is
    called while it goes and once at the end (``cached``: nothing moved)."""

    path: Path
    name: str
    sha256: str
    kind: str
    progress: Callable[..., Any] | None = None


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
    model_ids: dict[str, str] = field(default_factory=dict)
    """Run name -> id of each trained model (the sha256 of its zip): the worker keeps it,
    so an inference with ``ModelSource(model_id=...)`` or the same folder sends no model bytes."""


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
        on_decision: LogCallback | None = None,
        attach_job_id: str | None = None,
        uploads: list[Upload] | tuple[Upload, ...] = (),
    ):
        self.channel = channel
        self.uploads = list(uploads)
        self.receipts: list[tuple[Any, str]] = []
        """``(FileReceipt, kind)`` of every file this session sent (the package's kind: ``package``)."""
        self.on_decision = on_decision
        self.attach_job_id = attach_job_id
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
        self.job_id = attach_job_id or f"job-{uuid.uuid4().hex[:12]}"
        self.expected = _expected_for(self.package)
        self._announced: dict[str, int] = {}  # sha256 -> size, from job_result
        self._announce_changed = asyncio.Event()
        self._results_seen = 0
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
        transfers = getattr(self.channel, "transfers", None)
        if transfers is not None:
            # Only files announced in job_result, of the announced size, are received at all.
            transfers.accept_offer = self._accept_offer
            transfers.max_file_bytes = min(transfers.max_file_bytes, RESULT_MAX_BYTES)
        try:
            return await self._run(started)
        finally:
            shutil.rmtree(self._staging, ignore_errors=True)
            if transfers is not None:
                transfers.discard_partials()

    @property
    def _staging(self) -> Path:
        """Where results are unpacked before they move into place (same file system)."""
        return self.output_dir / f".unpacking-{self.job_id}"

    async def _accept_offer(self, name: str, size: int, sha256: str, meta: dict) -> str | None:
        # The offer may overtake our reading of its job_result (file messages are handled
        # as they arrive, job messages in order): wait a little for the announcement.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ANNOUNCE_WAIT
        while self._announced.get(sha256) != size:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return f"{name!r} ({size} bytes) was not announced by a job_result; refused."
            self._announce_changed.clear()
            with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                await asyncio.wait_for(self._announce_changed.wait(), remaining)
        return None

    async def _run(self, started: float) -> JobSummary:
        try:
            if self.attach_job_id and await self._attach():
                return await self._follow(started)
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

    async def _attach(self) -> bool:
        """Follow the job again on a new channel after an outage: True when the worker still
        runs it (it answers ``job_accepted``), False when it does not (then: run it anew)."""
        self.phases.advance(Phase.UPLOADING, "nothing to send: the job is still running on the worker")
        await self.channel.send(jobs_wire.job_attach(self.job_id))
        while True:
            try:
                msg = await self.channel.receive(ATTACH_TIMEOUT)
            except (TimeoutError, asyncio.TimeoutError):
                msg = {"type": ChannelType.JOB_REJECTED, "job_id": self.job_id, "reason": "no answer to job_attach"}
            if refused_by_peer(msg, ChannelType.JOB_ATTACH):
                msg = {"type": ChannelType.JOB_REJECTED, "job_id": self.job_id, "reason": f"it could not read job_attach: {msg.get('message')}"}
            if msg.get("job_id") != self.job_id:
                continue
            if msg.get("type") == ChannelType.JOB_ACCEPTED:
                self._submitted = True
                _call(self.on_decision, "The worker kept the job running; following it again.")
                self.phases.advance(self.running_phase, "still running on " + (self.worker.name if self.worker else self.channel.remote_peer_id))
                return True
            if msg.get("type") == ChannelType.JOB_REJECTED:
                _call(self.on_decision, f"The worker no longer runs the job ({msg.get('reason')}); running it again.")
                self.job_id = f"job-{uuid.uuid4().hex[:12]}"
                return False

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

    async def _send_uploads(self) -> None:
        """The files sent on their own, each content-addressed (a cached one moves nothing)."""
        for up in self.uploads:
            t0 = time.monotonic()

            def progress(done: int, size: int, up: Upload = up, t0: float = t0) -> None:
                rate = done / max(time.monotonic() - t0, 1e-6)
                _call(up.progress, UploadProgress(done, size, rate, (size - done) / rate if rate > 0 else None))
                self.phases.update(f"{up.name} {100 * done // max(size, 1)}%")

            receipt = await self.channel.send_file(up.path, name=up.name, sha256=up.sha256,
                                                   meta={"kind": up.kind}, progress=progress)
            self.receipts.append((receipt, up.kind))
            offset = receipt.size - receipt.bytes_sent
            if receipt.cached:
                _call(self.on_decision, f"{up.name}: the worker has it already (nothing sent).")
            elif 0 < offset < receipt.size:
                _call(self.on_decision, f"{up.name}: " + describe_resume(offset, receipt.size))
            elapsed = max(time.monotonic() - t0, 1e-6)
            _call(up.progress, UploadProgress(receipt.size, receipt.size, receipt.bytes_sent / elapsed, 0.0),
                  receipt.cached)

    async def _upload(self) -> Any:
        total = self.package.stat().st_size
        detail = f"{self.package.name} ({total:,} bytes)"
        if self.phases.phase == Phase.UPLOADING:  # after a refused job_attach: already there
            self.phases.update(detail)
        else:
            self.phases.advance(Phase.UPLOADING, detail)
        await self._send_uploads()
        t0 = time.monotonic()

        def progress(done: int, size: int) -> None:
            elapsed = max(time.monotonic() - t0, 1e-6)
            rate = done / elapsed
            eta = (size - done) / rate if rate > 0 else None
            _call(self.on_upload, UploadProgress(done, size, rate, eta))
            self.phases.update(f"{100 * done // max(size, 1)}%")

        receipt = await self.channel.send_file(self.package, progress=progress)
        self.receipts.append((receipt, "package"))
        offset = receipt.size - receipt.bytes_sent
        if 0 < offset < receipt.size and not receipt.cached:
            _call(self.on_decision, describe_resume(offset, receipt.size))
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
            elif refused_by_peer(msg, ChannelType.JOB_SUBMIT):
                raise self._fail(JobRejectedError(f"The worker could not read the job request: {msg.get('message')}"))
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
        name = str(msg.get("name"))[:200]
        kind = str(msg.get("kind", ""))
        sha, size = msg.get("sha256"), msg.get("size")
        self._results_seen += 1
        try:
            check_result(kind, name, size, self.expected)
            if not isinstance(sha, str) or len(sha) != 64:
                raise ResultRefused(f"Result {name!r} has no valid sha256.")
            if self._results_seen > RESULTS_MAX:
                raise ResultRefused(f"The worker announced more than {RESULTS_MAX} results.")
        except ResultRefused as exc:
            raise self._fail(JobFailedError(f"Refused a result from the worker: {exc}")) from None
        self._announced[sha] = size
        self._announce_changed.set()
        if self.phases.phase != Phase.DOWNLOADING:
            self._to(Phase.DOWNLOADING, name)
        received = await self.channel.receive_file(timeout=self.result_timeout)
        if received.sha256 != sha or received.size != size:
            Path(received.path).unlink(missing_ok=True)
            raise self._fail(JobFailedError(f"Result {name} did not match what the worker announced."))
        try:
            # Unzipping a model can take a while: off the loop, so heartbeats keep flowing.
            path = await asyncio.to_thread(
                _place_result, Path(received.path), self.output_dir, kind, name, self.models_subdir, self._staging
            )
        except (PackageError, zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError, OSError) as exc:
            # The zip comes from another machine: a broken one is the job's failure, not a crash.
            Path(received.path).unlink(missing_ok=True)
            raise self._fail(JobFailedError(
                f"Result {name} could not be unpacked into {self.output_dir} ({exc.__class__.__name__}: {exc})."
            )) from None
        if path.suffix == ".slp":
            summary.predictions = path
        elif path.is_dir():
            summary.models_dir = path.parent
            summary.model_ids[name.removesuffix(".zip")] = sha
        _call(self.on_file, path)
        return path


def _expected_for(package: Path) -> ExpectedResults | None:
    """What the package asks back, or ``None`` when it has no readable ``jobs.yaml``."""
    try:
        plan = read_plan(package)
    except (PackageError, OSError):
        return None
    return expected_results(plan) if plan is not None else None


def check_result(kind: str, name: str, size: Any, expected: ExpectedResults | None) -> None:
    """Refuse (``ResultRefused``) a result the client did not ask for, or one too large.

    A model must be ``<run>.zip`` for a run the package trains, predictions the file name
    an inference asked for (``expected``); without a plan only the shapes are checked
    (a plain run name; a plain ``.slp`` name).
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ResultRefused(f"Result {name!r} has no valid size ({size!r}).")
    if size > RESULT_MAX_BYTES:
        raise ResultRefused(f"Result {name!r} declares {size} bytes; the client accepts at most {RESULT_MAX_BYTES}.")
    if kind == ResultKind.MODEL:
        run = name[: -len(".zip")] if name.endswith(".zip") else ""
        ok = bool(run) and bool(RUN_NAME_OK.match(run)) and run.strip(".") != ""
        if not ok or (expected is not None and run not in expected.models):
            raise ResultRefused(f"Model result {name!r} is not one of the runs the package trains.")
    elif kind == ResultKind.PREDICTIONS:
        plain = sanitize_name(name, fallback="") == name and name.endswith(".slp") and not name.startswith(".")
        if not plain or (expected is not None and name not in expected.predictions):
            raise ResultRefused(f"Predictions result {name!r} is not a file the package asked for.")
    else:
        raise ResultRefused(f"Result {name!r} has an unknown kind {kind!r}.")


def _place_result(received: Path, output_dir: Path, kind: str, name: str, models_subdir: str = "models",
                  staging: Path | None = None) -> Path:
    """Put a received (and ``check_result``-ed) file into ``output_dir``; returns where it went.

    A model zip is unpacked by ``safe_extract`` into ``staging`` (its ``<run>/`` top folder
    not repeated) and moved into ``<models_subdir>/<run>`` only once complete; predictions
    move to ``output_dir/<name>``. Neither replaces anything: ``place_new`` picks ``-2``,
    ``-3`` ... when the name is taken. The received file is consumed.
    """
    check_result(kind, name, 0, None)
    staging = staging or output_dir / ".unpacking"
    if kind == ResultKind.MODEL:
        run = name[: -len(".zip")]
        staging.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = safe_extract(received, staging / run, strip_top=run)
        received.unlink(missing_ok=True)
        target_root = output_dir / models_subdir if models_subdir else output_dir
        return place_new(tmp, target_root / run)
    return place_new(received, output_dir / name)


def describe_resume(offset: int, size: int) -> str:
    """"Upload resumed at 61 of 64 MiB ..." for an upload that reused the worker's partial file."""
    if size >= 10 * MIB:
        return f"Upload resumed at {offset / MIB:.0f} of {size / MIB:.0f} MiB (the worker kept what had arrived)."
    return f"Upload resumed at {offset / MIB:.1f} of {size / MIB:.1f} MiB (the worker kept what had arrived)."


__all__ = [
    "JobCancelledError", "JobError", "JobFailedError", "JobRejectedError", "JobSession", "JobSummary",
    "TRACK", "TRAIN", "Upload", "UploadProgress", "WorkerLostError",
]
