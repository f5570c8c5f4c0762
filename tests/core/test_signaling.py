"""SignalingClient against the real server on loopback."""

from __future__ import annotations

import asyncio

import pytest

from sleap_rtc.core.signaling import ConnectionState, RegistrationError, SignalingClient, SignalingError, create_room
from sleap_rtc.server.app import start_server


@pytest.fixture
async def clients():
    """Factory of SignalingClients, all closed after the test."""
    made: list[SignalingClient] = []

    def make(url, room, role="worker", **kw) -> SignalingClient:
        client = SignalingClient(url, room_id=room[0], token=room[1], role=role, request_timeout=5.0, max_backoff=0.5, **kw)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


async def test_register_discover_update_and_events(signaling_server, clients):
    room = await create_room(signaling_server.url)
    worker = clients(signaling_server.url, room, metadata={"tags": ["training-worker"], "properties": {"gpu_memory_mb": 24000, "status": "available"}})
    watcher = clients(signaling_server.url, room, role="client")
    await watcher.connect()
    joined_task = asyncio.create_task(watcher.wait_for(lambda f: f.get("type") == "peer_joined", 5))
    await asyncio.sleep(0)  # the listener is in place before the worker joins
    reg = await worker.connect()
    assert reg.peer_id == worker.peer_id and reg.resume and worker.state == ConnectionState.REGISTERED

    joined = await joined_task
    assert joined["peer_id"] == worker.peer_id
    found = await watcher.discover({"role": "worker", "properties": {"gpu_memory_mb": {"$gte": 16000}}})
    assert [p["peer_id"] for p in found] == [worker.peer_id]

    updated_task = asyncio.create_task(watcher.wait_for(lambda f: f.get("type") == "peer_updated", 5))
    await asyncio.sleep(0)
    merged = await worker.update_metadata({"properties": {"status": "busy"}})
    assert merged["properties"] == {"gpu_memory_mb": 24000, "status": "busy"}
    updated = await updated_task
    assert updated["metadata"]["properties"]["status"] == "busy"

    got = []
    watcher.add_listener(got.append)
    msg_task = asyncio.create_task(watcher.wait_for(lambda f: f.get("type") == "peer_message", 5))
    await asyncio.sleep(0)
    await worker.send_peer_message(watcher.peer_id, {"hi": 1})
    msg = await msg_task
    assert msg["from_peer_id"] == worker.peer_id and msg["payload"] == {"hi": 1}
    assert any(f.get("type") == "peer_message" for f in got)


async def test_registration_refused(signaling_server, clients):
    room = await signaling_server.create_room()
    client = clients(signaling_server.url, (room[0], "wrong"))
    with pytest.raises(RegistrationError) as info:
        await client.connect()
    assert info.value.code == "INVALID_TOKEN" and client.state == ConnectionState.CLOSED


async def test_error_reply_raises_signaling_error(signaling_server, clients, room):
    client = clients(signaling_server.url, room)
    await client.connect()
    with pytest.raises(SignalingError) as info:
        await client.request({"type": "offer", "target": "ghost", "sdp": "x"})
    assert info.value.code == "PEER_NOT_FOUND"


async def test_request_timeout(signaling_server, clients, room):
    client = clients(signaling_server.url, room)
    await client.connect()
    # The server answers nothing to a pong: the request must time out, not hang.
    with pytest.raises(SignalingError, match="No reply"):
        await client.request({"type": "pong"}, timeout=0.3)
    assert client.state == ConnectionState.REGISTERED


async def test_unreachable_server_is_a_clear_error(clients):
    client = clients("ws://127.0.0.1:9/ws", ("r", "t"))
    with pytest.raises(SignalingError, match="Cannot reach"):
        await client.connect()


async def test_server_that_never_answers_the_handshake_times_out(clients):
    # Accepts TCP, never speaks: without a bound, aiohttp's default would wait 5 minutes.
    held: list[asyncio.StreamWriter] = []

    async def silent(reader, writer):
        held.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        client = SignalingClient(f"ws://127.0.0.1:{port}/ws", room_id="r", token="t", role="client", request_timeout=0.5)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(SignalingError, match="no answer within 0.5 s"):
            await asyncio.wait_for(client.connect(), 10)
        assert loop.time() - started < 5
        assert client.state == ConnectionState.CLOSED and client._http is None, "nothing left open"
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_reconnects_after_server_restart_with_same_identity(tmp_path, clients):
    state = tmp_path / "state.sqlite3"
    server = await start_server(state_path=state)
    port = server.port
    try:
        room = await server.create_room()
        worker = clients(server.url, room, peer_id="worker-a", metadata={"properties": {"status": "available"}})
        await worker.connect()
        await worker.update_metadata({"properties": {"status": "busy"}})
        states = []
        worker.add_state_listener(states.append)
        await server.stop()
        await asyncio.wait_for(_until(lambda: worker.state == ConnectionState.RECONNECTING), 5)
        server = await start_server(port=port, state_path=state)
        await worker.wait_registered(10)
        assert ConnectionState.RECONNECTING in states and worker.state == ConnectionState.REGISTERED
        peer = server.hub.live[room[0]]["worker-a"]
        assert peer.metadata["properties"]["status"] == "busy"  # metadata re-applied
    finally:
        await server.stop()


async def test_resume_after_network_blip_takes_over_own_id(signaling_server, clients, room):
    worker = clients(signaling_server.url, room, peer_id="worker-b")
    await worker.connect()
    old_ws = worker._ws
    # Simulate a blip the server has not noticed: the client drops its side and re-registers.
    worker._ws = None
    await worker._open_and_register()
    assert worker.state == ConnectionState.REGISTERED
    await asyncio.wait_for(_until(lambda: old_ws.closed), 5)
    assert signaling_server.hub.live[room[0]]["worker-b"].conn.transport is not None


async def test_watchdog_reconnects_a_silent_connection(clients):
    server = await start_server(ping_interval=0.2)
    try:
        room = await server.create_room()
        worker = clients(server.url, room)
        await worker.connect()
        states = []
        worker.add_state_listener(states.append)
        # Silence the server's pings to this peer: the watchdog (3 intervals) must fire.
        server.hub.ping_interval = 1e9
        for conn in server.hub.connections:
            conn.next_ping = 1e18
        await asyncio.wait_for(_until(lambda: ConnectionState.RECONNECTING in states), 5)
        server.hub.ping_interval = 0.2
        await worker.wait_registered(5)
    finally:
        await server.stop()


async def _until(predicate, step: float = 0.02) -> None:
    while not predicate():
        await asyncio.sleep(step)
