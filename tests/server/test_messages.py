"""Every v2.0 message and our additions, against the real server over real WebSockets."""

from __future__ import annotations

import logging

import pytest

from sleap_rtc.core.protocol import busy_error_frame

GPU = {"tags": ["sleap-rtc", "training-worker"], "properties": {"gpu_memory_mb": 24000, "gpu_model": "A5000", "status": "available"}}


async def test_register_reply_has_v2_fields_and_ours(peer_in_room, connect, room):
    first = await peer_in_room("w-1", metadata=GPU)
    second = await (await connect()).register(room, "c-1", "client", id="req-7")
    assert second["room_id"] == room[0] and second["token"] == room[1] and second["peer_id"] == "c-1"
    assert second["id"] == "req-7"
    assert second["ice_servers"] == [] and second["ping_interval"] == 30.0
    assert isinstance(second["resume"], str) and len(second["resume"]) >= 22
    assert [p["peer_id"] for p in second["peer_list"]] == ["w-1"]
    assert second["peer_list"][0]["metadata"]["properties"]["gpu_memory_mb"] == 24000
    assert second["peer_metadata"] == {"tags": [], "properties": {}}
    assert first.peer_id == "w-1"


@pytest.mark.in_process
async def test_token_never_logged(connect, room, caplog):
    caplog.set_level(logging.DEBUG)
    peer = await connect()
    await peer.register(room, "w-1")
    bad = await connect()
    await bad.request({"type": "register", "peer_id": "x", "room_id": room[0], "token": "wrong-token-value", "role": "worker"})
    await peer.request({"type": "discover_peers", "id": 1})
    text = caplog.text
    assert "w-1" in text
    assert room[1] not in text and "wrong-token-value" not in text


async def test_discover_filters(peer_in_room):
    await peer_in_room("big", metadata={"tags": ["training-worker"], "properties": {"gpu_memory_mb": 48000, "status": "available"}})
    await peer_in_room("small", metadata={"tags": ["inference-worker"], "properties": {"gpu_memory_mb": 8000, "status": "busy"}})
    await peer_in_room("weird", metadata={"tags": [], "properties": {"gpu_memory_mb": "lots"}})
    await peer_in_room("other-client", "client")
    me = await peer_in_room("me", "client")

    async def ids(filters=None):
        frame = {"type": "discover_peers", "from_peer_id": "me", "id": "d"}
        if filters is not None:
            frame["filters"] = filters
        reply = await me.request(frame)
        assert reply["type"] == "peer_list" and reply["id"] == "d" and reply["to_peer_id"] == "me"
        assert reply["count"] == len(reply["peers"])
        return sorted(p["peer_id"] for p in reply["peers"])

    assert await ids() == ["big", "other-client", "small", "weird"]  # never the sender itself
    assert await ids({"role": "worker"}) == ["big", "small", "weird"]
    assert await ids({"tags": ["training-worker", "nope"]}) == ["big"]
    assert await ids({"properties": {"status": "busy"}}) == ["small"]
    assert await ids({"properties": {"gpu_memory_mb": {"$gte": 16000}}}) == ["big"]
    assert await ids({"properties": {"gpu_memory_mb": {"$lte": 8000}}}) == ["small"]
    assert await ids({"properties": {"gpu_memory_mb": {"$gte": 1000, "$lte": 50000}}}) == ["big", "small"]
    assert await ids({"properties": {"gpu_memory_mb": {"$eq": "lots"}}}) == ["weird"]
    assert await ids({"properties": {"missing": {"$gte": 0}}}) == []
    # A numeric range against a string property does not match and does not crash.
    assert await ids({"properties": {"gpu_memory_mb": {"$gte": "a"}}}) == ["weird"]
    assert await ids({"role": "worker", "properties": {"gpu_memory_mb": {"$gte": 1}}}) == ["big", "small"]


async def test_update_metadata_merges_and_replies_full_object(peer_in_room):
    worker = await peer_in_room("w", metadata={"tags": ["a"], "properties": {"status": "available", "gpu_memory_mb": 1}})
    reply = await worker.request({"type": "update_metadata", "peer_id": "w", "metadata": {"tags": ["b", "a"], "properties": {"status": "busy"}}, "id": 3})
    assert reply == {
        "type": "metadata_updated",
        "peer_id": "w",
        "metadata": {"tags": ["a", "b"], "properties": {"status": "busy", "gpu_memory_mb": 1}},
        "id": 3,
    }
    other = await peer_in_room("c", "client")
    seen = (await other.request({"type": "discover_peers", "filters": {"properties": {"status": "busy"}}}))["peers"]
    assert [p["peer_id"] for p in seen] == ["w"]


async def test_update_metadata_of_another_peer_is_forbidden(peer_in_room):
    victim = await peer_in_room("victim", metadata={"properties": {"status": "available"}})
    attacker = await peer_in_room("attacker", "client")
    reply = await attacker.request({"type": "update_metadata", "peer_id": "victim", "metadata": {"properties": {"status": "busy"}}, "id": "x"})
    assert reply["type"] == "error" and reply["code"] == "FORBIDDEN" and reply["id"] == "x"
    peers = (await attacker.request({"type": "discover_peers"}))["peers"]
    assert peers[0]["metadata"]["properties"]["status"] == "available"
    await victim.nothing(0.2)


async def test_peer_message_relay_stamps_true_sender(peer_in_room):
    a = await peer_in_room("a", "client")
    b = await peer_in_room("b")
    await a.send({"type": "peer_message", "from_peer_id": "b", "to_peer_id": "b", "payload": {"hello": 1}})
    got = await b.recv()
    assert got == {"type": "peer_message", "from_peer_id": "a", "to_peer_id": "b", "payload": {"hello": 1}}
    await a.nothing(0.2)  # success is silent


async def test_relay_to_unknown_peer_is_peer_not_found(peer_in_room):
    a = await peer_in_room("a", "client")
    for frame in (
        {"type": "peer_message", "to_peer_id": "ghost", "payload": {}, "id": 1},
        {"type": "offer", "sender": "a", "target": "ghost", "sdp": "v=0", "id": 2},
    ):
        reply = await a.request(frame)
        assert reply["type"] == "error" and reply["code"] == "PEER_NOT_FOUND" and reply["id"] == frame["id"]
        assert reply["reason"] and reply["message"]


async def test_offer_answer_candidate_are_forwarded_unchanged_with_true_sender(peer_in_room):
    client = await peer_in_room("client-1", "client")
    worker = await peer_in_room("worker-1")
    offer = {"type": "offer", "sender": "someone-else", "target": "worker-1", "sdp": "v=0 offer", "extra": {"k": [1, 2]}}
    await client.send(offer)
    assert await worker.recv() == {**offer, "sender": "client-1"}
    answer = {"type": "answer", "target": "client-1", "sdp": "v=0 answer"}  # no sender at all
    await worker.send(answer)
    assert await client.recv() == {**answer, "sender": "worker-1"}
    cand = {"type": "candidate", "sender": "worker-1", "target": "client-1", "candidate": {"candidate": "candidate:1 1 udp 1 10.0.0.1 9 typ host", "sdpMid": "0"}}
    await worker.send(cand)
    assert await client.recv() == cand


async def test_worker_busy_error_with_target_is_relayed(peer_in_room):
    client = await peer_in_room("client-1", "client")
    worker = await peer_in_room("worker-1")
    await worker.send(busy_error_frame("client-1", "busy"))
    got = await client.recv()
    assert got["type"] == "error" and got["reason"] == "worker_busy" and got["sender"] == "worker-1"
    assert got["target"] == "client-1" and got["status"] == "busy" and "busy" in got["message"]
    await worker.nothing(0.2)


async def test_messages_before_register_are_not_in_room(connect):
    peer = await connect()
    for msg_type, extra in [("discover_peers", {}), ("update_metadata", {"metadata": {}}), ("offer", {"target": "x"}), ("peer_message", {"to_peer_id": "x", "payload": {}})]:
        reply = await peer.request({"type": msg_type, "id": msg_type, **extra})
        assert reply["code"] == "NOT_IN_ROOM" and reply["id"] == msg_type


async def test_ping_and_pong_from_peers_get_no_reply(connect, room):
    peer = await connect()
    await peer.send({"type": "ping"})
    await peer.send({"type": "pong"})
    await peer.nothing(0.3)
    await peer.register(room, "w")
    await peer.send({"type": "pong"})
    await peer.nothing(0.3)


async def test_register_twice_on_one_connection_is_refused(peer_in_room, room):
    peer = await peer_in_room("w")
    reply = await peer.request({"type": "register", "peer_id": "w2", "room_id": room[0], "token": room[1], "role": "worker", "id": 9})
    assert reply["code"] == "ALREADY_REGISTERED" and reply["id"] == 9


async def test_bad_role_and_bad_peer_id_are_refused(connect, room):
    peer = await connect()
    reply = await peer.request({"type": "register", "peer_id": "w", "room_id": room[0], "token": room[1], "role": "admin"})
    assert reply["code"] == "INVALID_MESSAGE" and "role" in reply["message"].lower()
    reply = await peer.request({"type": "register", "peer_id": "", "room_id": room[0], "token": room[1], "role": "worker"})
    assert reply["code"] == "INVALID_MESSAGE"
    reply = await peer.request({"type": "register", "peer_id": "x" * 1000, "room_id": room[0], "token": room[1], "role": "worker"})
    assert reply["code"] == "INVALID_MESSAGE"
    await peer.register(room, "w")  # the connection is still usable
