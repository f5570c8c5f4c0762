"""RoomView against the real signaling server on loopback: discovery, live events, filters,
and a fresh discovery after the server restarts (events may have been missed)."""

from __future__ import annotations

import asyncio
import contextlib

from sleap_rtc.core.room import RoomView, worker_filters
from sleap_rtc.core.signaling import ConnectionState, SignalingClient
from sleap_rtc.server.app import start_server


def worker_meta(name, mem, status="available"):
    props = {"worker_name": name, "gpu_memory_mb": mem, "gpu_model": "RTX", "status": status, "hostname": "h"}
    return {"tags": ["sleap-rtc", "training-worker"], "properties": props}


@contextlib.asynccontextmanager
async def peers(url, room_id, token, *specs):
    """Register ``(role, peer_id, metadata)`` peers; close them all afterwards."""
    clients = [
        SignalingClient(url, room_id=room_id, token=token, role=role, peer_id=pid, metadata=meta, request_timeout=5)
        for role, pid, meta in specs
    ]
    try:
        for c in clients:
            await c.connect()
        yield clients
    finally:
        for c in clients:
            await c.close()


def names(view_or_list):
    workers = view_or_list if isinstance(view_or_list, list) else view_or_list.workers
    return sorted(w.peer_id for w in workers)


async def test_discovery_and_live_events(signaling_server, room):
    room_id, token = room
    url = signaling_server.url
    async with peers(url, room_id, token, ("worker", "w-a", worker_meta("a", 8000)), ("client", "c-1", {})) as (wa, me):
        view = RoomView(me)
        changes = []
        view.subscribe(lambda ch: changes.append((ch.kind, ch.worker.peer_id if ch.worker else None)))
        assert [w.peer_id for w in await view.start()] == ["w-a"]  # clients are not listed
        assert view.get("w-a").gpu_model == "RTX" and view.get("w-a").name == "a"

        async with peers(url, room_id, token, ("worker", "w-b", worker_meta("b", 24000))) as (wb,):
            await view.wait_for(lambda v: v.get("w-b"), 5)
            await wb.update_metadata({"properties": {"status": "busy"}})
            await view.wait_for(lambda v: v.get("w-b").status == "busy", 5)
            assert [w.peer_id for w in view.available()] == ["w-a"]
        await view.wait_for(lambda v: v.get("w-b") is None, 5)
        assert ("joined", "w-b") in changes and ("updated", "w-b") in changes and ("left", "w-b") in changes
        view.close()


async def test_min_gpu_memory_filter_on_discovery_events_and_refresh(signaling_server, room):
    room_id, token = room
    url = signaling_server.url
    async with peers(
        url, room_id, token, ("worker", "small", worker_meta("s", 4000)), ("worker", "big", worker_meta("b", 16000)), ("client", "me", {})
    ) as (small, big, me):
        view = RoomView(me, worker_filters(8000))
        assert names(await view.start()) == ["big"] and view.filters["properties"]["gpu_memory_mb"] == {"$gte": 8000}
        async with peers(url, room_id, token, ("worker", "tiny", worker_meta("t", 100)), ("worker", "huge", worker_meta("h", 80000))):
            await view.wait_for(lambda v: v.get("huge"), 5)
            await asyncio.sleep(0.05)  # let any (wrongly) unfiltered join land
            assert names(view) == ["big", "huge"]
            assert names(await view.refresh()) == ["big", "huge"]
        # An update that makes a worker fail the filter takes it out of the view.
        await big.update_metadata({"properties": {"gpu_memory_mb": 2000}})
        await view.wait_for(lambda v: v.get("big") is None, 5)
        view.close()


async def test_refresh_after_server_restart(tmp_path):
    state = tmp_path / "state.sqlite3"
    server = await start_server("127.0.0.1", 0, state_path=state)
    port = server.port
    room_id, token = await server.create_room()
    url = server.url
    clients = [
        SignalingClient(url, room_id=room_id, token=token, role="worker", peer_id="w-a", metadata=worker_meta("a", 8000), max_backoff=0.3),
        SignalingClient(url, room_id=room_id, token=token, role="client", peer_id="me", max_backoff=0.3),
    ]
    wa, me = clients
    try:
        for c in clients:
            await c.connect()
        view = RoomView(me)
        await view.start()
        assert names(view) == ["w-a"]
        await server.stop()
        await asyncio.sleep(0.2)
        server = await start_server("127.0.0.1", port, state_path=state)
        # While the server was away w-a changed: the view learns it from the re-discovery.
        await wa.wait_registered(10)
        await wa.update_metadata({"properties": {"status": "busy"}})
        await me.wait_registered(10)
        await view.wait_for(lambda v: v.get("w-a") and v.get("w-a").status == "busy", 10)
        assert me.state == ConnectionState.REGISTERED
        view.close()
    finally:
        for c in clients:
            await c.close()
        await server.stop()
