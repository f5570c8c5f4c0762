"""Selection logic in-process: ordering, tie-break, filters, fallback, direct ids, waiting.

The room is a ``RoomView`` over a stand-in signaling client (discovery + pushed events);
the same view is exercised against the real server in ``tests/core/test_room.py``.
"""

from __future__ import annotations

import asyncio

import pytest

from sleap_rtc.core.metadata import matches_filters
from sleap_rtc.core.room import RoomView, WorkerInfo, worker_filters
from sleap_rtc.core.selection import (
    AllWorkersBusyError,
    NoWorkersError,
    UnknownWorkerError,
    WorkerUnavailableError,
    auto_select,
    check_direct,
    connect_direct,
    rank_workers,
    wait_for_available,
)


class Busy(Exception):
    """Stand-in for transport.WorkerBusyError."""


class Gone(Exception):
    """Stand-in for transport.PeerNotFoundError."""


def peer(pid, mem, status="available", at=1.0, name=None):
    props = {"gpu_memory_mb": mem, "status": status, "gpu_model": "GPU", "worker_name": name or pid}
    return {"peer_id": pid, "role": "worker", "metadata": {"tags": [], "properties": props}, "connected_at": at}


class FakeSignaling:
    """Enough of SignalingClient for RoomView: discovery (server-side filters) and events."""

    room_id = "room-test"

    def __init__(self, peers):
        self.peers = list(peers)
        self.listeners = []

    async def discover(self, filters=None):
        return [p for p in self.peers if matches_filters(p["role"], p["metadata"], filters or {})]

    def add_listener(self, fn):
        self.listeners.append(fn)
        return lambda: None

    def add_state_listener(self, fn):
        return lambda: None

    def push(self, kind, p):
        for fn in self.listeners:
            fn({"type": kind, **p})


async def make_room(peers, min_mem=None):
    room = RoomView(FakeSignaling(peers), worker_filters(min_mem))
    await room.start()
    return room


def ids(workers):
    return [w.peer_id for w in workers]


def test_ranking_most_memory_then_oldest_then_peer_id():
    workers = [
        WorkerInfo.from_peer(peer("b", 8000, at=5)),
        WorkerInfo.from_peer(peer("a", 8000, at=5)),
        WorkerInfo.from_peer(peer("old", 8000, at=1)),
        WorkerInfo.from_peer(peer("big", 24000, at=9)),
        WorkerInfo.from_peer(peer("busy", 80000, status="busy")),
        WorkerInfo.from_peer(peer("cpu", 0)),
    ]
    assert ids(rank_workers(workers)) == ["big", "old", "a", "b", "cpu"]


async def test_min_gpu_memory_filter_applies_to_discovery_and_events():
    room = await make_room([peer("small", 4000), peer("big", 16000)], min_mem=8000)
    assert ids(room.workers) == ["big"]
    room.signaling.push("peer_joined", peer("small2", 2000))
    room.signaling.push("peer_joined", peer("big2", 9000))
    assert ids(room.workers) == ["big", "big2"]
    # A refresh keeps the filter too.
    room.signaling.peers.append(peer("small3", 100))
    await room.refresh()
    assert ids(room.workers) == ["big"]


async def test_auto_select_takes_best_and_logs():
    room = await make_room([peer("a", 8000), peer("b", 24000)])
    seen = []

    async def connect(w):
        seen.append(w.peer_id)
        return f"chan-{w.peer_id}"

    lines = []
    sel = await auto_select(room, connect, busy_errors=(Busy,), gone_errors=(Gone,), on_decision=lines.append)
    assert sel.worker.peer_id == "b" and sel.connection == "chan-b" and seen == ["b"]
    assert lines[-1] == "Connected to b (GPU, 24000 MB)."


async def test_auto_select_falls_back_on_busy_and_vanished():
    room = await make_room([peer("a", 8000), peer("b", 24000), peer("c", 16000)])
    seen = []

    async def connect(w):
        seen.append(w.peer_id)
        if w.peer_id == "b":
            raise Busy("worker_busy")
        if w.peer_id == "c":
            raise Gone("no answer")
        return w.peer_id

    lines = []
    sel = await auto_select(room, connect, busy_errors=(Busy,), gone_errors=(Gone,), on_decision=lines.append)
    assert seen == ["b", "c", "a"] and sel.worker.peer_id == "a"
    assert "b is busy (worker_busy); trying the next best worker." in lines
    assert "c did not answer (no answer); trying the next best worker." in lines


async def test_auto_select_skips_worker_that_turned_busy_meanwhile():
    room = await make_room([peer("a", 8000), peer("b", 24000)])
    seen = []

    async def connect(w):
        seen.append(w.peer_id)
        return w.peer_id

    room.signaling.push("peer_updated", peer("b", 24000, status="busy"))
    sel = await auto_select(room, connect, busy_errors=(Busy,), gone_errors=(Gone,))
    assert seen == ["a"] and sel.worker.peer_id == "a"


async def test_auto_select_is_bounded_and_says_why():
    room = await make_room([peer(f"w{i}", 1000 * i) for i in range(1, 6)])
    seen = []

    async def connect(w):
        seen.append(w.peer_id)
        raise Busy("worker_busy")

    with pytest.raises(AllWorkersBusyError) as err:
        await auto_select(room, connect, max_attempts=3, busy_errors=(Busy,), gone_errors=(Gone,))
    assert seen == ["w5", "w4", "w3"]
    assert str(err.value) == (
        "Could not start the job on any worker (w5: busy; w4: busy; w3: busy). "
        "Try again in a moment, or pass --wait SECONDS to wait for a free worker."
    )


async def test_other_errors_propagate():
    room = await make_room([peer("a", 8000)])

    async def connect(w):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await auto_select(room, connect, busy_errors=(Busy,), gone_errors=(Gone,))


async def test_no_workers_message_mentions_filter_and_wait():
    room = await make_room([peer("x", 9000, status="busy")], min_mem=8000)
    with pytest.raises(NoWorkersError) as err:
        await wait_for_available(room, min_gpu_memory_mb=8000)
    assert str(err.value) == (
        "No available workers with at least 8000 MB of GPU memory in room room-test. "
        "Workers present but not available: x: busy. Check that your workers are running and "
        "connected to the same room, or lower --min-gpu-memory; or pass --wait SECONDS to wait for one."
    )


async def test_wait_for_worker_to_appear_and_timeout():
    room = await make_room([])
    loop = asyncio.get_running_loop()
    loop.call_later(0.05, room.signaling.push, "peer_joined", peer("late", 8000))
    ranked = await wait_for_available(room, wait=2)
    assert ids(ranked) == ["late"]

    empty = await make_room([])
    with pytest.raises(NoWorkersError) as err:
        await wait_for_available(empty, wait=0.05)
    assert str(err.value) == (
        "No available workers in room room-test after waiting 0.05 s. "
        "Check that your workers are running and connected to the same room."
    )


async def test_worker_that_turns_available_ends_the_wait():
    room = await make_room([peer("b", 8000, status="busy")])
    asyncio.get_running_loop().call_later(0.05, room.signaling.push, "peer_updated", peer("b", 8000))
    assert ids(await wait_for_available(room, wait=2)) == ["b"]


async def test_direct_worker_id_checks():
    room = await make_room([peer("a", 8000), peer("b", 8000, status="busy", name="gpu-b")])
    assert check_direct(room, "a").peer_id == "a"
    with pytest.raises(UnknownWorkerError) as err:
        check_direct(room, "zz")
    assert str(err.value) == "No worker 'zz' in room room-test. Workers in this room: a, b."
    with pytest.raises(WorkerUnavailableError) as err:
        check_direct(room, "b")
    assert str(err.value) == "Worker gpu-b (b) is busy. Wait until it is free, choose another one, or use --auto-select."


async def test_direct_connect_busy_at_last_moment_is_clear():
    room = await make_room([peer("a", 8000)])

    async def connect(w):
        raise Busy("worker_busy")

    with pytest.raises(WorkerUnavailableError) as err:
        await connect_direct(room, "a", connect, busy_errors=(Busy,), gone_errors=(Gone,))
    assert str(err.value) == "Worker a (a) is busy. Wait until it is free, choose another one, or use --auto-select."


async def test_default_errors_are_the_transport_ones_and_vanished_worker_is_skipped():
    from sleap_rtc.core.transport_errors import PeerNotFoundError, WorkerBusyError

    room = await make_room([peer("a", 8000), peer("b", 24000), peer("c", 16000)])
    seen = []

    async def connect(w):
        seen.append(w.peer_id)
        if w.peer_id == "b":
            # b left the room at the last moment: the event arrives, the offer bounces.
            room.signaling.push("peer_left", peer("c", 0))
            raise PeerNotFoundError("Peer b is not in this room")
        if w.peer_id == "a":
            raise WorkerBusyError("Worker is currently busy.", status="busy")
        return w.peer_id

    with pytest.raises(AllWorkersBusyError) as err:
        await auto_select(room, connect)
    assert seen == ["b", "a"]  # c left meanwhile and was never tried
    assert "b: did not answer; a: busy" in str(err.value)


# --------------------------------------------------------------------------- C1, C6, trust

from sleap_rtc.core.identity import generate_key  # noqa: E402
from sleap_rtc.core.known_workers import KnownWorkers, Trust  # noqa: E402
from sleap_rtc.core.room import MAX_GPU_MEMORY_MB  # noqa: E402
from sleap_rtc.core.selection import TRUST_WORDS, describe  # noqa: E402
from sleap_rtc.core.transport_errors import WorkerIdentityError  # noqa: E402


def keyed_peer(pid, mem, key, **kw):
    p = peer(pid, mem, **kw)
    p["metadata"]["properties"].update({"public_key": key.public_key, "fingerprint": key.fingerprint})
    return p


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), 10**400, 10**9, -1, "24000", True, [1], {"a": 1}])
def test_c6_unbelievable_gpu_memory_is_invalid_never_ranked_never_a_crash(value):
    bad = WorkerInfo.from_peer(peer("bad", value))
    good = WorkerInfo.from_peer(peer("good", 8000))
    assert not bad.valid and bad.gpu_memory_mb == 0 and "gpu_memory_mb" in bad.problems[0]
    assert ids(rank_workers([bad, good])) == ["good"]
    assert describe(bad)  # displayable


def test_c6_limits_and_other_numbers():
    assert WorkerInfo.from_peer(peer("max", MAX_GPU_MEMORY_MB)).valid
    assert not WorkerInfo.from_peer(peer("over", MAX_GPU_MEMORY_MB + 1)).valid
    jobs = peer("jobs", 8000)
    jobs["metadata"]["properties"]["max_concurrent_jobs"] = float("inf")
    assert not WorkerInfo.from_peer(jobs).valid
    odd = {"peer_id": "x", "role": "worker", "metadata": {"properties": {"worker_name": "n" * 10_000}}, "connected_at": "soon"}
    info = WorkerInfo.from_peer(odd)
    assert info.connected_at == 0.0 and len(info.name) <= 200


def test_advertised_key_must_be_consistent():
    key, other = generate_key(), generate_key()
    ok = WorkerInfo.from_peer(keyed_peer("a", 1, key))
    assert ok.valid and ok.fingerprint == key.fingerprint and ok.short_fingerprint == key.fingerprint[7:17]
    wrong = keyed_peer("b", 1, key)
    wrong["metadata"]["properties"]["fingerprint"] = other.fingerprint
    assert not WorkerInfo.from_peer(wrong).valid
    broken = keyed_peer("c", 1, key)
    broken["metadata"]["properties"]["public_key"] = "not base64!"
    assert WorkerInfo.from_peer(broken).fingerprint is None and not WorkerInfo.from_peer(broken).valid


async def test_c1_auto_select_prefers_known_workers_and_never_picks_a_changed_key(tmp_path):
    known = KnownWorkers(tmp_path / "known.json")
    lab_key, new_key, old_key = generate_key(), generate_key(), generate_key()
    known.remember("room-test", "lab", lab_key.fingerprint)
    known.remember("room-test", "moved", old_key.fingerprint)
    peers = [keyed_peer("lab", 8000, lab_key), keyed_peer("newcomer", MAX_GPU_MEMORY_MB, generate_key()),
             keyed_peer("moved", MAX_GPU_MEMORY_MB, new_key)]
    room = RoomView(FakeSignaling(peers), worker_filters(), known=known)
    await room.start()
    assert [room.trust(w) for w in room.workers] == [Trust.KNOWN, Trust.NEW, Trust.CHANGED]
    assert ids(rank_workers(room.workers, room.trust)) == ["lab", "newcomer", "moved"]
    tried, lines = [], []

    async def connect(w):
        tried.append(w.peer_id)
        raise Busy()

    with pytest.raises(AllWorkersBusyError):
        await auto_select(room, connect, busy_errors=(Busy,), on_decision=lines.append)
    assert tried == ["lab", "newcomer"]  # the changed key is never tried
    assert TRUST_WORDS[Trust.KNOWN] in lines[0] and any(line.startswith("Skipping moved") for line in lines)


async def test_auto_select_moves_on_after_an_identity_refusal():
    room = await make_room([peer("liar", 80000), peer("honest", 8000)])

    async def connect(w):
        if w.peer_id == "liar":
            raise WorkerIdentityError("proof does not verify")
        return "chan"

    lines = []
    sel = await auto_select(room, connect, on_decision=lines.append)
    assert sel.worker.peer_id == "honest" and any(line.startswith("Refused liar: proof does not verify") for line in lines)
