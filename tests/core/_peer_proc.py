"""A worker-side peer in its own process, for tests that SIGKILL/SIGSTOP it mid-transfer.

Usage: python _peer_proc.py URL ROOM_ID TOKEN RECEIVE_DIR CACHE_DIR [SEND_FILE]
Prints ``PEER <peer_id>`` once registered, accepts the first offer, then either receives
files forever or (with SEND_FILE) sends that file to the client.
"""

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _peers import Worker, registered  # noqa: E402


async def main() -> None:
    url, room_id, token, recv, cache = sys.argv[1:6]
    send = sys.argv[6] if len(sys.argv) > 6 else None
    sig = await registered(url, (room_id, token), "worker")
    worker = Worker(sig, Path(recv), receive_dir=Path(recv), cache_dir=Path(cache))
    print("PEER", sig.peer_id, flush=True)
    ch = await worker.next_channel(30)
    if send:
        await ch.send_file(send)
    await ch.wait_closed(120)


asyncio.run(main())
