"""Print the room's workers and their status as JSON (run inside a lab namespace)."""

from __future__ import annotations

import asyncio
import json
import sys

from sleap_rtc.core.signaling import SignalingClient


async def main(url: str, room: str, token: str) -> None:
    sig = SignalingClient(url, room_id=room, token=token, role="client", reconnect=False)
    await asyncio.wait_for(sig.connect(), 10)
    try:
        peers = await sig.discover({"role": "worker"})
        print(json.dumps({p["peer_id"]: p.get("metadata", {}).get("properties", {}).get("status") for p in peers}))
    finally:
        await sig.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
