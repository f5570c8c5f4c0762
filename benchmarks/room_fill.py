"""Room fill: what N event-watching peers joining one room cost the real signaling server.

Each peer that registers with ``events: true`` is told about every later one, so filling a
room of N watchers costs N(N-1)/2 ``peer_joined`` frames. The peers-per-room cap (500 by
default) bounds it; this measures the time and frames at that cap with the server's
default limits (peers spread over loopback source addresses, at most 50 per address, so
the per-address socket cap and budgets apply as they would in a lab). The baseline, in the
same run, is the same number of peers joining a fresh room without events.

Usage: ``python benchmarks/room_fill.py [--peers 500] [--write]`` (writes docs/bench/room_fill.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path

import websockets

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sleap_rtc.server.app import start_server  # noqa: E402

PER_ADDRESS = 50
"""Peers per loopback source address (under the 64-socket default cap)."""


async def _join(url: str, room, i: int, events: bool, counts: list[int]):
    source = f"127.0.1.{1 + i // PER_ADDRESS}"
    ws = await websockets.connect(url, compression=None, max_size=None, ping_interval=None, local_addr=(source, 0), open_timeout=30)
    await ws.send(json.dumps({"type": "register", "peer_id": f"p{i}", "room_id": room[0], "token": room[1], "role": "client", "events": events}))
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 60))
        if frame["type"] == "registered_auth":
            break
        if frame["type"] == "error":
            raise RuntimeError(frame)

    async def count():
        try:
            async for text in ws:
                if '"peer_joined"' in text:
                    counts[i] += 1
        except websockets.ConnectionClosed:
            pass

    return ws, asyncio.create_task(count())


async def fill(server, peers: int, events: bool) -> tuple[float, int]:
    """Seconds until every peer registered (and, with events, heard of every later one)."""
    room = await server.create_room()
    counts = [0] * peers
    start = time.perf_counter()
    joined = [await _join(server.url, room, i, events, counts) for i in range(peers)]
    expected = peers * (peers - 1) // 2 if events else 0
    while sum(counts) < expected:
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - start
    for ws, task in joined:
        task.cancel()
        await ws.close()
    return elapsed, sum(counts)


async def run(peers: int) -> dict:
    server = await start_server("127.0.0.1", 0)
    try:
        base, _ = await fill(server, peers, events=False)
        await asyncio.sleep(1)
        cost, frames = await fill(server, peers, events=True)
    finally:
        await server.stop()
    return {"peers": peers, "baseline_s": base, "fill_s": cost, "frames": frames}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=500)
    parser.add_argument("--write", action="store_true", help="write docs/bench/room_fill.md")
    args = parser.parse_args()
    r = asyncio.run(run(args.peers))
    table = (
        "| measure | value | vs baseline |\n|---|---|---|\n"
        f"| Baseline: {r['peers']} peers join one room without events | {r['baseline_s']:.2f} s | 1.0x |\n"
        f"| {r['peers']} event watchers fill one room | {r['fill_s']:.2f} s, {r['frames']:,} peer_joined frames | {r['fill_s'] / r['baseline_s']:.1f}x |\n"
    )
    print(table)
    if args.write:
        path = ROOT / "docs" / "bench" / "room_fill.md"
        path.write_text(
            f"""# Room fill (threat row S23)

Produced by `python benchmarks/room_fill.py {' '.join(sys.argv[1:])}` on {time.strftime('%Y-%m-%d')}.

Machine: `nproc` = {os.cpu_count()}, Python {platform.python_version()}, {platform.platform()}.
The server ran in the benchmark process with its default limits (500 peers per room);
peers came from loopback source addresses, {PER_ADDRESS} per address. Filling a room of N
event watchers costs N(N-1)/2 event frames; the peers-per-room cap is what bounds it.

{table}"""
        )
        print("wrote", path)


if __name__ == "__main__":
    main()
