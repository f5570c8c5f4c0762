"""``sleap-rtc worker`` with role-bound tokens: the worker token from the environment (kept
out of ``ps``, M2), and the client token refused for a worker (C8), as real processes."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from sleap_rtc.core.credentials import parse_room_credentials

pytestmark = pytest.mark.timeout(90)


async def _start(args: list[str], env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sleap_rtc", "worker", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env={**os.environ, **env},
    )


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(proc.wait(), 45)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()


async def test_m2_worker_token_from_the_environment_stays_out_of_the_process_list(signaling_server, room, tmp_path):
    proc = await _start(
        ["--server", signaling_server.url, "--room-id", room.room_id, "--name", "envw", "--work-dir", str(tmp_path / "w")],
        {"SLEAP_RTC_WORKER_TOKEN": room.worker_token},
    )
    lines: list[str] = []
    try:
        async def banner():
            while not any("Worker token" in line for line in lines):
                line = await proc.stdout.readline()
                assert line, "worker exited early:\n" + "".join(lines)
                lines.append(line.decode())

        await asyncio.wait_for(banner(), 60)
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert room.worker_token.encode() not in cmdline and room.token.encode() not in cmdline
        text = "".join(lines)
        creds = parse_room_credentials(text)
        assert (creds.room_id, creds.token) == (room.room_id, room.token)  # users get the client token
        assert f"Worker token (for other workers only): {room.worker_token}" in text
    finally:
        await _stop(proc)


async def test_c8_worker_started_with_the_client_token_exits_with_a_clear_error(signaling_server, room, tmp_path):
    proc = await _start(
        ["--server", signaling_server.url, "--room-id", room.room_id, "--token", room.token, "--work-dir", str(tmp_path / "w")], {},
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        await _stop(proc)
    assert proc.returncode == 1
    assert b"worker token" in out and b"Session string" not in out
    assert signaling_server.hub.peers_by_role()["worker"] == 0
