"""A client process that reserves a worker and then just sits there until it is killed.

``python _vanishing_client.py URL ROOM TOKEN WORKER_PEER_ID MODE``

* ``offer``: send a real WebRTC offer (so the worker reserves itself and answers), print
  ``OFFER_SENT``, never complete the connection;
* ``channel``: open the data channel (``transport.connect``), print ``CHANNEL_OPEN``.

Then it sleeps; the test SIGKILLs it, which is how a client machine vanishes.
"""

from __future__ import annotations

import asyncio
import sys

from aiortc import RTCConfiguration, RTCPeerConnection

from sleap_rtc.core import transport
from sleap_rtc.core.signaling import SignalingClient


async def main(url: str, room: str, token: str, worker: str, mode: str) -> None:
    sig = SignalingClient(url, room_id=room, token=token, role="client", reconnect=False)
    await sig.connect()
    if mode == "offer":
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.createDataChannel("sleap-rtc")
        await pc.setLocalDescription(await pc.createOffer())
        await sig.send({"type": "offer", "sender": sig.peer_id, "target": worker, "sdp": pc.localDescription.sdp})
        print("OFFER_SENT", flush=True)
    else:
        channel = await transport.connect(sig, worker, timeout=30)
        print("CHANNEL_OPEN", channel.remote_peer_id, flush=True)
    await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
