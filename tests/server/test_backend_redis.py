"""Several real server instances on a real Redis: losing an instance, shared limits, fan-out.

The acceptance cases of the single server run across three instances through the
``signaling_server`` fixture (see ``conftest.py``); this module covers what only exists
with several: an instance killed mid-job, a stalled instance that lost its lease, limits
shared by all instances, batched events from another instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from typing import Any

import aiohttp
import pytest
import websockets
from redis_cluster import Balancer, Cluster

from sleap_rtc.core.signaling import ConnectionState, SignalingClient
from sleap_rtc.core.transport import accept, connect
from sleap_rtc.server.backend_redis import RedisBackend

pytestmark = [pytest.mark.redis, pytest.mark.timeout(120)]

LEASE = 1.5
"""Lease TTL of the instances of these tests (seconds), so that a death is noticed fast."""
GRACE = 2.0
"""Grace after a lapsed lease before peers that did not come back are removed."""
FAST = ("--lease-ttl", str(LEASE), "--peer-grace", str(GRACE))


class Watcher:
    """A raw WebSocket peer with ``events: true`` that records every event it is sent."""

    def __init__(self, ws: Any):
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self.batches = 0
        self.single_events = 0
        self.replies: asyncio.Queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def join(cls, url: str, room, peer_id: str, **extra: Any) -> Watcher:
        ws = await websockets.connect(url, compression=None, max_size=None, open_timeout=5)
        watcher = cls(ws)
        await ws.send(json.dumps({"type": "register", "peer_id": peer_id, "room_id": room[0], "token": room[1], "role": "client", "events": True, **extra}))
        reply = await watcher.reply(5)
        assert reply["type"] == "registered_auth", reply
        return watcher

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for text in self.ws:
                frame = json.loads(text)
                kind = frame.get("type")
                if kind in ("peer_joined", "peer_left", "peer_updated"):
                    self.events.append(frame)
                    self.single_events += 1
                elif kind == "room_events":
                    self.events.extend(frame["events"])
                    self.batches += 1
                elif kind != "ping":
                    self.replies.put_nowait(frame)

    async def reply(self, timeout: float) -> dict[str, Any]:
        """The next frame that is not an event or a ping."""
        return await asyncio.wait_for(self.replies.get(), timeout)

    async def discover(self) -> list[str]:
        """Peer ids of ``discover_peers`` (sorted, duplicates kept)."""
        await self.ws.send(json.dumps({"type": "discover_peers", "id": "d"}))
        reply = await self.reply(5)
        return sorted(p["peer_id"] for p in reply["peers"])

    async def closed(self) -> None:
        """Wait until the server has closed this socket."""
        await asyncio.shield(self._task)

    def left(self) -> list[str]:
        """Peer ids this watcher was told left."""
        return [e["peer_id"] for e in self.events if e["type"] == "peer_left"]

    async def close(self) -> None:
        """Close the socket and stop reading."""
        await self.ws.close()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def _until(predicate, timeout: float, what: str) -> float:
    """Poll ``predicate`` until true; returns the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - start


@pytest.fixture
def fast_cluster(redis_server):
    """Three instances with a short lease and grace (their own, killed at will)."""
    cluster = Cluster(redis_server, 3, *FAST)
    yield cluster
    cluster.stop()


async def _client(url: str, room, role: str, **kwargs: Any) -> SignalingClient:
    client = SignalingClient(url, room_id=room[0], token=room[1], role=role, max_backoff=1.0, **kwargs)
    await asyncio.wait_for(client.connect(), 10)
    return client


async def test_instance_killed_mid_job_peers_resume_elsewhere_and_the_job_runs_on(fast_cluster, tmp_path):
    victim, survivor, _third = fast_cluster.instances
    room = await fast_cluster.create_room()
    balancer = Balancer([victim.port])  # everyone starts on the victim ...
    await balancer.start()
    watcher = await Watcher.join(survivor.url, room, "watcher")  # ... but the watcher, who stays
    peers: list[SignalingClient] = []
    channels = []
    try:
        worker = await _client(balancer.url, room, "worker", peer_id="worker-gpu", metadata={"properties": {"status": "busy"}})
        client = await _client(balancer.url, room, "client", peer_id="client-1", events=False)
        extras = [await _client(balancer.url, room, "worker", peer_id=f"worker-{i}") for i in range(4)]
        peers = [worker, client, *extras]
        ghost = await Watcher.join(balancer.url, room, "ghost-client")  # never comes back
        names = sorted(["worker-gpu", "client-1", "ghost-client", *(f"worker-{i}" for i in range(4))])
        assert await watcher.discover() == names

        # A job peer to peer: the client streams ticks, the worker echoes them.
        accepted: asyncio.Future = asyncio.get_running_loop().create_future()

        def on_offer(frame: dict[str, Any]) -> None:
            if frame.get("type") == "offer" and not accepted.done():
                accepted.set_result(asyncio.ensure_future(accept(worker, frame, timeout=20, receive_dir=tmp_path / "w", cache_dir=tmp_path / "wc")))

        worker.add_listener(on_offer)
        cch = await connect(client, "worker-gpu", timeout=20, receive_dir=tmp_path / "c", cache_dir=tmp_path / "cc")
        wch = await asyncio.wait_for(await accepted, 20)
        channels = [cch, wch]
        echoed: list[int] = []

        async def echo() -> None:
            while True:
                msg = await wch.receive(30)
                await wch.send({"type": "job_progress", "job_id": "j", "event": msg["event"]})

        async def stream() -> None:
            i = 0
            while True:
                await cch.send({"type": "job_progress", "job_id": "j", "event": {"i": i}})
                echoed.append((await cch.receive(30))["event"]["i"])
                i += 1
                await asyncio.sleep(0.05)

        jobs = [asyncio.ensure_future(echo()), asyncio.ensure_future(stream())]
        await _until(lambda: len(echoed) >= 5, 10, "job ticks before the kill")

        seen: dict[str, list[ConnectionState]] = {p.peer_id: [] for p in peers}
        for p in peers:
            p.add_state_listener(seen[p.peer_id].append)
        balancer.upstreams = [i.port for i in fast_cluster.instances]
        killed_at = time.monotonic()
        victim.kill()
        before = len(echoed)
        # Every peer with a client notices, reconnects through the balancer to a live
        # instance and resumes its identity.
        await _until(
            lambda: all(ConnectionState.RECONNECTING in seen[p.peer_id] and p.state == ConnectionState.REGISTERED for p in peers),
            15, "peers re-registered",
        )
        recovered = time.monotonic() - killed_at
        assert recovered < 10, f"re-registration took {recovered:.1f} s"
        assert worker.metadata["properties"]["status"] == "busy"  # status came along
        # The peer that did not come back leaves after the lease and the grace, nobody else.
        await _until(lambda: "ghost-client" in watcher.left(), LEASE + GRACE + 10, "peer_left for the ghost")
        assert watcher.left() == ["ghost-client"]
        names.remove("ghost-client")
        assert await watcher.discover() == names  # once each: no duplicates, no ghosts
        other = await Watcher.join(fast_cluster.instances[2].url, room, "late-watcher")
        assert await other.discover() == sorted([*names, "watcher"])  # same view on every instance
        await other.close()
        # The job never stopped: ticks kept coming back during and after the loss.
        await _until(lambda: len(echoed) >= before + 20, 15, "job ticks after the kill")
        assert echoed == list(range(len(echoed)))
        assert not any(job.done() for job in jobs), [job.exception() for job in jobs if job.done()]
        # Relays work through the instances the peers moved to.
        await client.send({"type": "peer_message", "to_peer_id": "worker-3", "payload": {"hi": 1}})
        got = await extras[3].wait_for(lambda f: f.get("type") == "peer_message", 5)
        assert got["from_peer_id"] == "client-1"
        for job in jobs:
            job.cancel()
        await ghost.close()
    finally:
        for ch in channels:
            await ch.close()
        for p in peers:
            await p.close()
        await watcher.close()
        await balancer.stop()


async def test_a_stalled_instance_cannot_keep_its_lease_alive(fast_cluster):
    frozen, alive, _ = fast_cluster.instances
    room = await fast_cluster.create_room()
    balancer = Balancer([frozen.port])
    await balancer.start()
    watcher = await Watcher.join(alive.url, room, "watcher")
    worker = None
    try:
        worker = await _client(balancer.url, room, "worker", peer_id="worker-z")
        stuck = await Watcher.join(frozen.url, room, "stuck-client")
        states: list[ConnectionState] = []
        worker.add_state_listener(states.append)
        balancer.upstreams = [alive.port]
        os.kill(frozen.proc.pid, signal.SIGSTOP)
        try:
            # Its sockets stay open (the process only sleeps), yet its peers are removed.
            await _until(lambda: {"worker-z", "stuck-client"} <= set(watcher.left()), LEASE + GRACE + 10, "peers of the stalled instance removed")
        finally:
            os.kill(frozen.proc.pid, signal.SIGCONT)
        # On waking it finds itself fenced: it closes its sockets instead of serving ghosts.
        await asyncio.wait_for(stuck.closed(), LEASE + 10)  # its reader ends: the socket was closed
        # Its worker reconnects (through the balancer) and registers anew.
        await _until(lambda: ConnectionState.RECONNECTING in states and worker.state == ConnectionState.REGISTERED, 15, "worker re-registered")
        kinds = [e["type"] for e in watcher.events if e["peer_id"] == "worker-z"]
        await _until(lambda: [e["type"] for e in watcher.events if e["peer_id"] == "worker-z"][-1] == "peer_joined", 5, "worker back")
        assert kinds[:2] == ["peer_joined", "peer_left"]
        assert await watcher.discover() == ["worker-z"]
        await stuck.close()
    finally:
        if worker is not None:
            await worker.close()
        await watcher.close()
        await balancer.stop()


async def test_failed_registrations_are_counted_across_instances(redis_cluster):
    redis_cluster.reset_limits()
    room = await redis_cluster.create_room()
    codes = []
    for _ in range(12):  # 10 allowed per address per minute, spread over 3 instances
        async with websockets.connect(redis_cluster.url, open_timeout=5) as ws:
            await ws.send(json.dumps({"type": "register", "peer_id": "w", "room_id": room[0], "token": "bad", "role": "worker"}))
            codes.append(json.loads(await asyncio.wait_for(ws.recv(), 5))["code"])
    assert codes == ["INVALID_TOKEN"] * 10 + ["RATE_LIMITED"] * 2
    async with websockets.connect(redis_cluster.url, open_timeout=5) as ws:  # the right token: still admitted
        await ws.send(json.dumps({"type": "register", "peer_id": "w", "room_id": room[0], "token": room[1], "role": "worker"}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "registered_auth"
    redis_cluster.reset_limits()


async def test_room_creation_budget_is_shared_by_the_instances(redis_cluster):
    redis_cluster.reset_limits()
    statuses = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        for i in range(62):  # 60 per address per minute in all, not per instance
            async with http.post(redis_cluster.instances[i % 3].http_url + "/create-room") as resp:
                statuses.append(resp.status)
    assert statuses == [200] * 60 + [429] * 2
    redis_cluster.reset_limits()


async def test_watcher_cap_holds_across_instances(redis_server):
    cluster = Cluster(redis_server, 2, "--max-watchers-per-room", "2")
    try:
        room = await cluster.create_room()
        first = await Watcher.join(cluster.instances[0].url, room, "c1")
        second = await Watcher.join(cluster.instances[1].url, room, "c2")
        async with websockets.connect(cluster.instances[0].url, open_timeout=5) as ws:
            await ws.send(json.dumps({"type": "register", "peer_id": "c3", "room_id": room[0], "token": room[1], "role": "client", "events": True}))
            reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert reply["code"] == "TOO_MANY_WATCHERS" and "--max-watchers-per-room" in reply["message"]
        await first.close()
        await asyncio.sleep(0.3)
        third = await Watcher.join(cluster.instances[0].url, room, "c3")  # a place freed up
        await second.close()
        await third.close()
    finally:
        cluster.stop()


async def test_batched_events_from_another_instance_are_coalesced(redis_cluster):
    a, b, _ = redis_cluster.instances
    room = await redis_cluster.create_room()
    watcher = await Watcher.join(a.url, room, "watcher", batch_events=True)
    worker = None
    try:
        worker = await _client(b.url, room, "worker", peer_id="w", events=False)
        for status in ("busy", "available", "busy", "available", "busy"):
            await worker.update_metadata({"properties": {"status": status}})
        await _until(lambda: any(e.get("metadata", {}).get("properties", {}).get("status") == "busy" and e["peer_id"] == "w" for e in watcher.events[-1:]), 5, "last update seen")
        kinds = [e["type"] for e in watcher.events if e["peer_id"] == "w"]
        assert kinds[0] == "peer_joined" and set(kinds[1:]) <= {"peer_updated"}
        assert watcher.batches >= 1 and watcher.single_events == 0  # all came as room_events frames
    finally:
        if worker is not None:
            await worker.close()
        await watcher.close()


async def test_relay_order_is_kept_across_instances(redis_cluster):
    a, b, _ = redis_cluster.instances
    room = await redis_cluster.create_room()
    receiver = await Watcher.join(a.url, room, "receiver")
    async with websockets.connect(b.url, open_timeout=5) as ws:
        await ws.send(json.dumps({"type": "register", "peer_id": "sender", "room_id": room[0], "token": room[1], "role": "worker"}))
        assert json.loads(await ws.recv())["type"] == "registered_auth"
        for i in range(100):  # paced at the per-address rate (100/s): earlier tests share 127.0.0.1's budget
            await ws.send(json.dumps({"type": "candidate", "target": "receiver", "candidate": {"n": i}}))
            await asyncio.sleep(0.01)
        got = [(await receiver.reply(5))["candidate"]["n"] for _ in range(100)]
    assert got == list(range(100))
    await receiver.close()


async def test_direct_backend_round_trip(redis_server):
    """The backend on its own: a room's tokens, a claim, and what a second instance sees."""
    one, two = RedisBackend(redis_server.url, prefix="t-direct:"), RedisBackend(redis_server.url, prefix="t-direct:")

    class Recorder:
        def __init__(self):
            self.changes: list = []

        def peer_changed(self, old, new):
            self.changes.append((old and old.peer_id, new and new.peer_id))

        def relayed(self, room_id, peer_id, frame):
            self.changes.append(("relay", frame))

        def lease_lost(self):
            self.changes.append("lease lost")

    rec_one, rec_two = Recorder(), Recorder()
    await one.start(rec_one)
    await two.start(rec_two)
    try:
        room = await one.create_room()
        assert (await two.check_room(room.room_id, room.worker_token))[1] == "worker"
        assert (await two.check_room(room.room_id, room.token))[1] == "client"
        assert (await two.check_room(room.room_id, "nope"))[0] == "INVALID_TOKEN"
        assert await two.follow(room.room_id) == {}
        from sleap_rtc.server.backend import Caps, Peer

        peer = Peer("p", room.room_id, "worker", {"tags": [], "properties": {}}, time.time(), False, "h", instance=one.instance_id)
        await one.follow(room.room_id)
        assert await one.claim(peer, None, Caps(10, 10)) is None
        twin = Peer("p", room.room_id, "worker", {}, time.time(), False, "other", instance=two.instance_id)
        assert await two.claim(twin, None, Caps(10, 10)) == "PEER_ID_TAKEN"
        await two.settle(room.room_id)
        assert list(two.view(room.room_id)) == ["p"] and rec_two.changes == [(None, "p")]
        one.forward(two.view(room.room_id)["p"], {"type": "offer"})  # addressed to instance one itself
        await _until(lambda: ("relay", {"type": "offer"}) in rec_one.changes, 5, "relay through the inbox")
        assert await one.release(peer)
        await two.settle(room.room_id)
        assert two.view(room.room_id) == {} and rec_two.changes[-1] == ("p", None)
    finally:
        await one.stop()
        await two.stop()


async def test_an_unreachable_redis_is_a_clear_start_up_error():
    from redis_cluster import free_port

    backend = RedisBackend(f"redis://:secret@127.0.0.1:{free_port()}/0")

    class Nobody:
        def peer_changed(self, old, new): ...
        def relayed(self, room_id, peer_id, frame): ...
        def lease_lost(self): ...

    with pytest.raises(ConnectionError) as info:
        await backend.start(Nobody())
    assert "Cannot reach Redis" in str(info.value) and "secret" not in str(info.value)
    await backend.stop()


async def test_hostile_room_ids_cost_no_big_lookup(redis_cluster):
    async with websockets.connect(redis_cluster.url, open_timeout=5, max_size=None) as ws:
        await ws.send(json.dumps({"type": "register", "peer_id": "w", "room_id": "r" * 200_000, "token": "t", "role": "worker"}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["code"] == "INVALID_TOKEN"
    redis_cluster.reset_limits()
