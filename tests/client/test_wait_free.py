"""Waiting for a free worker, with real processes: a ``sleap-rtc server``, a real ``sleap-rtc
worker`` process, and another client holding that worker over a real WebRTC connection
(the worker advertises ``reserved``), then letting go (``available`` again).

* core's ``RemoteJob`` with ``Auto(wait=...)`` on the live signaling connection waits on
  room events, reports who is busy since when, and reserves the worker once it frees up;
* the real ``sleap-rtc client-train --auto-select``: without ``--wait`` an all-busy room
  fails at once with the CLI's advice; with ``--wait`` it waits and starts on the worker.

The job itself is cancelled once it started on the worker: training is covered elsewhere.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from pathlib import Path

import pytest

from sleap_rtc.core import transport
from sleap_rtc.core.credentials import RoomCredentials, decode_session_string
from sleap_rtc.core.job_events import JobCallbacks
from sleap_rtc.core.job_policy import Auto
from sleap_rtc.core.job_runner import RemoteJob
from sleap_rtc.core.phases import Phase
from sleap_rtc.core.signaling import SignalingClient
from sleap_rtc.local_room import LocalRoom, sleap_rtc_argv

PACKAGE = Path(__file__).resolve().parents[2] / "resources" / "tiny" / "tiny.training_job.zip"


@pytest.fixture(scope="module")
def one_worker_room(tmp_path_factory):
    """A real server and one real worker process, shared by this module's tests."""
    room = LocalRoom(tmp_path_factory.mktemp("room"))
    try:
        room.start_server()
        room.create_room()
        room.start_worker("w-solo")
        yield room
    finally:
        room.stop()


class Holder:
    """Another client that reserves the worker over a real WebRTC connection."""

    def __init__(self, room: LocalRoom, tmp: Path):
        self.room, self.tmp = room, tmp
        self.client: SignalingClient | None = None
        self.channel = None

    async def __aenter__(self) -> Holder:
        self.client = SignalingClient(self.room.url, room_id=self.room.room_id, token=self.room.token, role="client")
        await self.client.connect()
        peer = decode_session_string(self.room.session_string("w-solo")).peer_id
        self.channel = await transport.connect(self.client, peer, timeout=30, receive_dir=self.tmp / "holder-rx")
        return self

    async def release(self) -> None:
        if self.channel is not None:
            await self.channel.close()
            self.channel = None

    async def __aexit__(self, *exc: object) -> None:
        await self.release()
        if self.client is not None:
            await self.client.close()


class Seen(JobCallbacks):
    def __init__(self):
        self.waits, self.phases = [], []

    def waiting(self, state):
        self.waits.append(state)

    def phase(self, change):
        if change.old != change.new:
            self.phases.append(change.new)


@pytest.mark.timeout(120)
async def test_remote_job_waits_for_the_busy_worker_to_free_up(one_worker_room, tmp_path):
    room = one_worker_room
    async with Holder(room, tmp_path) as holder:
        client = SignalingClient(room.url, room_id=room.room_id, token=room.token, role="client")
        await client.connect()
        seen = Seen()
        job = RemoteJob(PACKAGE, credentials=RoomCredentials(room.room_id, room.token), signaling=client,
                        results_dir=tmp_path / "out", policy=Auto(wait=60), callbacks=seen)
        task = asyncio.ensure_future(job.run())
        try:
            deadline = time.monotonic() + 20
            while job.phases.phase != Phase.WAITING:
                assert time.monotonic() < deadline and not task.done(), (job.phases.phase, task)
                await asyncio.sleep(0.05)
            busy = seen.waits[-1].busy
            assert [(b.name, b.status) for b in busy] == [("w-solo", "reserved")]
            released = time.monotonic()
            await holder.release()
            while job.phases.phase not in (Phase.UPLOADING, Phase.TRAINING):
                assert time.monotonic() - released < 30 and not task.done(), (job.phases.phase, task)
                await asyncio.sleep(0.05)
            print(f"\n[wait] the job reserved w-solo {time.monotonic() - released:.1f} s after it was freed")
            assert seen.phases[:4] == [Phase.JOINING, Phase.DISCOVERING, Phase.SELECTING, Phase.WAITING]
            assert Phase.RESERVING in seen.phases and Phase.FAILED not in seen.phases
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await client.close()
    # cancelling freed the worker for the next test
    await _wait_available(room)


async def _wait_available(room: LocalRoom, timeout: float = 20) -> None:
    client = SignalingClient(room.url, room_id=room.room_id, token=room.token, role="client")
    await client.connect()
    try:
        deadline = time.monotonic() + timeout
        while True:
            peers = await client.discover({"role": "worker"})
            if peers and all(p["metadata"]["properties"].get("status") == "available" for p in peers):
                return
            assert time.monotonic() < deadline, peers
            await asyncio.sleep(0.2)
    finally:
        await client.close()


async def _cli(room: LocalRoom, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *sleap_rtc_argv("client-train", str(PACKAGE), "--server", room.url, "--room-id", room.room_id,
                        "--token", room.token, "--auto-select", *args),
        env=room.env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, start_new_session=True,
    )


async def _read_until(proc: asyncio.subprocess.Process, pattern: str, timeout: float, out: list[str]) -> re.Match:
    async def scan() -> re.Match:
        while True:
            raw = await proc.stdout.readline()
            if not raw:
                raise AssertionError(f"the client exited before {pattern!r}:\n" + "".join(out))
            line = raw.decode(errors="replace")
            out.append(line)
            found = re.search(pattern, line)
            if found:
                return found

    return await asyncio.wait_for(scan(), timeout)


@pytest.mark.timeout(150)
async def test_cli_wait_covers_an_all_busy_room(one_worker_room, tmp_path):
    room = one_worker_room
    async with Holder(room, tmp_path) as holder:
        # no --wait: fails at once, and the CLI (not core) names the flag
        started = time.monotonic()
        proc = await _cli(room, "--output", str(tmp_path / "m1"))
        text = (await asyncio.wait_for(proc.stdout.read(), 60)).decode(errors="replace")
        assert await proc.wait() == 1, text
        assert "No available workers" in text and "w-solo: reserved" in text, text
        assert "Pass --wait SECONDS to wait for a worker to become available." in text, text
        print(f"\n[wait] all-busy failure after {time.monotonic() - started:.1f} s (process start included)")

        # --wait: waits, says who is busy, and starts once the worker is free
        proc = await _cli(room, "--wait", "60", "--output", str(tmp_path / "m2"))
        out: list[str] = []
        try:
            await _read_until(proc, r"waiting up to \d+ s more for a free worker; now: w-solo \(reserved", 60, out)
            await holder.release()
            await _read_until(proc, r"Training: started on w-solo", 60, out)
        finally:
            if proc.returncode is None:
                os.killpg(proc.pid, signal.SIGINT)  # no terminal: the 1st stops early,
                await asyncio.sleep(0.5)
                if proc.returncode is None:
                    os.killpg(proc.pid, signal.SIGINT)  # the 2nd cancels
                try:
                    await asyncio.wait_for(proc.wait(), 30)
                except asyncio.TimeoutError:
                    os.killpg(proc.pid, signal.SIGKILL)
                    await proc.wait()
    await _wait_available(room)
