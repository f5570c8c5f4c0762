"""One peer of a lab transfer (``benchmarks/lab_transfer.py``, ``test_transfer.py``), run
inside a lab namespace by whichever Python
the mode needs (3.11 for aiortc, the 3.12 side env for libdatachannel; the backend comes
from ``$SLEAP_RTC_BACKEND``). Each measurement prints one ``RESULT {json}`` line.

``worker URL SECRET DIR ROLE FILE MAX_S``
    creates a room, registers as a worker, prints ``READY <room> <token> <peer id>``, then
    serves every offer in turn as the product's worker does (``transport.accept``, stripes
    allowed, stripe offers admitted by token). ROLE ``recv``: receive the client's file,
    bounded by MAX_S. ROLE ``send``: send FILE to the client, then wait for its hang-up.
``client URL ROOM TOKEN PEER DIR ROLE FILE STRIPED MAX_S [CUT_AFTER_MIB]``
    connects (once, or twice: below); STRIPED ``1`` leaves the product's stripe growth on,
    ``0`` turns it off, ``known`` runs a first transfer to the same worker and then the measured one on a new
    connection from the same process (the path is known: ``stripes.PathMemory``).
    CUT_AFTER_MIB (aiortc, ROLE ``send``): once that much was handed out, black-hole the
    first stripe's UDP port on this host, both ways (prints ``CUT <port>``).
    ROLE ``send``: send FILE (the worker measures); ROLE ``recv``: receive the worker's
    file, bounded by MAX_S; ROLE ``setup``: time ``connect`` and then ``stripes.ensure(N)``
    with N = STRIPED (no transfer); ROLE ``setup-parallel``: the same with
    ``connect(stripes=N)`` (the extra connections start as the answer grants them).
``tcp-recv PORT MAX_S`` / ``tcp-send HOST PORT CC MAX_BYTES MAX_S``
    the TCP baseline: one connection with congestion control CC (``TCP_CONGESTION``),
    up to MAX_BYTES or MAX_S, whichever first, measured by the receiver.

A bounded receive measures from the moment the offer was accepted to ``file_done`` (the
whole file, SHA-256 verified) or, at MAX_S, counts the contiguous prefix hashed so far.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

POLL_S = 0.05
"""How often a bounded receive looks at the verified prefix and the stripe count."""
CONNECT_TIMEOUT = 30.0
"""Seconds one connection set-up may take (loss lengthens the handshakes)."""
IDLE_TIMEOUT = 120.0
"""Seconds a peer waits for its counterpart before giving up."""


SCTP_COUNTERS = {"senddata": 42, "sendretransdata": 43, "sendfastretrans": 44, "timodata": 68}
"""usrsctp's ``struct sctpstat`` counters a native sender reports, by their uint32 index (usrsctp.h):
chunks sent, resent, fast-resent, and T3 retransmission timeouts."""


def sender_counters() -> None:
    """Print usrsctp's process-wide counters after a send, where this peer runs the native
    stack (``SCTPSTAT {json}``): how often its retransmission timer fired, beside the loss."""
    import ctypes
    import os

    if os.environ.get("SLEAP_RTC_BACKEND") != "libdatachannel":
        return
    import aiolibdatachannel

    from sleap_rtc.core.backends import native_sctp

    stats = (ctypes.c_uint32 * 256)()  # the struct holds about 170 counters: room to spare
    native_sctp.loaded(aiolibdatachannel._native).usrsctp_get_stat(stats)
    print("SCTPSTAT " + json.dumps({name: stats[i] for name, i in SCTP_COUNTERS.items()}), flush=True)


def result(**fields) -> None:
    """Print one measurement for the orchestrator."""
    print("RESULT " + json.dumps(fields), flush=True)


async def receive_bounded(ch, max_s: float) -> dict:
    """Receive one file on ``ch`` for at most ``max_s`` seconds; the figures of the run."""
    task = asyncio.ensure_future(ch.receive_file(max_s + IDLE_TIMEOUT))
    t0 = verified = None
    name, connections = "", ch.stripes.count
    while not task.done():
        progress = ch.transfers.incoming_progress()
        now = time.monotonic()
        if progress:
            name, verified, _size = progress[0]
            t0 = now if t0 is None else t0
        connections = max(connections, ch.stripes.count)
        if t0 is not None and now - t0 >= max_s:
            break
        await asyncio.wait([task], timeout=POLL_S)
    if task.done():
        got = task.result()  # raises what the transfer failed with
        return {"name": got.name, "bytes": got.size, "sha256": got.sha256, "s": time.monotonic() - (t0 or time.monotonic()), "complete": True,
                "connections": connections, "backend": ch.conn.backend}
    elapsed = time.monotonic() - t0
    task.cancel()
    # "received" counts bytes that arrived ahead of the verified prefix too (striped lanes).
    return {"name": name, "bytes": verified or 0, "received": ch.transfers.bytes_moved, "s": elapsed, "complete": False,
            "connections": connections, "backend": ch.conn.backend}


async def cut_first_stripe(ch) -> None:
    """Drop every UDP packet of the first stripe's nominated ICE socket on this host (its path
    goes silent; nothing closes it). aiortc only: reads aioice's private state."""
    for _ in range(200):  # growth may still be opening the first stripe
        lanes = [lane for lane in ch.stripes.lanes if lane.usable]
        if lanes:
            break
        await asyncio.sleep(POLL_S)
    else:
        print("CUT none: no stripe opened", flush=True)
        return
    ice = lanes[0].conn.pc.sctp.transport.transport.iceGatherer._connection
    pair = next(iter(ice._nominated.values()))
    port = pair.protocol.transport.get_extra_info("sockname")[1]
    for chain, match in (("OUTPUT", "--sport"), ("INPUT", "--dport")):
        subprocess.run(["iptables", "-I", chain, "-p", "udp", match, str(port), "-j", "DROP"], check=True, timeout=10)
    print("CUT", port, flush=True)


async def worker(url: str, secret: str, base: str, role: str, path: str, max_s: str) -> None:
    from sleap_rtc.core import transport
    from sleap_rtc.core.protocol import MessageType
    from sleap_rtc.core.signaling import SignalingClient, create_room

    room = await create_room(url, secret=secret)
    sig = SignalingClient(url, room_id=room.room_id, token=room.worker_token, role="worker", events=False)
    await asyncio.wait_for(sig.connect(), CONNECT_TIMEOUT)
    offers: asyncio.Queue = asyncio.Queue()
    current: list = []  # the channel being served (stripe offers join it)

    async def stripe(frame) -> None:
        ch = current[0] if current else None
        if ch is None or not ch.stripes.admits(frame.get("stripe"), frame.get("sender")):
            return
        try:
            ch.stripes.attach(await transport.accept_stripe(sig, frame, timeout=CONNECT_TIMEOUT))
        except Exception:
            ch.stripes.release()

    def on_frame(frame) -> None:
        if frame.get("type") != MessageType.OFFER:
            return
        if frame.get("stripe"):
            asyncio.ensure_future(stripe(frame))
        else:
            offers.put_nowait(frame)

    sig.add_listener(on_frame)
    print("READY", room.room_id, room.token, sig.peer_id, flush=True)
    n = 0
    while True:
        frame = await offers.get()
        n += 1
        d = Path(base) / f"w{n}"

        def registered(ch) -> None:  # as the worker runtime does: the answer carries the grant
            ch.stripes.allow()
            current[:] = [ch]

        try:
            ch = await transport.accept(sig, frame, receive_dir=d / "recv", cache_dir=d / "cache", timeout=CONNECT_TIMEOUT,
                                        on_channel=registered)
        except Exception as exc:
            print(f"accept failed: {exc}", flush=True)
            continue
        try:
            if role == "recv":
                result(side="worker", **await receive_bounded(ch, float(max_s)))
                await ch.close()
            else:
                try:
                    await ch.send_file(path)
                except Exception as exc:  # the client stops at its time bound: expected
                    print(f"send ended: {exc.__class__.__name__}", flush=True)
                sender_counters()
                await ch.wait_closed(IDLE_TIMEOUT)
        except Exception as exc:
            print(f"run {n} failed: {exc!r}", flush=True)
            await ch.close()
        current.clear()
        shutil.rmtree(d, ignore_errors=True)  # a grid moves gigabytes: keep none of it


async def client(url: str, room: str, token: str, peer: str, base: str, role: str, path: str, striped: str, max_s: str,
                 cut_after_mib: str = "0") -> None:
    from sleap_rtc.core import transport
    from sleap_rtc.core.signaling import SignalingClient

    sig = SignalingClient(url, room_id=room, token=token, role="client", events=False)
    await asyncio.wait_for(sig.connect(), CONNECT_TIMEOUT)
    # STRIPED "known": a first job's transfer to the same worker, then the one measured, on a
    # new connection in the same process (what growth found is kept per worker: core.stripes).
    jobs = 2 if striped == "known" else 1
    many = int(striped) if role == "setup-parallel" else 1
    for job in range(1, jobs + 1):
        t0 = time.monotonic()
        # A transfer cache per job: the first job's copy would answer the second's download at once.
        ch = await transport.connect(sig, peer, receive_dir=Path(base) / f"recv{job}", cache_dir=Path(base) / f"cache{job}",
                                     timeout=CONNECT_TIMEOUT, stripes=many)
        one = time.monotonic() - t0
        if role.startswith("setup"):
            t1 = time.monotonic()
            opened = await ch.stripes.ensure(int(striped))
            result(side="client", one=one, extra=time.monotonic() - t1, connections=opened, backend=ch.conn.backend)
        else:
            if striped == "0":
                ch.stripes.opener = None  # one connection: no growth
            if role == "send":
                await send_once(ch, path, float(cut_after_mib))
            else:
                result(side="client", connect=one, job=job, **await receive_bounded(ch, float(max_s)))
        await ch.close()
    await sig.close()


async def send_once(ch, path: str, cut_after_mib: float) -> None:
    """Send ``path`` on ``ch`` (the worker measures); with ``cut_after_mib``, cut the first stripe
    once that much was handed out."""
    cut: list = []

    def progress(done: int, _size: int) -> None:
        if cut_after_mib and not cut and done >= cut_after_mib * (1 << 20):
            cut.append(asyncio.ensure_future(cut_first_stripe(ch)))

    try:
        await ch.send_file(path, progress=progress)
    except Exception as exc:  # the worker stops at its time bound: expected
        print(f"send ended: {exc.__class__.__name__}", flush=True)
    print("SENT", ch.stripes.count, flush=True)
    sender_counters()


def tcp_recv(port: str, max_s: str) -> None:
    srv = socket.create_server(("0.0.0.0", int(port)))
    print("READY", flush=True)
    srv.settimeout(IDLE_TIMEOUT)
    conn, _ = srv.accept()
    conn.settimeout(IDLE_TIMEOUT)
    t0, n = time.monotonic(), 0
    while time.monotonic() - t0 < float(max_s):
        block = conn.recv(1 << 20)
        if not block:
            break
        n += len(block)
    result(side="tcp", bytes=n, s=time.monotonic() - t0)
    conn.close()


def tcp_send(host: str, port: str, cc: str, max_bytes: str, max_s: str) -> None:
    sock = socket.socket()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, cc.encode())
    sock.settimeout(CONNECT_TIMEOUT)
    sock.connect((host, int(port)))
    block, left, t0 = bytes(1 << 20), int(max_bytes), time.monotonic()
    try:
        while left > 0 and time.monotonic() - t0 < float(max_s) + 1:
            sock.sendall(block[:min(left, len(block))])
            left -= len(block)
    except OSError:
        pass  # the receiver stopped at its time bound
    sock.close()


if __name__ == "__main__":
    # What the stripe policy decided (opened, failed, stopped growing) goes to the transcript.
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s", stream=sys.stdout)
    logging.getLogger("sleap_rtc.core.stripes").setLevel(logging.DEBUG)
    mode, *args = sys.argv[1:]
    if mode == "tcp-recv":
        tcp_recv(*args)
    elif mode == "tcp-send":
        tcp_send(*args)
    else:
        asyncio.run(worker(*args) if mode == "worker" else client(*args))
