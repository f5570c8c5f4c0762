"""Data-channel protocol: control messages, waits, heartbeat deadline, job message builders."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _peers import pair  # noqa: E402

from sleap_rtc.core import jobs_wire  # noqa: E402
from sleap_rtc.core.protocol import ProtocolError  # noqa: E402
from sleap_rtc.core.transport import connect  # noqa: E402
from sleap_rtc.core.transport_errors import PeerClosedError  # noqa: E402

pytestmark = pytest.mark.timeout(60)
HERE = Path(__file__).parent


async def test_receive_timeout_bad_message_and_callback(signaling_server, room, tmp_path):
    async with pair(signaling_server.url, room, tmp_path) as (client, worker):
        with pytest.raises(TimeoutError):
            await worker.receive(0.2)
        with pytest.raises(ValueError, match="string 'type'"):
            await client.send({"no": "type"})
        with pytest.raises(ValueError, match="unknown message type 'early'"):
            await client.send({"type": "early"})  # not in the table: the peer would refuse it
        await client.send(jobs_wire.job_log("j", "early"))
        await asyncio.sleep(0.2)
        got: list[dict] = []
        worker.on_message(got.append)  # queued messages are handed over first
        await client.send(jobs_wire.job_log("j", "epoch 1 40%", redraw=True))
        for _ in range(50):
            if len(got) == 2:
                break
            await asyncio.sleep(0.05)
        assert got == [jobs_wire.job_log("j", "early"), {"type": "job_log", "job_id": "j", "line": "epoch 1 40%", "redraw": True}]


async def test_local_close_fails_pending_waits(signaling_server, room, tmp_path):
    async with pair(signaling_server.url, room, tmp_path) as (client, worker):
        waits = [asyncio.ensure_future(client.receive()), asyncio.ensure_future(client.receive_file())]
        await asyncio.sleep(0.05)
        await client.close()
        for w in waits:
            with pytest.raises(PeerClosedError):
                await asyncio.wait_for(w, 2)
        assert await worker.wait_closed(5) == "the peer hung up"


@contextlib.asynccontextmanager
async def channel_to_peer_process(url: str, room: tuple[str, str], tmp_path: Path):
    """Yield ``(client channel, worker process)``: a worker-side peer in a subprocess (so a
    test can SIGSTOP/SIGKILL it), connected through the real server."""
    from _peers import registered

    csig = await registered(url, room, "client")
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "_peer_proc.py"), url, *room, str(tmp_path / "w"), str(tmp_path / "wc")],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 20)
        yield await connect(csig, line.split()[1], timeout=15, receive_dir=tmp_path / "r", cache_dir=tmp_path / "c"), proc
    finally:
        proc.kill()
        proc.wait(5)
        await csig.close()


async def test_frozen_peer_is_declared_dead_within_15s(signaling_server, room, tmp_path):
    """SIGSTOP the worker process: aiortc never notices, the heartbeat deadline does."""
    async with channel_to_peer_process(signaling_server.url, room, tmp_path) as (ch, proc):
        pending = asyncio.ensure_future(ch.receive())
        os.kill(proc.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        with pytest.raises(PeerClosedError, match="no sign of life"):
            await asyncio.wait_for(pending, 20)
        assert time.monotonic() - t0 < 15


async def test_suspect_keeps_a_live_peer(signaling_server, room, tmp_path):
    """A "peer left the room" hint must not kill a healthy channel (e.g. a server restart)."""
    async with pair(signaling_server.url, room, tmp_path) as (cch, wch):
        cch.suspect(4.5)  # heartbeats arrive every 2 s
        await asyncio.sleep(5.5)
        assert not cch.closed
        await cch.send(jobs_wire.job_log("j", "still here"))
        assert (await wch.receive(timeout=5))["line"] == "still here"


async def test_suspect_declares_a_frozen_peer_dead_quickly(signaling_server, room, tmp_path):
    """With the hint, a peer that went silent is dropped after the grace, not after dead_after."""
    async with channel_to_peer_process(signaling_server.url, room, tmp_path) as (ch, proc):
        os.kill(proc.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        ch.suspect(3.0)
        await asyncio.wait_for(ch.wait_closed(), 15)
        assert "left the room" in ch.close_reason
        assert time.monotonic() - t0 < ch.dead_after  # sooner than the heartbeat alone


def test_job_builders_validate():
    msg = jobs_wire.job_submit("j1", {"sha256": "a" * 64, "name": "pkg.zip"}, {"epochs": 3})
    assert jobs_wire.validate_job_message(msg) is msg
    assert jobs_wire.job_log("j1", "line")["redraw"] is False
    assert jobs_wire.job_complete("j1", [], 3)["duration_s"] == 3.0
    with pytest.raises(ProtocolError, match="package"):
        jobs_wire.job_submit("j1", {"name": "x"})
    with pytest.raises(ProtocolError, match="'size'"):
        jobs_wire.validate_job_message({"type": "job_result", "job_id": "j", "kind": "model", "name": "m", "sha256": "x", "size": True})
    with pytest.raises(ProtocolError, match="Not a job message"):
        jobs_wire.validate_job_message({"type": "heartbeat"})
