"""End to end with real processes: ``LocalRoom`` (a ``sleap-rtc server`` and two real
``sleap-rtc worker`` processes on loopback) and the real ``sleap-rtc client-train`` /
``client-track`` commands as subprocesses, running real sleap-nn on the CPU.

* train the bundled tiny package with ``--auto-select``: exit 0, ``best.ckpt`` on disk, one
  line per epoch with its loss; then ``client-track`` with that model: a predictions
  ``.slp`` that sleap-io loads;
* the interactive picker (through a pseudo-terminal) lists both real workers and updates
  live when one turns reserved (a real WebRTC connection holds it) and free again;
* a worker SIGKILLed mid-training: the client says so within 15 s and finishes the job on
  the other worker.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from sleap_rtc.core.credentials import decode_session_string
from sleap_rtc.local_room import LocalRoom, sleap_rtc_argv
from pty_util import PtyProcess  # tests/client is on sys.path (rootdir-style test imports)

TINY = Path(__file__).resolve().parents[2] / "resources" / "tiny"
PACKAGE = TINY / "tiny.training_job.zip"
LABELS = TINY / "labels.pkg.slp"
RUN_NAME = "single_instance.n=10"


@pytest.fixture(scope="module")
def local_room(tmp_path_factory):
    """A real server and two real workers, shared by this module's non-destructive tests."""
    room = LocalRoom(tmp_path_factory.mktemp("room"))
    try:
        room.start_server()
        room.create_room()
        room.start_worker("w-one")
        room.start_worker("w-two")
        yield room
    finally:
        room.stop()


def creds(room: LocalRoom) -> list[str]:
    return ["--server", room.url, "--room-id", room.room_id, "--token", room.token]


def run_cli(room: LocalRoom, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run ``sleap-rtc ARGS`` to the end (stdin not a terminal), output captured."""
    return subprocess.run(sleap_rtc_argv(*args), env=room.env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def peer_id(room: LocalRoom, name: str) -> str:
    return decode_session_string(room.session_string(name)).peer_id


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_train_then_track_with_the_real_commands(local_room, tmp_path):
    models = tmp_path / "models"
    t0 = time.monotonic()
    train = run_cli(local_room, "client-train", str(PACKAGE), *creds(local_room), "--auto-select", "--output", str(models))
    out = train.stdout + train.stderr
    assert train.returncode == 0, out[-4000:]
    model = models / RUN_NAME
    assert (model / "best.ckpt").stat().st_size > 10_000, out[-2000:]
    assert (model / "training_config.yaml").is_file()
    # One line per epoch (two epochs in the tiny config), with real losses from sleap-nn.
    epochs = re.findall(r"epoch (\d+): train loss ([0-9.e-]+), val loss ([0-9.e-]+)", out)
    assert [e[0] for e in epochs] == ["1", "2"], out[-3000:]
    assert all(float(e[1]) > 0 and float(e[2]) > 0 for e in epochs)
    assert "Trying w-one" in out or "Trying w-two" in out
    assert re.search(r"worker\s+w-(one|two) \(worker-w-", out) and "duration" in out and str(model) in out
    assert "it/s]" not in out  # progress-bar redraws are not echoed as log lines
    train_s = time.monotonic() - t0

    predictions = tmp_path / "out" / "predictions.slp"
    track = run_cli(local_room, "client-track", str(LABELS), "--model", str(model), *creds(local_room),
                    "--auto-select", "--output", str(predictions))
    out = track.stdout + track.stderr
    assert track.returncode == 0, out[-4000:]
    import sleap_io

    labels = sleap_io.load_slp(str(predictions))
    assert labels.skeletons[0].node_names == ["head", "tail"]
    assert f"predictions {predictions}" in out
    assert not list(predictions.parent.glob(".*")), "no upload/incoming leftovers next to the predictions"
    print(f"train {train_s:.1f} s, track {time.monotonic() - t0 - train_s:.1f} s")


@pytest.mark.timeout(120)
async def test_interactive_picker_lists_real_workers_and_updates_live(local_room, tmp_path):
    from sleap_rtc.core import transport
    from sleap_rtc.core.signaling import SignalingClient

    child = PtyProcess(sleap_rtc_argv("client-train", str(PACKAGE), *creds(local_room), "--output", str(tmp_path)),
                       env=local_room.env)
    client = None
    try:
        await child.expect(r"\(2 available\)", timeout=30)
        mark = len(child.text)
        await child.expect(r"w-one", start=0)
        await child.expect(r"w-two", start=0)
        # Another client reserves w-one over a real WebRTC connection: the table drops it.
        client = SignalingClient(local_room.url, room_id=local_room.room_id, token=local_room.token, role="client")
        await client.connect()
        channel = await transport.connect(client, peer_id(local_room, "w-one"), timeout=30, receive_dir=tmp_path / "rx")
        await child.expect(r"\(1 available\)", timeout=15, start=mark)
        # It hangs up: the worker is free again and the table shows it without any key press.
        mark = len(child.text)
        await channel.close()
        await child.expect(r"\(2 available\)", timeout=20, start=mark)
        child.send("q")
        assert await child.wait(15) != 0
        assert "cancelled" in child.text.lower()
    finally:
        if client is not None:
            await client.close()
        child.close()


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_worker_killed_during_training_job_finishes_on_the_other(tmp_path):
    room = LocalRoom(tmp_path / "room")
    proc = None
    try:
        room.start_server()
        room.create_room()
        room.start_worker("w-one")
        room.start_worker("w-two")
        proc = await asyncio.create_subprocess_exec(
            *sleap_rtc_argv("client-train", str(PACKAGE), *creds(room), "--auto-select", "--output", str(tmp_path / "m")),
            env=room.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        lines: list[str] = []

        async def read_until(pattern: str, timeout: float) -> re.Match:
            async def scan() -> re.Match:
                while True:
                    raw = await proc.stdout.readline()
                    if not raw:
                        raise AssertionError(f"{pattern!r} not seen:\n" + "\n".join(lines[-40:]))
                    lines.append(raw.decode(errors="replace").rstrip())
                    if m := re.search(pattern, lines[-1]):
                        return m

            return await asyncio.wait_for(scan(), timeout)

        first = (await read_until(r"Training: started on (w-\w+)", 120)).group(1)
        await read_until(r"Starting training loop|Epoch 0", 60)  # sleap-nn is really training
        killed_at = time.monotonic()
        room.workers[first].signal_group(signal.SIGKILL)
        await read_until(rf"Worker {first} stopped responding during training", 20)
        noticed_s = time.monotonic() - killed_at
        assert noticed_s < 15, noticed_s
        other = "w-two" if first == "w-one" else "w-one"
        await read_until(rf"Training: started on {other}", 60)
        await read_until(rf"worker\s+{other}", 180)
        rc = await asyncio.wait_for(proc.wait(), 30)
        rest = (await proc.stdout.read()).decode(errors="replace")
        assert rc == 0, "\n".join(lines[-40:]) + rest
        assert (tmp_path / "m" / RUN_NAME / "best.ckpt").is_file()
        assert "lost" in rest and first in rest
        print(f"worker loss noticed after {noticed_s:.1f} s")
    finally:
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
        room.stop()
