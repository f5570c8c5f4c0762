"""The transport seam: PeerChannel over the in-memory backend pair (no sockets), and the
backend choice. The same protocol runs over real aiortc in test_channel/test_files, and
over aiortc <-> libdatachannel in tests/native."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from pathlib import Path

import pytest

from sleap_rtc.core import backends, jobs_wire
from sleap_rtc.core.backends.memory import link, memory_pair
from sleap_rtc.core.channel import PeerChannel
from sleap_rtc.core.files import HIGH_WATER
from sleap_rtc.core.transport_errors import PeerClosedError

from channel_pairs import memory_channels

pytestmark = pytest.mark.timeout(30)


channels = memory_channels


async def test_hello_messages_and_bye(tmp_path):
    client, worker = await channels(tmp_path)
    assert client.remote_hello["role"] == "worker" and worker.remote_hello["peer_id"] == "c"
    await client.send(jobs_wire.job_accepted("j1"))
    assert (await worker.receive(2))["job_id"] == "j1"
    await client.close()
    assert await worker.wait_closed(2) == "the peer hung up"


async def test_file_verified_with_flow_control(tmp_path):
    # A paced link: the sender must stop at HIGH_WATER and resume on buffered-low.
    client, worker = await channels(tmp_path, rate=200e6)
    data = os.urandom(3 * HIGH_WATER + 12345)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    peak = 0

    def watch(done, size):
        nonlocal peak
        peak = max(peak, client.buffered_amount)

    receipt = await client.send_file(src, progress=watch)
    got = await worker.receive_file(5)
    assert got.path.read_bytes() == data
    assert receipt.sha256 == got.sha256 == hashlib.sha256(data).hexdigest()
    assert HIGH_WATER // 2 < peak <= HIGH_WATER + 128 * 1024  # bounded by the water mark
    await client.close()


async def test_broken_link_fails_waiters_and_close_is_bounded(tmp_path):
    client, worker = await channels(tmp_path)
    waiting = asyncio.ensure_future(worker.receive(10))
    client.conn.kill()
    with pytest.raises(PeerClosedError):
        await asyncio.wait_for(waiting, 2)
    assert client.closed and "failed" in client.close_reason
    await asyncio.wait_for(client.close(), 2)
    await asyncio.wait_for(worker.close(), 2)


def test_choose_backend(monkeypatch):
    monkeypatch.delenv(backends.BACKEND_ENV, raising=False)
    expected = "libdatachannel" if backends.native_available() else "aiortc"
    assert backends.choose_backend() == expected
    monkeypatch.setenv(backends.BACKEND_ENV, "aiortc")
    assert backends.choose_backend() == "aiortc"
    assert backends.choose_backend("memory") == "memory"
    with pytest.raises(ValueError, match="Unknown transport backend"):
        backends.choose_backend("carrier-pigeon")
    if not backends.native_available():
        with pytest.raises(ValueError, match=r"sleap-rtc\[fast\]"):
            backends.choose_backend("libdatachannel")


def test_socket_buffers_raised():
    import socket

    from sleap_rtc.core.backends import sockets

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        before = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        rcv, snd = sockets.enlarge(sock)
    # Linux reports twice what it books; the grant is capped by rmem_max unless forced.
    if sys.platform == "linux":
        rmem_max = int(Path("/proc/sys/net/core/rmem_max").read_text())
        assert rcv >= min(2 * sockets.UDP_BUFFER_BYTES, 2 * rmem_max, 2 * 4 * 1024 * 1024) or os.geteuid() != 0
        assert rcv >= before


def test_aioice_hook_raises_its_buffer_constant():
    import importlib

    import aioice.turn

    from sleap_rtc.core.backends.sockets import UDP_BUFFER_BYTES

    importlib.import_module("sleap_rtc.core.backends.aiortc")  # importing it installs the hook

    assert aioice.turn.UDP_SOCKET_BUFFER_SIZE >= UDP_BUFFER_BYTES


async def test_every_message_sent_matches_the_one_table(tmp_path):
    """What channel.py and files.py send is what protocol.CHANNEL_FIELDS says (no drift)."""
    import json

    from sleap_rtc.core.protocol import CHANNEL_FIELDS

    sent: list[dict] = []
    a, b = memory_pair()
    for end in (a, b):
        original = end.send

        def spy(data, original=original):
            if isinstance(data, str):
                sent.append(json.loads(data))
            original(data)

        end.send = spy
    ca = PeerChannel(a, local_peer_id="c", remote_peer_id="w", role="client",
                     receive_dir=tmp_path / "c-recv", cache_dir=tmp_path / "c-cache", heartbeat_interval=0.05)
    cb = PeerChannel(b, local_peer_id="w", remote_peer_id="c", role="worker",
                     receive_dir=tmp_path / "w-recv", cache_dir=tmp_path / "w-cache", heartbeat_interval=0.05)
    link(a, b)
    await asyncio.gather(ca.start(5), cb.start(5))
    src = tmp_path / "f.bin"
    src.write_bytes(os.urandom(100_000))
    await ca.send_file(src)
    await ca.send_file(src)  # cached: file_accept with cached=True
    await asyncio.sleep(0.1)  # a few heartbeats
    await ca.close()
    kinds = {m["type"] for m in sent}
    assert {"hello", "heartbeat", "file_offer", "file_accept", "file_end", "file_done", "bye"} <= kinds
    for msg in sent:
        for name, types in CHANNEL_FIELDS[msg["type"]].items():
            assert isinstance(msg.get(name), types), (msg["type"], name, msg)
