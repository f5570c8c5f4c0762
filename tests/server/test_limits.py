"""Limits: bad frames, sizes, rates, peers per room, failed-registration rate limiting."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets

from sleap_rtc.server.app import start_server


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("not json", "INVALID_JSON"),
        ("[1, 2]", "INVALID_MESSAGE"),
        ('"register"', "INVALID_MESSAGE"),
        ('{"no_type": 1}', "INVALID_MESSAGE"),
        ('{"type": 7}', "INVALID_MESSAGE"),
        ('{"type": "teleport"}', "UNKNOWN_MESSAGE_TYPE"),
        ('{"type": "register", "peer_id": 1, "room_id": "r", "token": "t", "role": "worker"}', "INVALID_MESSAGE"),
        ('{"type": "register", "peer_id": "p", "room_id": "r", "token": "t", "role": "worker", "metadata": []}', "INVALID_MESSAGE"),
        ('{"type": "register", "peer_id": "p", "room_id": "r", "token": "t", "role": "worker", "events": "yes"}', "INVALID_MESSAGE"),
        ('{"type": "discover_peers", "filters": "all"}', "INVALID_MESSAGE"),
        ('{"type": "peer_message", "to_peer_id": "x", "payload": "text"}', "INVALID_MESSAGE"),
    ],
)
async def test_bad_frames_get_error_and_connection_survives(connect, room, raw, code):
    peer = await connect()
    reply = await peer.request(raw)
    assert reply["type"] == "error" and reply["code"] == code
    assert reply["reason"] and reply["message"]
    await peer.register(room, "w")


async def test_wrong_field_types_after_register(peer_in_room):
    peer = await peer_in_room("w")
    for frame in (
        {"type": "update_metadata", "metadata": "busy", "id": 1},
        {"type": "offer", "target": ["x"], "id": 2},
        {"type": "error", "target": "x", "reason": 5, "id": 3},
    ):
        reply = await peer.request(frame)
        assert reply["code"] == "INVALID_MESSAGE" and reply["id"] == frame["id"]
    assert (await peer.request({"type": "discover_peers", "id": 4}))["type"] == "peer_list"


async def test_binary_json_frames_are_accepted_and_garbage_rejected(connect, room):
    peer = await connect()
    reply = await peer.request(json.dumps({"type": "register", "peer_id": "w", "room_id": room[0], "token": room[1], "role": "worker"}).encode())
    assert reply["type"] == "registered_auth"
    reply = await peer.request(b"\xff\xfe\x00garbage")
    assert reply["code"] == "INVALID_JSON"


async def test_oversize_frame(connect, room):
    server = await start_server(max_frame_bytes=10_000)
    try:
        peer = await connect(server.url)
        reply = await peer.request(json.dumps({"type": "ping", "pad": "x" * 20_000}))
        assert reply["code"] == "FRAME_TOO_LARGE"
        await peer.register(await server.create_room(), "w")  # still usable
        # Beyond the transport cap the socket is closed (1009), and the server lives on.
        huge = await connect(server.url)
        with pytest.raises(websockets.ConnectionClosed) as info:
            await huge.send("x" * (5 * 1024 * 1024))
            await asyncio.wait_for(huge.ws.recv(), 5)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009
        assert (await peer.request({"type": "discover_peers"}))["type"] == "peer_list"
    finally:
        await server.stop()


async def test_default_frame_cap_is_one_mib(peer_in_room):
    peer = await peer_in_room("w")
    reply = await peer.request({"type": "update_metadata", "metadata": {"properties": {"blob": "x" * (1024 * 1024 + 10)}}})
    assert reply["code"] == "FRAME_TOO_LARGE"


async def test_peers_per_room(connect):
    server = await start_server(max_peers_per_room=2)
    try:
        room = await server.create_room()
        for i in range(2):
            await (await connect(server.url)).register(room, f"p{i}")
        extra = await connect(server.url)
        reply = await extra.request({"type": "register", "peer_id": "p2", "room_id": room[0], "token": room[1], "role": "worker"})
        assert reply["code"] == "ROOM_FULL" and "2" in reply["message"]
    finally:
        await server.stop()


async def test_messages_per_second(connect):
    server = await start_server(messages_per_second=5, message_burst=5)
    try:
        peer = await connect(server.url)
        await peer.register(await server.create_room(), "w")  # spends one token
        for i in range(10):
            await peer.send({"type": "discover_peers", "id": i})
        replies = [await peer.recv() for _ in range(10)]
        limited = [r for r in replies if r["type"] == "error"]
        assert limited and all(r["code"] == "RATE_LIMITED" and r["retry_after"] > 0 for r in limited)
        assert sum(r["type"] == "peer_list" for r in replies) >= 3
        await asyncio.sleep(0.5)  # tokens refill: the connection is usable again
        assert (await peer.request({"type": "discover_peers"}))["type"] == "peer_list"
    finally:
        await server.stop()


async def test_failed_registrations_are_rate_limited_per_address(connect):
    server = await start_server(max_failed_registrations=3)
    try:
        room_id, token = await server.create_room()
        peer = await connect(server.url)
        for _ in range(3):
            assert (await peer.request({"type": "register", "peer_id": "w", "room_id": room_id, "token": "bad", "role": "worker"}))["code"] == "INVALID_TOKEN"
        # Further failing tries get a reason and a time to retry...
        reply = await peer.request({"type": "register", "peer_id": "w", "room_id": room_id, "token": "bad", "role": "worker", "id": 5})
        assert reply["type"] == "error" and reply["code"] == "RATE_LIMITED" and reply["id"] == 5
        assert "Too many failed registrations" in reply["message"] and 0 < reply["retry_after"] <= 60
        other = await connect(server.url)  # same address, new socket: still limited
        assert (await other.request({"type": "register", "peer_id": "w", "room_id": "x", "token": "y", "role": "worker"}))["code"] == "RATE_LIMITED"
        # ...but the right token is never refused (S10: a typo behind a NAT locks nobody out).
        reply = await peer.request({"type": "register", "peer_id": "w", "room_id": room_id, "token": token, "role": "worker"})
        assert reply["type"] == "registered_auth"
    finally:
        await server.stop()


async def test_failures_against_one_room_lock_out_only_the_failing_addresses():
    # At the hub: on loopback every socket shares one address.
    from sleap_rtc.server.hub import Hub
    from sleap_rtc.server.limits import Limits
    from sleap_rtc.server.rooms import RoomStore

    now = [0.0]
    hub = Hub(RoomStore(), limits=Limits(max_failed_registrations=2), clock=lambda: now[0])
    room_id, token = hub.rooms.create()
    codes = []
    for i in range(50):  # fifty addresses, each failing three times against one room
        conn = hub.connect(f"10.0.0.{i}")
        for _ in range(3):
            [action] = hub.handle(conn, json.dumps({"type": "register", "peer_id": "w", "room_id": room_id, "token": "bad", "role": "worker"}))
            codes.append(action.frame["code"])
    assert codes == ["INVALID_TOKEN", "INVALID_TOKEN", "RATE_LIMITED"] * 50
    conn = hub.connect("10.0.0.99")  # a fresh address with the right token: admitted at once
    [action, *_] = hub.handle(conn, json.dumps({"type": "register", "peer_id": "w", "room_id": room_id, "token": token, "role": "worker"}))
    assert action.frame["type"] == "registered_auth"
