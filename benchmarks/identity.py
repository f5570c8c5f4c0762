"""What the worker identity check costs a job, against baselines from the same run.

* **Sign + verify** (pure, ``core.identity``): one ``make_proof`` plus one ``verify_proof``,
  against one SHA-256 of a 1 KiB message (the floor of any signature scheme).
* **Identity check on a real connection**: from ``transport.connect`` returning on the
  client until ``PeerChannel.verify_identity`` returned (the worker sends its proof as soon
  as its side is up, as ``sleap_rtc.worker`` does), against a control-message round trip
  (client sends, worker echoes) on the same channel. Real aiortc peers through the real
  signaling server on loopback, all in one process.

Usage: ``python benchmarks/identity.py [--rounds 20] [--write]`` (``--write`` updates
``docs/bench/identity.md``).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import tempfile
import time
from pathlib import Path

from sleap_rtc.core.identity import generate_key, make_proof, new_nonce, verify_proof
from sleap_rtc.core.jobs_wire import job_log
from sleap_rtc.core.protocol import MessageType
from sleap_rtc.core.signaling import SignalingClient
from sleap_rtc.core.transport import accept, connect
from sleap_rtc.server.app import start_server

from _stats import latency_table

ROOT = Path(__file__).resolve().parent.parent
DTLS_A = "sha-256 " + ":".join(["AB"] * 32)
DTLS_B = "sha-256 " + ":".join(["CD"] * 32)


def pure(rounds: int) -> dict[str, list[float]]:
    """Seconds per sign+verify, and per SHA-256 of 1 KiB."""
    key, data = generate_key(), os.urandom(1024)
    out: dict[str, list[float]] = {"sign_verify": [], "sha256": []}
    for _ in range(rounds):
        nonce = new_nonce()
        start = time.perf_counter()
        proof = make_proof(key, local_dtls=DTLS_A, remote_dtls=DTLS_B, nonce=nonce, local_peer_id="w", remote_peer_id="c")
        verify_proof(proof, local_dtls=DTLS_B, remote_dtls=DTLS_A, nonce=nonce, local_peer_id="c", remote_peer_id="w")
        out["sign_verify"].append(time.perf_counter() - start)
        start = time.perf_counter()
        hashlib.sha256(data).digest()
        out["sha256"].append(time.perf_counter() - start)
    return out


async def live(rounds: int) -> dict[str, list[float]]:
    """Seconds for the identity check after connect, and for an echo round trip."""
    server = await start_server()
    room = await server.create_room()
    tmp = Path(tempfile.mkdtemp(prefix="sleap-rtc-bench-"))
    worker = SignalingClient(server.url, room_id=room[0], token=room[1], role="worker", metadata={"tags": [], "properties": {}})
    client = SignalingClient(server.url, room_id=room[0], token=room[1], role="client")
    await worker.connect()
    await client.connect()
    key = generate_key()
    accepted: asyncio.Queue = asyncio.Queue()

    async def on_offer(frame: dict) -> None:
        if frame.get("type") == MessageType.OFFER:
            ch = await accept(worker, frame, receive_dir=tmp / "w", cache_dir=tmp / "wc")
            ch.prove_identity(key)
            accepted.put_nowait(ch)

    worker.add_listener(lambda f: asyncio.get_running_loop().create_task(on_offer(f)))
    out: dict[str, list[float]] = {"check": [], "echo": []}
    for _ in range(rounds):
        ch = await connect(client, worker.peer_id, receive_dir=tmp / "c", cache_dir=tmp / "cc")
        start = time.perf_counter()
        assert await ch.verify_identity(10) == key.fingerprint
        out["check"].append(time.perf_counter() - start)
        wch = await asyncio.wait_for(accepted.get(), 10)
        for _ in range(5):
            start = time.perf_counter()
            await ch.send(job_log("echo", "ping"))
            await wch.send(await wch.receive(5))
            await ch.receive(5)
            out["echo"].append(time.perf_counter() - start)
        await ch.close()
        await wch.close()
    await client.close()
    await worker.close()
    await server.stop()
    return out


def report(results: dict[str, list[float]], rounds: int) -> str:
    """A markdown section with figures, baselines and ratios."""
    rows = [
        ("Sign + verify one proof (Ed25519, pure)", "sign_verify", "SHA-256 of 1 KiB", "sha256"),
        ("Identity check after connect (real aiortc, loopback)", "check", "control message echo round trip, same channel", "echo"),
    ]
    lines = latency_table("Worker identity check", f"python benchmarks/identity.py --rounds {rounds} --write",
                          "server, worker and client in one process", rows, results, digits=3)
    lines += [
        "",
        "The check runs once per job, before the upload; the worker's proof is usually already",
        "on its way when `connect` returns, so the wait is about one message plus a verify.",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description="worker identity check cost")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--write", action="store_true", help="write docs/bench/identity.md")
    args = parser.parse_args()
    results = {**pure(args.rounds * 50), **asyncio.run(live(args.rounds))}
    text = report(results, args.rounds)
    print(text)
    if args.write:
        (ROOT / "docs" / "bench" / "identity.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
