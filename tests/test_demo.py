"""``sleap-rtc demo --headless`` end to end, as ``make demo HEADLESS=1`` runs it.

The demo starts a real signaling server and two real workers, trains the bundled tiny
package with real sleap-nn, downloads the model, runs inference and downloads the
predictions. Checked: exit code, the summary, the files, and that no process it started
(server, workers, clients, sleap-nn) survives it, also when it is interrupted (SIGINT to
its process group, as Ctrl-C in a terminal sends) in the middle of training.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]


class Demo:
    """The demo as a subprocess in its own process group; records every descendant it had."""

    def __init__(self, out: Path):
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "sleap_rtc", "demo", "--headless", "--quiet-children", "--output", str(out)],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: list[str] = []
        self.seen: dict[int, psutil.Process] = {}
        self.cmdlines: dict[int, str] = {}  # read while alive: a dead process has none
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.popen.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def watch_children(self) -> None:
        """Remember every descendant alive now (they may outlive the demo if it leaks them)."""
        try:
            for child in psutil.Process(self.popen.pid).children(recursive=True):
                if child.pid not in self.seen:
                    self.seen[child.pid] = child
                    self.cmdlines[child.pid] = " ".join(_cmdline(child))
        except psutil.NoSuchProcess:
            pass

    def wait(self, timeout: float, until: str | None = None) -> int | None:
        """Wait for exit (or for a line containing ``until``), recording descendants meanwhile."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.watch_children()
            if until is not None and any(until in line for line in self.lines):
                return None
            if self.popen.poll() is not None:
                self._reader.join(5)
                return self.popen.returncode
            time.sleep(0.3)
        self.kill()
        raise AssertionError(f"demo did not {'print ' + until if until else 'exit'} in {timeout} s:\n{self.text[-4000:]}")

    def survivors(self, grace: float = 10.0) -> list[str]:
        """Descendants still running ``grace`` seconds after the demo exited."""
        deadline = time.monotonic() + grace
        while True:
            alive = [p for p in self.seen.values() if _running(p)]
            if not alive or time.monotonic() > deadline:
                return [f"{p.pid} {self.cmdlines.get(p.pid, '?')[:120]}" for p in alive]
            time.sleep(0.2)

    def kill(self) -> None:
        """Test cleanup: kill the demo and everything it started."""
        for p in [*self.seen.values()]:
            if _running(p):
                p.kill()
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(5)


def _running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:
        return ["?"]


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_headless_demo_trains_predicts_summarises_and_leaves_nothing(tmp_path):
    out = tmp_path / "demo"
    demo = Demo(out)
    try:
        rc = demo.wait(360)
        text = demo.text
        assert rc == 0, text[-5000:]
        assert "== Summary ==" in text
        summary = text[text.index("== Summary ==") :]
        for key in ("room", "training", "inference", "predictions"):
            assert f"\n  {key} " in summary, summary
        assert "(2 workers)" in summary
        assert "epoch 1: train loss" in text and "epoch 2: train loss" in text
        models = list((out / "models").glob("*/best.ckpt"))
        assert len(models) == 1 and models[0].stat().st_size > 10_000
        import sleap_io

        labels = sleap_io.load_slp(str(out / "predictions.slp"))
        assert labels.skeletons[0].node_names == ["head", "tail"]
        # The demo trains long enough (DEMO_EPOCHS) for the model to find the animal.
        assert sum(len(lf.instances) for lf in labels.labeled_frames) > 0, summary
        # The demo really started servers, workers, clients and sleap-nn ... and stopped them all.
        names = " ".join(demo.cmdlines.values())
        assert all(word in names for word in ("server", "worker", "client-train", "client-track", "sleap-nn")), names
        assert demo.survivors() == []
    finally:
        demo.kill()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ctrl_c_during_training_leaves_no_process_behind(tmp_path):
    demo = Demo(tmp_path / "demo")
    try:
        demo.wait(200, until="Training: started on")
        demo.wait(60, until="Starting training loop")  # sleap-nn is running on a worker now
        demo.watch_children()
        assert any("sleap-nn" in c for c in demo.cmdlines.values()), "sleap-nn should be running"
        os.killpg(demo.popen.pid, signal.SIGINT)
        rc = demo.wait(60)
        assert rc == 130, demo.text[-3000:]
        assert "Interrupted" in demo.text
        assert demo.survivors() == []
    finally:
        demo.kill()
