"""The signaling server restarts (same port, same state file) in the middle of a session.

Two real workers; one runs a real job whose package is still uploading over WebRTC when
the server goes down. After the restart:

* the workers re-register within 5 s (a fresh client discovers both);
* a client's live ``RoomView`` (an observer that was connected before) recovers and shows
  both workers with the right status (the job's worker reserved/busy, the other available);
* the upload and the job, which never needed the server, complete (``best.ckpt`` on disk).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from fault_helpers import Observer, checkpoints, padded_package

from sleap_rtc.core.phases import JobPhases, Phase
from sleap_rtc.core.credentials import RoomCredentials
from sleap_rtc.core.job_events import JobCallbacks
from sleap_rtc.core.job_runner import RemoteJob
from sleap_rtc.core.signaling import SignalingClient, SignalingError

pytestmark = pytest.mark.faults

REREGISTER_WITHIN = 5.0
PAD_BYTES = 32 * 1024 * 1024


async def _discover_workers(room) -> list[dict]:
    """A brand-new client joins and lists the workers (raises if it cannot)."""
    fresh = SignalingClient(room.url, room_id=room.room_id, token=room.token, role="client", reconnect=False)
    try:
        await fresh.connect()
        return await fresh.discover({"role": "worker"})
    finally:
        await fresh.close()


async def _rediscover(room, back_at: float, give_up_after: float) -> tuple[list[str], float]:
    """Poll with fresh clients until both workers are discoverable again (or give up);
    returns the names last found and the seconds since the server came back."""
    found: list[str] = []
    while time.monotonic() - back_at < give_up_after:
        try:
            found = sorted(p["metadata"]["properties"]["worker_name"] for p in await _discover_workers(room))
        except (SignalingError, KeyError) as exc:
            found = [f"error: {exc}"]
        if found == ["w1", "w2"]:
            break
        await asyncio.sleep(0.2)
    return found, time.monotonic() - back_at


@pytest.mark.timeout(180)
async def test_server_restart_mid_session(local_room, tmp_path: Path):
    room = local_room
    await asyncio.to_thread(room.start_workers, "w1", "w2")
    package = await asyncio.to_thread(padded_package, tmp_path / "padded.training_job.zip", PAD_BYTES)
    output = tmp_path / "out"
    loop = asyncio.get_running_loop()

    async with Observer(room.url, room.room_id, room.token) as obs:
        await obs.wait_status("w1", "available", 10)
        await obs.wait_status("w2", "available", 10)
        phases = JobPhases()
        restart: dict[str, object] = {}
        job: RemoteJob

        def on_upload(p) -> None:
            if restart or p.total == 0 or p.done < 0.1 * p.total or p.done >= p.total:
                return
            restart["worker"] = job.session.worker.name
            restart["fraction"] = p.done / p.total
            restart["future"] = loop.run_in_executor(None, room.restart_server)

        class Watch(JobCallbacks):
            def upload(self, p) -> None:
                on_upload(p)

        job = RemoteJob(package, server_url=room.url, credentials=RoomCredentials(room.room_id, room.token),
                        results_dir=output, phases=phases, callbacks=Watch())
        job_task = asyncio.create_task(job.run())
        try:
            deadline = loop.time() + 90
            while "future" not in restart:
                assert not job_task.done(), f"the job ended before the restart: {job_task}"
                assert loop.time() < deadline, "the upload never started"
                await asyncio.sleep(0.05)
            await asyncio.wait_for(restart["future"], 60)  # returns once /health answers again
            back_at = time.monotonic()
            assert phases.phase in (Phase.UPLOADING, Phase.TRAINING), (
                f"the restart did not happen mid-job (phase {phases.phase.value})"
            )
            busy_one = restart["worker"]
            idle_one = ({"w1", "w2"} - {busy_one}).pop()

            # 1. Workers re-register: a fresh client discovers both within 5 s of the server being back.
            found, took = await _rediscover(room, back_at, REREGISTER_WITHIN + 1)
            print(f"workers rediscovered {took:.1f} s after the server came back")
            assert found == ["w1", "w2"], f"after the restart a fresh client finds {found} (waited {took:.1f} s)"
            assert took <= REREGISTER_WITHIN, f"workers re-registered {took:.1f} s after the server came back"

            # 2. The observer's live view recovers, with the right statuses.
            await obs.signaling.wait_registered(REREGISTER_WITHIN + 5)
            await obs.view.wait_for(
                lambda v: obs.status(idle_one) == "available" and obs.status(busy_one) in ("reserved", "busy"),
                REREGISTER_WITHIN + 5,
            )
        except asyncio.TimeoutError:
            job_task.cancel()
            raise AssertionError(
                f"the observer's view did not recover: {[(w.name, w.status) for w in obs.view.workers]} "
                f"(expected {restart.get('worker')} reserved/busy and the other available)"
            ) from None
        except BaseException:
            job_task.cancel()
            raise

        # 3. The job that was running over WebRTC completes.
        summary = await asyncio.wait_for(job_task, 120)
        assert summary.worker == busy_one
        assert checkpoints(output), f"no best.ckpt under {output}"
        await obs.wait_status(busy_one, "available", 20)


@pytest.mark.timeout(90)
async def test_workers_reregister_within_5s_after_a_long_outage(local_room):
    """Down long enough for the reconnect backoff to reach its cap: still back within 5 s."""
    room = local_room
    await asyncio.to_thread(room.start_workers, "w1", "w2")
    await asyncio.to_thread(room.server.stop)
    await asyncio.sleep(10.0)
    await asyncio.to_thread(room.start_server, room.port)
    back_at = time.monotonic()
    found, took = await _rediscover(room, back_at, REREGISTER_WITHIN + 3)
    print(f"workers rediscovered {took:.1f} s after a 10 s outage")
    assert found == ["w1", "w2"], f"after a 10 s outage a fresh client finds {found} ({took:.1f} s after the server came back)"
    assert took <= REREGISTER_WITHIN, f"workers re-registered {took:.1f} s after the server came back (10 s outage)"
