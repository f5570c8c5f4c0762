"""Hostile peers against the real signaling server: one regression test per attack row.

Each test is named after the row of the server's threat table in docs/security.md that it
holds (S1 ... S23, M1, M6). Attackers are raw WebSocket or TCP clients written here; floods
are kept small by lowering the limit under test. Several tests bind distinct loopback
source addresses (127.0.0.2, 127.0.0.3, ...), which Linux routes like 127.0.0.1, to play
attackers and victims on different addresses.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import aiohttp
import pytest
import websockets

from sleap_rtc.core.protocol import MAX_RECEIVE_BYTES
from sleap_rtc.core.signaling import SignalingClient
from sleap_rtc.server.app import start_server
from sleap_rtc.server.limits import FailureCounter, Limits, address_key

WAIT = 5.0


async def _peer(server, source: str = "127.0.0.1"):
    """A raw WebSocket to ``server`` from the loopback address ``source`` (a ``RawPeer``)."""
    ws = await asyncio.wait_for(
        websockets.connect(server.url, compression=None, max_size=None, open_timeout=WAIT, local_addr=(source, 0)), WAIT,
    )
    return _RawPeer(ws)


class _RawPeer:
    """The same helpers as the ``connect`` fixture's peers (conftest's ``RawPeer``)."""

    def __init__(self, ws):
        self.ws = ws

    async def send(self, frame) -> None:
        await self.ws.send(json.dumps(frame) if isinstance(frame, dict) else frame)

    async def recv(self, timeout: float = WAIT) -> dict:
        while True:
            frame = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
            if frame.get("type") != "ping":
                return frame

    async def request(self, frame, timeout: float = WAIT) -> dict:
        await self.send(frame)
        return await self.recv(timeout)

    async def register(self, room, peer_id: str, role: str = "worker", **extra) -> dict:
        reply = await self.request(_register(room[0], room[1], peer_id, role, **extra))
        assert reply["type"] == "registered_auth", reply
        return reply

    async def close(self) -> None:
        await self.ws.close()


def _register(room_id: str, token: str, peer_id: str, role: str = "worker", **extra) -> dict:
    return {"type": "register", "peer_id": peer_id, "room_id": room_id, "token": token, "role": role, **extra}


async def _closed_within(ws, seconds: float) -> bool:
    """Whether the server closes ``ws`` within ``seconds`` (frames before that are read)."""
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            await asyncio.wait_for(ws.recv(), deadline - time.monotonic())
    except websockets.ConnectionClosed:
        return True
    except (asyncio.TimeoutError, TimeoutError):
        return False
    return False


async def _post(url: str, *, json_body=None, headers=None) -> tuple[int, dict]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT)) as http:
        async with http.post(url, json=json_body, headers=headers or {}) as resp:
            return resp.status, await resp.json(content_type=None)


@pytest.fixture
async def server_factory():
    """``await server_factory(**start_server_kwargs)``: servers stopped after the test."""
    started = []

    async def _start(**kwargs):
        server = await start_server("127.0.0.1", 0, **kwargs)
        started.append(server)
        return server

    yield _start
    for server in started:
        await server.stop()


# ---------------------------------------------------------------------- credentials


async def test_c8_worker_with_the_client_token_is_refused_and_not_registered(signaling_server, connect, room):
    fake = await connect()
    reply = await fake.request(_register(room.room_id, room.token, "worker-fake", metadata={"properties": {"gpu_memory_mb": 10**9}}))
    assert reply["type"] == "error" and reply["code"] == "WORKER_TOKEN_REQUIRED"
    assert "worker token" in reply["message"]
    # Not registered: a client sees no worker, and the fake's socket is still unregistered.
    client = await connect()
    auth = await client.request(_register(room.room_id, room.token, "client-1", "client"))
    assert auth["type"] == "registered_auth" and auth["peer_list"] == []
    assert (await fake.request({"type": "discover_peers"}))["code"] == "NOT_IN_ROOM"
    # The worker token admits workers, and clients too.
    worker = await connect()
    assert (await worker.request(_register(room.room_id, room.worker_token, "worker-real")))["type"] == "registered_auth"
    other_client = await connect()
    assert (await other_client.request(_register(room.room_id, room.worker_token, "client-2", "client")))["type"] == "registered_auth"


# ---------------------------------------------------------------------- S1, M1: room creation


async def test_s1_room_creation_needs_the_secret_or_a_worker_token(server_factory):
    server = await server_factory(create_room_secret="s3cret")  # a secret makes "auto" require it
    url = server.http_url + "/create-room"
    status, body = await _post(url)
    assert status == 403 and body["code"] == "CREATE_ROOM_FORBIDDEN"
    status, body = await _post(url, headers={"Authorization": "Bearer wrong"})
    assert status == 403
    status, first = await _post(url, headers={"Authorization": "Bearer s3cret"})
    assert status == 200 and {"room_id", "token", "worker_token"} <= set(first)
    # A worker of an existing room may create rooms; a client token may not.
    status, _ = await _post(url, json_body={"room_id": first["room_id"], "worker_token": first["token"]})
    assert status == 403
    status, second = await _post(url, json_body={"room_id": first["room_id"], "worker_token": first["worker_token"]})
    assert status == 200 and second["room_id"] != first["room_id"]
    assert server.hub.rooms.count() == 2


async def test_s1_rooms_are_capped_and_unused_rooms_expire(server_factory):
    server = await server_factory(max_rooms=3, unused_room_ttl=0.2)
    url = server.http_url + "/create-room"
    rooms = [(await _post(url))[1] for _ in range(3)]
    status, body = await _post(url)
    assert status == 503 and body["code"] == "TOO_MANY_ROOMS"
    # One room gets a peer; the other two were never used and expire.
    peer = await _peer(server)
    await peer.register((rooms[0]["room_id"], rooms[0]["worker_token"]), "w")
    await asyncio.sleep(0.3)
    status, _ = await _post(url)  # creating sweeps the unused ones first
    assert status == 200
    assert server.hub.rooms.count() == 2 and server.hub.rooms.exists(rooms[0]["room_id"])
    await peer.close()


async def test_m1_turn_credentials_only_reach_registered_peers(server_factory):
    turn = [{"urls": ["turn:127.0.0.1:3478"], "username": "lab", "credential": "turn-secret-xyz"}]
    server = await server_factory(ice_servers=turn, create_room_secret="s3cret")
    status, body = await _post(server.http_url + "/create-room")
    assert status == 403 and "turn-secret-xyz" not in json.dumps(body)
    status, room = await _post(server.http_url + "/create-room", headers={"Authorization": "Bearer s3cret"})
    assert status == 200 and "turn-secret-xyz" not in json.dumps(room)
    peer = await _peer(server)
    refused = await peer.request(_register(room["room_id"], "wrong", "c", "client"))
    assert refused["type"] == "error" and "turn-secret-xyz" not in json.dumps(refused)
    auth = await peer.request(_register(room["room_id"], room["token"], "c", "client"))
    assert auth["ice_servers"] == turn
    await peer.close()


async def test_m6_plaintext_on_a_non_loopback_address_warns(caplog):
    caplog.set_level(logging.WARNING, logger="sleap_rtc.server.app")
    server = await start_server("0.0.0.0", 0)  # reached over loopback only
    try:
        assert any("without TLS" in r.getMessage() for r in caplog.records)
        # Beyond loopback and without a secret, nobody may create rooms.
        status, body = await _post(server.http_url + "/create-room")
        assert status == 403 and body["code"] == "CREATE_ROOM_FORBIDDEN"
    finally:
        await server.stop()
    caplog.clear()
    server = await start_server("127.0.0.1", 0)
    try:
        assert not any("without TLS" in r.getMessage() for r in caplog.records)
    finally:
        await server.stop()


# ---------------------------------------------------------------------- S2, S3: sockets


async def test_s2_sockets_that_never_register_are_closed(server_factory):
    server = await server_factory(register_timeout=0.5)
    room = await server.create_room()
    idle = [await _peer(server) for _ in range(10)]
    member = await _peer(server)
    await member.register(room, "w")
    closed = await asyncio.gather(*(_closed_within(p.ws, 3.0) for p in idle))
    assert all(closed)
    # The registered peer stays, and answers normally.
    assert (await member.request({"type": "discover_peers", "id": 1}))["type"] == "peer_list"


async def test_s2_sockets_are_capped_per_address_and_in_all(server_factory):
    server = await server_factory(max_sockets_per_address=8, max_sockets=12)
    room = await server.create_room()
    flood = [await _peer(server, "127.0.0.2") for _ in range(8)]
    with pytest.raises((OSError, websockets.InvalidHandshake, asyncio.TimeoutError, TimeoutError, EOFError)):
        await _peer(server, "127.0.0.2")  # the 9th from that address: dropped at accept
    # Another address still gets in and registers...
    victim = await _peer(server, "127.0.0.3")
    await victim.register(room, "w")
    # ...until the total cap is reached.
    more = [await _peer(server, "127.0.0.4") for _ in range(3)]
    with pytest.raises((OSError, websockets.InvalidHandshake, asyncio.TimeoutError, TimeoutError, EOFError)):
        await _peer(server, "127.0.0.5")
    assert server.sockets_refused >= 2
    for peer in flood + more:
        await peer.close()
    await asyncio.sleep(0.2)
    again = await _peer(server, "127.0.0.2")  # freed slots are reusable
    await again.register(room, "w2")


async def test_s3_slowloris_connections_are_closed(server_factory):
    server = await server_factory(http_idle_timeout=1.0)
    room = await server.create_room()
    silent = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(10)]
    trickle = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(10)]
    for _, writer in trickle:
        writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
    member = await _peer(server)
    await member.register(room, "w")

    async def keep_trickling():
        for i in range(6):
            await asyncio.sleep(0.4)
            for _, writer in trickle:
                if not writer.is_closing():
                    writer.write(f"X-Slow-{i}: 1\r\n".encode())

    async def closed(reader) -> bool:
        try:
            while await asyncio.wait_for(reader.read(1024), 4.0):
                pass
            return True
        except (asyncio.TimeoutError, TimeoutError):
            return False
        except ConnectionError:
            return True

    trickler = asyncio.create_task(keep_trickling())
    results = await asyncio.gather(*(closed(reader) for reader, _ in silent + trickle))
    await trickler
    assert all(results), f"{results.count(False)} of {len(results)} slow connections still open"
    # A WebSocket lives on past the HTTP idle timeout.
    assert (await member.request({"type": "discover_peers", "id": 1}))["type"] == "peer_list"
    for _, writer in silent + trickle:
        writer.close()


# ---------------------------------------------------------------------- S5: frame size


async def test_s5_frames_far_over_the_cap_close_the_socket_before_decoding(server_factory):
    server = await server_factory()
    room = await server.create_room()
    peer = await _peer(server)
    cap = server.hub.limits.max_frame_bytes
    # Just over the cap: refused with an error, and the connection survives.
    reply = await peer.request(json.dumps(_register(room[0], room[1], "w", pad="x" * cap)))
    assert reply["code"] == "FRAME_TOO_LARGE"
    await peer.register(room, "w")
    # Twice the cap: closed with 1009 (message too big) instead of being buffered and parsed.
    attacker = await _peer(server)
    await attacker.send("x" * (2 * cap))
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await attacker.recv(WAIT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


# ---------------------------------------------------------------------- S8, S19, S20: metadata


def _nested(depth: int):
    value: object = 1
    for _ in range(depth):
        value = {"a": value}
    return value


async def test_s8_deep_metadata_is_refused_and_the_room_stays_open(signaling_server, connect, room):
    attacker = await connect()
    reply = await attacker.request(_register(room[0], room[1], "w-deep", metadata={"properties": {"x": _nested(900)}}))
    assert reply["code"] == "INVALID_METADATA"
    reply = await attacker.request(_register(room[0], room[1], "w-list", metadata={"properties": {"x": [[1]]}}))
    assert reply["code"] == "INVALID_METADATA"
    await attacker.register(room, "w-ok", metadata={"properties": {"gpu_memory_mb": 8000}})
    reply = await attacker.request({"type": "update_metadata", "metadata": {"properties": {"x": _nested(900)}}, "id": "u"})
    assert reply["code"] == "INVALID_METADATA" and reply["id"] == "u"
    # Later joiners, through the real client, still get in and see the peer.
    client = SignalingClient(signaling_server.url, room_id=room[0], token=room.token, role="client", reconnect=False)
    try:
        reg = await asyncio.wait_for(client.connect(), WAIT)
        assert [p["metadata"]["properties"] for p in reg.peers] == [{"gpu_memory_mb": 8000}]
    finally:
        await client.close()


@pytest.mark.parametrize("raw", ['{"gpu_memory_mb": NaN}', '{"gpu_memory_mb": Infinity}', '{"gpu_memory_mb": 1e400}'])
async def test_c6_non_finite_numbers_are_refused_by_the_server(connect, room, raw):
    peer = await connect()
    text = '{"type":"register","peer_id":"w","room_id":"%s","token":"%s","role":"worker","metadata":{"properties":%s}}' % (room[0], room[1], raw)
    reply = await peer.request(text)
    assert reply["code"] == "INVALID_JSON"


async def test_s19_metadata_cannot_grow_without_bound(signaling_server, connect, room):
    peer = await connect()
    await peer.register(room, "w")
    accepted = refused = 0
    for i in range(40):
        reply = await peer.request({"type": "update_metadata", "metadata": {"properties": {f"k{i}": "v" * 1024}}, "id": i})
        if reply["type"] == "metadata_updated":
            accepted += 1
        else:
            assert reply["code"] == "METADATA_TOO_LARGE"
            refused += 1
    assert 10 <= accepted <= 16 and refused == 40 - accepted
    stored = signaling_server.hub.live[room[0]]["w"].metadata
    assert len(json.dumps(stored, separators=(",", ":"))) <= signaling_server.hub.limits.max_metadata_bytes


async def test_s20_a_full_room_peer_list_always_fits_the_clients_limit(server_factory):
    with pytest.raises(ValueError):
        Limits(max_peers_per_room=5000)  # the old default: up to 5000 x 16 KiB in one frame
    limits = Limits()
    assert limits.peer_list_bytes() + 64 * 1024 <= MAX_RECEIVE_BYTES
    server = await server_factory(max_peers_per_room=20)
    room = await server.create_room()
    big = {"properties": {f"k{i}": "v" * 1000 for i in range(15)}}  # ~15 KiB: under the cap
    peers = []
    for i in range(20):
        peer = await _peer(server, f"127.0.0.{10 + i}")
        await peer.register(room, f"w{i}", metadata=big)
        peers.append(peer)
    oversized = await _peer(server, "127.0.0.40")
    reply = await oversized.request(_register(room[0], room[1], "w-huge", metadata={"properties": {"k": "v" * 1_000_000}}))
    assert reply["code"] == "METADATA_TOO_LARGE"
    reply = await oversized.request(_register(room[0], room[1], "w-21"))
    assert reply["code"] == "ROOM_FULL"
    await peers.pop().close()
    await asyncio.sleep(0.1)
    client = SignalingClient(server.url, room_id=room[0], token=room.token, role="client", reconnect=False)
    try:
        reg = await asyncio.wait_for(client.connect(), WAIT)
        assert len(reg.peers) == 19
    finally:
        await client.close()


# ---------------------------------------------------------------------- S10, S11, S12: tokens


async def test_s10_failing_addresses_never_lock_out_the_right_token(server_factory):
    server = await server_factory(max_failed_registrations=5)
    room = await server.create_room()
    for source in ("127.0.0.2", "127.0.0.3"):
        attacker = await _peer(server, source)
        codes = [(await attacker.request(_register(room[0], "guess", "w")))["code"] for _ in range(12)]
        assert codes[:5] == ["INVALID_TOKEN"] * 5 and set(codes[5:]) == {"RATE_LIMITED"}
        # The attacker's own right token still works (a typo behind a NAT locks nobody out).
        await attacker.register(room, f"w-{source}")
    legit = await _peer(server, "127.0.0.4")
    await legit.register(room, "w-legit")


async def test_s11_unknown_room_and_wrong_token_look_the_same(server_factory):
    server = await server_factory(max_failed_registrations=5)
    room = await server.create_room()
    peer = await _peer(server, "127.0.0.2")
    wrong = await peer.request(_register(room[0], "x" + room[1], "w", id="q"))
    unknown = await peer.request(_register("0123456789ab", room[1], "w", id="q"))
    assert wrong == unknown and wrong["code"] == "INVALID_TOKEN"
    # Guessing room ids counts against the guessing address like guessing tokens.
    codes = [(await peer.request(_register(f"{i:012x}", "t", "w")))["code"] for i in range(6)]
    assert codes[-1] == "RATE_LIMITED"


def test_s12_failure_counter_stays_o1_when_full_and_ipv6_counts_per_64():
    counter = FailureCounter(limit=10, window=60.0, max_keys=100_000)
    for i in range(100_000):
        counter.add(f"k{i}", 1.0)
    start = time.perf_counter()
    for i in range(2_000):
        counter.add(f"new{i}", 2.0)  # each evicts the oldest live key
    per_add = (time.perf_counter() - start) / 2_000
    assert len(counter) == 100_000
    assert per_add < 0.001, f"{per_add * 1e3:.2f} ms per add with a full table (was ~50 ms)"
    assert address_key("2001:db8:1:2::1") == address_key("2001:db8:1:2:ffff:ffff:ffff:ffff") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:10.0.0.1") == address_key("10.0.0.1") == "10.0.0.1"


def test_s12_ipv6_hosts_in_one_64_share_one_failure_budget():
    from sleap_rtc.server.hub import Hub
    from sleap_rtc.server.rooms import RoomStore

    hub = Hub(RoomStore(), limits=Limits(max_failed_registrations=3), clock=lambda: 0.0)
    room = hub.rooms.create()
    codes = []
    for i in range(6):  # six "different" addresses, one /64
        conn = hub.connect(f"2001:db8::{i + 1:x}")
        [action] = hub.handle(conn, json.dumps(_register(room[0], "bad", "w")))
        codes.append(action.frame["code"])
    assert codes == ["INVALID_TOKEN"] * 3 + ["RATE_LIMITED"] * 3


# ---------------------------------------------------------------------- S17: forged replies


async def test_s17_relayed_frames_lose_their_id_and_cannot_answer_requests(signaling_server, connect, room):
    victim = SignalingClient(signaling_server.url, room_id=room[0], token=room.token, role="client", reconnect=False)
    await asyncio.wait_for(victim.connect(), WAIT)
    worker = await connect()
    await worker.register(room, "worker-real", metadata={"properties": {"status": "available"}})
    attacker = await connect()
    await attacker.register(room, "worker-attacker")
    raw_victim = await connect()
    await raw_victim.register(room, "raw-victim", "client")
    try:
        # The server strips ids from every relayed frame.
        for kind in ("offer", "answer", "candidate", "error"):
            await attacker.send({"type": kind, "target": "raw-victim", "id": "r1", "sdp": "x"})
            got = await raw_victim.recv()
            assert got["type"] == kind and "id" not in got and got["sender"] == "worker-attacker"
        await attacker.send({"type": "peer_message", "to_peer_id": "raw-victim", "payload": {}, "id": "r1"})
        got = await raw_victim.recv()
        assert "id" not in got and got["from_peer_id"] == "worker-attacker"

        # The attacker sprays fake peer lists and errors with guessed ids while the victim discovers.
        async def spray():
            for i in range(150):  # within the message burst: every frame is relayed
                fake = {"type": "error", "target": victim.peer_id, "id": f"r{i % 20}", "code": "X", "peers": []}
                await attacker.send(fake)
                await asyncio.sleep(0)

        sprayer = asyncio.create_task(spray())
        for _ in range(40):
            peers = await victim.discover({"role": "worker"})
            assert {p["peer_id"] for p in peers} == {"worker-real", "worker-attacker"}
        await sprayer
    finally:
        await victim.close()


async def test_s17_client_matches_only_unrelayed_replies_of_the_expected_type(signaling_server, room):
    client = SignalingClient(signaling_server.url, room_id=room[0], token=room.token, role="client", reconnect=False)
    await asyncio.wait_for(client.connect(), WAIT)
    try:
        sent = []

        async def hold(frame):  # keep the request from reaching the server: only our frames answer it
            sent.append(frame)

        client.send = hold
        task = asyncio.create_task(client.discover())
        while not sent:
            await asyncio.sleep(0.01)
        req_id = sent[0]["id"]
        assert len(req_id) >= 17 and req_id in client._pending  # "r" + 64 random bits, not r1, r2, ...
        # Frames with the right id but relayed, or of the wrong type, do not resolve it.
        await client._dispatch({"type": "peer_list", "id": req_id, "sender": "evil", "peers": [{"peer_id": "fake"}]})
        await client._dispatch({"type": "metadata_updated", "id": req_id, "metadata": {}})
        await client._dispatch({"type": "peer_list", "id": req_id, "from_peer_id": "evil", "peers": [{"peer_id": "fake"}]})
        assert not task.done()
        await client._dispatch({"type": "peer_list", "id": req_id, "peers": [{"peer_id": "real"}]})
        assert [p["peer_id"] for p in await asyncio.wait_for(task, WAIT)] == ["real"]
    finally:
        await client.close()


# ---------------------------------------------------------------------- S18, S21, S22: rates and budgets


async def test_s18_metadata_fan_out_is_bounded_by_the_senders_byte_budget(server_factory):
    rate, burst = 100_000, 600_000
    server = await server_factory(max_peers_per_room=30, address_bytes_per_second=rate, address_byte_burst=burst)
    room = await server.create_room()
    watchers = [await _peer(server, "127.0.0.1") for _ in range(20)]
    for i, w in enumerate(watchers):
        await w.register(room, f"watch{i}", "client", events=True)
    attacker = await _peer(server, "127.0.0.2")
    await attacker.register(room, "w-attacker")
    received = [0] * len(watchers)

    async def drain(i, w):
        try:
            while True:
                received[i] += len(await w.ws.recv())
        except (websockets.ConnectionClosed, asyncio.CancelledError):
            pass

    readers = [asyncio.create_task(drain(i, w)) for i, w in enumerate(watchers)]
    start = time.monotonic()
    codes = []
    for i in range(60):
        reply = await attacker.request({"type": "update_metadata", "metadata": {"properties": {"blob": f"{i:05d}" + "x" * 15_000}}, "id": i})
        codes.append(reply.get("code", reply["type"]))
    elapsed = time.monotonic() - start
    await asyncio.sleep(0.3)
    for r in readers:
        r.cancel()
    total = sum(received)
    assert "RATE_LIMITED" in codes and "metadata_updated" in codes
    # Everything pushed to the watchers came out of the attacker's budget (pings aside).
    assert total <= burst + rate * (elapsed + 0.5) + 20 * 4096, (total, elapsed)


async def test_s21_message_rate_counts_per_address_across_connections(server_factory):
    server = await server_factory(address_messages_per_second=20, address_message_burst=40)
    room = await server.create_room()
    sockets = [await _peer(server, "127.0.0.2") for _ in range(10)]
    for i, s in enumerate(sockets):
        await s.register(room, f"c{i}", "client")  # 10 of the 40
    bystander = await _peer(server, "127.0.0.3")
    await bystander.register(room, "bystander", "client")
    start = time.monotonic()
    for s in sockets:
        for j in range(30):
            await s.send({"type": "discover_peers", "id": j})
    served = limited = 0
    for s in sockets:
        for _ in range(30):
            reply = await s.recv()
            if reply["type"] == "peer_list":
                served += 1
            else:
                assert reply["code"] == "RATE_LIMITED"
                limited += 1
    elapsed = time.monotonic() - start
    assert served <= 30 + 20 * elapsed + 5 and limited >= 300 - served
    # Another address is not slowed down.
    t0 = time.monotonic()
    for j in range(20):
        assert (await bystander.request({"type": "discover_peers", "id": j}))["type"] == "peer_list"
    assert time.monotonic() - t0 < 2.0


async def test_s22_discover_amplification_is_bounded_by_the_byte_budget(server_factory):
    rate, burst = 200_000, 600_000
    server = await server_factory(max_peers_per_room=30, address_bytes_per_second=rate, address_byte_burst=burst)
    room = await server.create_room()
    big = {"properties": {f"k{i}": "v" * 1000 for i in range(15)}}
    holders = []
    for i in range(4):
        p = await _peer(server, f"127.0.0.{20 + i}")
        await p.register(room, f"w{i}", metadata=big)
        holders.append(p)
    attackers = [await _peer(server, "127.0.0.2") for _ in range(4)]
    for i, a in enumerate(attackers):
        await a.register(room, f"a{i}", "client")
    bystander = await _peer(server, "127.0.0.3")
    await bystander.register(room, "bystander", "client")
    received = 0
    start = time.monotonic()
    for _ in range(40):  # within the message rate: 4 sockets x 40 frames
        for a in attackers:
            await a.send({"type": "discover_peers"})
    for a in attackers:
        for _ in range(40):
            received += len(await a.ws.recv())
    elapsed = time.monotonic() - start
    assert received <= burst + rate * elapsed + 160 * 512, (received, elapsed)
    t0 = time.monotonic()
    assert (await bystander.request({"type": "discover_peers", "id": 1}))["type"] == "peer_list"
    assert time.monotonic() - t0 < 1.0


# ---------------------------------------------------------------------- S23: room fill


async def test_s23_room_fill_is_capped_by_peers_per_room(server_factory):
    # The documented limit: a room of N event watchers costs N(N-1)/2 event frames to fill
    # (124,750 at the default 500; docs/security.md has the measured time).
    server = await server_factory(max_peers_per_room=12)
    room = await server.create_room()
    peers = []
    for i in range(12):
        p = await _peer(server, f"127.0.0.{50 + i}")
        await p.register(room, f"c{i}", "client", events=True)
        peers.append(p)
    late = await _peer(server, "127.0.0.70")
    assert (await late.request(_register(room[0], room[1], "c-late", "client", events=True)))["code"] == "ROOM_FULL"
    joined = 0
    for p in peers:
        while True:
            try:
                frame = await p.recv(0.2)
            except (asyncio.TimeoutError, TimeoutError):
                break
            joined += frame["type"] == "peer_joined"
    assert joined == 12 * 11 // 2


# ---------------------------------------------------------------------- encoding and queues


def test_s8_an_unencodable_frame_drops_only_itself():
    from sleap_rtc.server.app import _dispatch, _ServerState
    from sleap_rtc.server.hub import Connection, Send
    from sleap_rtc.server.limits import TokenBucket

    class Sink:
        def __init__(self):
            self.frames = []

        def enqueue(self, text):
            self.frames.append(text)

    conn = Connection(address="x", bucket=TokenBucket(1, 1, 0))
    conn.transport = Sink()
    state = _ServerState()
    _dispatch([Send([conn], {"type": "peer_list", "peers": [_nested(5000)]}), Send([conn], {"type": "ok", "v": float("nan")}),
               Send([conn], {"type": "pong"})], state)
    assert conn.transport.frames == ['{"type":"pong"}'] and state.encode_failures == 2


async def test_s18_a_receiver_too_far_behind_in_bytes_is_disconnected():
    from sleap_rtc.server.app import _Writer

    class StuckSocket:
        closed = False
        closes = 0

        async def send_str(self, text):
            await asyncio.Event().wait()  # never drains, like a peer that stopped reading

        async def close(self, **kw):
            self.closes += 1
            self.closed = True

    ws = StuckSocket()
    writer = _Writer(ws, max_frames=10_000, max_bytes=100_000)
    for _ in range(30):
        writer.enqueue("x" * 10_000)
    await asyncio.sleep(0.05)
    assert ws.closes >= 1 and writer.queued_bytes <= 100_000
    writer.task.cancel()
