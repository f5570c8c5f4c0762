"""A real training job across the two WebRTC stacks, both ways, with real processes: a
``sleap-rtc server``, a real ``sleap-rtc worker`` and the real ``sleap-rtc client-train``
command on loopback, sleap-nn training the bundled tiny package on the CPU.

* an aiortc client (this Python 3.11 environment) -> a worker in the Python 3.12 side
  environment (scripts/ensure-fast-env.sh), which picks libdatachannel by itself;
* a native client (the side environment, libdatachannel) -> an aiortc worker (3.11).

Neither side is told which backend to use (``SLEAP_RTC_BACKEND`` is removed from their
environment): each picks its own, and the test reads which one each really used from the
channel's INFO log line ("channel to ... open over <backend>"), so it cannot pass with
aiortc at both ends. The model comes back and is a real checkpoint (a torch zip with the
tiny config's two epochs behind it).

The side environment holds the transport and what the worker itself imports (sleap-io for
its package checks), not SLEAP or torch: the worker started from it finds ``sleap-nn`` on
PATH, and this test puts the heavy environment's bin directory (this interpreter's) first
on PATH, as a lab would install sleap-nn next to a native-stack worker.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from sleap_rtc.core.backends import BACKEND_ENV
from sleap_rtc.local_room import LocalRoom, sleap_rtc_argv

pytestmark = [pytest.mark.native, pytest.mark.slow]

TINY = Path(__file__).resolve().parents[2] / "resources" / "tiny"
PACKAGE = TINY / "tiny.training_job.zip"
RUN_NAME = "single_instance.n=10"
OPEN_OVER = re.compile(r"channel to (\S+) open over (\w+)")


def room_env() -> dict[str, str]:
    """The children's environment: no forced backend, sleap-nn (this env's bin/) on PATH."""
    env = {k: v for k, v in os.environ.items() if k != BACKEND_ENV}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def backends_used(text: str) -> set[str]:
    """The backends named by the channel's "open over" log lines in ``text``."""
    return {m.group(2) for m in OPEN_OVER.finditer(text)}


@pytest.mark.timeout(400)
@pytest.mark.parametrize("native_side", ["worker", "client"])
def test_training_job_across_stacks(tmp_path, fast_python, native_side):
    python_of = {"native": fast_python, "aiortc": sys.executable}
    worker_python = python_of["native" if native_side == "worker" else "aiortc"]
    client_python = python_of["native" if native_side == "client" else "aiortc"]
    want = {"worker": "libdatachannel" if native_side == "worker" else "aiortc",
            "client": "libdatachannel" if native_side == "client" else "aiortc"}
    room = LocalRoom(tmp_path / "room", env=room_env())
    try:
        room.start_server()
        room.create_room()
        worker = room.start_worker("w-x", python=worker_python, verbose=True, timeout=120)
        models = tmp_path / "models"
        train = subprocess.run(
            sleap_rtc_argv("-v", "client-train", str(PACKAGE), "--server", room.url, "--room-id", room.room_id,
                           "--token", room.token, "--auto-select", "--output", str(models), python=client_python),
            env=room.env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
        )
        out = train.stdout + train.stderr
        worker_text = "\n".join(worker.lines)
        assert train.returncode == 0, out[-4000:] + "\n--- worker ---\n" + worker_text[-3000:]
        assert backends_used(out) == {want["client"]}, out[-3000:]
        assert backends_used(worker_text) == {want["worker"]}, worker_text[-3000:]
        if native_side == "worker":
            assert f"jobs run {Path(sys.executable).parent / 'sleap-nn'}" in worker_text, worker_text[-3000:]
        epochs = re.findall(r"epoch (\d+): train loss ([0-9.e-]+)", out)
        assert [e[0] for e in epochs] == ["1", "2"], out[-3000:]
        ckpt = models / RUN_NAME / "best.ckpt"
        assert ckpt.stat().st_size > 10_000, out[-2000:]
        with zipfile.ZipFile(ckpt) as zf:  # torch.save's format: a zip with the pickled state
            assert any(name.endswith("data.pkl") for name in zf.namelist())
        assert (models / RUN_NAME / "training_config.yaml").is_file()
    finally:
        room.stop()
