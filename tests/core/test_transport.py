"""Connection set-up through the real signaling server on loopback (real aiortc peers)."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _peers import Worker, pair, registered  # noqa: E402

from sleap_rtc.core import jobs_wire, transport  # noqa: E402
from sleap_rtc.core.protocol import busy_error_frame  # noqa: E402
from sleap_rtc.core.transport import connect, probe_ice_servers  # noqa: E402
from sleap_rtc.core.transport_errors import (  # noqa: E402
    AnswerTimeoutError,
    ChannelVersionError,
    LoopbackOnlyError,
    PeerClosedError,
    PeerNotFoundError,
    TransportError,
    WorkerBusyError,
)

pytestmark = pytest.mark.timeout(60)


async def test_connect_and_exchange_messages_both_ways(signaling_server, room, tmp_path):
    async with pair(signaling_server.url, room, tmp_path) as (client, worker):
        assert client.remote_peer_id == worker.local_peer_id
        assert worker.remote_peer_id == client.local_peer_id
        assert client.remote_hello["role"] == "worker" and worker.remote_hello["role"] == "client"
        submit = jobs_wire.job_submit("j1", {"sha256": "a" * 64, "name": "p.zip"})
        await client.send(submit)
        assert await worker.receive(5) == submit
        await worker.send(jobs_wire.job_accepted("j1"))
        assert (await client.receive(5))["type"] == "job_accepted"


async def test_worker_busy_raises_worker_busy_error(signaling_server, room, tmp_path):
    wsig = await registered(signaling_server.url, room, "worker")
    csig = await registered(signaling_server.url, room, "client")
    worker = Worker(wsig, tmp_path)
    worker.reply = busy_error_frame("placeholder", "busy")
    try:
        with pytest.raises(WorkerBusyError) as info:
            await connect(csig, wsig.peer_id, timeout=10)
        assert info.value.status == "busy"
        assert "currently busy" in info.value.message
        assert isinstance(info.value, TransportError)
    finally:
        await csig.close()
        await wsig.close()


async def test_unknown_target_raises_peer_not_found(signaling_server, room):
    csig = await registered(signaling_server.url, room, "client")
    try:
        t0 = time.monotonic()
        with pytest.raises(PeerNotFoundError, match="worker-nobody"):
            await connect(csig, "worker-nobody", timeout=10)
        assert time.monotonic() - t0 < 5  # answered by the server's error, not by the timeout
    finally:
        await csig.close()


async def test_silent_target_raises_answer_timeout(signaling_server, room, tmp_path):
    wsig = await registered(signaling_server.url, room, "worker")
    csig = await registered(signaling_server.url, room, "client")
    Worker(wsig, tmp_path).ignore = True
    try:
        t0 = time.monotonic()
        with pytest.raises(AnswerTimeoutError):
            await connect(csig, wsig.peer_id, timeout=1.5)
        assert 1.4 < time.monotonic() - t0 < 4
    finally:
        await csig.close()
        await wsig.close()


async def test_version_mismatch_is_refused_on_both_sides(signaling_server, room, tmp_path):
    wsig = await registered(signaling_server.url, room, "worker")
    csig = await registered(signaling_server.url, room, "client")
    worker = Worker(wsig, tmp_path)
    try:
        with pytest.raises(ChannelVersionError, match="version mismatch"):
            await connect(csig, wsig.peer_id, timeout=10, version=99)
        with pytest.raises(ChannelVersionError):
            await worker.next_channel(10)
    finally:
        await csig.close()
        await wsig.close()


async def test_remote_hang_up_wakes_pending_receive(signaling_server, room, tmp_path):
    async with pair(signaling_server.url, room, tmp_path) as (client, worker):
        pending = asyncio.ensure_future(client.receive(30))
        await asyncio.sleep(0.1)
        t0 = time.monotonic()
        await worker.close()
        with pytest.raises(PeerClosedError, match="hung up"):
            await pending
        assert time.monotonic() - t0 < 3
        assert client.closed
        with pytest.raises(PeerClosedError):
            await client.send(jobs_wire.job_accepted("j1"))


async def test_unreachable_stun_is_bounded(signaling_server, room, tmp_path):
    # A UDP socket that never answers: aioice alone would wait 5 s per peer while gathering.
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    stun = [{"urls": f"stun:127.0.0.1:{sink.getsockname()[1]}"}]
    try:
        t0 = time.monotonic()
        assert await probe_ice_servers(stun) == []
        assert time.monotonic() - t0 < 1.5
        t0 = time.monotonic()
        async with pair(signaling_server.url, room, tmp_path, ice_servers=stun) as (client, _):
            assert not client.closed
        assert time.monotonic() - t0 < 4  # not the 5+ s of aioice's fixed STUN timeout
    finally:
        sink.close()


async def test_reachable_stun_is_kept():
    # A minimal STUN responder: echo the transaction id in a binding success response.
    loop = asyncio.get_running_loop()

    class Responder(asyncio.DatagramProtocol):
        def connection_made(self, tr):
            self.tr = tr

        def datagram_received(self, data, addr):
            self.tr.sendto(b"\x01\x01\x00\x00" + data[4:20], addr)

    tr, _ = await loop.create_datagram_endpoint(Responder, local_addr=("127.0.0.1", 0))
    try:
        live = f"stun:127.0.0.1:{tr.get_extra_info('sockname')[1]}"
        dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        dead.bind(("127.0.0.1", 0))
        try:
            # One entry with a dead and a live URL: each URL is judged on its own, and the
            # answer has one URL per entry (aiortc only ever uses an entry's first URL).
            servers = [{"urls": [f"stun:127.0.0.1:{dead.getsockname()[1]}", live]}]
            assert await probe_ice_servers(servers) == [{"urls": live}]
        finally:
            dead.close()
    finally:
        tr.close()


async def test_loopback_only_host_fails_at_once(signaling_server, room, monkeypatch):
    # Test seam: the interface list. (A real lo-only network namespace needs root.)
    monkeypatch.setattr(transport, "non_loopback_addresses", lambda: [])
    csig = await registered(signaling_server.url, room, "client")
    try:
        t0 = time.monotonic()
        with pytest.raises(LoopbackOnlyError, match="no network interface besides loopback"):
            await connect(csig, "worker-x", timeout=10)
        assert time.monotonic() - t0 < 1
    finally:
        await csig.close()


def test_ice_servers_resolution_order():
    class Reg:
        ice_servers = [{"urls": "stun:server-given"}]

    class Sig:
        registration = Reg()

    # The server's list first, this machine's merged in after it (never one without the other).
    assert transport.resolve_ice_servers([{"urls": "stun:arg"}], Sig()) == [{"urls": "stun:server-given"}, {"urls": "stun:arg"}]
    assert transport.resolve_ice_servers(None, Sig()) == [{"urls": "stun:server-given"}]
    assert transport.resolve_ice_servers(None, object()) == []


def test_ice_servers_from_the_config_file_merge_with_the_servers(tmp_path, monkeypatch):
    class Reg:
        ice_servers = [{"urls": "stun:server-given"}, {"urls": ["turn:both", "turns:both:5349"], "username": "u", "credential": "c"}]

    class Sig:
        registration = Reg()

    cfg = tmp_path / "sleap-rtc.toml"
    cfg.write_text('ice_servers = [{ urls = "turn:both", username = "x", credential = "y" }, { urls = "stun:local" }]\n')
    monkeypatch.setenv("SLEAP_RTC_CONFIG", str(cfg))
    assert transport.resolve_ice_servers(None, Sig()) == [
        {"urls": "stun:server-given"},
        {"urls": "turn:both", "username": "u", "credential": "c"},  # the server's credentials win
        {"urls": "turns:both:5349", "username": "u", "credential": "c"},
        {"urls": "stun:local"},
    ]


async def test_expiring_turn_credentials_are_fetched_again(signaling_server, room):
    from sleap_rtc.server.ice import IceSettings

    signaling_server.hub.ice = IceSettings(turn=("turn:198.51.100.7:3478",), secret="s" * 32, ttl=60)
    csig = await registered(signaling_server.url, room, "client")
    try:
        first = csig.registration.ice_servers
        expiry = int(first[-1]["username"].split(":")[0])
        assert first[-1]["username"].endswith(":" + csig.peer_id)
        await transport.refresh_ice_servers(csig, now=expiry - 600)  # far from expiry: nothing asked
        assert csig.registration.ice_servers is first
        signaling_server.hub.ice = IceSettings(turn=("turn:198.51.100.7:3478",), secret="s" * 32, ttl=3600)
        await transport.refresh_ice_servers(csig, now=expiry - 30)
        fresh = csig.registration.ice_servers
        assert int(fresh[-1]["username"].split(":")[0]) > expiry
        assert fresh[-1]["credential"] != first[-1]["credential"]
    finally:
        await csig.close()


async def test_no_working_path_fails_fast_and_says_why(signaling_server, room, tmp_path):
    # A worker that answers with every candidate stripped from its SDP (as a peer behind a
    # NAT without STUN/TURN is, in effect): the client must give up at its ICE deadline,
    # long before aioice's ~31 s, and say what was gathered on each side.
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    from sleap_rtc.core.transport_errors import IceFailedError

    wsig = await registered(signaling_server.url, room, "worker")
    csig = await registered(signaling_server.url, room, "client")
    pcs = []

    async def answer_without_candidates(frame):
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pcs.append(pc)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=frame["sdp"], type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        sdp = "\r\n".join(line for line in pc.localDescription.sdp.split("\r\n") if not line.startswith("a=candidate"))
        await wsig.send({"type": "answer", "sender": wsig.peer_id, "target": frame["sender"], "sdp": sdp})

    wsig.add_listener(lambda f: f.get("type") == "offer" and asyncio.ensure_future(answer_without_candidates(f)))
    try:
        t0 = time.monotonic()
        with pytest.raises(IceFailedError) as info:
            await connect(csig, wsig.peer_id, timeout=20, ice_check_timeout=2.0, receive_dir=tmp_path)
        assert time.monotonic() - t0 < 6
        report = info.value.report
        assert report.local_types == ["host"] and report.remote_types == []
        assert report.ice_state != "closed"  # read before teardown
        assert not report.relay_offered
        assert "No STUN or TURN server configured" in str(info.value)
        assert "--" not in str(info.value)  # core names no CLI flag
    finally:
        for pc in pcs:
            await pc.close()
        await csig.close()
        await wsig.close()
