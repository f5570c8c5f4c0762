"""`make demo` (GUI mode): SLEAP opens joined to a local room with two live workers.

Runs the real `sleap-rtc demo` offscreen with its hidden `--exit-after` switch, then checks
the window's screenshot exists, the output says the room was ready, and that no server or
worker process outlives the demo.
"""

from __future__ import annotations

import os
import subprocess
import sys

import psutil
import pytest


def _children_of_demo(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info.get("cmdline") or [])
        if "sleap_rtc" in cmd and marker in cmd:
            found.append(proc)
    return found


@pytest.mark.timeout(240)
def test_demo_opens_gui_with_two_workers_and_cleans_up(tmp_path):
    home = tmp_path / "home"  # SLEAP writes its preferences under HOME
    home.mkdir()
    out = tmp_path / "demo-out"
    shot = tmp_path / "demo.png"
    env = {**os.environ, "HOME": str(home), "QT_QPA_PLATFORM": "offscreen", "SLEAP_SKIP_QT_FIX": "1",
           "TMPDIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "sleap_rtc", "demo", "--output", str(out), "--exit-after", "8",
         "--screenshot", str(shot)],
        env=env, capture_output=True, text=True, timeout=200,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Room ready on ws://127.0.0.1:" in proc.stdout
    assert proc.stdout.count("Starting local worker demo-worker-") == 2
    assert shot.is_file() and shot.stat().st_size > 10_000
    # The demo's workers ran with --work-dir under TMPDIR=tmp_path: none may survive.
    assert not _children_of_demo(str(tmp_path)), "a server or worker outlived the demo"


def test_demo_falls_back_to_the_terminal_flow_without_a_screen(monkeypatch):
    """`make demo` on a machine with no display runs the headless flow instead of hanging
    on an invisible window."""
    from sleap_rtc import demo

    for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(name, raising=False)
    assert demo._has_screen() is (sys.platform in ("darwin", "win32"))
    monkeypatch.setenv("DISPLAY", ":0")
    assert demo._has_screen()
