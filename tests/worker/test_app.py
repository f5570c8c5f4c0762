"""The worker runtime over the real signaling server and real aiortc channels on loopback.

sleap-nn is replaced by the fast stand-in here (the real one runs in test_executor_real).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest
from aiortc import RTCPeerConnection

from sleap_rtc.core import jobs_wire, transport
from sleap_rtc.core.protocol import WORKER_BUSY, ChannelType, MessageType, Prop, Role
from sleap_rtc.core.phases import JobPhases, Phase
from sleap_rtc.core.remote_job import JobSession
from sleap_rtc.core.signaling import SignalingClient
from sleap_rtc.worker.app import Worker, WorkerConfig, format_banner
from sleap_rtc.worker.capabilities import Capabilities, GpuInfo
from sleap_rtc.worker.executor import JobExecutor

pytestmark = pytest.mark.timeout(90)

FAKE = [sys.executable, str(Path(__file__).with_name("fake_sleap_nn.py"))]


def fake_caps(name: str, mem: int = 24000) -> Capabilities:
    """Injected in-process capabilities (no production flag can claim a GPU)."""
    return Capabilities(worker_name=name, hostname="testhost", gpu=GpuInfo("Test GPU", mem, "12.4", 0),
                        sleap_nn_version="0.3.5")


async def start_worker(url, room, tmp_path, name="w1", mode="ok", **cfg) -> Worker:
    config = WorkerConfig(server_url=url, room_id=room[0], token=room[1], work_dir=tmp_path / name,
                          executor_factory=lambda jid: JobExecutor(jid, command=FAKE, env={"FAKE_MODE": mode}), **cfg)
    worker = Worker(config, fake_caps(name))
    await worker.start()
    return worker


async def client(url, room) -> SignalingClient:
    sig = SignalingClient(url, room_id=room[0], token=room[1], role=Role.CLIENT.value)
    await sig.connect()
    return sig


async def status_of(sig: SignalingClient, peer_id: str) -> str:
    peers = await sig.discover({"role": "worker"})
    return next(p for p in peers if p["peer_id"] == peer_id)["metadata"]["properties"][Prop.STATUS]


async def wait_status(sig, peer_id, want, timeout=15.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (got := await status_of(sig, peer_id)) != want:
        assert loop.time() < deadline, f"status stayed {got!r}, wanted {want!r}"
        await asyncio.sleep(0.1)


def test_banner_format():
    text = format_banner("room-abc123", "tok-xyz789", "worker-w1-1")
    lines = text.splitlines()
    assert lines[0] == "[INFO] Worker authenticated. Session string for direct connection:"
    assert lines[1].startswith("sleap-session:")
    assert "[INFO]   Room ID: room-abc123" in lines and "[INFO]   Token: tok-xyz789" in lines


async def test_two_workers_in_one_room_are_discoverable(signaling_server, room, tmp_path):
    w1 = await start_worker(signaling_server.url, room, tmp_path, "w1")
    w2 = await start_worker(signaling_server.url, room, tmp_path, "w2")
    c = await client(signaling_server.url, room)
    try:
        peers = {p["peer_id"]: p for p in await c.discover({"role": "worker"})}
        assert set(peers) == {w1.peer_id, w2.peer_id}
        props = peers[w2.peer_id]["metadata"]["properties"]
        assert props[Prop.WORKER_NAME] == "w2" and props[Prop.GPU_MODEL] == "Test GPU"
        assert props[Prop.GPU_MEMORY_MB] == 24000 and props[Prop.STATUS] == "available"
        assert "training-worker" in peers[w1.peer_id]["metadata"]["tags"]
    finally:
        await c.close()
        await w1.close()
        await w2.close()


async def test_twenty_concurrent_offers_one_accepted_nineteen_busy(signaling_server, room, tmp_path):
    worker = await start_worker(signaling_server.url, room, tmp_path, lease_timeout=5.0)
    clients = await asyncio.gather(*(client(signaling_server.url, room) for _ in range(20)))
    got: dict[str, list[dict]] = {c.peer_id: [] for c in clients}
    for c in clients:
        c.add_listener(lambda f, c=c: got[c.peer_id].append(f) if f.get("type") == MessageType.ERROR else None)
    pc = RTCPeerConnection()
    pc.createDataChannel("x")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    try:
        await asyncio.gather(*(c.send({"type": "offer", "sender": c.peer_id, "target": worker.peer_id, "sdp": sdp})
                               for c in clients))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while sum(bool(v) for v in got.values()) < 19 and loop.time() < deadline:
            await asyncio.sleep(0.05)
        busy = {pid: frames for pid, frames in got.items() if frames}
        assert len(busy) == 19
        for pid, frames in busy.items():
            (frame,) = frames
            assert frame["reason"] == WORKER_BUSY and frame["target"] == pid
            assert frame["status"] == "reserved" and "--room-id" in frame["message"]
        assert worker.guard.status == "reserved"
        # The winner never completes ICE: the lease gives the worker back.
        await wait_status(clients[0], worker.peer_id, "available", timeout=15)
    finally:
        await pc.close()
        await asyncio.gather(*(c.close() for c in clients))
        await worker.close()


async def test_lease_expires_when_client_never_opens_channel(signaling_server, room, tmp_path):
    worker = await start_worker(signaling_server.url, room, tmp_path, lease_timeout=1.5)
    c = await client(signaling_server.url, room)
    pc = RTCPeerConnection()
    pc.createDataChannel("x")
    await pc.setLocalDescription(await pc.createOffer())
    try:
        await c.send({"type": "offer", "sender": c.peer_id, "target": worker.peer_id, "sdp": pc.localDescription.sdp})
        await wait_status(c, worker.peer_id, "reserved", timeout=5)
        t0 = asyncio.get_running_loop().time()
        await wait_status(c, worker.peer_id, "available", timeout=10)
        assert asyncio.get_running_loop().time() - t0 < 8
        assert worker.guard.reservation is None
    finally:
        await pc.close()
        await c.close()
        await worker.close()


async def run_job(url, room, worker, tmp_path, tag: str):
    c = await client(url, room)
    try:
        channel = await transport.connect(c, worker.peer_id, timeout=20, receive_dir=tmp_path / f"in-{tag}",
                                          cache_dir=tmp_path / f"cache-{tag}")
        events = []
        phases = JobPhases()
        phases.advance(Phase.CONNECTING)  # JobSession starts from a connected channel
        session = JobSession(channel, Path(__file__).parents[2] / "resources/tiny/tiny.training_job.zip",
                             output_dir=tmp_path / f"out-{tag}", on_progress=events.append, phases=phases)
        summary = await asyncio.wait_for(session.run(), 60)
        await channel.close()
        return summary, events
    finally:
        await c.close()


async def test_one_worker_serves_two_clients_in_turn(signaling_server, room, tmp_path):
    worker = await start_worker(signaling_server.url, room, tmp_path)
    # An abandoned partial transfer from two days ago: the first job's clean-up drops it.
    stale = worker.cache_dir / "partial" / ("0" * 64 + ".part")
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"abandoned")
    os.utime(stale, (time.time() - 2 * 86400,) * 2)
    try:
        for tag in ("a", "b"):
            summary, events = await run_job(signaling_server.url, room, worker, tmp_path, tag)
            assert any(e.get("event") == "epoch_end" for e in events)
            assert list((tmp_path / f"out-{tag}").rglob("best.ckpt")), "the trained model came back"
            assert summary.predictions is not None and summary.predictions.is_file()
            c = await client(signaling_server.url, room)
            await wait_status(c, worker.peer_id, "available")
            await c.close()
        assert worker.jobs_done == 2
        for _ in range(100):  # the clean-up runs once the client hung up
            if not stale.exists():
                break
            await asyncio.sleep(0.1)
        assert not stale.exists(), "abandoned partial files are pruned after a job"
        assert list((worker.cache_dir / "files").iterdir()), "the package stays cached (recently used)"
    finally:
        await worker.close()


async def test_busy_worker_refuses_and_keeps_serving_then_client_vanishes(signaling_server, room, tmp_path):
    worker = await start_worker(signaling_server.url, room, tmp_path, mode="slow")
    c = await client(signaling_server.url, room)
    other = await client(signaling_server.url, room)
    try:
        channel = await transport.connect(c, worker.peer_id, timeout=20, receive_dir=tmp_path / "in", cache_dir=tmp_path / "cache")
        receipt = await channel.send_file(Path(__file__).parents[2] / "resources/tiny/tiny.training_job.zip")
        await channel.send(jobs_wire.job_submit("j1", {"sha256": receipt.sha256, "name": receipt.name}, {"kind": "train"}))
        while True:
            msg = await channel.receive(30)
            if msg["type"] == ChannelType.JOB_PROGRESS and msg["event"]["event"] == "epoch_end":
                break
        assert worker.guard.status == "busy"
        # A second client is refused with the worker's message; the job goes on.
        from sleap_rtc.core.transport_errors import WorkerBusyError

        with pytest.raises(WorkerBusyError) as info:
            await transport.connect(other, worker.peer_id, timeout=10)
        assert info.value.status == "busy"
        assert (await channel.receive(30))["type"] in (ChannelType.JOB_PROGRESS, ChannelType.JOB_LOG)
        # Now the client vanishes mid-job: the job is cancelled and the worker freed.
        await channel.abort("client crashed")
        await c.close()
        await wait_status(other, worker.peer_id, "available", timeout=30)
    finally:
        await other.close()
        await worker.close()


async def test_extra_connections_join_the_reserved_job_and_nobody_else(signaling_server, room, tmp_path):
    """Striping through the real worker: the reserved client's channel gets a grant and its
    extra connections pass the guard (same reservation, worker stays reserved, not busy for
    another client); a wrong token, or another client replaying the token, is refused."""
    from sleap_rtc.core.transport_errors import ConnectionFailedError

    worker = await start_worker(signaling_server.url, room, tmp_path)
    sig = await client(signaling_server.url, room)
    intruder = await client(signaling_server.url, room)
    try:
        ch = await transport.connect(sig, worker.peer_id, receive_dir=tmp_path / "c-recv", cache_dir=tmp_path / "c-cache")
        assert await ch.stripes.ensure(3) == 3
        token, _ = await ch.stripes._get_grant()
        with pytest.raises(ConnectionFailedError, match="striped transfer"):
            await transport.open_stripe(sig, worker.peer_id, "not-the-token", timeout=10)
        with pytest.raises(ConnectionFailedError, match="striped transfer"):
            await transport.open_stripe(intruder, worker.peer_id, token, timeout=10)
        src = tmp_path / "p.bin"
        src.write_bytes(os.urandom(3 * 1024 * 1024))
        receipt = await ch.send_file(src)
        assert receipt.bytes_sent == src.stat().st_size
        assert await status_of(sig, worker.peer_id) == "reserved"  # one reservation, not three
        await ch.close()
        await wait_status(sig, worker.peer_id, "available")
    finally:
        await sig.close()
        await intruder.close()
        await worker.close()
async def test_worker_key_is_persistent_and_advertised_in_banner_metadata_and_session_string(signaling_server, room, tmp_path):
    from sleap_rtc.core.credentials import decode_session_string
    from sleap_rtc.core.identity import KEY_FILE

    first = await start_worker(signaling_server.url, room, tmp_path, "w1")
    fingerprint = first.key.fingerprint
    c = await client(signaling_server.url, room)
    try:
        banner = format_banner(first.room_id, first.token, first.peer_id, fingerprint=fingerprint)
        assert f"[INFO] Worker fingerprint: {fingerprint}" in banner.splitlines()
        assert decode_session_string(banner.splitlines()[1]).fingerprint == fingerprint
        props = next(p for p in await c.discover({"role": "worker"}))["metadata"]["properties"]
        assert props[Prop.FINGERPRINT] == fingerprint and props[Prop.PUBLIC_KEY] == first.key.public_key
        assert (os.stat(tmp_path / "w1" / KEY_FILE).st_mode & 0o777) == 0o600
    finally:
        await first.close()
    again = await start_worker(signaling_server.url, room, tmp_path, "w1")  # same work dir: same identity
    try:
        assert again.key.fingerprint == fingerprint
    finally:
        await again.close()
        await c.close()


async def test_channel_lost_mid_job_reattaches_and_the_job_goes_on(signaling_server, room, tmp_path):
    # An outage mid-training (the channel dies; simulated by aborting it on the client):
    # the worker keeps the job running, the client reconnects to the same worker and
    # follows the same job again (job_attach), instead of re-running it elsewhere.
    from sleap_rtc.core.credentials import RoomCredentials
    from sleap_rtc.core.job_events import JobCallbacks
    from sleap_rtc.core.job_runner import RemoteJob
    from sleap_rtc.core.retry import Move, Origin, Outcome

    config = WorkerConfig(server_url=signaling_server.url, room_id=room[0], token=room[1], work_dir=tmp_path / "w1",
                          executor_factory=lambda jid: JobExecutor(jid, command=FAKE, env={"FAKE_EPOCHS": "40"}))
    worker = Worker(config, fake_caps("w1"))
    await worker.start()
    decisions: list[str] = []
    epochs: list[int] = []
    job: RemoteJob

    class Watch(JobCallbacks):
        decision = decisions.append

        def progress(self, event):
            if event.get("event") == "epoch_end":
                epochs.append(event["epoch"])
                if len(epochs) == 3 and job.reconnects == 0:
                    asyncio.ensure_future(job.session.channel.abort("simulated outage"))

    job = RemoteJob(Path(__file__).parents[2] / "resources/tiny/tiny.training_job.zip", server_url=signaling_server.url,
                    credentials=RoomCredentials(*room), results_dir=tmp_path / "out", callbacks=Watch())
    try:
        summary = await asyncio.wait_for(job.run(), 60)
    finally:
        await worker.close()
    text = "\n".join(decisions)
    assert job.reconnects == 1, text
    assert job.moves == [(Origin.AUTO, Outcome.LINK_LOST, Move.RECONNECT)], job.moves
    assert "Reconnected to w1" in text and "kept the job running" in text, text
    assert summary.worker == "w1" and (tmp_path / "out").exists()
    assert epochs[-1] == 39 and epochs.count(0) == 1, epochs  # one run of the job, not two
    assert worker.jobs_done == 1
# ---------------------------------------------------------------------- hostile clients (W9, W10, W12, W13)


async def _sdp_offer() -> tuple[RTCPeerConnection, str]:
    pc = RTCPeerConnection()
    pc.createDataChannel("x")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


async def test_w9_replayed_offer_cannot_keep_the_worker_reserved(signaling_server, room, tmp_path):
    """One offer frame, never followed by ICE, replayed as soon as the lease lapses."""
    worker = await start_worker(signaling_server.url, room, tmp_path, lease_timeout=1.0)
    c = await client(signaling_server.url, room)
    errors: list[dict] = []
    c.add_listener(lambda f: errors.append(f) if f.get("type") == MessageType.ERROR else None)
    pc, sdp = await _sdp_offer()
    offer = {"type": "offer", "sender": c.peer_id, "target": worker.peer_id, "sdp": sdp}
    try:
        await c.send(offer)
        await wait_status(c, worker.peer_id, "reserved", timeout=5)
        await wait_status(c, worker.peer_id, "available", timeout=10)
        assert worker.guard.backoff_remaining(c.peer_id) > 20
        for _ in range(3):  # the replays are refused and never reserve the worker
            await c.send(offer)
            await asyncio.sleep(0.3)
            assert worker.guard.status == "available"
        deadline = asyncio.get_running_loop().time() + 10
        while len(errors) < 3 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        assert len(errors) == 3 and all(e["reason"] == WORKER_BUSY and "refuses offers" in e["message"] for e in errors)
        # Another client is not punished for it.
        other = await client(signaling_server.url, room)
        try:
            assert worker.guard.backoff_remaining(other.peer_id) == 0
        finally:
            await other.close()
    finally:
        await pc.close()
        await c.close()
        await worker.close()


async def test_w10_silent_channel_is_released_and_backed_off(signaling_server, room, tmp_path):
    worker = await start_worker(signaling_server.url, room, tmp_path, submit_idle_timeout=2.0)
    c = await client(signaling_server.url, room)
    try:
        channel = await transport.connect(c, worker.peer_id, timeout=20, receive_dir=tmp_path / "in", cache_dir=tmp_path / "cache")
        t0 = asyncio.get_running_loop().time()
        await wait_status(c, worker.peer_id, "available", timeout=15)  # was 300 s (submit_timeout)
        assert asyncio.get_running_loop().time() - t0 < 12
        await channel.close()
        from sleap_rtc.core.transport_errors import WorkerBusyError

        with pytest.raises(WorkerBusyError, match="refuses offers"):
            await transport.connect(c, worker.peer_id, timeout=20, receive_dir=tmp_path / "in2", cache_dir=tmp_path / "cache2")
    finally:
        await c.close()
        await worker.close()


def _sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as fh:
        fh.truncate(size)
    return path


async def test_w12_oversized_offers_refused_and_partials_cleaned(signaling_server, room, tmp_path):
    from sleap_rtc.core.transport_errors import FileTransferError

    worker = await start_worker(signaling_server.url, room, tmp_path)
    c = await client(signaling_server.url, room)
    try:
        channel = await transport.connect(c, worker.peer_id, timeout=20, receive_dir=tmp_path / "in", cache_dir=tmp_path / "cache")
        # Over the per-file cap (the hash is never computed: the receiver refuses on the offer).
        huge = _sparse(tmp_path / "huge.bin", worker.config.max_package_bytes + 1)
        with pytest.raises(FileTransferError, match="at most"):
            await asyncio.wait_for(channel.send_file(huge, sha256="a" * 64), 15)
        assert not (worker.cache_dir / "partial").exists() or not list((worker.cache_dir / "partial").iterdir())
        # A real partial upload, then a hang-up: nothing of it stays on the worker.
        big = _sparse(tmp_path / "big.bin", 64 * 1024 * 1024)
        started = asyncio.Event()
        send = asyncio.ensure_future(channel.send_file(big, sha256="b" * 64,
                                                       progress=lambda d, s: d > 4 * 1024 * 1024 and started.set()))
        await asyncio.wait_for(started.wait(), 20)
        assert list((worker.cache_dir / "partial").glob("*.part")), "the partial file exists while it arrives"
        await channel.abort()
        with pytest.raises(Exception):
            await send
        await wait_status(c, worker.peer_id, "available", timeout=20)
        for _ in range(50):
            if not list((worker.cache_dir / "partial").glob("*")):
                break
            await asyncio.sleep(0.1)
        assert not list((worker.cache_dir / "partial").glob("*")), "a session's partial files go when it ends"
    finally:
        await c.close()
        await worker.close()


async def test_w12_offer_larger_than_the_free_disk_refused(signaling_server, room, tmp_path):
    import shutil as _sh

    from sleap_rtc.core.transport_errors import FileTransferError

    worker = await start_worker(signaling_server.url, room, tmp_path, max_package_bytes=2**62)
    c = await client(signaling_server.url, room)
    try:
        channel = await transport.connect(c, worker.peer_id, timeout=20, receive_dir=tmp_path / "in", cache_dir=tmp_path / "cache")
        free = _sh.disk_usage(tmp_path).free
        path = tmp_path / "beyond-disk.bin"
        try:
            _sparse(path, free + 1024**3)
        except OSError:
            pytest.skip("this file system cannot hold a sparse file larger than its free space")
        with pytest.raises(FileTransferError, match="free disk"):
            await asyncio.wait_for(channel.send_file(path, sha256="c" * 64), 15)
        assert not (worker.cache_dir / "partial").exists() or not list((worker.cache_dir / "partial").iterdir())
    finally:
        await c.close()
        await worker.close()


async def test_w13_concurrent_offers_are_capped(signaling_server, room, tmp_path):
    from sleap_rtc.core.files import MAX_INCOMING

    worker = await start_worker(signaling_server.url, room, tmp_path)
    c = await client(signaling_server.url, room)
    try:
        channel = await transport.connect(c, worker.peer_id, timeout=20, receive_dir=tmp_path / "in", cache_dir=tmp_path / "cache")
        replies: list[dict] = []
        original = channel.transfers.on_control
        channel.transfers.on_control = lambda msg: (replies.append(msg), original(msg))
        n = 40
        for i in range(n):  # raw offers, none of them ever sent or finished
            channel.send_control({"type": "file_offer", "transfer_id": 1001 + 2 * i, "name": f"f{i}", "size": 1 << 20,
                                  "sha256": f"{i:064x}", "meta": {}})
        deadline = asyncio.get_running_loop().time() + 15
        while len(replies) < n and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        accepted = [m for m in replies if m["type"] == "file_accept"]
        refused = [m for m in replies if m["type"] == "file_error" and m["reason"] == "too_many_transfers"]
        assert len(accepted) == MAX_INCOMING and len(refused) == n - MAX_INCOMING
        assert len(list((worker.cache_dir / "partial").glob("*.part"))) <= MAX_INCOMING
        await channel.close()
        await wait_status(c, worker.peer_id, "available", timeout=20)
        for _ in range(50):
            if not list((worker.cache_dir / "partial").glob("*")):
                break
            await asyncio.sleep(0.1)
        assert not list((worker.cache_dir / "partial").glob("*"))
    finally:
        await c.close()
        await worker.close()


async def test_same_client_offering_again_replaces_its_dead_session(signaling_server, room, tmp_path):
    # After an outage the client may notice its channel is dead before the worker does and
    # offer again: the worker must take the new offer (not answer "busy" to its own client).
    # A session its client used (here one message; in an outage, upload bytes) is replaced;
    # one it never used is not, or replaying offers would hold the worker reserved (W9).
    from sleap_rtc.core import jobs_wire

    worker = await start_worker(signaling_server.url, room, tmp_path)
    c = await client(signaling_server.url, room)
    try:
        first = await transport.connect(c, worker.peer_id, timeout=20, receive_dir=tmp_path / "in1")
        assert worker.guard.status == "reserved"
        await first.send(jobs_wire.job_attach("job-unknown"))
        assert (await first.receive(10))["type"] == "job_rejected"
        second = await transport.connect(c, worker.peer_id, timeout=20, receive_dir=tmp_path / "in2")
        assert not second.closed
        await asyncio.wait_for(first.wait_closed(), 10)  # the worker ended the old session
        assert worker.guard.status == "reserved" and worker.guard.reservation.client_peer_id == c.peer_id
        await second.send(jobs_wire.job_attach("job-unknown"))
        assert (await second.receive(10))["type"] == "job_rejected"
        await second.close()
        await wait_status(c, worker.peer_id, "available", timeout=15)
        unused = await transport.connect(c, worker.peer_id, timeout=20, receive_dir=tmp_path / "in3")
        from sleap_rtc.core.transport_errors import WorkerBusyError

        with pytest.raises(WorkerBusyError, match="refuses offers"):
            await transport.connect(c, worker.peer_id, timeout=20, receive_dir=tmp_path / "in4")
        await unused.close()
    finally:
        await c.close()
        await worker.close()
