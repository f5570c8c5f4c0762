"""Helpers of the fault-tolerance suite (fixtures are in ``conftest.py``)."""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
TINY_PACKAGE = ROOT / "resources" / "tiny" / "tiny.training_job.zip"


def processes_under(path: Path) -> list[psutil.Process]:
    """Live processes whose command line or working directory mentions ``path``."""
    needle = str(path)
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "cwd", "status"]):
        try:
            if proc.pid == os.getpid() or proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            cmd = " ".join(proc.info["cmdline"] or [])
            if needle in cmd or needle in (proc.info["cwd"] or ""):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def padded_package(dest: Path, pad_bytes: int) -> Path:
    """The tiny training package plus an incompressible ``padding.bin`` (stored), so that
    uploading it takes a few seconds. Workers accept extra files in a package."""
    with zipfile.ZipFile(TINY_PACKAGE) as src, zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as out:
        for info in src.infolist():
            out.writestr(info, src.read(info))
        with out.open(zipfile.ZipInfo("padding.bin", date_time=(2024, 1, 1, 0, 0, 0)), "w") as fh:
            left = pad_bytes
            while left > 0:
                n = min(left, 1 << 20)
                fh.write(os.urandom(n))
                left -= n
    return dest


def tiny_package(dest_dir: Path) -> Path:
    """A private copy of the tiny training package."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(TINY_PACKAGE, dest_dir / TINY_PACKAGE.name))


def checkpoints(output: Path) -> list[Path]:
    """Every ``best.ckpt`` the client unpacked under ``output``."""
    return sorted(output.rglob("best.ckpt"))


class Observer:
    """A client of the room that only watches: a ``SignalingClient`` plus a live ``RoomView``.

    ``history`` records every (monotonic time, worker name, status) the view saw.
    """

    def __init__(self, url: str, room_id: str, token: str):
        from sleap_rtc.core.room import RoomView
        from sleap_rtc.core.signaling import SignalingClient

        self.signaling = SignalingClient(url, room_id=room_id, token=token, role="client")
        self.view = RoomView(self.signaling)
        self.history: list[tuple[float, str, str]] = []
        self.view.subscribe(self._record)

    def _record(self, change) -> None:
        import time

        workers = [change.worker] if change.worker is not None else self.view.workers
        for w in workers:
            self.history.append((time.monotonic(), w.name, w.status))

    async def __aenter__(self) -> "Observer":
        await self.signaling.connect()
        await self.view.start()
        return self

    async def __aexit__(self, *exc) -> None:
        self.view.close()
        await self.signaling.close()

    def status(self, name: str) -> str | None:
        """The status the view shows for worker ``name`` now (None when absent)."""
        for w in self.view.workers:
            if w.name == name:
                return w.status
        return None

    def peer_id(self, name: str) -> str:
        """Peer id of the worker called ``name``."""
        for w in self.view.workers:
            if w.name == name:
                return w.peer_id
        raise AssertionError(f"no worker {name!r} in the room view: {[w.name for w in self.view.workers]}")

    async def wait_status(self, name: str, status: str, timeout: float) -> float:
        """Wait until ``name`` shows ``status``; returns the monotonic time it did."""
        import asyncio
        import time

        try:
            await self.view.wait_for(lambda v: self.status(name) == status, timeout)
        except asyncio.TimeoutError:
            raise AssertionError(
                f"worker {name} did not turn {status} within {timeout:g} s (now {self.status(name)}); "
                f"history: {[(n, s) for _, n, s in self.history]}"
            ) from None
        return time.monotonic()
