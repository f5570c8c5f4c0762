"""A worker machine dies (SIGKILL of its whole process tree) in the middle of a job.

Two real workers in one room; the client auto-selects. The chosen worker is killed while
the package is uploading (in-process ``RemoteJob``) and while sleap-nn trains (the real
``sleap-rtc client-train --auto-select`` command). The client must report the loss within
15 s, then, in auto-select mode, run the job on the other worker and finish with a
``best.ckpt`` on disk.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest

from sleap_rtc.core.phases import JobPhases, Phase
from sleap_rtc.core.credentials import RoomCredentials
from sleap_rtc.core.job_events import JobCallbacks
from sleap_rtc.core.job_runner import RemoteJob
from sleap_rtc.core.remote_job import JobError
from sleap_rtc.core.selection import SelectionError
from sleap_rtc.local_room import sleap_rtc_argv

from fault_helpers import checkpoints, padded_package, tiny_package

pytestmark = pytest.mark.faults

REPORT_WITHIN = 15.0
PAD_BYTES = 48 * 1024 * 1024  # a few seconds of upload at loopback WebRTC rates


@pytest.mark.timeout(180)
async def test_worker_killed_during_upload_auto_select_retries_on_the_other(local_room, tmp_path: Path):
    room = local_room
    await asyncio.to_thread(room.start_workers, "w1", "w2")
    package = await asyncio.to_thread(padded_package, tmp_path / "padded.training_job.zip", PAD_BYTES)
    output = tmp_path / "out"

    loop = asyncio.get_running_loop()
    events: list[tuple[float, str]] = []  # (monotonic time, what the client told the user)
    phases = JobPhases()
    phases.subscribe(lambda c: events.append((time.monotonic(), f"phase {c.new.value}: {c.detail}")) if c.old != c.new else None)
    killed: dict[str, object] = {}
    job: RemoteJob

    def on_upload(p) -> None:
        # Kill the chosen worker once a real part of the package is on the wire.
        if killed or p.total == 0 or p.done < 0.2 * p.total or p.done >= p.total:
            return
        name = job.session.worker.name if job.session and job.session.worker else None
        assert name in room.workers, f"upload to an unknown worker {name!r}"
        killed["name"], killed["at"], killed["fraction"] = name, time.monotonic(), p.done / p.total
        loop.run_in_executor(None, room.workers[name].kill)

    class Watch(JobCallbacks):
        def upload(self, p) -> None:
            on_upload(p)

        def decision(self, text: str) -> None:
            events.append((time.monotonic(), f"decision: {text}"))

    job = RemoteJob(
        package, server_url=room.url, credentials=RoomCredentials(room.room_id, room.token), results_dir=output,
        phases=phases, callbacks=Watch(), connect_timeout=30.0,
    )
    try:
        summary = await asyncio.wait_for(job.run(), 150)
        error = None
    except (JobError, SelectionError) as exc:
        summary, error = None, exc

    assert killed, f"the upload finished before the worker could be killed; client events: {events}"
    victim = killed["name"]
    survivor = ({"w1", "w2"} - {victim}).pop()
    assert not room.workers[victim].alive
    after = [(t - killed["at"], text) for t, text in events if t > killed["at"]]
    assert after, f"the client said nothing after {victim} was killed mid-upload"
    assert after[0][0] <= REPORT_WITHIN, f"the client took {after[0][0]:.1f} s to notice {victim} died: {after}"
    print(f"\n[faults] client reported {victim}'s death {after[0][0]:.1f} s after the kill: {after[0][1]}")
    if error is not None:
        pytest.fail(
            f"auto-select did not retry on {survivor} after {victim} died during the upload "
            f"({killed['fraction']:.0%} sent); the job ended with {type(error).__name__}: {error}. "
            f"Client events after the kill: {after}"
        )
    assert summary.worker == survivor, f"job finished on {summary.worker}, expected the survivor {survivor}"
    assert checkpoints(output), f"no best.ckpt under {output}: {sorted(p.name for p in output.rglob('*'))}"
    assert phases.phase == Phase.DONE


@pytest.mark.timeout(180)
def test_worker_killed_during_training_cli_auto_select_reports_and_finishes(local_room, tmp_path: Path):
    room = local_room
    room.start_workers("w1", "w2")
    package = tiny_package(tmp_path / "pkg")
    output = tmp_path / "models"
    client = room.spawn("client", sleap_rtc_argv(
        "client-train", str(package), "--server", room.url, "--room-id", room.room_id, "--token", room.token,
        "--auto-select", "--output", str(output),
    ))
    line = client.wait_for_line(lambda l: l.startswith("Training") and "started on" in l, 90)
    victim = re.search(r"started on (\S+)", line).group(1)
    survivor = ({"w1", "w2"} - {victim}).pop()
    assert victim in room.workers, line
    start = len(client.lines)
    # sleap-nn is really running: the worker streams its output (log lines) to the client.
    client.wait_for_line(lambda l: client.lines.index(l) >= start and l.strip(), 60)
    worker = room.workers[victim]
    assert worker.descendants(), f"no sleap-nn process under worker {victim} while training"
    kill_at = time.monotonic()
    kill_index = len(client.lines)
    worker.kill()

    try:
        code = client.popen.wait(150)
    except Exception:
        code = None
    out_after = list(zip(client.line_times[kill_index:], client.lines[kill_index:]))
    transcript = "\n".join(client.lines[-40:])
    assert code is not None, f"client-train did not finish within 150 s after {victim} died:\n{transcript}"
    assert out_after, f"client-train printed nothing after {victim} was killed:\n{transcript}"
    first_t, first_line = out_after[0]
    assert first_t - kill_at <= REPORT_WITHIN, (
        f"client-train took {first_t - kill_at:.1f} s to report that {victim} died (first line {first_line!r})"
    )
    assert "Traceback" not in transcript, transcript
    assert code == 0, (
        f"client-train --auto-select exited {code} instead of retrying on {survivor} after {victim} "
        f"died during training:\n{transcript}"
    )
    assert any(f"on {survivor}" in l for _, l in out_after), f"the job did not finish on {survivor}:\n{transcript}"
    assert checkpoints(output), f"no best.ckpt under {output}:\n{transcript}"
