"""A striped transfer over real aiortc peer connections through the real signaling server:
three connections, one of them closed mid-transfer, SHA-256 verified."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _peers import registered  # noqa: E402

from sleap_rtc.core.protocol import MessageType  # noqa: E402
from sleap_rtc.core.transport import accept, accept_stripe, connect  # noqa: E402

pytestmark = pytest.mark.timeout(120)
MiB = 1 << 20


async def test_real_striped_upload_survives_a_dead_stripe(signaling_server, room, tmp_path):
    wsig = await registered(signaling_server.url, room, "worker")
    csig = await registered(signaling_server.url, room, "client")
    offers: asyncio.Queue = asyncio.Queue()
    wsig.add_listener(lambda f: offers.put_nowait(f) if f.get("type") == MessageType.OFFER else None)
    server_side: list = []

    async def serve():
        ch = await accept(wsig, await offers.get(), receive_dir=tmp_path / "w-recv", cache_dir=tmp_path / "w-cache")
        ch.stripes.allow(3)
        server_side.append(ch)
        while True:
            frame = await offers.get()
            if ch.stripes.admits(frame.get("stripe"), frame.get("sender")):
                ch.stripes.attach(await accept_stripe(wsig, frame))

    serving = asyncio.ensure_future(serve())
    try:
        cch = await connect(csig, wsig.peer_id, timeout=20, receive_dir=tmp_path / "c-recv", cache_dir=tmp_path / "c-cache")
        assert await cch.stripes.ensure(3) == 3
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
