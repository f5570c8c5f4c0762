"""Run in the Python 3.12 side environment: open N single-connection libdatachannel
channels (both ends in this process) through a real signaling server on loopback, one
after another, and print "OPENED <n>" with how many exchanged hello both ways.

    python _native_opens.py N
"""

import asyncio
import sys

from sleap_rtc.core.protocol import MessageType
from sleap_rtc.core.signaling import SignalingClient
from sleap_rtc.core.transport import accept, connect
from sleap_rtc.server.app import start_server


async def one(url: str, room: str, token: str, work: str) -> bool:
    worker = SignalingClient(url, room_id=room, token=token, role="worker", events=False)
    client = SignalingClient(url, room_id=room, token=token, role="client", events=False)
    await asyncio.wait_for(asyncio.gather(worker.connect(), client.connect()), 20)
    offers: asyncio.Queue = asyncio.Queue()
    worker.add_listener(lambda f: offers.put_nowait(f) if f.get("type") == MessageType.OFFER else None)

    async def serve():
        return await accept(worker, await asyncio.wait_for(offers.get(), 20), receive_dir=f"{work}/w",
                            cache_dir=f"{work}/wc", timeout=20, backend="libdatachannel")

    try:
        wch, cch = await asyncio.gather(
            serve(), connect(client, worker.peer_id, receive_dir=f"{work}/c", cache_dir=f"{work}/cc",
                             timeout=20, backend="libdatachannel"))
    except Exception as exc:
        print("FAILED", exc.__class__.__name__, str(exc)[-300:], flush=True)
        return False
    ok = wch.remote_hello is not None and cch.remote_hello is not None and wch.conn.backend == cch.conn.backend == "libdatachannel"
    await asyncio.gather(cch.close(), wch.wait_closed(10))
    await asyncio.gather(worker.close(), client.close())
    return ok


async def main(n: int, work: str) -> None:
    server = await start_server("127.0.0.1", 0)
    try:
        room, token = await server.create_room()
        opened = 0
        for i in range(n):
            opened += await one(server.url, room, token, f"{work}/{i}")
        print("OPENED", opened, flush=True)
    finally:
        await server.stop()


if __name__ == "__main__":
    asyncio.run(asyncio.wait_for(main(int(sys.argv[1]), sys.argv[2]), 240))
