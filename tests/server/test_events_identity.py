"""Room events, identity bound to the connection, resume, and room isolation."""

from __future__ import annotations

import asyncio

import pytest
import websockets

from sleap_rtc.server.app import start_server


async def test_events_go_only_to_opted_in_peers(peer_in_room):
    watcher = await peer_in_room("watcher", "client", events=True)
    quiet = await peer_in_room("quiet", "client")
    assert (await watcher.recv())["peer_id"] == "quiet"
    worker = await peer_in_room("w", metadata={"properties": {"status": "available"}})
    joined = await watcher.recv()
    assert joined["type"] == "peer_joined" and joined["peer_id"] == "w" and joined["role"] == "worker"
    assert joined["metadata"]["properties"]["status"] == "available"

    await worker.request({"type": "update_metadata", "metadata": {"properties": {"status": "busy"}}})
    updated = await watcher.recv()
    assert updated["type"] == "peer_updated" and updated["peer_id"] == "w"
    assert updated["metadata"]["properties"]["status"] == "busy"

    await worker.close()
    left = await watcher.recv()
    assert left["type"] == "peer_left" and left["peer_id"] == "w" and left["role"] == "worker"
    await quiet.nothing(0.3)  # never anything unsolicited without "events": true


async def test_sender_gets_no_event_about_itself(peer_in_room):
    worker = await peer_in_room("w", events=True)
    reply = await worker.request({"type": "update_metadata", "metadata": {"properties": {"status": "busy"}}})
    assert reply["type"] == "metadata_updated"
    await worker.nothing(0.2)


async def test_duplicate_peer_id_is_refused_without_resume(peer_in_room, connect, room):
    owner = await peer_in_room("w")
    thief = await connect()
    reply = await thief.request({"type": "register", "peer_id": "w", "room_id": room[0], "token": room[1], "role": "worker", "id": 1})
    assert reply["code"] == "PEER_ID_TAKEN" and reply["id"] == 1
    reply = await thief.request({"type": "register", "peer_id": "w", "room_id": room[0], "token": room[1], "role": "worker", "resume": "guess"})
    assert reply["code"] == "PEER_ID_TAKEN"
    # The owner is untouched and still reachable.
    await thief.register(room, "thief", "client")
    await thief.send({"type": "peer_message", "to_peer_id": "w", "payload": {"x": 1}})
    assert (await owner.recv())["from_peer_id"] == "thief"


async def test_resume_takes_over_and_stale_close_does_not_evict(peer_in_room, connect, room):
    watcher = await peer_in_room("watcher", "client", events=True)
    old = await connect()
    first = await old.register(room, "w", metadata={"properties": {"status": "available"}})
    assert (await watcher.recv())["type"] == "peer_joined"
    new = await connect()
    second = await new.register(room, "w", resume=first["resume"], metadata={"properties": {"status": "busy"}})
    assert second["resume"] != first["resume"]
    # The stale socket is closed by the server ...
    with pytest.raises(websockets.ConnectionClosed):
        await asyncio.wait_for(old.ws.recv(), 5)
    updated = await watcher.recv()
    assert updated["type"] == "peer_updated" and updated["metadata"]["properties"]["status"] == "busy"
    # ... and its closing did not remove the peer: relays reach the new socket.
    await watcher.nothing(0.3)
    await watcher.send({"type": "offer", "target": "w", "sdp": "x"})
    assert (await new.recv())["sender"] == "watcher"
    peers = (await watcher.request({"type": "discover_peers"}))["peers"]
    assert [p["peer_id"] for p in peers] == ["w"]


async def test_rooms_are_isolated(signaling_server, connect, room):
    other_room = await signaling_server.create_room()
    a = await connect()
    await a.register(room, "a", events=True)
    b = await connect()
    await b.register(other_room, "b", "client", events=True)
    # Same peer id in another room is a different peer, not a conflict.
    twin = await connect()
    await twin.register(other_room, "a")
    assert (await b.recv())["peer_id"] == "a"  # event from its own room only
    assert (await b.request({"type": "discover_peers"}))["peers"][0]["peer_id"] == "a"
    await b.send({"type": "offer", "target": "a", "sdp": "x"})
    assert (await twin.recv())["sender"] == "b"  # reached the twin in b's room, not room-1's a
    reply = await b.request({"type": "peer_message", "to_peer_id": "nobody-here", "payload": {}})
    assert reply["code"] == "PEER_NOT_FOUND"
    assert (await a.request({"type": "discover_peers"}))["count"] == 0
    await a.nothing(0.3)


async def test_wrong_token_and_unknown_room(connect, room):
    # One answer for both (S11): a refusal must not tell whether a room exists.
    peer = await connect()
    reply = await peer.request({"type": "register", "peer_id": "w", "room_id": room[0], "token": "x" + room[1], "role": "worker", "id": "r"})
    assert reply["type"] == "error" and reply["code"] == "INVALID_TOKEN" and reply["reason"] == "Unknown room or invalid token." and reply["id"] == "r"
    unknown = await peer.request({"type": "register", "peer_id": "w", "room_id": "nope", "token": room[1], "role": "worker", "id": "r"})
    assert unknown == reply
    await peer.register(room, "w")


async def test_missing_register_fields_get_a_clear_error(connect, room):
    peer = await connect()
    reply = await peer.request({"type": "register", "peer_id": "w", "room_id": room[0], "role": "worker"})
    assert reply["code"] == "INVALID_MESSAGE" and "token" in reply["message"]


async def test_expired_room_is_refused(tmp_path, connect):
    server = await start_server(state_path=tmp_path / "s.db", room_ttl=0.05)
    try:
        room = await server.create_room()
        await asyncio.sleep(0.1)
        peer = await connect(server.url)
        reply = await peer.request({"type": "register", "peer_id": "w", "room_id": room[0], "token": room[1], "role": "worker"})
        assert reply["code"] == "ROOM_EXPIRED"
    finally:
        await server.stop()


async def test_app_ping_after_one_interval_only(connect, tmp_path):
    server = await start_server(ping_interval=0.6)
    try:
        room = await server.create_room()
        peer = await connect(server.url)
        loop = asyncio.get_running_loop()
        await peer.register(room, "w")
        registered_at = loop.time()
        ping = await peer.recv(5, skip_pings=False)
        assert ping == {"type": "ping"}
        assert loop.time() - registered_at >= 0.55  # never sooner than one interval
        again = await peer.recv(5, skip_pings=False)
        assert again == {"type": "ping"}
    finally:
        await server.stop()


async def test_no_peer_left_while_the_server_shuts_down(peer_in_room, signaling_server):
    """Sockets closing because the server goes away are not peers leaving: a peer told
    "your client left" would abandon a job whose data channel is healthy."""
    watcher = await peer_in_room("client", "client", events=True)
    worker = await peer_in_room("w", "worker")
    assert (await watcher.recv())["type"] == "peer_joined"
    signaling_server.hub.closing = True  # what RunningServer.stop() sets first
    await worker.close()
    await watcher.nothing(within=0.5)
    signaling_server.hub.closing = False
