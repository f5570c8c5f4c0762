"""``sleap-rtc worker``: serve training/inference jobs from this machine."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

import click

from sleap_rtc.core.config import ConfigError, load_config, resolve_server, user_data_dir


@click.command("worker")
@click.option("--server", "server", default=None, help="Signaling server URL (default: SLEAP_RTC_SERVER, config, ws://127.0.0.1:8765).")
@click.option("--room-id", default=None, help="Join this room (with --token); without both, a new room is created.")
@click.option("--token", default=None,
              help="The WORKER token of --room-id (banner line 'Worker token (for other workers only)'; the "
                   "client 'Token:' does not admit workers). Also read from --token-file or SLEAP_RTC_WORKER_TOKEN, "
                   "which keep it out of the process list.")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File whose first line is the worker token.")
@click.option("--create-room-secret", default=None, envvar="SLEAP_RTC_CREATE_ROOM_SECRET", show_envvar=True,
              help="The server's room-creation secret, needed to create a room on a server that requires one.")
@click.option("--name", default=None, help="Worker name shown to clients (default: the hostname).")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where job directories go (default: the user data dir).")
@click.option("--gpu", "gpu", type=click.IntRange(min=0), default=None,
              help="Index of the GPU to advertise (as NVML numbers them); it must exist.")
@click.option("--max-job-seconds", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="Stop and fail a job that runs longer than this (default: 86400, one day).")
@click.option("--data-root", "data_roots", multiple=True, metavar="NAME=PATH",
              help="A folder of videos this worker reads for inference instead of receiving them (read-only; "
                   "repeatable). Clients map their own path of it with --data-root NAME=PREFIX.")
@click.option("--lease-timeout", type=click.FloatRange(min=0, min_open=True), default=None, hidden=True,
              help="Seconds a reservation waits for the data channel (tests shorten it).")
def worker_command(server: str | None, room_id: str | None, token: str | None, token_file: Path | None,
                   create_room_secret: str | None, name: str | None,
                   work_dir: Path | None, gpu: int | None, max_job_seconds: float | None,
                   data_roots: tuple[str, ...], lease_timeout: float | None) -> None:
    """Serve SLEAP training and inference jobs from this GPU machine."""
    from sleap_rtc.core.credentials import ENV_WORKER_TOKEN, CredentialsError, resolve_token

    try:
        token = resolve_token(token, token_file, ENV_WORKER_TOKEN) if (room_id or token or token_file) else None
    except CredentialsError as exc:
        raise click.UsageError(str(exc)) from None
    if bool(room_id) != bool(token):
        raise click.UsageError("Both --room-id and --token must be provided together")
    from sleap_rtc.core.data_roots import DataRootError, worker_roots

    try:
        roots = worker_roots(data_roots)
    except DataRootError as exc:
        raise click.UsageError(str(exc)) from None
    # Heavy imports only after the arguments are known to be valid.
    from sleap_rtc.core.signaling import SignalingError
    from sleap_rtc.worker.app import Worker, WorkerConfig
    from sleap_rtc.worker.capabilities import CapabilityError, detect_capabilities

    try:
        capabilities = detect_capabilities(name=name, gpu_index=gpu)
    except CapabilityError as exc:
        raise click.UsageError(str(exc)) from None
    config = WorkerConfig(
        server_url=resolve_server(server), work_dir=work_dir or _configured_work_dir(),
        room_id=room_id, token=token, name=name, create_room_secret=create_room_secret, data_roots=roots,
    )
    if lease_timeout is not None:
        config.lease_timeout = lease_timeout
    if max_job_seconds is not None:
        config.max_job_seconds = max_job_seconds
    if capabilities.sleap_nn_version is None:
        click.echo("[WARN] sleap-nn is not installed: jobs will fail until it is (pip install 'sleap-rtc[worker]').", err=True)
    try:
        asyncio.run(_serve(Worker(config, capabilities)))
    except SignalingError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        pass


def _configured_work_dir() -> Path:
    """``work_dir`` from the config file, else ``<user data dir>/worker``."""
    try:
        configured = load_config().get("work_dir")
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    return Path(configured).expanduser() if configured else user_data_dir() / "worker"


async def _serve(worker) -> None:
    # Handlers first: a signal that arrives while registering must still stop cleanly.
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, worker.request_stop)
    try:
        banner = await worker.start()
        caps = worker.capabilities
        click.echo(f"[INFO] Worker {caps.worker_name} ({caps.gpu.model}, {caps.gpu.memory_mb} MB) "
                   f"registered as {worker.peer_id}")
        click.echo(banner)
        for root, folder in sorted(worker.config.data_roots.items()):
            click.echo(f"[INFO] Data root {root}: {folder} (read-only, for inference)")
        await worker.serve_forever()
    finally:
        click.echo("[INFO] Worker stopping.")
        await worker.close()
