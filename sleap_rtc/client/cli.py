"""``sleap-rtc client-train`` / ``client-track``: run a job on a remote worker from the terminal.

Options are validated before any network traffic (``client.options``; usage errors exit
with code 2). The job itself is ``core.remote_job.RemoteJob``, shared with the GUI; this
module only renders it: decisions, an upload bar (bytes, rate, ETA), log lines, one line per
epoch with its loss, and a final summary. Ctrl-C asks whether to stop early (keep the
model) or cancel; a second Ctrl-C cancels.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from sleap_rtc.client.options import ConnectionPlan, OptionsError, SelectionMode, plan_connection
from sleap_rtc.client.track_package import TrackPackageError, build_track_package
from sleap_rtc.core.config import ConfigError, resolve_server
from sleap_rtc.core.phases import JobPhases, PhaseChange
from sleap_rtc.core.remote_job import TRACK, TRAIN, JobError, JobSummary, RemoteJob, UploadProgress
from sleap_rtc.core.selection import SelectionError
from sleap_rtc.core.signaling import SignalingError
from sleap_rtc.core.transport_errors import TransportError

EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


def connection_options(func: Any) -> Any:
    """The connection and selection options shared by both commands."""
    options = [
        click.option("--server", metavar="URL", help="Signaling server (default: SLEAP_RTC_SERVER, config file, ws://127.0.0.1:8765)."),
        click.option("--session-string", metavar="S", help="Connect straight to the worker that printed this session string."),
        click.option("--room-id", metavar="ROOM", help="Room to join (printed by the worker); needs --token."),
        click.option("--token", metavar="TOKEN", help="The room's token (printed by the worker)."),
        click.option("--auto-select", is_flag=True, help="Pick the available worker with the most GPU memory."),
        click.option("--worker-id", metavar="ID", help="Use this worker (its peer id) of the room."),
        click.option("--min-gpu-memory", type=int, metavar="MB", help="Only consider workers with at least this much GPU memory."),
        click.option("--wait", type=float, metavar="SECONDS", help="Wait this long for an available worker instead of failing."),
        click.option("--show-busy", is_flag=True, help="List busy/reserved workers too (not selectable)."),
        click.option("--selection-timeout", type=float, default=300.0, show_default=True, metavar="SECONDS",
                     help="Give up interactive selection after this long (warning 30 s before)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _plan(ctx_opts: dict[str, Any]) -> ConnectionPlan:
    try:
        return plan_connection(
            session_string=ctx_opts["session_string"],
            room_id=ctx_opts["room_id"],
            token=ctx_opts["token"],
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


@click.command("client-track")
@click.argument("data", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-m", "--model", "models", multiple=True, required=True, type=click.Path(exists=True, path_type=Path),
              help="A trained model (folder or .zip); repeat for top-down (centroid + instance).")
@connection_options
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Where the predictions go (default: next to DATA).")
def track_command(data: Path, models: tuple[Path, ...], output: Path | None, server: str | None, **opts: Any) -> None:
    """Run inference with trained MODELs on DATA (.slp) on a remote worker.

    Brings back DATA's predictions (``<data>.predictions.slp``).
    """
    plan = _plan(opts)
    url = _server(server)
    output = output or data.parent
    try:
        package = build_track_package(data, list(models), output / ".sleap-rtc-upload")
    except TrackPackageError as exc:
        raise click.UsageError(str(exc)) from None
    sys.exit(asyncio.run(_run(plan, url, package, output, TRACK)))


# ------------------------------------------------------------------------ running


class Display:
    """Renders one job on the console: phases, decisions, upload bar, logs, epochs."""

    def __init__(self, console: Console):
        self.console = console
        self._progress: Progress | None = None
        self._task: Any = None

    def phase(self, change: PhaseChange) -> None:
        """A phase transition (detail updates are shown by the bar instead)."""
        if change.old != change.new:
            detail = f": {change.detail}" if change.detail else ""
            self.console.print(f"[bold]{change.new.value.capitalize()}[/bold]{detail}")

    def decision(self, text: str) -> None:
        """A selection decision (which worker, why the next one)."""
        self.console.print(f"  {text}")

    def upload(self, p: UploadProgress) -> None:
        """Upload progress: a bar with bytes, rate and ETA."""
        if self._progress is None:
            self._progress = Progress(
                TextColumn("  upload"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                console=self.console,
            )
            self._progress.start()
            self._task = self._progress.add_task("upload", total=p.total)
        self._progress.update(self._task, completed=p.done)
        if p.done >= p.total:
            self._progress.stop()

    def log(self, line: str) -> None:
        """A worker log line."""
        self.console.print(f"  [dim]{line}[/dim]", highlight=False)

    def progress(self, event: dict[str, Any]) -> None:
        """A training event: one line per finished epoch with its losses."""
        if event.get("event") != "epoch_end":
            return
        logs = event.get("logs") if isinstance(event.get("logs"), dict) else {}
        parts = [f"{k}={v:.4g}" for k, v in logs.items() if isinstance(v, (int, float)) and "loss" in k]
        self.console.print(f"  epoch {event.get('epoch', '?')}: {' '.join(parts) or 'done'}")

    def summary(self, s: JobSummary) -> None:
        """The final summary: worker, duration, files."""
        how = " (stopped early)" if s.stopped_early else ""
        self.console.print(f"[green]Done{how}[/green] on {s.worker} ({s.peer_id}) in {s.duration_s:.1f} s.")
        for path in s.files:
            self.console.print(f"  {path}")


async def _ask_stop_or_cancel(console: Console) -> str:
    """After Ctrl-C: 's' stop early (keep the model), 'c' cancel, anything else continue."""
    console.print("\n[bold]Interrupted.[/bold] [s] stop early and keep the model, [c] cancel the job, [Enter] continue: ", end="")
    if not sys.stdin.isatty():
        return "s"  # no one to ask: the gentle choice; a second Ctrl-C cancels
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[str] = loop.create_future()

    def readable() -> None:
        line = sys.stdin.readline()
        if not answer.done():
            answer.set_result(line.strip().lower()[:1])

    loop.add_reader(sys.stdin.fileno(), readable)
    try:
        return await answer
    finally:
        loop.remove_reader(sys.stdin.fileno())


async def _run(plan: ConnectionPlan, url: str, package: Path, output: Path, kind: str) -> int:
    console = Console()
    display = Display(console)
    phases = JobPhases()
    phases.subscribe(display.phase)
    choose = None
    if plan.mode == SelectionMode.INTERACTIVE:
        from sleap_rtc.client.picker import pick_worker

        async def choose(room: Any, notice: str) -> Any:
            return await pick_worker(room, show_busy=plan.show_busy, timeout=plan.selection_timeout, notice=notice, console=console)

    job = RemoteJob(
        package,
        server_url=url,
        room_id=plan.room_id,
        token=plan.token,
        results_dir=output,
        worker_id=plan.worker_id if plan.mode == SelectionMode.DIRECT else None,
        session_worker=plan.worker_id if plan.mode == SelectionMode.SESSION else None,
        kind=kind,
        choose=choose,
        min_gpu_memory_mb=plan.min_gpu_memory_mb,
        wait=plan.wait,
        phases=phases,
        on_decision=display.decision,
        on_upload=display.upload,
        on_log=display.log,
        on_progress=display.progress,
    )
    task = asyncio.ensure_future(job.run())
    loop = asyncio.get_running_loop()
    interrupts = 0

    async def on_interrupt() -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts > 1 or job.session is None:
            task.cancel()  # before the job started there is nothing to keep
            return
        choice = await _ask_stop_or_cancel(console)
        if choice == "s":
            console.print("Stopping after the current epoch; the model will be kept.")
            await job.stop()
        elif choice == "c":
            console.print("Cancelling the job.")
            task.cancel()
        else:
            interrupts = 0

    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGINT, lambda: loop.create_task(on_interrupt()))
    try:
        summary = await task
    except asyncio.CancelledError:
        console.print("[yellow]Cancelled.[/yellow]")
        return EXIT_INTERRUPTED
    except (SelectionError, JobError, TransportError, SignalingError) as exc:
        console.print(f"[red]Error:[/red] {exc}", highlight=False)
        return EXIT_FAILED
    finally:
        with contextlib.suppress(NotImplementedError):
            loop.remove_signal_handler(signal.SIGINT)
    display.summary(summary)
    return 0

