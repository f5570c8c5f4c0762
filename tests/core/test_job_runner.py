"""``RemoteJob``'s orchestration with messages in and out: the retry table in action.

The room is a ``RoomView`` over a stand-in signaling client (discovery + pushed room
events); the connect attempt and the data channel are in-memory workers (``job_fakes``)
speaking core's own job messages. The same flow over real WebRTC, a real server and real
worker processes runs in ``tests/client/test_remote_job_e2e.py``, ``test_wait_free.py`` and
``tests/faults/``.
"""

from __future__ import annotations

import asyncio

import pytest

from job_fakes import FakeWorkers, ScriptedChannel
from sleap_rtc.core.credentials import RoomCredentials
from sleap_rtc.core.job_events import JobCallbacks
from sleap_rtc.core.job_policy import (
    Auto,
    DirectWorker,
    Interactive,
    NextBest,
    Pick,
    SelectionCancelled,
    SessionWorker,
    WaitForFree,
)
from sleap_rtc.core.job_runner import JobHandle, RemoteJob
from sleap_rtc.core.metadata import matches_filters
from sleap_rtc.core.phases import Phase
from sleap_rtc.core.remote_job import WorkerLostError
from sleap_rtc.core.retry import Move, Origin, Outcome
from sleap_rtc.core.room import RoomView
from sleap_rtc.core.selection import AllWorkersBusyError, NoWorkersError, SessionWorkerBusyError, WorkerUnavailableError

CREDS = RoomCredentials("room-test", "tok")


def peer(pid, mem, status="available", name=None):
    props = {"gpu_memory_mb": mem, "status": status, "gpu_model": "GPU", "worker_name": name or pid}
    return {"peer_id": pid, "role": "worker", "metadata": {"tags": [], "properties": props}, "connected_at": 1.0}


class FakeSignaling:
    """The live signaling connection the job is handed: discovery + pushed room events."""

    room_id = "room-test"
    url = "ws://fake"

    def __init__(self, peers):
        self.peers = {p["peer_id"]: p for p in peers}
        self.listeners = []

    async def discover(self, filters=None):
        return [p for p in self.peers.values() if matches_filters(p["role"], p["metadata"], filters or {})]

    def add_listener(self, fn):
        self.listeners.append(fn)
        return lambda: self.listeners.remove(fn) if fn in self.listeners else None

    def add_state_listener(self, fn):
        return lambda: None

    async def wait_registered(self, timeout):
        return None

    def set_status(self, pid, status):
        self.peers[pid]["metadata"]["properties"]["status"] = status
        self._push("peer_updated", self.peers[pid])

    def leave(self, pid):
        self._push("peer_left", self.peers.pop(pid))

    def _push(self, kind, p):
        for fn in list(self.listeners):
            fn({"type": kind, **p})


class Recorder(JobCallbacks):
    """Every callback, in order."""

    def __init__(self):
        self.calls = []

    def __getattribute__(self, name):
        if name in {"phase", "decision", "waiting", "upload", "model_started", "epoch", "progress", "log",
                    "restarted", "file", "finished"}:
            return lambda *args: object.__getattribute__(self, "calls").append((name, *args))
        return object.__getattribute__(self, name)

    def of(self, name):
        return [c[1] for c in self.calls if c[0] == name]


@pytest.fixture
def package(tmp_path):
    p = tmp_path / "pkg.zip"
    p.write_bytes(b"package" * 100)
    return p


def make_job(package, tmp_path, signaling, workers, policy, rec=None, **kw):
    return RemoteJob(package, credentials=CREDS, results_dir=tmp_path / "out", policy=policy,
                     callbacks=rec or Recorder(), signaling=signaling, connect=workers.connect, **kw)


def transitions(rec):
    return [c.new for c in rec.of("phase") if c.old != c.new]


async def test_auto_skips_a_busy_best_and_uses_the_live_connection(package, tmp_path):
    sig = FakeSignaling([peer("big", 24000), peer("small", 8000)])
    workers = FakeWorkers({"big": "busy"})
    rec = Recorder()
    job = make_job(package, tmp_path, sig, workers, Auto(), rec)  # no server URL: the given connection only
    summary = await asyncio.wait_for(job.run(), 5)
    assert workers.attempts == ["big", "small"]
    assert summary.peer_id == "small"
    assert (tmp_path / "out" / "models" / "run1" / "best.ckpt").read_bytes() == b"weights from small"
    assert transitions(rec) == [Phase.JOINING, Phase.DISCOVERING, Phase.SELECTING, Phase.RESERVING, Phase.SELECTING,
                                Phase.RESERVING, Phase.CONNECTING, Phase.UPLOADING, Phase.TRAINING, Phase.DOWNLOADING,
                                Phase.DONE]
    assert rec.of("finished") == [summary]
    assert [m.name for m in rec.of("model_started")] == ["single_instance"]
    assert [(e.model, e.epoch, e.train_loss) for e in rec.of("epoch")] == [("single_instance", 1, 0.5)]
    assert sig.listeners == [], "the job left listeners on the caller's connection"


async def test_no_free_worker_without_wait_fails_at_once_with_no_cli_flag(package, tmp_path):
    sig = FakeSignaling([peer("a", 8000, status="busy")])
    job = make_job(package, tmp_path, sig, FakeWorkers(), Auto())
    with pytest.raises(NoWorkersError) as err:
        await asyncio.wait_for(job.run(), 2)
    assert "--" not in str(err.value) and err.value.busy == ("a",) and err.value.waited == 0
    assert "a: busy" in str(err.value)
    assert job.phases.phase == Phase.FAILED
    assert job.moves == [(Origin.AUTO, Outcome.NONE_FREE, Move.FAIL)]


async def test_all_busy_with_wait_takes_the_first_that_frees_up(package, tmp_path):
    sig = FakeSignaling([peer("a", 24000, status="busy"), peer("b", 8000, status="busy")])
    workers = FakeWorkers()
    rec = Recorder()
    job = make_job(package, tmp_path, sig, workers, Auto(wait=5), rec)
    task = asyncio.ensure_future(job.run())
    await asyncio.sleep(0.1)
    assert job.phases.phase == Phase.WAITING
    sig.set_status("b", "available")
    summary = await asyncio.wait_for(task, 5)
    assert summary.peer_id == "b" and workers.attempts == ["b"]
    waits = rec.of("waiting")
    assert [w.peer_id for w in waits[0].busy] == ["a", "b"]
    assert waits[0].busy[0].since is None  # already busy at discovery: unknown since when
    assert waits[0].deadline > 0
    assert (Origin.AUTO, Outcome.NONE_FREE, Move.WAIT) in job.moves


async def test_a_status_change_seen_while_waiting_has_a_since_time(package, tmp_path):
    sig = FakeSignaling([peer("a", 24000), peer("b", 8000, status="busy")])
    workers = FakeWorkers({"a": "busy"})
    rec = Recorder()
    job = make_job(package, tmp_path, sig, workers, Auto(wait=0.3), rec)
    task = asyncio.ensure_future(job.run())
    await asyncio.sleep(0.05)
    sig.set_status("a", "busy")  # the room hears that a went busy (it refused us)
    with pytest.raises(NoWorkersError) as err:
        await asyncio.wait_for(task, 3)
    assert err.value.waited == pytest.approx(0.3, abs=0.1)
    last = rec.of("waiting")[-1]
    since = {w.peer_id: w.since for w in last.busy}
    assert since["a"] is not None and since["b"] is None
    assert "busy for" in [w for w in last.busy if w.peer_id == "a"][0].for_how_long()


async def test_direct_worker_busy_waits_for_that_worker_only(package, tmp_path):
    sig = FakeSignaling([peer("mine", 8000, status="busy"), peer("other", 24000)])
    workers = FakeWorkers()
    job = make_job(package, tmp_path, sig, workers, DirectWorker("mine", wait=5))
    task = asyncio.ensure_future(job.run())
    await asyncio.sleep(0.1)
    assert job.phases.phase == Phase.WAITING and workers.attempts == []
    sig.set_status("mine", "available")
    summary = await asyncio.wait_for(task, 5)
    assert summary.peer_id == "mine" and workers.attempts == ["mine"]


async def test_direct_worker_busy_without_wait_fails(package, tmp_path):
    sig = FakeSignaling([peer("mine", 8000), peer("other", 24000)])
    workers = FakeWorkers({"mine": "busy"})
    job = make_job(package, tmp_path, sig, workers, DirectWorker("mine"))
    with pytest.raises(WorkerBusyError_or_unavailable()):
        await asyncio.wait_for(job.run(), 3)
    assert workers.attempts == ["mine"]  # never another one


def WorkerBusyError_or_unavailable():
    from sleap_rtc.core.transport_errors import WorkerBusyError

    return (WorkerBusyError, WorkerUnavailableError)


async def test_picked_worker_busy_asks_the_chooser_and_keeps_one_phases(package, tmp_path):
    sig = FakeSignaling([peer("a", 24000), peer("b", 8000)])
    workers = FakeWorkers({"a": "busy"})
    asked = []

    async def chooser(request):
        asked.append(request)
        return NextBest()

    room = RoomView(sig)
    await room.start()
    rec = Recorder()
    job = make_job(package, tmp_path, sig, workers, Interactive(chooser, first=Pick(room.get("a"))), rec, room=room)
    phases = job.phases
    summary = await asyncio.wait_for(job.run(), 5)
    assert summary.peer_id == "b" and workers.attempts == ["a", "b"]
    assert len(asked) == 1 and asked[0].outcome == Outcome.BUSY and asked[0].worker.peer_id == "a"
    assert asked[0].tried == {"a"} and "a is busy" in asked[0].notice
    assert job.phases is phases and Phase.FAILED not in transitions(rec)
    assert job.moves == [(Origin.PICKED, Outcome.BUSY, Move.ASK)]


async def test_picked_worker_that_left_is_never_swapped_silently(package, tmp_path):
    sig = FakeSignaling([peer("a", 24000), peer("b", 8000)])
    room = RoomView(sig)
    await room.start()
    target = room.get("a")
    sig.leave("a")
    asked = []
    picks: asyncio.Queue = asyncio.Queue()

    async def chooser(request):
        asked.append(request)
        return await picks.get()

    workers = FakeWorkers()
    job = make_job(package, tmp_path, sig, workers, Interactive(chooser, first=Pick(target)), room=room)
    task = asyncio.ensure_future(job.run())
    await asyncio.sleep(0.2)
    assert workers.attempts == [] and len(asked) == 1, "a worker was tried without asking"
    assert asked[0].outcome == Outcome.VANISHED
    picks.put_nowait(Pick(room.get("b")))
    summary = await asyncio.wait_for(task, 5)
    assert summary.peer_id == "b"


async def test_chooser_can_wait_for_a_free_worker(package, tmp_path):
    sig = FakeSignaling([peer("a", 8000, status="busy")])
    workers = FakeWorkers()
    answers = [WaitForFree(5)]

    async def chooser(request):
        return answers.pop(0)

    rec = Recorder()
    job = make_job(package, tmp_path, sig, workers, Interactive(chooser, first=NextBest()), rec)
    task = asyncio.ensure_future(job.run())
    await asyncio.sleep(0.1)
    assert job.phases.phase == Phase.WAITING
    sig.set_status("a", "available")
    summary = await asyncio.wait_for(task, 5)
    assert summary.peer_id == "a"
    assert job.moves[0] == (Origin.AUTO, Outcome.NONE_FREE, Move.ASK)


async def test_chooser_wait_that_times_out_asks_again_then_cancel(package, tmp_path):
    sig = FakeSignaling([peer("a", 8000, status="busy")])
    asked = []

    async def chooser(request):
        asked.append(request.outcome)
        if len(asked) == 1:
            return WaitForFree(0.1)
        raise SelectionCancelled("Cancelled while choosing a worker.")

    job = make_job(package, tmp_path, sig, FakeWorkers(), Interactive(chooser, first=NextBest()))
    with pytest.raises(SelectionCancelled):
        await asyncio.wait_for(job.run(), 3)
    assert asked == [Outcome.NONE_FREE, Outcome.NONE_FREE]
    assert job.phases.phase == Phase.CANCELLED


async def _dies_mid_training(ch: ScriptedChannel) -> None:
    await ch.accept()
    await ch.event({"event": "train_begin", "what": "centroid"})
    await ch.epoch("centroid", 0)
    ch.die()


def _killed_mid_training(sig):
    """The worker process dies: its channel goes quiet and the room hears it leave."""

    async def script(ch: ScriptedChannel) -> None:
        await ch.accept()
        await ch.event({"event": "train_begin", "what": "centroid"})
        await ch.epoch("centroid", 0)
        sig.leave(ch.remote_peer_id)

    return script


async def test_auto_worker_lost_mid_training_restarts_on_the_next_best(package, tmp_path):
    sig = FakeSignaling([peer("a", 24000), peer("b", 8000)])
    workers = FakeWorkers({"a": _killed_mid_training(sig)})
    rec = Recorder()
    job = make_job(package, tmp_path, sig, workers, Auto(), rec)
    summary = await asyncio.wait_for(job.run(), 5)
    assert summary.peer_id == "b" and workers.attempts == ["a", "b"]
    assert [lost.peer_id for lost in job.lost] == ["a"]
    (note,) = rec.of("restarted")
    assert (note.previous, note.worker, note.attempt) == ("a", "b", 2) and "stopped responding" in note.reason
    # the viewer is told about each model again after the restart, counting from 1
    assert [(m.name, m.index, m.worker) for m in rec.of("model_started")] == [("centroid", 1, "a"), ("single_instance", 1, "b")]
    order = [c[0] for c in rec.calls if c[0] in ("restarted", "model_started")]
    assert order == ["model_started", "restarted", "model_started"]
    assert (Origin.AUTO, Outcome.LOST, Move.NEXT_BEST) in job.moves


async def test_link_lost_with_the_worker_still_there_reconnects_and_follows_the_same_job(package, tmp_path):
    sig = FakeSignaling([peer("a", 24000), peer("b", 8000)])
    # the channel dies, the worker stays listed; the reconnect finds the job still running
    workers = FakeWorkers({"a": [_dies_mid_training, _goes_on]})
    rec = Recorder()
    job = make_job(package, tmp_path, sig, workers, Auto(), rec)
    summary = await asyncio.wait_for(job.run(), 5)
    assert job.moves == [(Origin.AUTO, Outcome.LINK_LOST, Move.RECONNECT)]
    assert summary.peer_id == "a" and workers.attempts == ["a", "a"] and job.reconnects == 1
    assert workers.channels[1].attached and workers.channels[1].job_id == workers.channels[0].job_id
    assert rec.of("restarted") == [] and job.lost == []
    assert [m.name for m in rec.of("model_started")] == ["centroid"]  # the same model goes on
    assert any("Reconnected to a" in d for d in rec.of("decision"))


async def _goes_on(ch: ScriptedChannel) -> None:
    await ch.accept()
    await ch.epoch("centroid", 1)
    await ch.result_model("run1", {"best.ckpt": b"w"})
    await ch.complete()


async def test_link_lost_without_reconnects_goes_to_the_next_best(package, tmp_path):
    sig = FakeSignaling([peer("a", 24000), peer("b", 8000)])
    workers = FakeWorkers({"a": _dies_mid_training})
    job = make_job(package, tmp_path, sig, workers, Auto(), reconnect_grace=0)
    summary = await asyncio.wait_for(job.run(), 5)
    assert job.moves == [(Origin.AUTO, Outcome.LINK_LOST, Move.NEXT_BEST)]
    assert summary.peer_id == "b"


async def test_a_reconnect_that_finds_the_worker_busy_counts_as_lost(package, tmp_path):
    sig = FakeSignaling([peer("a", 24000), peer("b", 8000)])
    workers = FakeWorkers({"a": [_dies_mid_training, "busy"]})
    job = make_job(package, tmp_path, sig, workers, Auto())
    summary = await asyncio.wait_for(job.run(), 5)
    assert job.moves == [(Origin.AUTO, Outcome.LINK_LOST, Move.RECONNECT), (Origin.AUTO, Outcome.LOST, Move.NEXT_BEST)]
    assert summary.peer_id == "b" and workers.attempts == ["a", "a", "b"]


async def test_picked_worker_lost_asks_the_chooser(package, tmp_path):
    sig = FakeSignaling([peer("a", 24000), peer("b", 8000)])
    room = RoomView(sig)
    await room.start()

    async def leaves_mid_training(ch):
        await ch.accept()
        await ch.epoch("centroid", 0)
        sig.leave("a")  # the room hears it: the job suspects the channel at once

    asked = []

    async def chooser(request):
        asked.append(request)
        return Pick(request.room.get("b"))

    workers = FakeWorkers({"a": leaves_mid_training})
    job = make_job(package, tmp_path, sig, workers, Interactive(chooser, first=Pick(room.get("a"))), room=room)
    summary = await asyncio.wait_for(job.run(), 5)
    assert summary.peer_id == "b"
    assert [r.outcome for r in asked] == [Outcome.LOST]
    assert job.moves == [(Origin.PICKED, Outcome.LOST, Move.ASK)]


async def test_auto_gives_up_after_max_job_attempts(package, tmp_path):
    sig = FakeSignaling([peer("a", 24000), peer("b", 8000), peer("c", 4000)])
    workers = FakeWorkers({"a": _killed_mid_training(sig), "b": _killed_mid_training(sig)})
    job = make_job(package, tmp_path, sig, workers, Auto(max_job_attempts=2))
    with pytest.raises(WorkerLostError) as err:
        await asyncio.wait_for(job.run(), 5)
    assert "Gave up after 2 worker(s) stopped responding: a, b." in str(err.value)
    assert workers.attempts == ["a", "b"] and job.phases.phase == Phase.FAILED


async def test_stop_early_then_loss_is_not_retried(package, tmp_path):
    sig = FakeSignaling([peer("a", 24000), peer("b", 8000)])

    async def dies_after_stop(ch):
        await ch.accept()
        await ch.stopped.wait()
        ch.die()

    workers = FakeWorkers({"a": dies_after_stop})
    job = make_job(package, tmp_path, sig, workers, Auto())
    task = asyncio.ensure_future(job.run())
    await asyncio.sleep(0.1)
    await job.stop()
    with pytest.raises(WorkerLostError):
        await asyncio.wait_for(task, 3)
    assert workers.attempts == ["a"]


async def test_all_refuse_at_the_last_moment_is_none_free(package, tmp_path):
    sig = FakeSignaling([peer("a", 24000), peer("b", 8000)])
    job = make_job(package, tmp_path, sig, FakeWorkers({"a": "busy", "b": "gone"}), Auto())
    with pytest.raises(AllWorkersBusyError) as err:
        await asyncio.wait_for(job.run(), 3)
    assert "--" not in str(err.value)


async def test_session_worker_busy_says_so_without_cli_flags(package, tmp_path):
    sig = FakeSignaling([])
    job = make_job(package, tmp_path, sig, FakeWorkers({"w": "busy"}), SessionWorker("w"))
    with pytest.raises(SessionWorkerBusyError) as err:
        await asyncio.wait_for(job.run(), 3)
    assert str(err.value) == "Worker w is busy: Worker is currently busy."
    assert job.phases.phase == Phase.FAILED


async def test_two_models_are_two_model_boundaries_and_the_handle_round_trips(package, tmp_path):
    async def two_models(ch):
        await ch.accept()
        for what in ("centroid", "centered_instance"):
            await ch.event({"event": "train_begin", "what": what})
            await ch.epoch(what, 0)
            await ch.epoch(what, 1)
            await ch.event({"event": "train_end", "what": what})
        await ch.result_model("run1", {"best.ckpt": b"w"})
        await ch.complete()

    sig = FakeSignaling([peer("a", 8000)])
    rec = Recorder()
    handles = []
    job = make_job(package, tmp_path, sig, FakeWorkers({"a": two_models}), Auto(), rec)

    def on_phase(change):
        if change.new == Phase.TRAINING and job.handle is not None:
            handles.append(job.handle)

    job.phases.subscribe(on_phase)
    await asyncio.wait_for(job.run(), 5)
    assert [(m.name, m.index) for m in rec.of("model_started")] == [("centroid", 1), ("centered_instance", 2)]
    assert [(e.model, e.epoch) for e in rec.of("epoch")] == [("centroid", 1), ("centroid", 2),
                                                              ("centered_instance", 1), ("centered_instance", 2)]
    handle = handles[0]
    assert handle.worker_peer_id == "a" and handle.room_id == "room-test" and handle.job_id.startswith("job-")
    assert JobHandle.load(handle.save(tmp_path / "job.json")) == handle
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a saved sleap-rtc job"):
        JobHandle.load(tmp_path / "bad.json")
