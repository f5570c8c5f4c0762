"""Worker identity and advertised numbers, end to end: the real signaling server on
loopback, real aiortc peers, the project's worker runtime in-process (fake sleap-nn), hostile
workers written here, and the real ``sleap-rtc client-train`` command as a process.

Rows of the security table (docs/security.md) these hold: C1 (a fake worker advertising a
huge GPU), C6 (non-finite numbers in metadata), C8 (nothing tied a worker to its identity).
"""

from __future__ import annotations

import asyncio

import pytest

from hostile_workers import TINY_PACKAGE, HostileWorker, raw_worker, real_worker
from sleap_rtc.core.credentials import decode_session_string
from sleap_rtc.core.identity import generate_key
from sleap_rtc.core.known_workers import KnownWorkers, Trust
from sleap_rtc.core.remote_job import RemoteJob
from sleap_rtc.core.room import RoomView
from sleap_rtc.core.selection import AllWorkersBusyError
from sleap_rtc.core.signaling import SignalingClient
from sleap_rtc.core.transport_errors import WorkerIdentityError
from sleap_rtc.local_room import sleap_rtc_argv
from sleap_rtc.worker.app import format_banner

pytestmark = pytest.mark.timeout(120)


def job(url, room, tmp_path, tag, **kwargs) -> tuple[RemoteJob, list[str]]:
    decisions: list[str] = []
    remote = RemoteJob(TINY_PACKAGE, server_url=url, room_id=room[0], token=room[1],
                       results_dir=tmp_path / f"out-{tag}", on_decision=decisions.append, **kwargs)
    return remote, decisions


def store(tmp_path) -> KnownWorkers:
    return KnownWorkers(tmp_path / "known_workers.json")


@pytest.mark.parametrize("proof", ["own", "forged"])
async def test_c8_hostile_worker_advertising_a_real_workers_key_is_refused_before_upload(signaling_server, room, tmp_path, proof):
    url = signaling_server.url
    lab = await real_worker(url, room, tmp_path / "lab", "lab", mem=24000)
    # The hostile worker copies lab's public key from the room and claims a bigger GPU.
    hostile = await HostileWorker(url, room, "lab-fast", tmp_path / "hostile", mem=10**6,
                                  claim_key=lab.key, proof=proof).start()
    try:
        remote, decisions = job(url, room, tmp_path, "a", known_workers=store(tmp_path))
        summary = await asyncio.wait_for(remote.run(), 90)
        assert summary.worker == "lab"
        assert hostile.offers == 1 and hostile.received == [], "nothing was uploaded to the impostor"
        refusal = next(d for d in decisions if d.startswith("Refused lab-fast"))
        assert ("posing as another worker" if proof == "own" else "does not verify") in refusal
        assert store(tmp_path).fingerprint(room[0], "lab") == lab.key.fingerprint
        assert store(tmp_path).fingerprint(room[0], "lab-fast") is None
    finally:
        await hostile.close()
        await lab.close()


async def test_c8_worker_whose_key_changed_is_flagged_skipped_by_auto_select_and_accepted_when_chosen(signaling_server, room, tmp_path):
    url = signaling_server.url
    known = store(tmp_path)
    first = await real_worker(url, room, tmp_path / "install-1", "gpu")
    try:
        remote, _ = job(url, room, tmp_path, "first", known_workers=known)
        await asyncio.wait_for(remote.run(), 90)
    finally:
        await first.close()
    assert known.fingerprint(room[0], "gpu") == first.key.fingerprint
    second = await real_worker(url, room, tmp_path / "install-2", "gpu")  # a new key: reinstalled, or an impostor
    sig = SignalingClient(url, room_id=room[0], token=room[1], role="client")
    await sig.connect()
    try:
        view = RoomView(sig, known=known)
        await view.start()
        assert [view.trust(w) for w in view.workers] == [Trust.CHANGED]
        view.close()
        remote, decisions = job(url, room, tmp_path, "auto", known_workers=known)
        with pytest.raises(AllWorkersBusyError, match="identity key changed"):
            await asyncio.wait_for(remote.run(), 60)
        assert any(d.startswith("Skipping gpu") and "--worker-id" in d for d in decisions)
        assert second.jobs_done == 0
        remote, decisions = job(url, room, tmp_path, "chosen", known_workers=known, worker_id=second.peer_id)
        summary = await asyncio.wait_for(remote.run(), 90)
        assert summary.worker == "gpu" and second.jobs_done == 1
        assert any(d.startswith("WARNING: worker gpu's identity key changed") for d in decisions)
        assert known.fingerprint(room[0], "gpu") == second.key.fingerprint  # accepted: the new key is remembered
    finally:
        await sig.close()
        await second.close()


async def test_c8_session_string_carries_the_fingerprint_and_a_different_key_is_refused(signaling_server, room, tmp_path):
    url = signaling_server.url
    worker = await real_worker(url, room, tmp_path / "w", "w")
    try:
        banner = format_banner(worker.room_id, worker.token, worker.peer_id, fingerprint=worker.key.fingerprint)
        assert f"[INFO] Worker fingerprint: {worker.key.fingerprint}" in banner.splitlines()
        target = decode_session_string(next(line for line in banner.splitlines() if line.startswith("sleap-session:")))
        assert target.fingerprint == worker.key.fingerprint
        remote, _ = job(url, room, tmp_path, "bad", session_worker=target.peer_id,
                        session_fingerprint=generate_key().fingerprint, known_workers=store(tmp_path))
        with pytest.raises(WorkerIdentityError, match="posing"):
            await asyncio.wait_for(remote.run(), 60)
        assert worker.jobs_done == 0
        remote, decisions = job(url, room, tmp_path, "good", session_worker=target.peer_id,
                                session_fingerprint=target.fingerprint, known_workers=store(tmp_path))
        await asyncio.wait_for(remote.run(), 90)
        assert worker.jobs_done == 1
        assert f"First job on worker w: remembering its identity key {worker.key.fingerprint}." in decisions
    finally:
        await worker.close()


async def test_c1_fake_worker_with_huge_advertised_memory(signaling_server, room, tmp_path):
    """What a fake worker's big numbers buy it now (the remaining risk is documented)."""
    url = signaling_server.url
    lab = await real_worker(url, room, tmp_path / "lab", "lab", mem=24000)
    known = store(tmp_path)
    try:
        # (a) 10^9 MB is not believable (> 4 TiB): the worker is ignored, never tried.
        absurd = await HostileWorker(url, room, "absurd", tmp_path / "absurd", mem=10**9).start()
        try:
            remote, decisions = job(url, room, tmp_path, "a", known_workers=known)
            assert (await asyncio.wait_for(remote.run(), 90)).worker == "lab"
            assert absurd.offers == 0
            assert any(d.startswith("Ignoring worker(s) with unbelievable metadata: absurd (gpu_memory_mb") for d in decisions)
        finally:
            await absurd.close()
        # (b) a believable 4 TiB with its own (valid) key: the known worker still comes first.
        big = await HostileWorker(url, room, "big", tmp_path / "big", mem=4 * 1024 * 1024).start()
        try:
            remote, decisions = job(url, room, tmp_path, "b", known_workers=known)
            assert (await asyncio.wait_for(remote.run(), 90)).worker == "lab"
            assert big.offers == 0
            assert decisions[0].startswith(f"Trying lab (Test GPU, 24000 MB, key {lab.key.fingerprint[7:17]}), used before")
            # (c) a client with no history: the newcomer wins, and the CLI line names it and its key.
            remote, decisions = job(url, room, tmp_path, "c", known_workers=store(tmp_path / "fresh"))
            task = asyncio.ensure_future(remote.run())
            for _ in range(200):
                if big.received:
                    break
                await asyncio.sleep(0.05)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            assert decisions[0].startswith(f"Trying big (Fake GPU, 4194304 MB, key {big.key.fingerprint[7:17]}), never used from here")
            assert big.received, "documented limit: a worker-token holder with a fresh key gets a new user's package"
        finally:
            await big.close()
    finally:
        await lab.close()


@pytest.mark.parametrize("number", ["1e400", "Infinity", "NaN", "-Infinity"])
async def test_c6_non_finite_gpu_memory_does_not_crash_client_train_auto_select(signaling_server, room, tmp_path, number):
    url = signaling_server.url
    lab = await real_worker(url, room, tmp_path / "lab", "lab")
    props = '{"worker_name":"inf","gpu_model":"X","gpu_memory_mb":%s,"status":"available","max_concurrent_jobs":%s}' % (number, number)
    try:
        async with raw_worker(url, room, "inf", props) as reply:
            assert reply.get("type") in ("registered_auth", "error")  # a stricter server may refuse the frame
            proc = await asyncio.create_subprocess_exec(
                *sleap_rtc_argv("client-train", str(TINY_PACKAGE), "--server", url, "--room-id", room[0],
                                "--token", room[1], "--auto-select", "--output", str(tmp_path / "models")),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )
            out, _ = await asyncio.wait_for(proc.communicate(), 90)
            text = out.decode(errors="replace")
            assert proc.returncode == 0, text[-3000:]
            assert "Traceback" not in text
            assert "Trying lab" in text and "Trying inf" not in text
            if reply.get("type") == "registered_auth":
                assert "Ignoring worker(s) with unbelievable metadata: inf" in text
            assert lab.jobs_done == 1
    finally:
        await lab.close()

