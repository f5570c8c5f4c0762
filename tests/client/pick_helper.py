"""Run only the interactive picker against a room (driven by the pty tests).

Usage: python pick_helper.py URL ROOM TOKEN TIMEOUT WARN_BEFORE [--show-busy]
Prints ``SELECTED <peer_id>`` or ``ERROR <message>`` on the last line.
"""

import asyncio
import sys

from sleap_rtc.client.picker import pick_worker
from sleap_rtc.core.room import RoomView
from sleap_rtc.core.selection import SelectionError
from sleap_rtc.core.signaling import SignalingClient


async def main(url, room_id, token, timeout, warn_before, show_busy):
    me = SignalingClient(url, room_id=room_id, token=token, role="client", request_timeout=5)
    await me.connect()
    view = RoomView(me)
    await view.start()
    try:
        worker = await pick_worker(view, show_busy=show_busy, timeout=timeout, warn_before=warn_before)
        print(f"SELECTED {worker.peer_id}", flush=True)
    except SelectionError as exc:
        print(f"ERROR {exc}", flush=True)
    finally:
        await me.close()


if __name__ == "__main__":
    a = sys.argv[1:]
    asyncio.run(main(a[0], a[1], a[2], float(a[3]), float(a[4]), "--show-busy" in a))
