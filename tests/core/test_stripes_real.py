"""A striped transfer over real aiortc peer connections through the real signaling server:
three connections opened at once (the answer grants them), one of them closed
mid-transfer, SHA-256 verified."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _peers import registered  # noqa: E402

from sleap_rtc.core.protocol import STRIPE_TOKEN, MessageType  # noqa: E402
from sleap_rtc.core.transport import accept, accept_stripe, connect  # noqa: E402

pytestmark = pytest.mark.timeout(120)
MiB = 1 << 20


async def test_real_striped_upload_survives_a_dead_stripe(signaling_server, room, tmp_path):
    wsig = await registered(signaling_server.url, room, "worker")
    csig = await registered(signaling_server.url, room, "client")
    offers: asyncio.Queue = asyncio.Queue()
    wsig.add_listener(lambda f: offers.put_nowait(f) if f.get("type") == MessageType.OFFER else None)
    server_side: list = []

    def registered_channel(ch):  # as the worker runtime does: the answer carries the grant
        ch.stripes.allow(3)
        server_side.append(ch)

    async def serve():
        first = await offers.get()
        accepting = asyncio.ensure_future(accept(wsig, first, receive_dir=tmp_path / "w-recv",
                                                 cache_dir=tmp_path / "w-cache", on_channel=registered_channel))
        while True:  # the extra offers come while the first connection still handshakes
            frame = await offers.get()
            ch = server_side[0]
            if ch.stripes.admits(frame.get(STRIPE_TOKEN), frame.get("sender")):
                asyncio.ensure_future(accept_stripe(wsig, frame)).add_done_callback(
                    lambda t: t.exception() is None and ch.stripes.attach(t.result()))
        await accepting

    serving = asyncio.ensure_future(serve())
    try:
        cch = await connect(csig, wsig.peer_id, timeout=20, receive_dir=tmp_path / "c-recv",
                            cache_dir=tmp_path / "c-cache", stripes=3)
        assert await cch.stripes.ensure(3) == 3
        assert not server_side[0].stripes._requested  # granted in the answer, not asked on the channel
        cch.stripes.opener = None  # no growth: this test kills one of exactly three
        src = tmp_path / "src.bin"
        src.write_bytes(os.urandom(12 * MiB))
        size = src.stat().st_size
        victim = cch.stripes.lanes[0]

        def progress(done, total):
            if done > size // 3 and not victim.closed:
                asyncio.get_running_loop().create_task(victim.conn.close())

        receipt = await cch.send_file(src, progress=progress)
        got = await server_side[0].receive_file(20)
        assert got.sha256 == receipt.sha256 == hashlib.sha256(src.read_bytes()).hexdigest()
        assert victim.closed and cch.stripes.count == 2 and not cch.closed
        await cch.close()
    finally:
        serving.cancel()
        for ch in server_side:
            await ch.close()
        await csig.close()
        await wsig.close()
