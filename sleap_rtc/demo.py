"""``sleap-rtc demo``: the whole product on this machine, with no GPU and no external server.

It starts a signaling server and two workers on loopback (real processes, see
``local_room``), then either opens the GUI joined to that room with the bundled tiny SLEAP
project, or (``--headless``) runs the terminal flow: discover, auto-select, upload, real
sleap-nn training with live progress, model download, inference and predictions download,
and a summary. Every process it started is stopped on exit, Ctrl-C included.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import click
import yaml

from sleap_rtc.local_room import LocalRoom, sleap_rtc_argv

RESOURCES = Path(__file__).resolve().parent.parent / "resources" / "tiny"
GENERATOR = RESOURCES.parent / "make_tiny_project.py"
PACKAGE = "tiny.training_job.zip"
DEMO_EPOCHS = 40
"""The bundled config trains 2 epochs (fast tests); 40 (~30 s here) predicts every frame."""
LABELS = "labels.pkg.slp"


def default_output() -> Path:
    """Where the demo writes (outside the checkout): ``<user data dir>/demo``."""
    from platformdirs import user_data_path

    return user_data_path("sleap-rtc") / "demo"


def env_bin_on_path(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default ``os.environ``, changed in place) with this Python's ``bin/`` first on PATH.

    SLEAP's own local training and inference start ``sleap-nn`` / ``sleap`` by name: run
    from an environment that is not activated (``make demo``), they are only found this way.
    """
    env = os.environ if env is None else env
    bin_dir = str(Path(sys.executable).parent)
    parts = env.get("PATH", "").split(os.pathsep) if env.get("PATH") else []
    if bin_dir not in parts:
        env["PATH"] = os.pathsep.join([bin_dir, *parts])
    return env


def gui_project(output: Path) -> Path:
    """The demo's editable project: ``labels.slp`` on a real ``tiny.mp4``, made on first use.

    An existing project (with the user's saves, merges and models) is kept as it is.
    """
    project = output / "labels.slp"
    if project.is_file() and (output / "tiny.mp4").is_file():
        return project
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_tiny_project", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module.make_video_project(output)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _has_screen() -> bool:
    """Whether a GUI can be shown: a display server, or Qt told to draw elsewhere (offscreen)."""
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or os.environ.get("QT_QPA_PLATFORM")
                or sys.platform in ("darwin", "win32"))


def _say(text: str) -> None:
    click.secho(text, fg="cyan", bold=True)


def _run_client(argv: list[str], room: LocalRoom, timeout: float) -> None:
    """Run a client command in its own process group; its output goes straight to ours."""
    proc = subprocess.Popen(argv, env=room.env, start_new_session=True)
    try:
        code = proc.wait(timeout)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
        raise
    if code != 0:
        raise click.ClickException(f"'{' '.join(argv[3:5])}' failed with exit code {code}")


def copy_package(dest: Path, epochs: int | None) -> Path:
    """Copy the bundled package to ``dest``; with ``epochs``, set every config's ``max_epochs``."""
    if not epochs:
        return Path(shutil.copy(RESOURCES / PACKAGE, dest))
    with zipfile.ZipFile(RESOURCES / PACKAGE) as src, zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as out:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith(".yaml") and info.filename != "jobs.yaml":
                cfg = yaml.safe_load(data)
                if isinstance(cfg, dict) and isinstance(cfg.get("trainer_config"), dict):
                    cfg["trainer_config"]["max_epochs"] = int(epochs)
                    data = yaml.safe_dump(cfg, sort_keys=False).encode()
            out.writestr(info, data)
    return dest


def run_headless(room: LocalRoom, out: Path, timeout: float, epochs: int | None = None) -> None:
    """The terminal flow: train on an auto-selected worker, then predict with the model.

    The same commands a user types: ``sleap-rtc client-train PACKAGE --auto-select --output
    DIR`` (models land in ``DIR/<run>/``) and ``sleap-rtc client-track LABELS --model
    DIR/<run> --auto-select --output PREDICTIONS.slp``.
    """
    package = copy_package(out / PACKAGE, epochs)
    shutil.copy(RESOURCES / LABELS, out / LABELS)
    creds = ["--server", room.url, "--room-id", room.room_id, "--token", room.token, "--auto-select"]
    started = time.monotonic()
    _say("\n== 1/2 Training on a remote worker (auto-selected) ==")
    _run_client(sleap_rtc_argv("client-train", str(package), *creds, "--output", str(out / "models")), room, timeout)
    trained = time.monotonic()
    models = sorted((out / "models").glob("*/best.ckpt"))
    if not models:
        raise click.ClickException(f"training finished but no model arrived in {out / 'models'}")
    model_dir = models[0].parent
    _say("\n== 2/2 Predicting with the trained model on a remote worker ==")
    predictions = out / "predictions.slp"
    _run_client(
        sleap_rtc_argv("client-track", str(out / LABELS), "--model", str(model_dir), *creds, "--output", str(predictions)),
        room,
        timeout,
    )
    done = time.monotonic()
    _say("\n== Summary ==")
    click.echo(f"  room            {room.room_id} on {room.url} ({len(room.workers)} workers)")
    click.echo(f"  training        {trained - started:.1f} s, model in {model_dir}")
    click.echo(f"  inference       {done - trained:.1f} s, predictions in {predictions}")
    try:
        import sleap_io

        labels = sleap_io.load_slp(str(predictions))
        n = sum(len(lf.instances) for lf in labels.labeled_frames)
        click.echo(f"  predictions     {len(labels.labeled_frames)} frames with {n} predicted instances")
        if n == 0:
            click.echo(f"                  (a model this short rarely finds anything: try --epochs {DEMO_EPOCHS})")
    except Exception as exc:  # sleap-io is optional on a client
        click.echo(f"  predictions     (not inspected: {exc.__class__.__name__})")


@click.command("demo")
@click.option("--headless", is_flag=True, help="Run the terminal flow instead of opening the GUI.")
@click.option("--workers", default=2, show_default=True, help="How many local workers to start.")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the project, package, models and predictions are written "
                   "(default: the user data folder's sleap-rtc/demo, outside the checkout).")
@click.option("--timeout", default=600.0, show_default=True, help="Give up on a step after this many seconds.")
@click.option("--quiet-children", is_flag=True, help="Do not echo the server's and workers' output.")
@click.option("--epochs", type=click.IntRange(min=1), default=DEMO_EPOCHS, show_default=True,
              help="Epochs to train (headless); 40 is enough for the tiny project to predict every frame.")
@click.option("--exit-after", type=float, default=None, hidden=True,
              help="Close the GUI by itself after this many seconds (checks without a screen).")
@click.option("--screenshot", type=click.Path(dir_okay=False, path_type=Path), default=None, hidden=True,
              help="With --exit-after: save a PNG of the window before closing it.")
def demo_command(headless: bool, workers: int, output: Path | None, timeout: float, quiet_children: bool,
                 epochs: int | None, exit_after: float | None, screenshot: Path | None) -> None:
    """Run the whole product on this machine: a local server, workers, and a real job."""
    if not (RESOURCES / PACKAGE).exists():
        raise click.ClickException(f"bundled demo project missing: {RESOURCES / PACKAGE}")
    env_bin_on_path()
    output = (output or default_output()).resolve()
    output.mkdir(parents=True, exist_ok=True)
    echo = None if quiet_children else (lambda line: click.secho(line, dim=True))
    work = Path(tempfile.mkdtemp(prefix="sleap-rtc-demo-"))
    # SIGTERM (e.g. from `timeout` or a test) must run the same cleanup as Ctrl-C.
    signal.signal(signal.SIGTERM, _interrupt)
    room = LocalRoom(work, echo=echo)
    try:
        _say("Starting a local signaling server ...")
        room.start_server()
        room.create_room()
        for i in range(1, workers + 1):
            _say(f"Starting local worker demo-worker-{i} ...")
            room.start_worker(f"demo-worker-{i}")
        _say(f"\nRoom ready on {room.url}\n  Room ID: {room.room_id}\n  Token:   {room.token}")
        if not headless and not _has_screen():
            click.secho("No screen here (no DISPLAY or WAYLAND_DISPLAY): running the terminal flow "
                        "instead. On a desktop, `make demo` opens SLEAP joined to this room.", fg="yellow")
            headless = True
        if headless:
            run_headless(room, output, timeout, epochs)
        else:
            from sleap_rtc.gui.launcher import launch

            project = gui_project(output)
            _say(f"Project: {project} (on {project.parent / 'tiny.mp4'})")
            launch(room.url, room.room_id, room.token, labels_path=str(project),
                   exit_after=exit_after, screenshot=str(screenshot) if screenshot else None)
    except KeyboardInterrupt:
        click.echo("\nInterrupted: stopping the local server and workers.", err=True)
        sys.exit(130)
    finally:
        room.stop()
        shutil.rmtree(work, ignore_errors=True)
