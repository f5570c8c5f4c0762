"""Multi-instance signaling benchmark (not a test): 1 vs 3 instances on a real Redis.

Every server is a real process (``python -m sleap_rtc server``, with ``--redis`` or not);
Redis is the Debian ``redis-server`` on a free loopback port without persistence; peers
are ``websockets`` connections (and, for the recovery run, real ``SignalingClient``s
behind a loopback TCP balancer) in this process. The same-run baseline is the
single-process server (SQLite, no Redis) doing the same work.

    python benchmarks/signaling_redis.py [--peers 2000] [--room 1000] [--watchers 1000] [--write]

Figures: peers held and registration rate (single, 1 and 3 instances); relay round trip
on one instance and across instances; ``discover_peers`` in a room of 1,000; room-event
fan-out while 1,000 watchers fill a room (batched ``room_events`` against v2.0 one frame
per event); recovery after ``kill -9`` of one of three instances.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import aiohttp
import psutil
import websockets

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "server"))  # the loopback Redis/instance/balancer helpers

from redis_cluster import Balancer, Instance, RedisServer, find_redis_server  # noqa: E402

from sleap_rtc.core.signaling import ConnectionState, SignalingClient  # noqa: E402

from _stats import pct  # noqa: E402

# Limits raised so that the benchmark measures speed, not refusals (one address, many peers).
OPEN_LIMITS = (
    "--max-peers-per-room", "1100", "--max-metadata-bytes", "4096", "--max-watchers-per-room", "1100",
    "--messages-per-second", "100000", "--message-burst", "100000", "--address-messages-per-second", "1000000",
    "--address-bytes-per-second", "1000000000000", "--max-rooms-per-minute", "100000",
    "--max-sockets-per-address", "100000", "--register-timeout", "120",
)
META = {"tags": ["sleap-rtc", "training-worker"], "properties": {"gpu_memory_mb": 24576, "status": "available", "gpu_model": "A5000"}}


def start(redis: RedisServer | None, count: int, *extra: str) -> list[Instance]:
    """``count`` instances on ``redis`` (or one single-process server when ``redis`` is None)."""
    instances = [Instance(redis.url if redis else None, *OPEN_LIMITS, *extra) for _ in range(count)]
    deadline = time.monotonic() + 60
    for instance in instances:
        instance.wait_ready(deadline)
    return instances


def stop(instances: list[Instance]) -> None:
    """Stop every instance."""
    for instance in instances:
        instance.stop()


def flush(redis: RedisServer) -> None:
    """Empty Redis between configurations (nothing of one run leaks into the next)."""
    import redis as redis_py

    client = redis_py.Redis.from_url(redis.url)
    client.flushall()
    client.close()


async def create_room(instance: Instance) -> tuple[str, str]:
    """A room through ``POST /create-room`` (its worker token admits every role)."""
    async with aiohttp.ClientSession() as http, http.post(instance.http_url + "/create-room") as resp:
        body = await resp.json()
    return body["room_id"], body["worker_token"]


async def register(url: str, room, peer_id: str, role: str = "worker", metadata: dict | None = None, **extra):
    """A raw peer registered in ``room``; returns its socket."""
    ws = await websockets.connect(url, compression=None, max_size=None, ping_interval=None, open_timeout=60, close_timeout=1)
    await ws.send(json.dumps({"type": "register", "peer_id": peer_id, "room_id": room[0], "token": room[1], "role": role, "metadata": metadata or META, **extra}))
    reply = json.loads(await asyncio.wait_for(ws.recv(), 60))
    if reply.get("type") != "registered_auth":
        raise RuntimeError(f"registration refused: {reply}")
    return ws


def rss_mb(procs: list[psutil.Process]) -> float:
    """Resident memory of ``procs`` together, MiB."""
    return sum(p.memory_info().rss for p in procs) / 2**20


def cpu_s(procs: list[psutil.Process]) -> float:
    """CPU seconds (user + system) used so far by ``procs``."""
    return sum(sum(p.cpu_times()[:2]) for p in procs)


async def hold_and_register(instances: list[Instance], redis: RedisServer | None, args) -> dict:
    """Register ``args.peers`` peers over the instances: rate, RSS, relay and discover latency."""
    out: dict = {}
    big = await create_room(instances[0])
    rooms = [await create_room(instances[0]) for _ in range(max(1, (args.peers - args.room) // 100))]
    specs = [(big, f"w{i}") for i in range(args.room)] + [(rooms[i % len(rooms)], f"p{i}") for i in range(args.peers - args.room)]
    sem = asyncio.Semaphore(args.concurrency)

    async def one(i, spec):
        async with sem:
            return await register(instances[i % len(instances)].url, spec[0], spec[1])

    t0 = time.perf_counter()
    sockets = await asyncio.gather(*(one(i, s) for i, s in enumerate(specs)))
    out["rate"] = len(sockets) / (time.perf_counter() - t0)
    procs = [psutil.Process(i.proc.pid) for i in instances] + ([psutil.Process(redis.proc.pid)] if redis else [])
    async with aiohttp.ClientSession() as http:
        held = 0
        for instance in instances:
            async with http.get(instance.http_url + "/health") as resp:
                held += sum((await resp.json())["peers"].values())
    out["held"] = held
    out["rss"] = rss_mb(procs)
    try:
        # discover_peers in the room of args.room, from a peer on the last instance.
        me = await register(instances[-1].url, big, "discoverer", "client", {})
        sockets.append(me)
        frame = json.dumps({"type": "discover_peers", "id": "d", "filters": {"role": "worker"}})
        samples = []
        for i in range(args.samples + 10):
            t = time.perf_counter()
            await me.send(frame)
            reply = json.loads(await asyncio.wait_for(me.recv(), 30))
            assert reply["count"] == args.room, reply.get("count", reply)
            if i >= 10:
                samples.append((time.perf_counter() - t) * 1000)
        out["discover"] = samples
        # Relay round trip (peer_message there and back): same instance, and across.
        a = await register(instances[0].url, rooms[0], "relay-a", "client", {})
        b_same = await register(instances[0].url, rooms[0], "relay-b", "client", {})
        b_far = await register(instances[-1].url, rooms[0], "relay-c", "client", {})
        sockets += [a, b_same, b_far]
        for name, b, target in (("relay_same", b_same, "relay-b"), ("relay_cross", b_far, "relay-c")):
            samples = []
            for i in range(args.samples + 10):
                t = time.perf_counter()
                await a.send(json.dumps({"type": "peer_message", "to_peer_id": target, "payload": {"i": i}}))
                got = json.loads(await asyncio.wait_for(b.recv(), 30))
                await b.send(json.dumps({"type": "peer_message", "to_peer_id": "relay-a", "payload": got["payload"]}))
                back = json.loads(await asyncio.wait_for(a.recv(), 30))
                assert back["payload"]["i"] == i
                if i >= 10:
                    samples.append((time.perf_counter() - t) * 1000)
            out[name] = samples
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    return out


async def fill_with_watchers(instance: Instance, n: int, batch: bool, concurrency: int) -> dict:
    """``n`` watchers join one room as fast as the server admits them (a reconnect storm);
    frames they receive meanwhile, the busiest watcher's frames, server CPU, then the
    frames one status change costs."""
    room = await create_room(instance)
    proc = psutil.Process(instance.proc.pid)
    frames = [0]
    per_watcher: list[int] = []
    sockets = []
    readers = []
    sem = asyncio.Semaphore(concurrency)

    async def read(ws, slot):
        try:
            async for _ in ws:
                frames[0] += 1
                per_watcher[slot] += 1
        except websockets.ConnectionClosed:
            pass

    async def join(i):
        async with sem:
            ws = await register(instance.url, room, f"c{i}", "client", {}, events=True, **({"batch_events": True} if batch else {}))
        per_watcher.append(0)
        sockets.append(ws)
        readers.append(asyncio.ensure_future(read(ws, len(per_watcher) - 1)))

    cpu0 = cpu_s([proc])
    t0 = time.perf_counter()
    await asyncio.gather(*(join(i) for i in range(n)))
    expected = n * (n - 1) // 2 if not batch else None
    deadline = time.monotonic() + 300
    last, stable = -1, 0
    while time.monotonic() < deadline:  # until every event has arrived (or, batched, the count is stable)
        await asyncio.sleep(0.2)
        if expected is not None and frames[0] >= expected:
            break
        stable = stable + 1 if frames[0] == last else 0
        last = frames[0]
        if expected is None and stable >= 3:
            break
    fill = {"frames": frames[0], "busiest": max(per_watcher), "cpu": cpu_s([proc]) - cpu0, "seconds": time.perf_counter() - t0}
    before = frames[0]
    worker = await register(instance.url, room, "w-change", "worker")
    await asyncio.sleep(0.5)
    fill["frames_per_join"] = frames[0] - before
    for ws in sockets + [worker]:
        await ws.close()
    for r in readers:
        r.cancel()
    return fill


async def recovery(redis: RedisServer, args) -> dict:
    """Three instances behind a balancer; kill -9 the busiest; how fast its peers are back."""
    instances = start(redis, 3, "--lease-ttl", str(args.lease), "--peer-grace", str(args.grace))
    balancer = Balancer([i.port for i in instances])
    await balancer.start()
    clients: list[SignalingClient] = []
    try:
        room = await create_room(instances[0])
        for i in range(args.recovery_peers):
            c = SignalingClient(balancer.url, room_id=room[0], token=room[1], role="worker", peer_id=f"r{i}", events=False, max_backoff=1.0)
            await asyncio.wait_for(c.connect(), 30)
            clients.append(c)
        victim_port = max(set(balancer.routes), key=balancer.routes.count)
        on_victim = [c for c, port in zip(clients, balancer.routes, strict=True) if port == victim_port]
        victim = next(i for i in instances if i.port == victim_port)
        survivor = next(i for i in instances if i.port != victim_port)
        ghost = await websockets.connect(victim.url, open_timeout=30)
        await ghost.send(json.dumps({"type": "register", "peer_id": "ghost", "room_id": room[0], "token": room[1], "role": "client"}))
        await ghost.recv()
        watcher = await register(survivor.url, room, "watcher", "client", {}, events=True, batch_events=True)
        back: dict[str, float] = {}
        for c in on_victim:
            c.add_state_listener(lambda state, c=c: back.setdefault(c.peer_id, time.monotonic()) if state == ConnectionState.REGISTERED else None)
        balancer.upstreams = [i.port for i in instances if i is not victim]
        killed = time.monotonic()
        victim.kill()
        while len(back) < len(on_victim) and time.monotonic() - killed < 60:
            await asyncio.sleep(0.05)
        times = [t - killed for t in back.values()]
        ghost_left = None
        while time.monotonic() - killed < args.lease + args.grace + 30:
            frame = json.loads(await asyncio.wait_for(watcher.recv(), 60))
            events = frame.get("events", [frame])
            if any(e.get("type") == "peer_left" and e.get("peer_id") == "ghost" for e in events):
                ghost_left = time.monotonic() - killed
                break
            if any(e.get("type") == "peer_left" and e.get("peer_id") != "ghost" for e in events):
                raise AssertionError(f"a returning peer was reported gone: {events}")
        me = await register(survivor.url, room, "counter", "client", {})
        await me.send(json.dumps({"type": "discover_peers", "id": "d"}))
        listed = [p["peer_id"] for p in json.loads(await me.recv())["peers"]]
        await me.close()
        await watcher.close()
        return {"moved": len(on_victim), "total": len(clients), "back": times, "ghost_left": ghost_left,
                "listed_once": len(listed) == len(set(listed)) and sorted(set(listed) - {"watcher"}) == sorted(c.peer_id for c in clients)}
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
        await balancer.stop()
        stop(instances)


def report(args, res: dict, total_s: float) -> str:
    """The markdown section for docs/benchmarks.md."""
    single, one, three = res["single"], res["redis1"], res["redis3"]

    def ms(s):
        return f"{statistics.median(s):.2f} / {pct(s, 99):.2f} ms"

    rows = [
        "| measure | single process (SQLite, baseline) | 1 instance + Redis | 3 instances + Redis |",
        "|---|---|---|---|",
        f"| peers held (`/health`, summed) | {single['held']:,} | {one['held']:,} | {three['held']:,} |",
        f"| connect + register rate (concurrency {args.concurrency}) | {single['rate']:.0f} peers/s | {one['rate']:.0f} peers/s | {three['rate']:.0f} peers/s |",
        f"| server RSS with all peers (instances + Redis) | {single['rss']:.0f} MiB | {one['rss']:.0f} MiB | {three['rss']:.0f} MiB |",
        f"| discover_peers, room of {args.room}, all returned (p50 / p99) | {ms(single['discover'])} | {ms(one['discover'])} | {ms(three['discover'])} (asker on another instance than most) |",
        f"| relay round trip, both peers on one instance (p50 / p99) | {ms(single['relay_same'])} | {ms(one['relay_same'])} | {ms(three['relay_same'])} |",
        f"| relay round trip, peers on two instances (p50 / p99) | n/a | n/a | {ms(three['relay_cross'])} |",
    ]
    v2, batched, batched_big = res["fan_v2"], res["fan_batched"], res["fan_batched_big"]
    fan = [
        "| watchers filling one room (single process) | frames to watchers | busiest watcher | fill time | server CPU | frames for one more join |",
        "|---|---|---|---|---|---|",
        *(f"| {label} | {r['frames']:,} | {r['busiest']:,} frames | {r['seconds']:.1f} s | {r['cpu']:.1f} s | {r['frames_per_join']:,} |" for label, r in (
            (f"{args.fan_baseline} v2.0 watchers (one frame per event; baseline)", v2),
            (f"{args.fan_baseline} batched watchers (`batch_events`)", batched),
            (f"{args.watchers} batched watchers", batched_big),
        )),
    ]
    rec = res["recovery"]
    back = rec["back"]
    text = f"""## Multi-instance signaling (Redis) benchmark

Produced by `python benchmarks/signaling_redis.py --write` on {time.strftime('%Y-%m-%d')} (total {total_s:.0f} s).

Machine: `nproc` = {psutil.cpu_count()}, Python {platform.python_version()}, {platform.platform()}; load average
{psutil.getloadavg()[0]:.2f} at the end (the machine is shared). Every server is its own process, Redis is
`redis-server` (no persistence) on loopback, and all peers are `websockets` connections in the
benchmark process on the same 2 cores: with 3 instances, 4 server-side processes and the client
share 2 cores, so these figures show the cost of the shared backend, not the scale-out (that
needs cores or machines per instance; see docs/scaling.md). Limits were raised (one address
holds every peer). Baseline: the single-process server doing the same work in the same run.

{chr(10).join(rows)}

Room-event fan-out while watchers join one room as fast as the server admits them
({args.concurrency} registrations in flight: a room filling up, or a reconnect storm): each join is an
event for every watcher already there. Batched watchers get at most one frame per 50 ms;
the last column is one later change seen by all of them:

{chr(10).join(fan)}

Recovery: {rec['total']} `SignalingClient` peers behind a loopback TCP balancer over 3 instances
(`--lease-ttl {args.lease} --peer-grace {args.grace}`); `kill -9` of the instance holding {rec['moved']} of them.
All {len(back)} were registered again on the other instances after p50 {statistics.median(back):.2f} s,
max {max(back):.2f} s (their reconnect backoff is capped at 1 s here, 4 s by default); a peer
that never came back was reported `peer_left` after {rec['ghost_left']:.1f} s (lease + grace + one keeper
tick); no peer that came back was reported gone, and discovery then listed every peer exactly
once: {rec['listed_once']}.
"""
    return text


async def main(args) -> None:
    path, why = find_redis_server()
    if path is None:
        raise SystemExit(why)
    redis = RedisServer(path)
    t0 = time.monotonic()
    res: dict = {}
    try:
        for name, shared, count in (("single", None, 1), ("redis1", redis, 1), ("redis3", redis, 3)):
            if shared:
                flush(redis)
            instances = start(shared, count)
            try:
                res[name] = await hold_and_register(instances, shared, args)
                print(name, {k: (round(v, 1) if isinstance(v, (int, float)) else f"p50 {statistics.median(v):.2f} p99 {pct(v, 99):.2f}") for k, v in res[name].items()}, flush=True)
            finally:
                stop(instances)
        [single] = start(None, 1)
        try:
            res["fan_v2"] = await fill_with_watchers(single, args.fan_baseline, False, args.concurrency)
            res["fan_batched"] = await fill_with_watchers(single, args.fan_baseline, True, args.concurrency)
            res["fan_batched_big"] = await fill_with_watchers(single, args.watchers, True, args.concurrency)
            print("fan-out", res["fan_v2"], res["fan_batched"], res["fan_batched_big"], flush=True)
        finally:
            stop([single])
        flush(redis)
        res["recovery"] = await recovery(redis, args)
        print("recovery", {k: v for k, v in res["recovery"].items() if k != "back"}, "back p50", statistics.median(res["recovery"]["back"]), flush=True)
    finally:
        redis.stop()
    text = report(args, res, time.monotonic() - t0)
    print(text)
    if args.write:
        doc = ROOT / "docs" / "benchmarks.md"
        body = doc.read_text()
        head = "## Multi-instance signaling (Redis) benchmark"
        if head in body:
            start_at = body.index(head)
            nxt = body.find("\n## ", start_at + len(head))
            body = body[:start_at] + text + (body[nxt + 1:] if nxt != -1 else "")
        else:
            body = body.rstrip("\n") + "\n\n" + text
        doc.write_text(body)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=2000, help="peers registered per configuration")
    parser.add_argument("--room", type=int, default=1000, help="peers of the room discover_peers lists")
    parser.add_argument("--watchers", type=int, default=1000, help="batched watchers filling one room")
    parser.add_argument("--fan-baseline", type=int, default=500, help="watchers of the v2.0-vs-batched comparison")
    parser.add_argument("--samples", type=int, default=200, help="round trips per latency figure")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--recovery-peers", type=int, default=150)
    parser.add_argument("--lease", type=float, default=3.0)
    parser.add_argument("--grace", type=float, default=3.0)
    parser.add_argument("--write", action="store_true", help="write the figures into docs/benchmarks.md")
    asyncio.run(main(parser.parse_args()))
