"""The client side of one remote job, shared by the CLI and the GUI.

Two layers:

* ``JobSession`` runs a job over an open ``PeerChannel``: upload the package (progress with
  bytes, rate and ETA), ``job_submit``, stream ``job_log`` / ``job_progress`` (training
  events passed on unchanged) to callbacks, receive each announced result file into the
  output directory, and finish on ``job_complete`` / ``job_failed``. Results are hostile
  input (see "Results" below). ``stop()`` asks the
  worker to finish the current epoch and keep the model; ``cancel()`` kills the job.
* ``RemoteJob`` / ``run_remote_job`` do the whole two-phase flow (seed Decision 1): join the
  room, discover, select (auto / direct / interactive via an injected chooser), connect
  (falling back on a busy worker), then the job; or, with a session string, connect
  straight to the encoded worker and, if it is busy, say so and suggest room discovery.

Both drive a ``JobPhases`` so the CLI's lines and the GUI's dialog show the same phases.

Before anything is uploaded, ``RemoteJob`` checks the worker's identity (``_verify``): the
worker proves over the data channel that it holds the key it advertises
(``PeerChannel.verify_identity``), the key must be the one the room advertised for it and
the one in the session string when that carries one, and it is compared with the key this
client remembered for the worker's name (``core.known_workers``). Any failure is a
``WorkerIdentityError``: auto-select moves on to the next worker; a worker the user chose
fails the job with that message. A changed key of a worker the user chose is a warning
(``on_decision``), after which the new key is remembered.

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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sleap_rtc.core import jobs_wire
from sleap_rtc.core.channel import default_cache_dir
from sleap_rtc.core.files import place_new, prune_transfer_cache, sanitize_name
from sleap_rtc.core.identity import short_fingerprint
from sleap_rtc.core.known_workers import KnownWorkers, Trust
from sleap_rtc.core.package import (
    RUN_NAME_OK,
    ExpectedResults,
    PackageError,
    expected_results,
    read_plan,
    safe_extract,
)
from sleap_rtc.core.phases import JobPhases, Phase
from sleap_rtc.core.protocol import ChannelType, JobKind, MessageType, ResultKind, Role
from sleap_rtc.core.room import RoomView, WorkerInfo, worker_filters
from sleap_rtc.core.selection import (
    BUSY_ERRORS,
    GONE_ERRORS,
    AllWorkersBusyError,
    SelectionError,
    WorkerUnavailableError,
    auto_select,
    connect_direct,
    describe,
    rank_workers,
    wait_for_available,
)
from sleap_rtc.core.signaling import SignalingClient, SignalingError
from sleap_rtc.core.transport_errors import PeerClosedError, PeerNotFoundError, TransportError, WorkerBusyError, WorkerIdentityError

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
    ``worker`` is its name and ``peer_id`` its id. In auto-select mode ``RemoteJob`` runs
    the job again on the next best worker; otherwise this is the user's error message.
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
Chooser = Callable[[RoomView, str], Awaitable[WorkerInfo]]
"""Interactive selection: ``await choose(room, notice) -> worker`` (CLI picker, GUI dialog)."""


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
    ):
        self.channel = channel
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


# ------------------------------------------------------------------------ whole flow


async def _transport_connect(signaling: SignalingClient, peer_id: str, receive_dir: Path, timeout: float) -> Any:
    from sleap_rtc.core import transport  # aiortc is heavy: import when connecting

    return await transport.connect(signaling, peer_id, timeout=timeout, receive_dir=receive_dir)


class RemoteJob:
    """One remote job from room credentials to results on disk (what the CLI and GUI run).

    Selection: ``worker_id`` set -> that worker (no fallback); ``choose`` set -> interactive
    (the chooser is asked again, with a notice, when the chosen worker turns out busy);
    otherwise auto-select (skipping ``exclude``), trying the next best on a busy worker.
    ``session_worker`` set -> session-string mode: connect straight to it, no discovery.

    A worker that dies mid-job (its channel closes, or its heartbeat stops: noticed within
    ``channel.DEAD_AFTER`` + one heartbeat, ~12 s) raises ``WorkerLostError``. In auto-select
    mode the death is reported through ``on_decision`` and the whole job runs again on the
    next best worker, the dead ones excluded, at most ``max_job_attempts`` times in all. With
    a direct worker id, a session string or interactive selection the user chose that
    worker, so the error is raised as is (a clear message, no silent switch).
    """

    def __init__(
        self,
        package: Path,
        *,
        server_url: str,
        room_id: str,
        token: str,
        results_dir: Path,
        worker_id: str | None = None,
        session_worker: str | None = None,
        session_fingerprint: str | None = None,
        known_workers: KnownWorkers | None = None,
        kind: str = TRAIN,
        choose: Chooser | None = None,
        exclude: frozenset[str] = frozenset(),
        min_gpu_memory_mb: int | None = None,
        wait: float = 0.0,
        max_attempts: int = 3,
        max_job_attempts: int = 3,
        connect_timeout: float = 30.0,
        reconnect_grace: float = RECONNECT_GRACE,
        models_subdir: str = "models",
        phases: JobPhases | None = None,
        on_decision: LogCallback | None = None,
        on_upload: UploadCallback | None = None,
        on_log: LogCallback | None = None,
        on_progress: ProgressCallback | None = None,
        on_file: Callable[[Path], Any] | None = None,
        signaling: SignalingClient | None = None,
        connect: Callable[[SignalingClient, str, Path, float], Awaitable[Any]] | None = None,
    ):
        self.package = Path(package)
        self.server_url = server_url
        self.room_id, self.token = room_id, token
        self.results_dir = Path(results_dir)
        self.worker_id = worker_id
        self.session_worker = session_worker
        self.session_fingerprint = session_fingerprint
        self.known = known_workers if known_workers is not None else KnownWorkers()
        self.kind = kind
        self.choose = choose
        self.exclude = frozenset(exclude)
        self.min_gpu_memory_mb = min_gpu_memory_mb
        self.wait = wait
        self.max_attempts = max_attempts
        self.max_job_attempts = max(1, max_job_attempts)
        self.models_subdir = models_subdir
        self.lost: list[WorkerLostError] = []  # workers that died under this job, in order
        self.connect_timeout = connect_timeout
        self.reconnect_grace = reconnect_grace
        self.reconnects = 0
        self._resume_on: tuple[WorkerInfo, Any] | None = None  # (worker, channel) after a reconnect
        self._attach_job: str | None = None  # the job to follow again after a reconnect
        self.phases = phases or JobPhases()
        self.on_decision = on_decision
        self.on_upload, self.on_log, self.on_progress, self.on_file = on_upload, on_log, on_progress, on_file
        self._given_signaling = signaling
        self._connect = connect or _transport_connect
        self.session: JobSession | None = None
        self._stop_early = False

    async def stop(self) -> None:
        """Finish the current epoch and keep the model (no-op before the job started)."""
        self._stop_early = True
        if self.session:
            await self.session.stop()

    async def cancel(self) -> None:
        """Kill the job on the worker (cancelling ``run()``'s task does this too)."""
        if self.session:
            await self.session.cancel()

    def _decide(self, text: str) -> None:
        log.info("%s", text)
        _call(self.on_decision, text)

    @property
    def retries_on_worker_loss(self) -> bool:
        """Whether a worker dying mid-job makes the job run again elsewhere (auto-select only)."""
        return not (self.worker_id or self.session_worker or self.choose is not None)

    async def run(self) -> JobSummary:
        """Join, select, connect, run the job; raises ``SelectionError`` or ``JobError``."""
        signaling = self._given_signaling or SignalingClient(
            self.server_url, room_id=self.room_id, token=self.token, role=Role.CLIENT.value
        )
        own_signaling = self._given_signaling is None
        try:
            self.phases.advance(Phase.JOINING, f"room {self.room_id}")
            if own_signaling:
                await signaling.connect()
            attempt = 1
            while True:
                try:
                    return await self._run_once(signaling)
                except WorkerLostError as exc:
                    # A stop-early or cancel means "wrap up now": neither a reconnect nor a run elsewhere.
                    if not (self.cancel_requested or self._stop_early) and self.reconnects < MAX_RECONNECTS:
                        lost_session = self.session
                        self._resume_on = await self._reconnect_same_worker(signaling, exc)
                        if self._resume_on is not None:
                            self.reconnects += 1
                            # A job the worker accepted keeps running there: follow it again.
                            self._attach_job = lost_session.job_id if lost_session and lost_session._submitted else None
                            continue
                    self.lost.append(exc)
                    if not self.retries_on_worker_loss or self.cancel_requested or self._stop_early:
                        raise
                    if attempt >= self.max_job_attempts:
                        raise WorkerLostError(
                            f"{exc} Gave up after {attempt} worker(s) stopped responding: "
                            + ", ".join(lost.worker for lost in self.lost) + ".",
                            worker=exc.worker, peer_id=exc.peer_id, stage=exc.stage, reason=exc.reason,
                        ) from None
                    attempt += 1
                    self.exclude = self.exclude | {exc.peer_id}
                    self._decide(
                        f"Worker {exc.worker} stopped responding during {exc.stage} ({exc.reason}); "
                        f"trying the next best worker (job attempt {attempt}/{self.max_job_attempts})."
                    )
                    if self.phases.phase != Phase.SELECTING:  # a failed reconnect is already there
                        self.phases.advance(Phase.SELECTING, f"{exc.worker} stopped responding")
        except (SelectionError, TransportError, JobError) as exc:
            if not self.phases.finished:
                cancelled = isinstance(exc, JobCancelledError)
                self.phases.advance(Phase.CANCELLED if cancelled else Phase.FAILED, str(exc))
            raise
        finally:
            if own_signaling:
                await signaling.close()
            with contextlib.suppress(OSError):
                (self.results_dir / ".incoming").rmdir()  # only when empty
            # The client's cache holds every model it downloaded: same policy as the worker's.
            with contextlib.suppress(OSError):
                await asyncio.to_thread(prune_transfer_cache, default_cache_dir())

    @property
    def cancel_requested(self) -> bool:
        """Whether the user cancelled the job (then nothing is retried)."""
        return bool(self.session and self.session.cancel_requested)

    async def _run_once(self, signaling: SignalingClient) -> JobSummary:
        """Select (or reconnect), then run the job on that worker once."""
        channel = None
        try:
            if self._resume_on is not None:
                (worker, channel), self._resume_on = self._resume_on, None
            elif self.session_worker:
                worker, channel = await self._connect_session(signaling)
            else:
                worker, channel = await self._select(signaling, again=bool(self.lost))
            self.session = JobSession(
                channel, self.package, output_dir=self.results_dir, kind=self.kind, worker=worker,
                phases=self.phases, on_upload=self.on_upload, on_log=self.on_log,
                on_progress=self.on_progress, on_file=self.on_file, models_subdir=self.models_subdir,
                on_decision=self._decide, attach_job_id=self._attach_job,
            )
            self._attach_job = None
            if self._stop_early:
                self.session.stop_requested = True
            remove = signaling.add_listener(_watch_departure(worker.peer_id, channel))
            try:
                return await self.session.run()
            finally:
                remove()
        finally:
            if channel is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(channel.close(), 5.0)

    async def _reconnect_same_worker(self, signaling: SignalingClient, lost: WorkerLostError) -> tuple[WorkerInfo, Any] | None:
        """A new channel to the worker whose channel just died, if it answers within
        ``reconnect_grace``; None once it left the room, took another job, or stayed silent.

        Each try re-probes the ICE servers (``transport.connect`` does, per attempt), so a
        try made while the network was still down does not spoil the next one. The job then
        runs again on that worker; an upload resumes from the bytes the worker kept.
        """
        if self.reconnect_grace <= 0:
            return None
        worker = (self.session.worker if self.session else None) or WorkerInfo(peer_id=lost.peer_id, role=Role.WORKER.value, metadata={})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.reconnect_grace
        self._decide(
            f"Lost the connection to {lost.worker} during {lost.stage} ({lost.reason}); "
            f"reconnecting to the same worker (waiting up to {self.reconnect_grace:.0f} s for it)."
        )
        self.phases.advance(Phase.SELECTING, f"reconnecting to {lost.worker}")
        while loop.time() < deadline:
            try:
                await signaling.wait_registered(max(0.1, deadline - loop.time()))
                peers = await signaling.discover({"role": Role.WORKER.value})
            except (TimeoutError, asyncio.TimeoutError, SignalingError):
                # The signaling link is down too: wait for it, within the grace.
                await asyncio.sleep(min(RECONNECT_PAUSE, max(0.0, deadline - loop.time())))
                continue
            if not any(p.get("peer_id") == lost.peer_id for p in peers):
                self._decide(f"Worker {lost.worker} left the room.")
                return None
            try:
                channel = await self._attempt(signaling, worker)
            except BUSY_ERRORS:
                self._decide(f"Worker {lost.worker} took another job in the meantime.")
                return None
            except PeerNotFoundError:
                self._decide(f"Worker {lost.worker} left the room.")
                return None
            except TransportError as exc:
                log.info("reconnect to %s failed: %s", lost.worker, exc)
                if self.phases.phase != Phase.SELECTING:
                    self.phases.advance(Phase.SELECTING, f"reconnecting to {lost.worker}")
                await asyncio.sleep(min(RECONNECT_PAUSE, max(0.0, deadline - loop.time())))
                continue
            self._decide(f"Reconnected to {lost.worker}.")
            return worker, channel
        self._decide(f"Worker {lost.worker} did not come back within {self.reconnect_grace:.0f} s.")
        return None

    async def _attempt(self, signaling: SignalingClient, worker: WorkerInfo, *, chosen: bool = False) -> Any:
        self.phases.advance(Phase.RESERVING, worker.name)
        try:
            channel = await self._connect(signaling, worker.peer_id, self.results_dir / ".incoming", self.connect_timeout)
        except (*BUSY_ERRORS, *GONE_ERRORS):
            self.phases.advance(Phase.SELECTING, f"{worker.name} is not available")
            raise
        try:
            await self._verify(channel, worker, name=worker.name, advertised=worker.fingerprint, chosen=chosen)
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(channel.close(), 5.0)
            if not self.phases.finished:
                self.phases.advance(Phase.SELECTING, f"{worker.name} failed the identity check")
            raise
        self.phases.advance(Phase.CONNECTING, f"connected to {worker.name}")
        return channel

    async def _verify(self, channel: Any, worker: WorkerInfo, *, name: str, advertised: str | None, chosen: bool) -> str:
        """Check the worker's identity before anything is uploaded (see the module docstring).

        ``advertised`` is the key the room (or the session string) says this worker has;
        ``chosen`` says the user picked this very worker (a changed key then warns instead
        of refusing). Returns the verified fingerprint; raises ``WorkerIdentityError``.
        """
        proved = await channel.verify_identity()
        if advertised is not None and proved != advertised:
            raise WorkerIdentityError(
                f"Worker {name} proved key {short_fingerprint(proved)}, not the key {short_fingerprint(advertised)} "
                "it is known by here: it is posing as another worker.",
                fingerprint=proved, expected=advertised,
            )
        trust = self.known.check(self.room_id, name, proved)
        before = self.known.fingerprint(self.room_id, name)
        if trust == Trust.CHANGED and not chosen:
            raise WorkerIdentityError(
                f"Worker {name} now has identity key {short_fingerprint(proved)}, not {short_fingerprint(before)} "
                "as when this computer last used it. Choose it yourself (--worker-id) to accept the new key.",
                fingerprint=proved, expected=before,
            )
        if trust == Trust.CHANGED:
            self._decide(
                f"WARNING: worker {name}'s identity key changed from {before} to {proved}. If nobody "
                "reinstalled that worker, someone may be posing as it. Continuing because you chose it; "
                "the new key is remembered."
            )
        elif trust == Trust.NEW:
            self._decide(f"First job on worker {name}: remembering its identity key {proved}.")
        else:
            self._decide(f"Worker {name} proved its identity key {short_fingerprint(proved)} (the one used before).")
        self.known.remember(self.room_id, name, proved)
        return proved

    async def _connect_session(self, signaling: SignalingClient) -> tuple[WorkerInfo, Any]:
        peer_id = str(self.session_worker)
        worker = WorkerInfo(peer_id=peer_id, role=Role.WORKER.value, metadata={})
        self.phases.advance(Phase.RESERVING, peer_id)
        try:
            channel = await self._connect(signaling, peer_id, self.results_dir / ".incoming", self.connect_timeout)
        except WorkerBusyError as exc:
            # Seed Decision 6: the worker's own words, which point to room discovery.
            raise WorkerUnavailableError(
                f"Worker {peer_id} is busy: {exc.message} (--room-id and --token are in the worker's banner.)"
            ) from None
        try:
            # The session string names the worker the user means: its key is the expectation.
            await self._verify(channel, worker, name=name_from_peer_id(peer_id),
                               advertised=self.session_fingerprint, chosen=True)
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(channel.close(), 5.0)
            raise
        self.phases.advance(Phase.CONNECTING, f"connected to {peer_id}")
        return worker, channel

    async def _select(self, signaling: SignalingClient, again: bool = False) -> tuple[WorkerInfo, Any]:
        room = RoomView(signaling, worker_filters(self.min_gpu_memory_mb), known=self.known)
        try:
            if not again:  # a retry after a lost worker is already SELECTING
                self.phases.advance(Phase.DISCOVERING)
            await room.start()
            if not again:
                self.phases.advance(Phase.SELECTING)

            async def attempt(worker: WorkerInfo) -> Any:
                return await self._attempt(signaling, worker)

            async def chosen_attempt(worker: WorkerInfo) -> Any:
                return await self._attempt(signaling, worker, chosen=True)

            if self.worker_id:
                sel = await connect_direct(room, self.worker_id, chosen_attempt)
                return sel.worker, sel.connection
            if self.choose is not None:
                return await self._interactive(room, chosen_attempt)
            view: Any = room
            if self.exclude:
                view = _Excluding(room, self.exclude)
            sel = await auto_select(
                view, attempt, max_attempts=self.max_attempts, wait=self.wait,
                min_gpu_memory_mb=self.min_gpu_memory_mb, on_decision=self._decide,
            )
            return sel.worker, sel.connection
        finally:
            room.close()

    async def _interactive(self, room: RoomView, attempt: Callable[[WorkerInfo], Awaitable[Any]]) -> tuple[WorkerInfo, Any]:
        assert self.choose is not None
        notice = ""
        if self.wait:
            with contextlib.suppress(SelectionError):
                await wait_for_available(room, wait=self.wait, min_gpu_memory_mb=self.min_gpu_memory_mb)
        while True:
            worker = await self.choose(room, notice)
            try:
                return worker, await attempt(worker)
            except BUSY_ERRORS:
                notice = f"{worker.name} just became busy; choose another worker."
            except GONE_ERRORS:
                notice = f"{worker.name} did not answer (it may have left); choose another worker."
            except WorkerIdentityError as exc:
                notice = f"Refused {worker.name}: {exc} Choose another worker."
            self._decide(notice)


def name_from_peer_id(peer_id: str) -> str:
    """The worker name inside a ``worker-<name>-<12 hex>`` peer id (the peer id otherwise).

    With a session string there is no room metadata; the trust-on-first-use store still
    needs the worker's name, and a worker's peer id carries it.
    """
    parts = peer_id.split("-")
    if len(parts) >= 3 and parts[0] == Role.WORKER.value and len(parts[-1]) == 12:
        return "-".join(parts[1:-1])
    return peer_id


def _watch_departure(peer_id: str, channel: Any) -> Callable[[dict[str, Any]], None]:
    """A signaling listener that tells the channel when its worker leaves the room, so a
    killed worker is noticed in seconds rather than after the heartbeat's dead-after."""

    def on_frame(frame: dict[str, Any]) -> None:
        if frame.get("type") == MessageType.PEER_LEFT and frame.get("peer_id") == peer_id:
            suspect = getattr(channel, "suspect", None)
            if suspect is not None:
                suspect()

    return on_frame


class _Excluding:
    """A RoomView seen without some workers (the GUI's "try next best" after a refusal)."""

    def __init__(self, room: RoomView, exclude: frozenset[str]):
        self._room, self._exclude = room, exclude
        self.signaling = room.signaling

    @property
    def workers(self) -> list[WorkerInfo]:
        """The room's workers minus the excluded ones."""
        return [w for w in self._room.workers if w.peer_id not in self._exclude]

    def trust(self, worker: WorkerInfo) -> Trust:
        """``RoomView.trust`` of the underlying room."""
        return self._room.trust(worker)

    async def wait_for(self, predicate: Callable[[Any], Any], timeout: float) -> Any:
        """``RoomView.wait_for`` evaluated on this filtered view."""
        return await self._room.wait_for(lambda _room: predicate(self), timeout)


def describe_resume(offset: int, size: int) -> str:
    """"Upload resumed at 61 of 64 MiB ..." for an upload that reused the worker's partial file."""
    if size >= 10 * MIB:
        return f"Upload resumed at {offset / MIB:.0f} of {size / MIB:.0f} MiB (the worker kept what had arrived)."
    return f"Upload resumed at {offset / MIB:.1f} of {size / MIB:.1f} MiB (the worker kept what had arrived)."


async def run_remote_job(package: Path, **kwargs: Any) -> JobSummary:
    """``RemoteJob(package, **kwargs).run()``: the whole flow in one call."""
    return await RemoteJob(package, **kwargs).run()


__all__ = [
    "AllWorkersBusyError", "JobCancelledError", "JobError", "JobFailedError", "JobRejectedError",
    "JobSession", "JobSummary", "RemoteJob", "TRACK", "TRAIN", "UploadProgress", "WorkerLostError",
    "describe", "rank_workers", "run_remote_job",
]
