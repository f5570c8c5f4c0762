"""One peer of ``benchmarks/lab_connect.py``, run inside a lab namespace.

``answer URL SECRET``: create a room, register as a worker, print ``READY <room> <token>
<peer id>``, then accept every offer (``transport.accept``) and hang up when the client does.
``offer URL ROOM TOKEN PEER ROUNDS``: connect ``ROUNDS`` times, print one JSON line per try:
``{"ok": bool, "s": seconds, "error": text}``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from sleap_rtc.core import transport
from sleap_rtc.core.signaling import SignalingClient, create_room
from sleap_rtc.core.transport_errors import TransportError


async def answer(url: str, secret: str) -> None:
    room = await create_room(url, secret=secret)
    sig = SignalingClient(url, room_id=room.room_id, token=room.worker_token, role="worker")
    await sig.connect()

    async def serve(frame):
        try:
            channel = await transport.accept(sig, frame, timeout=30)
            await channel.wait_closed(60)
        except (TransportError, TimeoutError, asyncio.TimeoutError):
            pass

    sig.add_listener(lambda f: f.get("type") == "offer" and asyncio.ensure_future(serve(f)))
    print("READY", room.room_id, room.token, sig.peer_id, flush=True)
    await asyncio.sleep(3600)


async def offer(url: str, room: str, token: str, peer: str, rounds: str) -> None:
    sig = SignalingClient(url, room_id=room, token=token, role="client")
    await sig.connect()
    for _ in range(int(rounds)):
        t0 = time.monotonic()
        try:
            channel = await transport.connect(sig, peer, timeout=30)
            row = {"ok": True, "s": time.monotonic() - t0}
            await channel.close()
        except TransportError as exc:
            row = {"ok": False, "s": time.monotonic() - t0, "error": str(exc)}
        print(json.dumps(row), flush=True)
        await asyncio.sleep(0.5)
    await sig.close()


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    asyncio.run(answer(*args) if mode == "answer" else offer(*args))
