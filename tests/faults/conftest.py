"""Fixtures of the fault-tolerance suite: a real room on loopback (server + worker processes).

Every process a test starts is a child of ``LocalRoom`` (its own process group); the
``local_room`` fixture stops them all even when the test fails, then checks with psutil that
no process whose command line or working directory lies under the test's temporary
directory survived (this catches orphaned sleap-nn runs too).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil
import pytest
from fault_helpers import processes_under

from sleap_rtc.local_room import LocalRoom

ECHO = os.environ.get("SLEAP_RTC_FAULTS_ECHO") == "1"
"""Set SLEAP_RTC_FAULTS_ECHO=1 to see every child's output live (pytest -s)."""


@pytest.fixture
def local_room(tmp_path: Path):
    """A ``LocalRoom`` with its signaling server started (no workers yet) and a room created.

    Tests start workers with ``room.start_workers(...)``. Teardown stops every child and
    fails the test if any process under ``tmp_path`` is left.
    """
    room = LocalRoom(tmp_path / "room", echo=print if ECHO else None, env={"COLUMNS": "250", "NO_COLOR": "1"})
    try:
        room.start_server()
        room.create_room()
        yield room
    finally:
        room.stop()
        deadline = time.monotonic() + 10
        left = processes_under(tmp_path)
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = processes_under(tmp_path)
        for proc in left:  # do not leak into the next test, but still fail this one
            try:
                proc.kill()
            except psutil.Error:
                pass
        assert not left, "processes survived the test: " + "; ".join(
            f"{p.pid} {' '.join(p.info['cmdline'] or [])[:200]}" for p in left
        )
