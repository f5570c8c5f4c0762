"""Property-based fuzzing of a live server: random and mutated frames never crash it or leak across rooms."""

from __future__ import annotations

import asyncio
import json

import websockets
from websockets.protocol import State
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sleap_rtc.server.app import start_server

TYPES = ["register", "discover_peers", "update_metadata", "peer_message", "offer", "answer", "candidate", "error", "ping", "pong", "peer_joined", "bogus"]
FIELDS = ["peer_id", "room_id", "token", "role", "metadata", "filters", "target", "sender", "to_peer_id", "from_peer_id", "payload", "sdp", "events", "resume", "id", "candidate"]

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), st.text(max_size=20))
json_value = st.recursive(json_leaf, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)
filters = st.fixed_dictionaries({}, optional={
    "role": json_value,
    "tags": st.one_of(json_value, st.lists(st.text(max_size=5), max_size=3)),
    "properties": st.dictionaries(st.sampled_from(["gpu_memory_mb", "status", "x"]), st.one_of(json_value, st.dictionaries(st.sampled_from(["$gte", "$lte", "$eq", "$ne"]), json_value, max_size=3)), max_size=3),
})


@st.composite
def frames(draw):
    """A frame that is mostly well-formed (so deep paths run), sometimes broken."""
    frame = {"type": draw(st.sampled_from(TYPES))}
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=8, unique=True)):
        frame[name] = draw(filters if name == "filters" else st.one_of(json_value, st.sampled_from(["victim", "spy", "ghost"])))
    kind = draw(st.sampled_from(["json", "json", "json", "cut", "text", "bytes"]))
    text = json.dumps(frame)
    if kind == "cut":
        return text[: draw(st.integers(0, max(0, len(text) - 1)))]
    if kind == "text":
        return draw(st.text(max_size=50))
    if kind == "bytes":
        return draw(st.binary(max_size=50))
    return text


async def _drain(ws, seconds: float) -> list[dict]:
    got = []
    try:
        while True:
            got.append(json.loads(await asyncio.wait_for(ws.recv(), seconds)))
    except (asyncio.TimeoutError, TimeoutError):
        return got


async def test_fuzz_never_crashes_or_leaks():
    # Room B holds the fuzzer (registered, so relays and metadata paths run); room A holds a
    # victim watching events. Nothing the fuzzer sends may ever reach the victim. The rate
    # limit is lifted so that the frames reach the deep paths instead of RATE_LIMITED.
    server = await start_server(messages_per_second=1e6, message_burst=100_000)
    try:
        await _fuzz(server)
    finally:
        await server.stop()


async def _fuzz(server):
    room, room_b = await server.create_room(), await server.create_room()
    url = server.url
    async with websockets.connect(url, compression=None) as victim, websockets.connect(url, compression=None) as spy:
        await victim.send(json.dumps({"type": "register", "peer_id": "victim", "room_id": room[0], "token": room[1], "role": "worker", "events": True}))
        assert json.loads(await asyncio.wait_for(victim.recv(), 5))["type"] == "registered_auth"
        await spy.send(json.dumps({"type": "register", "peer_id": "spy", "room_id": room_b[0], "token": room_b[1], "role": "client", "events": True}))
        assert json.loads(await asyncio.wait_for(spy.recv(), 5))["type"] == "registered_auth"

        # Hypothesis draws the frames (a sync test body cannot await in the running loop);
        # they are then sent in order over the live socket.
        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        @given(st.lists(frames(), min_size=1, max_size=5))
        def collect(batch):
            batches.append(batch)

        batches: list = []
        collect()
        sent = 0
        for batch in batches:
            for raw in batch:
                await spy.send(raw)
                sent += 1
        replies = await _drain(spy, 1.0)
        assert spy.state is State.OPEN, "bad input must never cost the connection"
        assert sent > 150 and len(replies) > 100
        for reply in replies:
            assert isinstance(reply, dict) and isinstance(reply.get("type"), str)
            assert "victim" not in json.dumps(reply.get("peers", [])), reply
            if reply["type"] in ("peer_joined", "peer_left", "peer_updated"):
                assert reply["peer_id"] != "victim", reply

        # The victim received nothing from room B; the server still serves it.
        assert [f for f in await _drain(victim, 0.3) if f["type"] != "ping"] == []
        await victim.send(json.dumps({"type": "discover_peers", "id": "alive"}))
        reply = json.loads(await asyncio.wait_for(victim.recv(), 5))
        assert reply["type"] == "peer_list" and reply["id"] == "alive"
        assert all(p["peer_id"] != "spy" for p in reply["peers"])
