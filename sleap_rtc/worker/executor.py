"""Running one job: a SLEAP training-job package in, trained models and predictions out.

``JobExecutor.run`` extracts the package (``package.extract_package``: hostile-input
checks), reads its plan, and for each model:

1. binds the progress sockets FIRST: a SUB on a free *publish* port that sleap-nn's PUB
   connects to, and a PUB on a free *controller* port that sleap-nn's SUB connects to;
2. starts ``sleap-nn train`` in its own process group with the
   ``trainer_config.zmq.publish_port``/``controller_port`` overrides;
3. streams stdout/stderr as ``job_log`` messages (progress-bar redraws flagged) and every
   ZMQ training event, unchanged, as ``job_progress`` (the client feeds them to SLEAP's
   LossViewer);
4. zips ``models/<run_name>/`` as a result file.

Then it runs ``sleap-nn track`` for each inference request and returns the predictions. An
inference on a video (sent on its own, or on a data root: ``worker.inputs``) runs with
sleap-nn's ``--gui`` JSON progress, forwarded as ``job_progress`` events
``{"event": "inference_progress", "video": n, "n_processed", "n_total", "rate", "eta"}``,
and its predictions are handed to ``deliver`` as soon as that video is done (the worker
sends them while the next video runs), so a job that fails later keeps them. A trained
model's result zip is ``core.package.write_model_zip``'s (its sha256 is the model's id).
``stop()`` asks sleap-nn to end the current model's training cleanly (its
``{"command": "stop"}``: the model is kept, like SLEAP's Stop button); ``cancel()``
terminates the process group. A job that runs longer than ``max_seconds`` (the worker's
``--max-job-seconds``, default ``DEFAULT_MAX_JOB_SECONDS``) is cancelled and fails with
that reason. sleap-nn runs with a minimal environment (``child_env``): the worker's own
variables (tokens, keys, cloud credentials) never reach a job, whose config could print
them. Failures come back as a ``JobOutcome`` whose reason a user
can act on (with the last lines of sleap-nn's output), never as a hang or a traceback.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from sleap_rtc.children import die_with_parent
from sleap_rtc.core import jobs_wire
from sleap_rtc.core.tasks import cancel_and_wait
from sleap_rtc.worker.logstream import LineSplitter
from sleap_rtc.core.package import FILE_MODE, write_model_zip
from sleap_rtc.worker.inputs import InputError, JobInputs
from sleap_rtc.worker.package import (
    InferenceJob,
    PackageError,
    PackageLimits,
    TrainJob,
    extract_package,
    load_plan,
    track_argv,
    train_argv,
)

log = logging.getLogger(__name__)

Emit = Callable[[dict[str, Any]], Awaitable[None]]
Deliver = Callable[[Path], Awaitable[bool]]
"""``await deliver(result) -> sent``: send one result now (False: keep it for the end)."""
INFERENCE_PROGRESS = "inference_progress"
"""``event`` of the ``job_progress`` messages of a video inference (``core.inference``)."""

COMPLETED, FAILED, CANCELLED = "completed", "failed", "cancelled"
STDERR_TAIL_LINES = 15
KILL_GRACE_S = 3.0
STOP_REPEAT_S = 0.5  # a stop published before sleap-nn's SUB connected is lost: repeat it
ZMQ_DRAIN_S = 0.5  # events still in flight when the process exits, after a failure
ZMQ_DRAIN_MAX_S = 5.0  # after a clean exit: until train_end came through (a loaded machine lags)
DEFAULT_MAX_JOB_SECONDS = 24 * 3600.0
"""Wall-clock limit of one job (all its models and inference) unless the worker says otherwise."""
ENV_ALLOWED = frozenset({
    "PATH", "PYTHONPATH", "VIRTUAL_ENV", "CONDA_PREFIX", "CONDA_DEFAULT_ENV", "LANG", "LANGUAGE", "TZ",
    "LD_LIBRARY_PATH", "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "CUDA_HOME", "CUDA_PATH",
    "NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES",
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "SLEAP_SKIP_QT_FIX", "QT_QPA_PLATFORM",
})
"""Variables of the worker's environment passed on to sleap-nn (plus ``LC_*``); nothing else."""
FORWARD_CLOSE_TIMEOUT_S = 2.0  # the ZMQ event forwarder, once cancelled
INSTALL_HINT = "Install it on the worker with: pip install 'sleap-rtc[worker]' (or pip install sleap-nn)."


@dataclass
class JobOutcome:
    """How a job ended: ``status`` (completed/failed/cancelled), result files, and why."""

    status: str
    results: list[Path] = field(default_factory=list)
    reason: str = ""
    stopped_early: bool = False
    duration_s: float = 0.0
    delivered: list[Path] = field(default_factory=list)
    """Results already sent while the job ran (listed in ``results`` too)."""


def find_sleap_nn() -> list[str] | None:
    """The ``sleap-nn`` command: on PATH, else next to this Python (a venv not activated)."""
    found = shutil.which("sleap-nn")
    if found:
        return [found]
    local = Path(sys.executable).with_name("sleap-nn")
    return [str(local)] if local.exists() else None


def child_env(job_dir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment sleap-nn runs with: ``ENV_ALLOWED`` (+ ``LC_*``) of ours, ``HOME`` and
    ``TMPDIR`` inside the job dir, wandb disabled, then ``extra`` (the worker's own settings)."""
    env = {k: v for k, v in os.environ.items() if k in ENV_ALLOWED or k.startswith("LC_")}
    home = Path(job_dir) / "home"
    tmp = Path(job_dir) / "tmp"
    for d in (home, tmp):
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
    env.update({"HOME": str(home), "TMPDIR": str(tmp), "MPLCONFIGDIR": str(home / ".matplotlib"),
                "PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled", "WANDB_DISABLED": "true"})
    env.update(extra or {})
    return env


class _JobFailed(Exception):
    """Internal: ends ``run`` with a failure reason."""


class JobExecutor:
    """Runs one job; ``run`` once per instance, ``stop``/``cancel`` from any task.

    ``command`` is the sleap-nn command prefix (default: found on PATH); ``accelerator``
    forces ``trainer_config.trainer_accelerator`` and ``device`` the inference device,
    only when given.
    """

    def __init__(
        self,
        job_id: str,
        *,
        command: Sequence[str] | None = None,
        accelerator: str | None = None,
        device: str | None = None,
        limits: PackageLimits = PackageLimits(),
        env: dict[str, str] | None = None,
        max_seconds: float | None = DEFAULT_MAX_JOB_SECONDS,
    ):
        self.job_id = job_id
        self.command = list(command) if command else None
        self.accelerator = accelerator
        self.device = device
        self.limits = limits
        self.env = env
        self.max_seconds = max_seconds
        self._timed_out = False
        self._job_dir: Path | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._controller: zmq.asyncio.Socket | None = None
        self._stop_pending = False
        self._stop_task: asyncio.Task | None = None
        self._stopped_current = False
        self._stopped_any = False
        self._cancelled = False
        self._emit_failures = 0
        self._video_index: int | None = None  # the video whose --gui progress lines come now
        self._inputs = JobInputs()
        self._deliver: Deliver | None = None
        self._delivered: list[Path] = []

    # ------------------------------------------------------------------ control

    def stop(self) -> None:
        """End the current model's training cleanly (model kept), as SLEAP's Stop does.

        Called before training started, it applies to the first model trained.
        """
        if self._controller is not None and self._proc is not None:
            self._begin_stop(self._controller, self._proc)
        else:
            self._stop_pending = True

    def cancel(self) -> None:
        """Kill the running sleap-nn process group now; the job ends ``cancelled``."""
        self._cancelled = True
        proc = self._proc
        if proc is not None and proc.returncode is None:
            _signal_group(proc, signal.SIGTERM)
            asyncio.get_running_loop().call_later(KILL_GRACE_S, _signal_group, proc, signal.SIGKILL)

    def _time_up(self) -> None:
        log.warning("job %s: wall-clock limit of %g s reached; stopping it", self.job_id, self.max_seconds)
        self._timed_out = True
        self.cancel()

    @property
    def cancelled(self) -> bool:
        """Whether ``cancel()`` was called."""
        return self._cancelled

    # ------------------------------------------------------------------ run

    async def run(self, package_zip: Path, job_dir: Path, emit: Emit, *, inputs: JobInputs | None = None,
                  deliver: Deliver | None = None) -> JobOutcome:
        """Run the package in ``job_dir`` (created; must not exist); never raises for job errors.

        ``inputs``: videos and models named outside the package; ``deliver``: sends a video's
        predictions as soon as they exist."""
        started = time.monotonic()
        self._emit = emit
        self._inputs = inputs or JobInputs()
        self._deliver = deliver
        self._delivered: list[Path] = []
        timer = None
        if self.max_seconds is not None and self.max_seconds > 0:
            timer = asyncio.get_running_loop().call_later(self.max_seconds, self._time_up)
        try:
            results = await self._run(Path(package_zip), Path(job_dir))
            status, reason = (CANCELLED, "Cancelled by the client.") if self._cancelled else (COMPLETED, "")
        except _JobFailed as exc:
            results, status, reason = [], (CANCELLED if self._cancelled else FAILED), str(exc)
            if self._cancelled:
                reason = "Cancelled by the client."
        except Exception as exc:  # a bug or an input nobody foresaw: still a clear failure
            log.exception("job %s crashed", self.job_id)
            results, status = [], FAILED
            reason = f"The worker could not run this job ({exc.__class__.__name__}: {exc})."
        finally:
            if timer is not None:
                timer.cancel()
        if self._timed_out:
            results, status = [], FAILED
            reason = (f"The job ran longer than this worker's limit of {self.max_seconds:g} s per job "
                      "(--max-job-seconds) and was stopped.")
        outcome = JobOutcome(status, results if status == COMPLETED else [], reason, self._stopped_any,
                             time.monotonic() - started, delivered=list(self._delivered))
        log.info("job %s %s in %.1f s %s", self.job_id, outcome.status, outcome.duration_s, outcome.reason)
        return outcome

    async def _run(self, package_zip: Path, job_dir: Path) -> list[Path]:
        work = job_dir / "work"
        results_dir = job_dir / "results"
        job_dir.mkdir(mode=0o700, parents=True, exist_ok=False)
        results_dir.mkdir(mode=0o700)
        self._job_dir = job_dir
        try:
            await asyncio.to_thread(extract_package, package_zip, work, self.limits)
            # Checked and rewritten before sleap-nn sees anything (configs, labels' videos).
            plan = await asyncio.to_thread(load_plan, work, rewrite_configs=True)
        except PackageError as exc:
            raise _JobFailed(f"The training package was refused: {exc}") from None
        command = self.command or find_sleap_nn()
        if not command:
            raise _JobFailed(f"sleap-nn is not installed on this worker. {INSTALL_HINT}")
        results: list[Path] = []
        for n, job in enumerate(plan.training, 1):
            if self._cancelled:
                raise _JobFailed("cancelled")
            await self._log(f"Training model {n}/{len(plan.training)}: {job.run_name}")
            await self._train(command, job, work)
            model_dir = work / job.run_path
            if not model_dir.is_dir():
                raise _JobFailed(f"sleap-nn finished but wrote no model folder {job.run_path!r}.")
            zipped, _sha = await asyncio.to_thread(write_model_zip, model_dir, results_dir / f"{job.run_name}.zip")
            results.append(zipped)
        for n, inf in enumerate(plan.inference, 1):
            if self._cancelled:
                raise _JobFailed("cancelled")
            try:
                data = await asyncio.to_thread(self._inputs.video, inf, work) if inf.video is not None else None
                models = list(inf.models) + [await asyncio.to_thread(self._inputs.model, m, work) for m in inf.model_ids]
            except InputError as exc:
                raise _JobFailed(f"Inference {n} was refused: {exc}") from None
            await self._log(f"Running inference {n}/{len(plan.inference)} on {Path(data or inf.data_path).name}")
            try:
                result = await self._track(command, inf, work, results_dir, data=data, models=models,
                                           video_index=n - 1 if inf.video is not None else None)
            finally:
                if inf.video is not None and "sha256" in inf.video:
                    # The cache keeps the video; the job dir (kept for a while) need not.
                    inside_video = work / inf.data_path
                    if not any(o.data_path == inf.data_path for o in plan.inference[n:]):
                        inside_video.unlink(missing_ok=True)
            results.append(result)
            if inf.video is not None and self._deliver is not None and await self._deliver(result):
                self._delivered.append(result)
        return results

    async def _train(self, command: list[str], job: TrainJob, work: Path) -> None:
        ctx = zmq.asyncio.Context()
        sub = ctx.socket(zmq.SUB)
        pub = ctx.socket(zmq.PUB)
        try:
            # Bind before launching: sleap-nn connects to these ports when it sets up.
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            publish_port = sub.bind_to_random_port("tcp://127.0.0.1")
            controller_port = pub.bind_to_random_port("tcp://127.0.0.1")
            self._controller, self._stopped_current = pub, False
            argv = command + train_argv(job, sleap_nn="sleap-nn", publish_port=publish_port,
                                        controller_port=controller_port, accelerator=self.accelerator)[1:]
            train_end = asyncio.Event()
            forward = asyncio.create_task(self._forward_events(sub, train_end), name=f"zmq-{self.job_id}")
            try:
                rc, tail = await self._run_process(argv, work, on_start=self._stop_if_pending)
                # Events still on their way when the process exits: the last epoch_end and
                # train_end are published just before it, and ZMQ delivers them later.
                with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                    await asyncio.wait_for(train_end.wait(), ZMQ_DRAIN_MAX_S if rc == 0 else ZMQ_DRAIN_S)
            finally:
                await cancel_and_wait([forward], FORWARD_CLOSE_TIMEOUT_S)
            if self._stopped_current:
                self._stopped_any = True
            if rc != 0:
                raise _JobFailed(_failure_reason(f"Training {job.run_name}", rc, tail))
        finally:
            self._controller = None
            if self._stop_task is not None:
                self._stop_task.cancel()
            sub.close(linger=0)
            pub.close(linger=0)
            ctx.term()

    async def _track(self, command: list[str], inf: InferenceJob, work: Path, results_dir: Path, *,
                     data: str | None = None, models: list[str] | None = None, video_index: int | None = None) -> Path:
        argv = command + track_argv(inf, sleap_nn="sleap-nn", device=self.device, data=data, models=models,
                                    progress_json=video_index is not None)[1:]
        self._video_index = video_index
        rc, tail = await self._run_process(argv, work)
        if rc != 0:
            raise _JobFailed(_failure_reason(f"Inference on {inf.data_path}", rc, tail))
        output = work / inf.output_path
        if not output.is_file():
            raise _JobFailed(f"sleap-nn track finished but wrote no predictions at {inf.output_path!r}.")
        result = Path(shutil.copy(output, results_dir / output.name))
        os.chmod(result, FILE_MODE)
        return result

    async def _run_process(self, argv: list[str], cwd: Path, on_start: Callable[[], None] | None = None) -> tuple[int, list[str]]:
        """Run one command in its own process group, streaming its output; returns (rc, tail)."""
        env = child_env(self._job_dir or cwd, self.env)
        log.info("job %s: %s", self.job_id, " ".join(argv))
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                start_new_session=True,  # its own process group: cancel kills its children too
                preexec_fn=_child_setup,
            )
        except (FileNotFoundError, PermissionError) as exc:
            raise _JobFailed(f"Cannot start {argv[0]!r} ({exc.strerror}). {INSTALL_HINT}") from None
        self._proc = proc
        if on_start:
            on_start()
        tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        try:
            await asyncio.gather(
                self._pump(proc.stdout, "stdout", tail),
                self._pump(proc.stderr, "stderr", tail),
            )
            rc = await proc.wait()
        except asyncio.CancelledError:
            # The caller gave up on the job: never leave sleap-nn running behind it.
            _signal_group(proc, signal.SIGKILL)
            raise
        finally:
            self._proc = None
        return rc, list(tail)

    async def _pump(self, stream: asyncio.StreamReader, name: str, tail: collections.deque) -> None:
        splitter = LineSplitter()
        while True:
            data = await stream.read(65536)
            lines = splitter.feed(data) if data else splitter.flush()
            for line, redraw in lines:
                event = _progress_event(line, self._video_index) if name == "stdout" else None
                if event is not None:
                    await self._send(jobs_wire.job_progress(self.job_id, event))
                    continue
                if not redraw:
                    tail.append(line)
                await self._send(jobs_wire.job_log(self.job_id, line, redraw, stream=name))
            if not data:
                return

    async def _forward_events(self, sub: zmq.asyncio.Socket, train_end: asyncio.Event) -> None:
        while True:
            raw = await sub.recv()
            try:
                event = json.loads(raw)
            except ValueError:
                log.warning("ignoring a non-JSON progress message from sleap-nn")
                continue
            if isinstance(event, dict):
                await self._send(jobs_wire.job_progress(self.job_id, event))
                if event.get("event") == "train_end":
                    train_end.set()

    def _stop_if_pending(self) -> None:
        if self._stop_pending and self._controller is not None and self._proc is not None:
            self._stop_pending = False
            self._begin_stop(self._controller, self._proc)

    def _begin_stop(self, pub: zmq.asyncio.Socket, proc: asyncio.subprocess.Process) -> None:
        self._stopped_current = True
        if self._stop_task is None or self._stop_task.done():
            self._stop_task = asyncio.get_running_loop().create_task(self._repeat_stop(pub, proc))

    async def _repeat_stop(self, pub: zmq.asyncio.Socket, proc: asyncio.subprocess.Process) -> None:
        # A stop published before sleap-nn's SUB connected is lost (ZMQ slow joiner): repeat
        # it until the process exits.
        while proc.returncode is None and self._controller is pub:
            with contextlib.suppress(zmq.ZMQError):
                await pub.send_string(json.dumps({"command": "stop"}), flags=zmq.NOBLOCK)
            await asyncio.sleep(STOP_REPEAT_S)

    async def _log(self, text: str) -> None:
        await self._send(jobs_wire.job_log(self.job_id, text, stream="worker"))

    async def _send(self, message: dict[str, Any]) -> None:
        try:
            await self._emit(message)
        except Exception as exc:  # the channel may be gone; the job's fate is decided elsewhere
            self._emit_failures += 1
            if self._emit_failures == 1:
                log.warning("job %s: could not send a message (%s); continuing", self.job_id, exc)


def _progress_event(line: str, video_index: int | None) -> dict[str, Any] | None:
    """sleap-nn's ``--gui`` progress line as an ``inference_progress`` event (else ``None``)."""
    if video_index is None or not line.startswith("{") or "n_processed" not in line:
        return None
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    event: dict[str, Any] = {"event": INFERENCE_PROGRESS, "video": video_index}
    for key in ("n_processed", "n_total", "rate", "eta"):
        value = data.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            event[key] = value
    return event


def _child_setup() -> None:
    """In the sleap-nn child before exec: die with the worker; files it writes are owner-only."""
    die_with_parent()
    os.umask(0o077)


def _signal_group(proc: asyncio.subprocess.Process, sig: int) -> None:
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _failure_reason(what: str, rc: int, tail: list[str]) -> str:
    if rc < 0:
        head = f"{what} was killed by signal {-rc}"
        if -rc == signal.SIGKILL:
            head += " (out of memory?)"
    else:
        head = f"{what} failed (sleap-nn exit code {rc})"
    last = "\n".join(tail[-10:]) if tail else "(no output)"
    return f"{head}. Last lines of its output:\n{last}"
