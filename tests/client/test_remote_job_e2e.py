"""End to end on loopback: a real signaling server, real WebRTC (aiortc) and three
in-process workers with injected capabilities, one of them busy.

The workers are minimal: they refuse offers with the seed's busy error while busy, and
otherwise accept, take the package, stream a log line and an epoch event, and send a
model zip back, which is what ``sleap_rtc.worker`` does with sleap-nn.
"""

from __future__ import annotations

import asyncio
import io
import zipfile

from sleap_rtc.core import jobs_wire, transport
from sleap_rtc.core.credentials import encode_session_string
from sleap_rtc.core.identity import generate_key
from sleap_rtc.core.phases import JobPhases, Phase
from sleap_rtc.core.protocol import MessageType, busy_error_frame
from sleap_rtc.core.remote_job import RemoteJob
from sleap_rtc.core.selection import WorkerUnavailableError
from sleap_rtc.core.signaling import SignalingClient

import pytest


class FakeWorker:
    """A worker peer with fixed capabilities; ``busy`` makes it refuse offers."""

    def __init__(self, url, room_id, token, name, mem, status="available", tmp=None, turn_busy_on_offer=False):
        self.key = generate_key()  # every worker proves its identity key before the upload
        props = {"worker_name": name, "gpu_memory_mb": mem, "gpu_model": "FakeGPU", "status": status,
                 "public_key": self.key.public_key, "fingerprint": self.key.fingerprint}
        self.sig = SignalingClient(url, room_id=room_id, token=token, role="worker", peer_id=f"worker-{name}",
                                   metadata={"tags": ["sleap-rtc"], "properties": props})
        self.name, self.status, self.tmp = name, status, tmp
        self.turn_busy_on_offer = turn_busy_on_offer
        self.offers = 0
        self.tasks = []

    async def start(self):
        await self.sig.connect()
        self.sig.add_listener(self._on_frame)
        return self

    def _on_frame(self, frame):
        if frame.get("type") == MessageType.OFFER:
            self.offers += 1
            self.tasks.append(asyncio.ensure_future(self._on_offer(frame)))

    async def _on_offer(self, frame):
        if self.turn_busy_on_offer:
            self.status = "busy"  # another client got it first: the room hears it too late
        if self.status != "available":
            await self.sig.send(busy_error_frame(frame["sender"], self.status))
            return
        channel = await transport.accept(self.sig, frame, receive_dir=self.tmp / self.name)
        channel.prove_identity(self.key)
        try:
            pkg = await channel.receive_file(timeout=10)
            submit = await channel.receive(timeout=10)
            job = submit["job_id"]
            assert submit["package"]["sha256"] == pkg.sha256
            await channel.send(jobs_wire.job_accepted(job))
            await channel.send(jobs_wire.job_log(job, f"training on {self.name}"))
            await channel.send(jobs_wire.job_progress(job, {"event": "epoch_end", "epoch": 1, "logs": {"train_loss": 0.5}}))
            model = self.tmp / f"{self.name}-model.zip"
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w") as zf:
                zf.writestr("best.ckpt", f"weights from {self.name}")
            model.write_bytes(buf.getvalue())
            from sleap_rtc.core.files import sha256_file

            size, digest = sha256_file(model)
            await channel.send(jobs_wire.job_result(job, "model", "centroid.zip", digest.hexdigest() if hasattr(digest, "hexdigest") else digest, size))
            await channel.send_file(model, name="centroid.zip")
            await channel.send(jobs_wire.job_complete(job, [{"name": "centroid.zip"}], 0.1))
            await channel.wait_closed(10)
        except Exception as exc:  # surfaces in the test's failure output
            self.error = exc
            raise
        finally:
            await channel.close()

    async def close(self):
        for t in self.tasks:
            t.cancel()
        await self.sig.close()


@pytest.fixture
async def three_workers(signaling_server, room, tmp_path):
    room_id, token = room
    url = signaling_server.url
    ws = [
        await FakeWorker(url, room_id, token, "big-busy", 80000, status="busy", tmp=tmp_path).start(),
        await FakeWorker(url, room_id, token, "best", 24000, tmp=tmp_path, turn_busy_on_offer=True).start(),
        await FakeWorker(url, room_id, token, "ok", 16000, tmp=tmp_path).start(),
    ]
    yield url, room_id, token, ws
    for w in ws:
        await w.close()


async def test_auto_select_skips_busy_and_falls_back_when_best_turns_busy(three_workers, tmp_path):
    url, room_id, token, (busy, best, ok) = three_workers
    pkg = tmp_path / "pkg.zip"
    pkg.write_bytes(b"package bytes" * 1000)
    phases, seen, decisions, logs, events, uploads = JobPhases(), [], [], [], [], []
    phases.subscribe(lambda ch: seen.append(ch.new) if ch.old != ch.new else None)
    job = RemoteJob(
        pkg, server_url=url, room_id=room_id, token=token, results_dir=tmp_path / "out", phases=phases,
        on_decision=decisions.append, on_log=logs.append, on_progress=events.append, on_upload=uploads.append,
    )
    try:
        summary = await asyncio.wait_for(job.run(), 60)
    finally:
        assert not getattr(ok, "error", None), repr(getattr(ok, "error", None))
    assert not getattr(ok, "error", None), repr(getattr(ok, "error", None))
    assert busy.offers == 0 and best.offers == 1 and ok.offers == 1
    assert summary.worker == "ok" and summary.peer_id == "worker-ok"
    assert decisions[0].startswith(f"Trying best (FakeGPU, 24000 MB, key {best.key.fingerprint[7:17]}), never used from here")
    assert decisions[1].startswith("best is busy (Worker is currently busy.")
    assert decisions[-2] == f"First job on worker ok: remembering its identity key {ok.key.fingerprint}."
    assert decisions[-1] == f"Connected to ok (FakeGPU, 16000 MB, key {ok.key.fingerprint[7:17]})."
    assert logs == ["training on ok"] and events[0]["logs"] == {"train_loss": 0.5}
    assert uploads[-1].done == uploads[-1].total == pkg.stat().st_size
    model_dir = tmp_path / "out" / "models" / "centroid"
    assert summary.files == [model_dir] and (model_dir / "best.ckpt").read_text() == "weights from ok"
    assert seen == [Phase.JOINING, Phase.DISCOVERING, Phase.SELECTING, Phase.RESERVING, Phase.SELECTING,
                    Phase.RESERVING, Phase.CONNECTING, Phase.UPLOADING, Phase.TRAINING, Phase.DOWNLOADING, Phase.DONE]


async def test_session_string_to_busy_worker_shows_the_seed_message(three_workers, tmp_path):
    url, room_id, token, (busy, _best, _ok) = three_workers
    pkg = tmp_path / "pkg.zip"
    pkg.write_bytes(b"x")
    session = encode_session_string(room_id, token, busy.sig.peer_id)
    from sleap_rtc.core.credentials import decode_session_string

    target = decode_session_string(session)
    job = RemoteJob(pkg, server_url=url, room_id=target.room_id, token=target.token,
                    session_worker=target.peer_id, results_dir=tmp_path / "out")
    with pytest.raises(WorkerUnavailableError) as err:
        await asyncio.wait_for(job.run(), 30)
    assert str(err.value) == (
        "Worker worker-big-busy is busy: Worker is currently busy. Use --room-id and --token for worker "
        "discovery to pick an available worker. (--room-id and --token are in the worker's banner.)"
    )
    assert job.phases.phase == Phase.FAILED
