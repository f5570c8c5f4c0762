"""``sleap-rtc worker``: argument checks and the credentials banner of a real process."""

from __future__ import annotations

import asyncio
import signal
import sys

import pytest
from click.testing import CliRunner

from sleap_rtc.cli import main
from sleap_rtc.core.credentials import decode_session_string, parse_room_credentials

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("args", [["--room-id", "r1"], ["--token", "t1"]])
def test_room_id_and_token_go_together(args):
    result = CliRunner().invoke(main, ["worker", *args])
    assert result.exit_code == 2
    assert "Both --room-id and --token must be provided together" in result.output


def test_gpu_that_does_not_exist_is_refused(tmp_path):
    # No machine has a GPU number 99: the flag may only pick among real GPUs.
    result = CliRunner().invoke(main, ["worker", "--gpu", "99", "--work-dir", str(tmp_path)])
    assert result.exit_code == 2 and "--gpu 99" in result.output


async def test_worker_process_creates_room_and_prints_banner(signaling_server, tmp_path):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sleap_rtc", "worker", "--server", signaling_server.url,
        "--name", "cli-worker", "--work-dir", str(tmp_path / "w"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    lines: list[str] = []
    try:
        async def read_banner():
            while not any("Token:" in l for l in lines):
                line = await proc.stdout.readline()
                assert line, "worker exited early:\n" + "".join(lines)
                lines.append(line.decode())
        await asyncio.wait_for(read_banner(), 30)
        text = "".join(lines)
        assert "[INFO] Worker authenticated. Session string for direct connection:" in text
        session = decode_session_string(next(l for l in lines if l.startswith("sleap-session:")))
        creds = parse_room_credentials(text)
        assert (session.room_id, session.token) == (creds.room_id, creds.token)
        assert session.peer_id.startswith("worker-cli-worker-")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(proc.wait(), 45)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0


async def test_worker_sigint_right_after_banner_always_exits(signaling_server, tmp_path):
    # SIGINT while the first status publish is in flight used to hang 1 run in 5: the
    # publisher's cancellation was lost inside asyncio.wait_for (Python 3.11) and close()
    # awaited it forever. Several tries, because the window is a single loop step.
    for attempt in range(6):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sleap_rtc", "worker", "--server", signaling_server.url,
            "--name", f"sigint-{attempt}", "--work-dir", str(tmp_path / f"w{attempt}"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        try:
            async def read_banner():
                while True:
                    line = await proc.stdout.readline()
                    assert line, "worker exited before its banner"
                    if b"Token:" in line:
                        return
            await asyncio.wait_for(read_banner(), 30)
            proc.send_signal(signal.SIGINT)
            await asyncio.wait_for(proc.wait(), 20)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 0, f"attempt {attempt}: exit {proc.returncode}"
