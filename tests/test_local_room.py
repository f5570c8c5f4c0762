"""LocalRoom: a real server as a child process that never outlives whoever started it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import psutil
import pytest


@pytest.mark.timeout(90)
def test_children_die_when_the_owner_is_killed_outright(tmp_path):
    """SIGKILL skips atexit and finally blocks: the kernel must still take the server down
    (the demo or a test run killed by a timeout would otherwise leave it running)."""
    code = (
        "import sys, time\n"
        "from sleap_rtc.local_room import LocalRoom\n"
        f"room = LocalRoom({str(tmp_path / 'room')!r})\n"
        "room.start_server()\n"
        "print(room.server.popen.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        server = psutil.Process(int(owner.stdout.readline()))
        assert server.is_running() and "server" in " ".join(server.cmdline())
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(10)
        gone, alive = psutil.wait_procs([server], timeout=15)
        assert server in gone and not alive, "the signaling server outlived the killed LocalRoom owner"
    finally:
        owner.kill()


def test_stop_leaves_no_child(tmp_path):
    from sleap_rtc.local_room import LocalRoom

    with LocalRoom(tmp_path / "room") as room:
        room.start_server()
        server = psutil.Process(room.server.popen.pid)
        room.create_room()
        assert room.room_id and room.token
    gone, alive = psutil.wait_procs([server], timeout=15)
    assert not alive
