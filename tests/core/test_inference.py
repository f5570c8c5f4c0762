"""``core.inference``: the request, what goes on the wire, and the per-video callbacks.

The worker is an in-memory stand-in (``job_fakes``) speaking core's own messages; the same
path with a real worker, server and sleap-nn runs in ``tests/client/test_track_videos_real.py``.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
import yaml

from job_fakes import FakeWorkers
from sleap_rtc.core.credentials import RoomCredentials
from sleap_rtc.core.data_roots import DataRootMap
from sleap_rtc.core.file_hashes import HashMemo
from sleap_rtc.core.inference import (
    InferenceCallbacks,
    InferenceOptions,
    InferenceRequest,
    InferenceRequestError,
    ModelSource,
    RemoteInference,
    VideoTarget,
)
from sleap_rtc.core.job_policy import Auto
from sleap_rtc.core.remote_job import JobFailedError

from test_job_runner import FakeSignaling
from test_job_runner import peer as bare_peer


def peer(pid, mem, **kw):
    """A worker of this sleap-rtc: it takes videos, data-root references and model ids."""
    p = bare_peer(pid, mem, **kw)
    p["metadata"]["properties"]["inference_inputs"] = ["video", "data_root", "model_id"]
    return p


class Seen(InferenceCallbacks):
    """Every per-video callback, in order."""

    def __init__(self):
        self.uploads, self.progress, self.arrived = [], [], []

    def video_upload(self, upload):
        self.uploads.append(upload)

    def inference_progress(self, progress):
        self.progress.append(progress)

    def video_predictions(self, found):
        self.arrived.append(found)


def plan_of(channel) -> list[dict]:
    with zipfile.ZipFile(io.BytesIO(channel.package)) as zf:
        return yaml.safe_load(zf.read("jobs.yaml"))["inference"]


def script(fail_after: int | None = None):
    """A worker that predicts each video of the plan, sending progress, then its file."""

    async def run(ch):
        await ch.accept()
        for n, entry in enumerate(plan_of(ch)):
            if fail_after is not None and n == fail_after:
                await ch.emit({"type": "job_failed", "job_id": ch.job_id, "reason": "sleap-nn crashed"})
                return
            for done in (4, 8):
                await ch.event({"event": "inference_progress", "video": n, "n_processed": done, "n_total": 8,
                                "rate": 20.0, "eta": (8 - done) / 20})
            await ch.result_file("predictions", entry["output_path"], f"predictions {n}".encode())
        await ch.complete()

    return run


@pytest.fixture
def inputs(tmp_path):
    videos = []
    for n in range(2):
        v = tmp_path / f"cam{n}.mp4"
        v.write_bytes(f"video bytes {n}".encode() * 100)
        videos.append(v)
    model = tmp_path / "model"
    model.mkdir()
    (model / "training_config.yaml").write_text("x: 1\n")
    (model / "best.ckpt").write_bytes(b"weights")
    return videos, model


def job(tmp_path, request, workers, seen, signaling):
    return RemoteInference(request, credentials=RoomCredentials("room-test", "tok"), results_dir=tmp_path / "out",
                           policy=Auto(), callbacks=seen, signaling=signaling, connect=workers.connect,
                           hash_memo=HashMemo(tmp_path / "memo.json"))


async def test_videos_and_models_go_on_their_own_and_a_second_run_moves_nothing(tmp_path, inputs):
    videos, model = inputs
    signaling = FakeSignaling([peer("w1", 8000)])
    workers = FakeWorkers(default=script())
    request = InferenceRequest(
        videos=(VideoTarget(videos[0]), VideoTarget(videos[1], frames=(3, 1, 2, 9))),
        models=(ModelSource(path=model),), options=InferenceOptions(peak_threshold=0.1, tracking=True,
                                                                    tracker={"max_tracks": 2}))
    seen = Seen()
    summary = await job(tmp_path, request, workers, seen, signaling).run()
    ch = workers.channels[0]
    assert [u["meta"].get("kind") for u in ch.uploads] == ["model", "video", "video", None]
    plan = plan_of(ch)
    assert [e["video"]["sha256"] for e in plan] == [u["sha256"] for u in ch.uploads[1:3]]
    assert "frames" not in plan[0] and plan[1]["frames"] == [[1, 3], [9, 9]]
    assert plan[0]["model_ids"] == [ch.uploads[0]["sha256"]] == summary.model_ids
    assert plan[0]["options"] == {"peak_threshold": 0.1, "tracking": True, "max_tracks": 2}
    assert summary.video_bytes_sent == sum(v.stat().st_size for v in videos) and summary.model_bytes_sent > 0
    assert [(p.index, p.frames_done, p.frames_total, p.fps) for p in seen.progress] == [
        (0, 4, 8, 20.0), (0, 8, 8, 20.0), (1, 4, 8, 20.0), (1, 8, 8, 20.0)]
    assert [(a.index, a.path.read_bytes()) for a in seen.arrived] == [(0, b"predictions 0"), (1, b"predictions 1")]
    assert [a.index for a in summary.predictions] == [0, 1]

    again = Seen()
    second = await job(tmp_path, request, workers, again, signaling).run()
    assert (second.video_bytes_sent, second.model_bytes_sent) == (0, 0)
    assert [u.cached for u in again.uploads if u.done == u.total] == [True, True]
    assert [a.path.name for a in again.arrived] == ["000.cam0-2.predictions.slp", "001.cam1-2.predictions.slp"]


async def test_a_video_under_an_advertised_data_root_is_referenced_not_sent(tmp_path, inputs):
    videos, model = inputs
    lab_worker = peer("w1", 8000)
    lab_worker["metadata"]["properties"]["data_roots"] = ["lab"]
    workers = FakeWorkers(default=script())
    seen = Seen()
    request = InferenceRequest(videos=(VideoTarget(videos[0]),), models=(ModelSource(model_id="c" * 64),),
                               data_roots=DataRootMap.from_specs([f"lab={tmp_path}"]))
    summary = await job(tmp_path, request, workers, seen, FakeSignaling([lab_worker])).run()
    ch = workers.channels[0]
    assert [u["meta"] for u in ch.uploads] == [{}]  # the package only
    entry = plan_of(ch)[0]
    assert entry["video"]["root"] == "lab" and entry["video"]["path"] == "cam0.mp4"
    assert entry["model_ids"] == ["c" * 64]
    assert summary.from_roots == [0] and seen.uploads[0].root == "lab"

    plain = FakeWorkers(default=script())  # a worker without that root: the video is uploaded
    await job(tmp_path, request, plain, Seen(), FakeSignaling([peer("w2", 8000)])).run()
    assert [u["meta"].get("kind") for u in plain.channels[0].uploads] == ["video", None]


async def test_a_job_that_fails_midway_keeps_the_videos_already_returned(tmp_path, inputs):
    videos, model = inputs
    workers = FakeWorkers(default=script(fail_after=1))
    seen = Seen()
    running = job(tmp_path, InferenceRequest(videos=tuple(VideoTarget(v) for v in videos),
                                             models=(ModelSource(path=model),)), workers, seen,
                  FakeSignaling([peer("w1", 8000)]))
    with pytest.raises(JobFailedError, match="sleap-nn crashed"):
        await running.run()
    assert [a.index for a in running.returned] == [0]
    assert running.returned[0].path.read_bytes() == b"predictions 0"


async def test_an_older_worker_is_explained_not_sent_videos(tmp_path, inputs):
    from sleap_rtc.core.inference import explain_unsupported
    from sleap_rtc.core.remote_job import JobRejectedError
    from sleap_rtc.core.room import WorkerInfo

    videos, model = inputs
    old = bare_peer("w-old", 8000)
    request = InferenceRequest(videos=(VideoTarget(videos[0]),), models=(ModelSource(path=model),))
    info = WorkerInfo(peer_id="w-old", role="worker", metadata=old["metadata"])
    assert "older sleap-rtc" in " ".join(explain_unsupported(info, request))
    assert explain_unsupported(WorkerInfo(peer_id="w1", role="worker", metadata=peer("w1", 1)["metadata"]), request) == []
    workers = FakeWorkers(default=script())
    with pytest.raises(JobRejectedError, match="older sleap-rtc"):
        await job(tmp_path, request, workers, Seen(), FakeSignaling([old])).run()
    assert workers.channels[0].uploads == []  # nothing was sent


@pytest.mark.parametrize("make, words", [
    (lambda v, m: InferenceRequest(videos=(), models=(ModelSource(path=m),)), "at least one video"),
    (lambda v, m: InferenceRequest(videos=(VideoTarget(v[0]),), models=()), "at least one trained model"),
    (lambda v, m: InferenceRequest(videos=(VideoTarget(m / "best.ckpt"),), models=(ModelSource(path=m),)),
     "not a video sleap-nn reads"),
    (lambda v, m: InferenceRequest(videos=(VideoTarget(v[0], frames=()),), models=(ModelSource(path=m),)),
     "No frames"),
    (lambda v, m: InferenceRequest(videos=(VideoTarget(v[0]),), models=(ModelSource(),)), "either a local path"),
    (lambda v, m: InferenceRequest(videos=(VideoTarget(v[0]),), models=(ModelSource(path=m),),
                                   options=InferenceOptions(batch_size=0)), "batch_size=0"),
    (lambda v, m: InferenceRequest(videos=(VideoTarget(Path("/no/such.mp4")),), models=(ModelSource(path=m),)),
     "not a file"),
])
def test_a_request_that_cannot_run_is_refused_before_anything_moves(tmp_path, inputs, make, words):
    videos, model = inputs
    with pytest.raises(InferenceRequestError, match=words):
        RemoteInference(make(videos, model), credentials=RoomCredentials("r", "t"), results_dir=tmp_path,
                        server_url="ws://127.0.0.1:1")
