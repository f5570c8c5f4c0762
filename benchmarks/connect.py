"""Connect latency and status propagation latency, each against a baseline from the same run.

* **Connect**: ``transport.connect`` through a real signaling server on loopback until the
  data channel is open and both hellos are exchanged, against raw aiortc (two
  RTCPeerConnections in this process exchanging SDP directly, no signaling, no hello).
* **Status propagation**: a worker's ``WorkerStatus`` change published with
  ``update_metadata`` until a client's ``RoomView`` listener sees it, against a plain
  request/reply round trip (``discover_peers``) on the same connection.

Usage: ``python benchmarks/connect.py [--rounds 10] [--write]`` (``--write`` updates
``docs/bench/connect.md``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from aiortc import RTCPeerConnection

from sleap_rtc.core.protocol import MessageType, Prop, WorkerStatus
from sleap_rtc.core.room import RoomView
from sleap_rtc.core.signaling import SignalingClient
from sleap_rtc.core.transport import accept, connect
from sleap_rtc.server.app import start_server
from sleap_rtc.server.hub import EVENT_FLUSH_INTERVAL

from _stats import latency_table

ROOT = Path(__file__).resolve().parent.parent


async def raw_aiortc_open() -> float:
    """Seconds until a data channel between two in-process peers is open (no signaling)."""
    start = time.perf_counter()
    a, b = RTCPeerConnection(), RTCPeerConnection()
    opened = asyncio.get_running_loop().create_future()
    dc = a.createDataChannel("bench")
    dc.on("open", lambda: opened.done() or opened.set_result(None))
    await a.setLocalDescription(await a.createOffer())
    await b.setRemoteDescription(a.localDescription)
    await b.setLocalDescription(await b.createAnswer())
    await a.setRemoteDescription(b.localDescription)
    await asyncio.wait_for(opened, 20)
    elapsed = time.perf_counter() - start
    await a.close()
    await b.close()
    return elapsed


async def bench(rounds: int) -> dict[str, list[float]]:
    """Run both measurements; returns lists of seconds per series."""
    server = await start_server()
    room = await server.create_room()
    tmp = Path(tempfile.mkdtemp(prefix="sleap-rtc-bench-"))
    worker = SignalingClient(server.url, room_id=room[0], token=room[1], role="worker",
                             metadata={"tags": [], "properties": {Prop.STATUS.value: WorkerStatus.AVAILABLE.value}})
    client = SignalingClient(server.url, room_id=room[0], token=room[1], role="client", events=True)
    await worker.connect()
    await client.connect()
    accepted: asyncio.Queue = asyncio.Queue()

    async def on_offer(frame: dict) -> None:
        if frame.get("type") == MessageType.OFFER:
            ch = await accept(worker, frame, receive_dir=tmp / "w", cache_dir=tmp / "wc")
            accepted.put_nowait(ch)

    worker.add_listener(lambda f: asyncio.get_running_loop().create_task(on_offer(f)))
    results: dict[str, list[float]] = {"raw_open": [], "connect": [], "rtt": [], "status": []}
    for _ in range(rounds):
        results["raw_open"].append(await raw_aiortc_open())
        start = time.perf_counter()
        ch = await connect(client, worker.peer_id, receive_dir=tmp / "c", cache_dir=tmp / "cc")
        results["connect"].append(time.perf_counter() - start)
        wch = await asyncio.wait_for(accepted.get(), 10)
        await ch.close()
        await wch.close()

    view = RoomView(client)
    await view.start()
    seen: asyncio.Queue = asyncio.Queue()
    view.subscribe(lambda change: change.worker is not None and seen.put_nowait((time.perf_counter(), change.worker.status)))
    statuses = [WorkerStatus.RESERVED, WorkerStatus.BUSY, WorkerStatus.AVAILABLE]
    for i in range(rounds * 5):
        # A status changes every few seconds at most in a real room: let the server's event
        # batching see a quiet room (a burst waits up to EVENT_FLUSH_INTERVAL, by design).
        await asyncio.sleep(2 * EVENT_FLUSH_INTERVAL)
        start = time.perf_counter()
        await client.discover({"role": "worker"})
        results["rtt"].append(time.perf_counter() - start)
        want = statuses[i % 3].value
        start = time.perf_counter()
        await worker.update_metadata({"properties": {Prop.STATUS.value: want}})
        while True:
            at, status = await asyncio.wait_for(seen.get(), 10)
            if status == want:
                break
        results["status"].append(at - start)
    view.close()
    await client.close()
    await worker.close()
    await server.stop()
    return results


def report(results: dict[str, list[float]], rounds: int) -> str:
    """A markdown section with figures, baselines and ratios."""
    rows = [
        ("Connect (offer -> channel open + hello), through the server", "connect",
         "raw aiortc open, SDP exchanged in-process", "raw_open"),
        ("Status change -> client's RoomView listener", "status",
         "discover_peers round trip, same connection", "rtt"),
    ]
    lines = latency_table("Connect and status propagation", f"python benchmarks/connect.py --rounds {rounds} --write",
                          "server, worker and client in one process on loopback", rows, results, digits=1)
    lines += [
        "",
        "Connect includes ICE gathering on both sides (non-trickle), DTLS, SCTP and our hello",
        "exchange; the baseline is the library's own floor on this machine. A status change",
        "crosses the server twice (update, then `peer_updated`), so about one round trip is the floor.",
        "The room is quiet between changes (as a real room is); changes that follow one another",
        f"within {EVENT_FLUSH_INTERVAL * 1000:.0f} ms reach a watcher in one batched frame at the next flush.",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description="connect and status propagation latency")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--write", action="store_true", help="write docs/bench/connect.md")
    args = parser.parse_args()
    results = asyncio.run(bench(args.rounds))
    text = report(results, args.rounds)
    print(text)
    if args.write:
        out = ROOT / "docs" / "bench" / "connect.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
