"""Signaling server benchmark (not a test): many peers, discovery latency, event fan-out.

The server runs in a subprocess (``python -m sleap_rtc server``); peers are ``websockets``
connections in this process. Each figure is printed next to a baseline measured in the
same run: the round trip of a small frame through a bare aiohttp WebSocket echo server,
also in a subprocess, on the same loopback.

    python benchmarks/signaling.py [--peers 5000] [--workers 1000] [--watchers 50] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import websockets

from _stats import pct

ROOT = Path(__file__).resolve().parents[1]
ECHO_SERVER = """
import sys
from aiohttp import web
async def echo(request):
    ws = web.WebSocketResponse(compress=False)
    await ws.prepare(request)
    async for msg in ws:
        await ws.send_str(msg.data)
    return ws
app = web.Application()
app.router.add_get("/", echo)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=lambda *a: print("ready", flush=True))
"""


def raise_open_files(wanted: int) -> int:
    """Raise the soft open-files limit (children inherit it); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(max(soft, wanted), hard) if hard != resource.RLIM_INFINITY else max(soft, wanted)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_signaling_server(state: Path) -> tuple[subprocess.Popen, str]:
    """The real server, limits raised so the benchmark measures speed, not refusals."""
    cmd = [
        sys.executable, "-m", "sleap_rtc", "server", "--port", "0", "--state", str(state),
        # A room of 1,000+ peers fits the clients' 16 MiB peer-list limit with 4 KiB metadata.
        "--max-peers-per-room", "1100", "--max-metadata-bytes", "4096",
        "--messages-per-second", "100000", "--message-burst", "100000",
        "--address-messages-per-second", "100000", "--address-message-burst", "100000",
        "--address-bytes-per-second", "1e12", "--max-sockets-per-address", "100000",
        "--max-rooms-per-minute", "100000",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    line = proc.stdout.readline()
    match = re.search(r"(ws://\S+/ws)", line)
    if not match:
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return proc, match.group(1)


def start_echo_server() -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", ECHO_SERVER, str(port)], stdout=subprocess.PIPE, text=True)
    proc.stdout.readline()
    return proc, f"ws://127.0.0.1:{port}/"


async def create_room(http_url: str) -> tuple[str, str]:
    import aiohttp

    async with aiohttp.ClientSession() as http, http.post(http_url + "/create-room") as resp:
        body = await resp.json()
    return body["room_id"], body["worker_token"]  # admits workers and clients


async def connect(url: str):
    return await websockets.connect(url, compression=None, max_size=None, ping_interval=None, open_timeout=30, close_timeout=1)


async def register(url: str, room: tuple[str, str], peer_id: str, role: str, metadata: dict, events: bool = False):
    ws = await connect(url)
    await ws.send(json.dumps({"type": "register", "peer_id": peer_id, "room_id": room[0], "token": room[1], "role": role, "metadata": metadata, "events": events}))
    reply = json.loads(await asyncio.wait_for(ws.recv(), 30))
    if reply.get("type") != "registered_auth":
        raise RuntimeError(f"registration refused: {reply}")
    return ws


async def round_trips(ws, frame: str, n: int, expect: str | None = None) -> list[float]:
    """n sequential request/reply round trips, in milliseconds."""
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        await ws.send(frame)
        while True:
            reply = await asyncio.wait_for(ws.recv(), 30)
            if expect is None or f'"type":"{expect}"' in reply:
                break
        samples.append((time.perf_counter() - t0) * 1000)
    return samples


async def run(args) -> dict:
    raise_open_files(args.peers * 2 + 1000)
    tmp = Path(tempfile.mkdtemp(prefix="sleap-rtc-bench-"))
    server, url = start_signaling_server(tmp / "state.sqlite3")
    echo, echo_url = start_echo_server()
    http_url = url.replace("ws://", "http://").rsplit("/ws", 1)[0]
    results: dict = {}
    sockets = []
    try:
        # Baseline: bare aiohttp echo round trip of a small frame.
        echo_ws = await connect(echo_url)
        small = json.dumps({"type": "discover_peers", "id": "x"})
        await round_trips(echo_ws, small, 50)
        echo_rtt = await round_trips(echo_ws, small, args.samples)
        results["echo"] = (statistics.median(echo_rtt), pct(echo_rtt, 99))
        await echo_ws.close()

        # Registration of many peers: the big room first, then the rest over other rooms.
        big_room = await create_room(http_url)
        other_rooms = [await create_room(http_url) for _ in range(args.rooms)]
        specs = [(big_room, f"worker-{i}", "worker", {"tags": ["sleap-rtc", "training-worker"], "properties": {"gpu_memory_mb": random.choice([8192, 12288, 24576, 49152]), "status": "available"}}) for i in range(args.workers)]
        rest = args.peers - args.workers - args.watchers - 1
        specs += [(other_rooms[i % len(other_rooms)], f"peer-{i}", random.choice(["worker", "client"]), {"properties": {"gpu_memory_mb": 8192}}) for i in range(rest)]
        sem = asyncio.Semaphore(args.concurrency)

        async def one(spec):
            async with sem:
                return await register(url, *spec)

        t0 = time.perf_counter()
        sockets += await asyncio.gather(*(one(s) for s in specs))
        watchers = [await register(url, big_room, f"watcher-{i}", "client", {}, events=True) for i in range(args.watchers)]
        sockets += watchers
        discoverer = await register(url, big_room, "discoverer", "client", {})
        sockets.append(discoverer)
        elapsed = time.perf_counter() - t0
        results["registered"] = len(sockets)
        results["register_rate"] = len(sockets) / elapsed
        results["server_rss_mb"] = psutil.Process(server.pid).memory_info().rss / 2**20

        # discover_peers in the room of 1,000 workers: all workers, and a $gte filter.
        all_workers = json.dumps({"type": "discover_peers", "id": "d", "filters": {"role": "worker"}})
        big_gpus = json.dumps({"type": "discover_peers", "id": "d", "filters": {"role": "worker", "properties": {"gpu_memory_mb": {"$gte": 24000}}}})
        await round_trips(discoverer, all_workers, 10, "peer_list")
        results["discover_all"] = await round_trips(discoverer, all_workers, args.samples, "peer_list")
        results["discover_gte"] = await round_trips(discoverer, big_gpus, args.samples, "peer_list")

        # Status-event fan-out: one worker changes status, 50 watchers receive peer_updated.
        updater = sockets[0]
        latencies: list[float] = []
        for i in range(args.fanouts):
            status = "busy" if i % 2 else "available"
            t0 = time.perf_counter()
            await updater.send(json.dumps({"type": "update_metadata", "metadata": {"properties": {"status": status}}}))

            async def wait_event(ws):
                while True:
                    frame = await asyncio.wait_for(ws.recv(), 30)
                    if '"peer_updated"' in frame:
                        return (time.perf_counter() - t0) * 1000

            latencies += await asyncio.gather(*(wait_event(w) for w in watchers))
            await asyncio.wait_for(updater.recv(), 30)  # its own metadata_updated
        results["fanout"] = latencies
        results["server_rss_mb_end"] = psutil.Process(server.pid).memory_info().rss / 2**20
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
        for proc in (server, echo):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    return results


def report(args, r: dict) -> str:
    echo50, echo99 = r["echo"]
    rows = [
        ("Connected peers (one server process)", f"{r['registered']:,}", "target 5,000", ""),
        ("Connect + register rate", f"{r['register_rate']:,.0f} peers/s", f"concurrency {args.concurrency}", ""),
        ("Server RSS with all peers", f"{r['server_rss_mb']:.0f} MiB", "", ""),
        ("Baseline: bare aiohttp echo round trip p50 / p99", f"{echo50:.2f} / {echo99:.2f} ms", "", "1.0x"),
    ]
    for label, key, target in [
        (f"discover_peers, room of {args.workers} workers, all returned", "discover_all", "p99 < 50 ms"),
        ("discover_peers with gpu_memory_mb $gte filter", "discover_gte", "p99 < 50 ms"),
        (f"peer_updated fan-out to {args.watchers} watchers (per watcher)", "fanout", "p99 < 100 ms"),
    ]:
        s = r[key]
        p50, p99 = statistics.median(s), pct(s, 99)
        rows.append((label, f"{p50:.2f} / {p99:.2f} ms", target, f"{p50 / echo50:.1f}x / {p99 / echo99:.1f}x"))
    width = max(len(row[0]) for row in rows)
    lines = [f"{'measure'.ljust(width)} | value (p50 / p99) | target | vs echo baseline (p50 / p99)"]
    lines += [f"{a.ljust(width)} | {b} | {c} | {d}" for a, b, c, d in rows]
    return "\n".join(lines)


def write_markdown(args, r: dict, table: str) -> Path:
    path = ROOT / "docs" / "bench" / "signaling.md"
    md_rows = ["| " + " | ".join(cell.strip() for cell in line.split("|")) + " |" for line in table.splitlines()]
    md_rows.insert(1, "|---|---|---|---|")
    cmd = "python benchmarks/signaling.py " + " ".join(sys.argv[1:])
    text = f"""# Signaling server benchmark

Produced by `{cmd}` on {time.strftime('%Y-%m-%d')}.

Machine: `nproc` = {os.cpu_count()}, Python {platform.python_version()}, {platform.platform()}.
The server ran in its own process (`python -m sleap_rtc server`, limits raised); all
{r['registered']:,} peers were `websockets` connections in the benchmark process, which
shares the same cores, so the figures include client-side CPU. The baseline is the round
trip of a small frame through a bare aiohttp WebSocket echo server on the same loopback,
measured in the same run; ratios are figure / baseline.

{chr(10).join(md_rows)}

Server RSS after the fan-out phase: {r['server_rss_mb_end']:.0f} MiB.
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=5000, help="total connected peers")
    parser.add_argument("--workers", type=int, default=1000, help="workers in the discovery room")
    parser.add_argument("--watchers", type=int, default=50, help="event watchers in the discovery room")
    parser.add_argument("--rooms", type=int, default=40, help="other rooms the remaining peers spread over")
    parser.add_argument("--samples", type=int, default=200, help="round trips per latency figure")
    parser.add_argument("--fanouts", type=int, default=100, help="status changes fanned out")
    parser.add_argument("--concurrency", type=int, default=200, help="registrations in flight")
    parser.add_argument("--write", action="store_true", help="write docs/bench/signaling.md")
    args = parser.parse_args()
    results = asyncio.run(run(args))
    table = report(args, results)
    print(table)
    if args.write:
        print("wrote", write_markdown(args, results, table))


if __name__ == "__main__":
    main()
