"""One peer of an interop test, run in whichever environment the test picks (Python 3.12
with libdatachannel, or 3.11 with aiortc). The backend comes from $SLEAP_RTC_BACKEND.

    python _native_peer.py worker URL ROOM TOKEN DIR
        prints "PEER <id>", accepts one offer (allowing stripes), proves its identity
        (``identity_proof`` over this connection's DTLS fingerprints), receives one file and
        prints "GOT <sha256> <backend>", sends that file back, waits for the hang-up.
    python _native_peer.py client URL ROOM TOKEN DIR TARGET FILE [STRIPES]
        connects, verifies the worker's identity proof, opens STRIPES connections in all
        (default 1), sends FILE, prints
        "SENT <sha256> <backend> <connections>", receives the file back, prints "GOT <sha256>".
"""

import asyncio
import logging
import os
import sys
from pathlib import Path

from sleap_rtc.core.identity import generate_key
from sleap_rtc.core.protocol import MessageType
from sleap_rtc.core.signaling import SignalingClient
from sleap_rtc.core.transport import accept, accept_stripe, connect


async def worker(url: str, room: str, token: str, base: Path) -> None:
    sig = SignalingClient(url, room_id=room, token=token, role="worker", events=False)
    await asyncio.wait_for(sig.connect(), 20)
    offers: asyncio.Queue = asyncio.Queue()
    sig.add_listener(lambda f: offers.put_nowait(f) if f.get("type") == MessageType.OFFER else None)
    print("PEER", sig.peer_id, flush=True)
    ch = await accept(sig, await asyncio.wait_for(offers.get(), 60), receive_dir=base / "recv", cache_dir=base / "cache", timeout=30)
    assert ch.prove_identity(generate_key()), "the client's hello carried no nonce"
    ch.stripes.allow(7)

    async def stripe_offers() -> None:
        while True:
            frame = await offers.get()
            if frame.get("stripe") and ch.stripes.admits(frame["stripe"], frame.get("sender")):
                try:
                    ch.stripes.attach(await accept_stripe(sig, frame, timeout=30))
                except Exception:
                    ch.stripes.release()

    extra = asyncio.ensure_future(stripe_offers())
    got = await ch.receive_file(120)
    print("GOT", got.sha256, ch.conn.backend, flush=True)
    await ch.send_file(got.path, name="back.bin")
    await ch.wait_closed(60)
    extra.cancel()
    await sig.close()


async def client(url: str, room: str, token: str, base: Path, target: str, path: str, stripes: int) -> None:
    sig = SignalingClient(url, room_id=room, token=token, role="client", events=False)
    await asyncio.wait_for(sig.connect(), 20)
    ch = await connect(sig, target, receive_dir=base / "crecv", cache_dir=base / "ccache", timeout=30)
    await ch.verify_identity(10)  # WorkerIdentityError unless both stacks bind the same fingerprints
    if stripes > 1:
        await ch.stripes.ensure(stripes)
    receipt = await ch.send_file(path)
    print("SENT", receipt.sha256, ch.conn.backend, ch.stripes.count, flush=True)
    back = await ch.receive_file(120)
    print("GOT", back.sha256, flush=True)
    await ch.close()
    await sig.close()


if __name__ == "__main__":
    logging.basicConfig(level=os.environ.get("PEER_LOG", "WARNING"), format="%(name)s %(message)s")
    role, url, room, token, base = sys.argv[1:6]
    if role == "worker":
        asyncio.run(asyncio.wait_for(worker(url, room, token, Path(base)), 150))
    else:
        stripes = int(sys.argv[8]) if len(sys.argv) > 8 else 1
        asyncio.run(asyncio.wait_for(client(url, room, token, Path(base), sys.argv[6], sys.argv[7], stripes), 150))
