"""``sleap-rtc client-train`` / ``client-track``: run a job on a remote worker from the terminal.

Options are validated before any network traffic (``client.options``; usage errors exit
with code 2). The job itself is ``core.remote_job.RemoteJob``, shared with the GUI; this
module only renders it: decisions, an upload bar (bytes, rate, ETA), log lines, one line per
epoch with its loss, and a final summary. Ctrl-C asks whether to stop early (keep the
model) or cancel; a second Ctrl-C cancels. Without a terminal there is no one to ask, so
the first Ctrl-C (SIGINT) stops early and the second cancels.

Where results go: ``client-train --output DIR`` puts each trained model in ``DIR/<run>/``
(``best.ckpt``, ``training_config.yaml``, ...), plus any predictions the package asked for;
``client-track --output`` takes a directory or the ``.slp`` path for the predictions.
Nothing is ever written over an existing file: a model folder or predictions file whose
name is taken gets ``-2``, ``-3`` ...; ``client-track`` never writes over its inputs (the
default is ``<data stem>.predictions.slp`` next to DATA; an ``--output FILE.slp`` that
exists is refused before anything runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from sleap_rtc.client.options import ConnectionPlan, OptionsError, SelectionMode, plan_connection, token_from_options
from sleap_rtc.client.track_package import TrackPackageError, build_track_package
from sleap_rtc.core.config import ConfigError, resolve_server
from sleap_rtc.core.credentials import RoomCredentials
from sleap_rtc.core.job_events import Epoch, JobCallbacks, Restarted, Waiting
from sleap_rtc.core.job_policy import Auto, DirectWorker, Interactive, SelectionPolicy, SessionWorker, asked_by_worker_choice
from sleap_rtc.core.job_runner import RemoteJob
from sleap_rtc.core.phases import Phase, PhaseChange
from sleap_rtc.core.remote_job import TRACK, TRAIN, JobError, JobSummary, UploadProgress, WorkerLostError
from sleap_rtc.core.selection import (
    AllWorkersBusyError,
    NoWorkersError,
    SelectionError,
    SessionWorkerBusyError,
    UnknownWorkerError,
    WorkerUnavailableError,
)
from sleap_rtc.core.files import place_new
from sleap_rtc.core.signaling import SignalingError
from sleap_rtc.core.tasks import spawn
from sleap_rtc.core.transport_errors import IceFailedError, TransportError, WorkerIdentityError

# A tqdm/Lightning progress-bar frame ("Epoch 0:  20%|██   | 1/5 [00:00<00:03, 1.19it/s]").
# sleap-nn prints one per step when its output is not a terminal; the per-epoch loss line
# says the same thing once, so these frames are not echoed.
PROGRESS_BAR = re.compile(r"\|\s*[\d?]+/[\d?]+ \[\d+:\d+")

EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


def connection_options(func: Any) -> Any:
    """The connection and selection options shared by both commands."""
    options = [
        click.option("--server", metavar="URL", help="Signaling server (default: SLEAP_RTC_SERVER, config file, ws://127.0.0.1:8765)."),
        click.option("--session-string", metavar="S", help="Connect straight to the worker that printed this session string."),
        click.option("--room-id", metavar="ROOM", help="Room to join (printed by the worker); needs --token."),
        click.option("--token", metavar="TOKEN", help="The room's token (printed by the worker). Also read from --token-file "
                     "or SLEAP_RTC_TOKEN, which keep it out of the process list."),
        click.option("--token-file", type=click.Path(dir_okay=False), metavar="FILE", help="File whose first line is the room's token."),
        click.option("--auto-select", is_flag=True, help="Pick the available worker with the most GPU memory."),
        click.option("--worker-id", metavar="ID", help="Use this worker (its peer id) of the room."),
        click.option("--min-gpu-memory", type=int, metavar="MB", help="Only consider workers with at least this much GPU memory."),
        click.option("--wait", type=float, metavar="SECONDS",
                     help="Wait this long for a worker to become available (none there, or all busy) instead of failing."),
        click.option("--show-busy", is_flag=True, help="List busy/reserved workers too (not selectable)."),
        click.option("--selection-timeout", type=float, default=300.0, show_default=True, metavar="SECONDS",
                     help="Give up interactive selection after this long (warning 30 s before)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _plan(ctx_opts: dict[str, Any]) -> ConnectionPlan:
    try:
        token = token_from_options(ctx_opts["room_id"], ctx_opts["token"], ctx_opts.get("token_file"))
        return plan_connection(
            session_string=ctx_opts["session_string"],
            room_id=ctx_opts["room_id"],
            token=token,
            auto_select=ctx_opts["auto_select"],
            worker_id=ctx_opts["worker_id"],
            min_gpu_memory_mb=ctx_opts["min_gpu_memory"],
            wait=ctx_opts["wait"],
            show_busy=ctx_opts["show_busy"],
            selection_timeout=ctx_opts["selection_timeout"],
            stdin_is_tty=sys.stdin.isatty(),
        )
    except OptionsError as exc:
        raise click.UsageError(str(exc)) from None


def _server(flag: str | None) -> str:
    try:
        return resolve_server(flag)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


@click.command("client-train")
@click.argument("package", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@connection_options
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Where the trained models go (default: next to the package).")
def train_command(package: Path, output: Path | None, server: str | None, **opts: Any) -> None:
    """Train a SLEAP training package (PACKAGE.zip) on a remote worker.

    \b
    Examples:
      sleap-rtc train pkg.zip --room-id R --token T              (choose from a live list)
      sleap-rtc train pkg.zip --room-id R --token T --auto-select
      sleap-rtc train pkg.zip --session-string sleap-session:...
    """
    plan = _plan(opts)
    url = _server(server)
    output = output or package.parent / f"{package.name.removesuffix('.zip')}.models"
    sys.exit(asyncio.run(_run(plan, url, package, output, TRAIN)))


def _predictions_target(data: Path, output: Path | None) -> tuple[Path, Path | None]:
    """``(results dir, predictions file or None)`` for ``client-track --output``.

    An explicit predictions file must not exist yet (the user's files are never replaced)."""
    if output is None:
        return data.parent, None
    if output.suffix == ".slp":
        if output.exists() or output.resolve() == data.resolve():
            raise click.UsageError(f"--output {output} already exists; sleap-rtc never writes over a file. "
                                   "Give a new file name or a folder.")
        return output.parent, output
    return output, None


TARGET_FLAGS = ("only_labeled", "only_suggested", "frames", "video", "random_count", "all_videos")


@click.command("client-track")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-m", "--model", "models", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="A trained model (folder or .zip); repeat for top-down (centroid + instance).")
@click.option("--model-id", "model_ids", multiple=True, metavar="ID",
              help="A model the worker holds (the id a remote training printed); no model bytes are sent.")
@connection_options
@click.option("--output", type=click.Path(path_type=Path), metavar="DIR|FILE.slp",
              help="A folder for the predictions, or the predictions file itself (default: next to the input).")
@click.option("--frames", metavar="SPEC", help="Only these frames, e.g. 0-99,120 (of each video; of --video for a project).")
@click.option("--only-labeled", is_flag=True, help="Project: the user-labeled frames.")
@click.option("--only-suggested", is_flag=True, help="Project: the suggested frames without user labels.")
@click.option("--video", type=click.IntRange(min=0), metavar="N", help="Project: only video N (0 = first).")
@click.option("--random", "random_count", type=click.IntRange(min=1), metavar="N", help="Project: N random frames of --video.")
@click.option("--all-videos", is_flag=True, help="Project: every frame of every video.")
@click.option("--peak-threshold", type=click.FloatRange(0, 1), help="Minimum confidence of a peak (sleap-nn default 0.2).")
@click.option("--batch-size", type=click.IntRange(1, 4096), help="Frames predicted at a time.")
@click.option("--max-instances", type=click.IntRange(1, 1000), help="Most instances per frame.")
@click.option("--tracking", is_flag=True, help="Run sleap-nn's tracker on the predictions.")
@click.option("--track-option", "track_options", multiple=True, metavar="NAME=VALUE",
              help="Another sleap-nn track option (e.g. max_tracks=2, track_matching_method=greedy); repeatable.")
@click.option("--data-root", "data_roots", multiple=True, metavar="NAME=PREFIX",
              help="Videos under PREFIX are on the worker's data root NAME: not uploaded. Repeatable.")
@click.option("--remember-data-roots", is_flag=True, help="Remember the --data-root mappings for later runs.")
def track_command(inputs: tuple[Path, ...], models: tuple[Path, ...], model_ids: tuple[str, ...], output: Path | None,
                  server: str | None, **opts: Any) -> None:
    """Run inference with trained MODELs on a remote worker, on a SLEAP project (.slp) or
    on video files (every frame unless --frames).

    Brings back the predictions: ``<video stem>.predictions.slp`` per video, or for a
    project ``<project stem>.predictions.slp`` (the project with the predictions merged in,
    user labels kept). A video the worker already has is not sent again; one on a data
    root the worker declares (``--data-root``) is not sent at all.

    \b
    Examples:
      sleap-rtc track session1.mp4 -m models/single_instance --room-id R --token T --auto-select
      sleap-rtc track labels.slp -m models/centroid -m models/instance --only-suggested --room-id R --token T
      sleap-rtc track /mnt/lab/v.mp4 -m M --data-root lab=/mnt/lab --room-id R --token T --auto-select
    """
    targets = {k: opts.pop(k) for k in TARGET_FLAGS}
    infer = {k: opts.pop(k) for k in ("peak_threshold", "batch_size", "max_instances", "tracking", "track_options",
                                      "data_roots", "remember_data_roots")}
    if not models and not model_ids:
        raise click.UsageError("Give at least one trained model with --model (or --model-id).")
    plan = _plan(opts)
    url = _server(server)
    slps = [p for p in inputs if p.suffix == ".slp"]
    if slps and len(inputs) > 1:
        raise click.UsageError("Give one .slp project, or one or more video files.")
    if slps and not any(targets.values()) and not infer["data_roots"]:
        _track_package(plan, url, slps[0], models, model_ids, output, infer)
        return
    from sleap_rtc.client import track_run

    try:
        code = asyncio.run(track_run.run_videos(plan, url, list(inputs), list(models), list(model_ids), output,
                                                targets, infer, policy_for(plan, Console()), hint_for))
    except track_run.UsageProblem as exc:
        raise click.UsageError(str(exc)) from None
    sys.exit(code)


def _track_package(plan: ConnectionPlan, url: str, data: Path, models: tuple[Path, ...], model_ids: tuple[str, ...],
                   output: Path | None, infer: dict[str, Any]) -> None:
    """A project whose frames travel in the package (the ``.pkg.slp`` way, SLEAP's export)."""
    if model_ids:
        raise click.UsageError("--model-id needs a video target (a video file, or --all-videos/--frames on a project).")
    results_dir, predictions = _predictions_target(data, output)
    if results_dir.exists() and not results_dir.is_dir():
        raise click.UsageError(f"--output {results_dir} is a file, not a folder.")
    from sleap_rtc.client.track_run import inference_options

    try:
        options = inference_options(infer).as_dict()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    work = Path(tempfile.mkdtemp(prefix="sleap-rtc-track-"))
    try:
        try:
            package = build_track_package(data, list(models), work, options=options)
        except TrackPackageError as exc:
            raise click.UsageError(str(exc)) from None
        code = asyncio.run(_run(plan, url, package, results_dir, TRACK, predictions_path=predictions))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(code)


# ------------------------------------------------------------------------ running


class Display(JobCallbacks):
    """Renders one job on the console: phases, decisions, waits, upload bar, logs, epochs, summary."""

    def __init__(self, console: Console, *, quiet_logs: bool = False):
        self.console = console
        self.quiet_logs = quiet_logs
        self._progress: Progress | None = None
        self._task: Any = None
        self._uploaded = False
        self.epochs = 0
        self._waiting_for: tuple[str, ...] | None = None

    def _print(self, text: str, **kw: Any) -> None:
        # soft_wrap: a long log line stays one line (a pipe or log file is not 80 columns).
        self.console.print(text, soft_wrap=True, **kw)

    def phase(self, change: PhaseChange) -> None:
        """A phase transition (detail updates are shown by the bar instead)."""
        if change.new == Phase.UPLOADING:
            self._uploaded = False  # a new upload (the job may run again on another worker)
        if change.old != change.new and change.new != Phase.DONE:  # DONE: the summary says it
            self._end_bar()
            detail = f": {change.detail}" if change.detail else ""
            self._print(f"[bold]{change.new.value.capitalize()}[/bold]{detail}", highlight=False)

    def decision(self, text: str) -> None:
        """A selection decision (which worker, why the next one)."""
        self._print(f"  {text}", highlight=False)

    def upload(self, p: UploadProgress) -> None:
        """Upload progress: a bar with bytes, rate and ETA."""
        if self._uploaded:
            return
        if self._progress is None:
            if p.done >= p.total and not self.console.is_terminal:
                # Finished before the bar was drawn (small file, or no terminal): one line.
                self._print(f"  uploaded {p.total:,} bytes ({p.rate / 1e6:.1f} MB/s)", highlight=False)
                self._uploaded = True
                return
            self._progress = Progress(
                TextColumn("  upload"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                console=self.console,
            )
            self._progress.start()
            self._task = self._progress.add_task("upload", total=p.total)
        self._progress.update(self._task, completed=p.done)
        if p.done >= p.total:
            self._end_bar()
            self._uploaded = True

    def _end_bar(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def log(self, line: str) -> None:
        """A worker log line (progress-bar redraws were already dropped by the job)."""
        if not self.quiet_logs and not PROGRESS_BAR.search(line):
            self._print(f"  [dim]{escape(line)}[/dim]", highlight=False)

    def progress(self, event: dict[str, Any]) -> None:
        """sleap-nn's raw events: only the end of training is shown (epochs come via ``epoch``)."""
        if event.get("event") == "train_end":
            self._print("  training finished", highlight=False)

    def epoch(self, epoch: Epoch) -> None:
        """One line per finished epoch with its losses (epochs counted from 1)."""
        self.epochs += 1
        parts = []
        if epoch.train_loss is not None:
            parts.append(f"train loss {epoch.train_loss:.4g}")
        if epoch.val_loss is not None:
            parts.append(f"val loss {epoch.val_loss:.4g}")
        self._print(f"[bold]  epoch {epoch.epoch or '?'}[/bold]: {', '.join(parts) or 'done'}", highlight=False)

    def waiting(self, state: Waiting) -> None:
        """Who is busy and since when, once per change of that list."""
        seen = tuple(f"{w.peer_id}:{w.status}" for w in state.busy)
        if seen == self._waiting_for:
            return
        self._waiting_for = seen
        left = max(0.0, state.deadline - time.time())
        busy = ", ".join(f"{w.name} ({w.for_how_long()})" for w in state.busy) or "no worker in the room"
        self._print(f"  waiting up to {left:.0f} s more for a free worker; now: {escape(busy)}", highlight=False)

    def restarted(self, note: Restarted) -> None:
        """The job starts again on another worker."""
        self._print(f"  [yellow]restarting on {escape(note.worker)}[/yellow] "
                    f"(attempt {note.attempt}; {escape(note.reason)})", highlight=False)

    def summary(self, s: JobSummary, *, lost: list[str] | None = None) -> None:
        """The final summary: worker, duration, files."""
        how = " (stopped early, model kept)" if s.stopped_early else ""
        self._print(f"[green]Done{how}[/green]", highlight=False)
        self._print(f"  worker     {s.worker} ({s.peer_id})", highlight=False)
        if lost:
            self._print(f"  lost       {', '.join(lost)} (stopped responding; job run again)", highlight=False)
        self._print(f"  duration   {s.duration_s:.1f} s", highlight=False)
        if s.models_dir is not None:
            self._print(f"  models     {s.models_dir}", highlight=False)
        for run, model_id in s.model_ids.items():
            # The id names the model on that worker: `track --model-id` sends no model bytes.
            self._print(f"  model id   {run}: {model_id}", highlight=False)
        if s.predictions is not None:
            self._print(f"  predictions {s.predictions}", highlight=False)
        self._print(f"  files      {len(s.files)}", highlight=False)
        for path in s.files:
            self._print(f"    {path} ({_size(path)})", highlight=False)


def _size(path: Path) -> str:
    total = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
    return f"{total / 1e6:.2f} MB" if total >= 1e5 else f"{total:,} bytes"


STOP, CANCEL, CONTINUE = "s", "c", ""


async def _ask_stop_or_cancel(console: Console) -> str:
    """After Ctrl-C: ``"s"`` stop early (keep the model), ``"c"`` cancel, ``""`` carry on.

    Without a terminal on stdin there is no one to ask: the gentle choice (stop early);
    a second Ctrl-C cancels.
    """
    if not sys.stdin.isatty():
        console.print("\nInterrupted: stopping after the current epoch and keeping the model "
                      "(press Ctrl-C again to cancel the job).", highlight=False)
        return STOP
    console.print("\n[bold]Interrupted.[/bold] Type s + Enter to stop early and keep the model, "
                  "c + Enter to cancel the job, or just Enter to continue (Ctrl-C again cancels): ",
                  end="", highlight=False)
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[str] = loop.create_future()

    def readable() -> None:
        # Read from the event loop (add_reader): heartbeats and log lines keep flowing.
        line = sys.stdin.readline()
        if not answer.done():
            answer.set_result(line.strip().lower()[:1])

    loop.add_reader(sys.stdin.fileno(), readable)
    try:
        return await answer
    finally:
        loop.remove_reader(sys.stdin.fileno())


def policy_for(plan: ConnectionPlan, console: Console) -> SelectionPolicy:
    """The core selection policy of the validated options."""
    if plan.mode == SelectionMode.SESSION:
        return SessionWorker(str(plan.worker_id), fingerprint=plan.worker_fingerprint)
    if plan.mode == SelectionMode.DIRECT:
        return DirectWorker(str(plan.worker_id), wait=plan.wait)
    if plan.mode == SelectionMode.INTERACTIVE:
        from sleap_rtc.client.picker import pick_worker

        async def pick(room: Any, notice: str) -> Any:
            return await pick_worker(room, show_busy=plan.show_busy, timeout=plan.selection_timeout, notice=notice, console=console)

        return Interactive(asked_by_worker_choice(pick), min_gpu_memory_mb=plan.min_gpu_memory_mb, wait=plan.wait)
    return Auto(min_gpu_memory_mb=plan.min_gpu_memory_mb, wait=plan.wait)


def hint_for(exc: BaseException, plan: ConnectionPlan) -> str:
    """The command-line advice for an error, by its type (core's texts name no flags)."""
    if isinstance(exc, IceFailedError):
        if exc.report is None or exc.report.relay_offered:
            return ""
        return " (The lab admin hands out STUN/TURN with `sleap-rtc server --turn URL --turn-secret-file FILE`.)"
    if isinstance(exc, WorkerLostError):
        if plan.mode == SelectionMode.AUTO:
            return ""
        return (" Run the command again; with --room-id/--token and --auto-select, sleap-rtc moves the job"
                " to another worker by itself when one stops responding.")
    if isinstance(exc, SessionWorkerBusyError):
        return " (--room-id and --token are in the worker's banner.)"
    if isinstance(exc, NoWorkersError):
        hint = " Lower --min-gpu-memory, or pass" if exc.min_gpu_memory_mb else " Pass"
        if exc.waited:
            return f"{hint} a longer --wait to wait more."
        return f"{hint} --wait SECONDS to wait for a worker to become available."
    if isinstance(exc, AllWorkersBusyError):
        if "identity" in str(exc):
            return " To accept a worker's new key, choose it yourself with --worker-id ID."
        return " Pass --wait SECONDS to wait for a free worker."
    if isinstance(exc, WorkerIdentityError) and "Choose it yourself" in str(exc):
        return " (--worker-id ID chooses it.)"
    if isinstance(exc, UnknownWorkerError):
        return " Check --worker-id, or leave it out to choose from the list."
    if isinstance(exc, WorkerUnavailableError) and plan.mode == SelectionMode.DIRECT:
        return " Pass --wait SECONDS to wait for it, or use --auto-select to take another one."
    return ""


async def _run(plan: ConnectionPlan, url: str, package: Path, output: Path, kind: str,
               *, predictions_path: Path | None = None) -> int:
    console = Console()
    display = Display(console)
    job = RemoteJob(
        package,
        credentials=RoomCredentials(plan.room_id, plan.token),
        server_url=url,
        results_dir=output,
        policy=policy_for(plan, console),
        callbacks=display,
        kind=kind,
        models_subdir="",  # --output DIR holds the run folders themselves
    )
    started = time.monotonic()
    task = asyncio.ensure_future(job.run())
    loop = asyncio.get_running_loop()
    interrupts = 0
    asking = False

    async def on_interrupt() -> None:
        nonlocal interrupts, asking
        interrupts += 1
        # Before the job runs, or for inference, or a second time: nothing to keep, cancel.
        if interrupts > 1 or job.session is None or kind != TRAIN or asking:
            console.print("\nCancelling the job.", highlight=False)
            task.cancel()
            return
        asking = True
        try:
            choice = await _ask_stop_or_cancel(console)
        finally:
            asking = False
        if choice == STOP:
            console.print("Stopping after the current epoch; the model will be kept.", highlight=False)
            await job.stop()
        elif choice == CANCEL:
            console.print("Cancelling the job.", highlight=False)
            task.cancel()
        else:
            interrupts = 0

    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGINT, lambda: spawn(on_interrupt(), name="ctrl-c"))
    try:
        summary = await task
    except asyncio.CancelledError:
        console.print(f"[yellow]Cancelled[/yellow] after {time.monotonic() - started:.1f} s; nothing was kept.")
        return EXIT_INTERRUPTED
    except (SelectionError, JobError, TransportError, SignalingError) as exc:
        console.print(f"[red]Error:[/red] {escape(str(exc))}{escape(hint_for(exc, plan))}", highlight=False,
                      soft_wrap=True)
        return EXIT_FAILED
    finally:
        with contextlib.suppress(NotImplementedError):
            loop.remove_signal_handler(signal.SIGINT)
    if predictions_path is not None and summary.predictions is not None:
        if summary.predictions.resolve() != predictions_path.resolve():
            placed = place_new(summary.predictions, predictions_path)  # never over an existing file
            summary.files = [placed if f == summary.predictions else f for f in summary.files]
            summary.predictions = placed
    if kind == TRACK and summary.predictions is None:
        console.print("[red]Error:[/red] the worker finished but sent no predictions.", highlight=False)
        return EXIT_FAILED
    display.summary(summary, lost=[lost.worker for lost in job.lost])
    return 0
