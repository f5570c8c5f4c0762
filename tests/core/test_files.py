"""File transfer through real aiortc peers and the real signaling server on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _peers import make_file, pair, registered  # noqa: E402
from polling import wait_until  # noqa: E402

from sleap_rtc.core.files import CHUNK_SIZE, sanitize_name  # noqa: E402
from sleap_rtc.core.transport import connect  # noqa: E402
from sleap_rtc.core.transport_errors import IntegrityError, PeerClosedError  # noqa: E402

pytestmark = pytest.mark.timeout(90)
HERE = Path(__file__).parent
MiB = 1 << 20


def sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(MiB), b""):
            h.update(block)
    return h.hexdigest()


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []


@pytest.mark.parametrize("direction", ["client_to_worker", "worker_to_client"])
async def test_edge_sizes_both_directions(signaling_server, room, tmp_path, direction):
    sizes = [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE]
    async with pair(signaling_server.url, room, tmp_path) as (client, worker):
        src, dst = (client, worker) if direction == "client_to_worker" else (worker, client)
        for size in sizes:
            path = make_file(tmp_path / "src" / f"f{size}.bin", size)
            receipt = await src.send_file(path, meta={"size": size})
            got = await dst.receive_file(10)
            assert (receipt.size, receipt.bytes_sent, receipt.cached) == (size, size, False)
            assert got.path.read_bytes() == path.read_bytes()
            assert got.sha256 == receipt.sha256 == sha(path)
            assert got.meta == {"size": size} and got.name == path.name


async def test_50mib_verified_with_flat_memory(signaling_server, room, tmp_path):
    path = make_file(tmp_path / "big.bin", 50 * MiB)
    proc = psutil.Process()
    async with pair(signaling_server.url, room, tmp_path) as (client, worker):
        base = proc.memory_info().rss
        peak = base

        async def sample():
            nonlocal peak
            while True:
                peak = max(peak, proc.memory_info().rss)
                await asyncio.sleep(0.05)

        sampler = asyncio.ensure_future(sample())
        try:
            receipt = await client.send_file(path)
            got = await worker.receive_file(10)
        finally:
            sampler.cancel()
    assert got.sha256 == receipt.sha256 == sha(got.path) == sha(path)
    # Both peers live in this process: the growth covers sender and receiver together.
    assert peak - base < 64 * MiB, f"RSS grew by {(peak - base) / MiB:.0f} MiB"


async def test_corrupted_bytes_are_detected_and_discarded(signaling_server, room, tmp_path):
    path = make_file(tmp_path / "c.bin", 5 * CHUNK_SIZE)

    def flip(offset: int, payload: bytes) -> bytes:  # the documented test seam
        return bytes([payload[0] ^ 0xFF]) + payload[1:] if offset == 2 * CHUNK_SIZE else payload

    async with pair(signaling_server.url, room, tmp_path) as (client, worker):
        client.chunk_filter = flip
        with pytest.raises(IntegrityError, match="SHA-256"):
            await client.send_file(path)
        assert files_under(tmp_path / "worker-recv") == []
        assert files_under(tmp_path / "worker-cache") == []  # the partial file is gone too
        client.chunk_filter = None
        assert (await client.send_file(path)).bytes_sent == path.stat().st_size  # channel still usable


async def test_a_wrong_precomputed_sha256_fails_the_transfer(signaling_server, room, tmp_path):
    """``send_file(sha256=...)`` skips re-hashing, but the receiver still verifies every byte."""
    path = make_file(tmp_path / "m.bin", 3 * CHUNK_SIZE + 5)
    async with pair(signaling_server.url, room, tmp_path) as (client, worker):
        with pytest.raises(IntegrityError, match="SHA-256"):
            await client.send_file(path, sha256="0" * 64)
        assert files_under(tmp_path / "worker-recv") == []
        receipt = await client.send_file(path, sha256=sha(path))
        assert receipt.sha256 == sha(path) and receipt.bytes_sent == path.stat().st_size


async def test_cancel_mid_transfer_cleans_up(signaling_server, room, tmp_path):
    path = make_file(tmp_path / "x.bin", 30 * MiB)
    async with pair(signaling_server.url, room, tmp_path) as (client, worker):
        half = asyncio.Event()
        task = asyncio.ensure_future(client.send_file(path, progress=lambda done, size: done > 3 * MiB and half.set()))
        await asyncio.wait_for(half.wait(), 20)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The receiver drops its partial file on file_cancel, which it reads after the chunks
        # already queued ahead of it (seconds on a loaded machine): a generous bound.
        await wait_until(lambda: not files_under(tmp_path / "worker-cache"), 20, 0.05)
        assert files_under(tmp_path / "worker-recv") == []
        small = make_file(tmp_path / "s.bin", 1000)
        assert (await client.send_file(small)).size == 1000  # channel still usable


async def test_resend_unchanged_file_moves_no_payload(signaling_server, room, tmp_path):
    path = make_file(tmp_path / "p.bin", 2 * MiB + 7)
    async with pair(signaling_server.url, room, tmp_path) as (client, worker):
        first = await client.send_file(path)
        (await worker.receive_file(5)).path.unlink()
        second = await client.send_file(path, name="copy.bin")
        got = await worker.receive_file(5)
    assert (first.bytes_sent, first.cached) == (path.stat().st_size, False)
    assert (second.bytes_sent, second.cached) == (0, True)
    assert got.cached and got.path.name == "copy.bin" and sha(got.path) == first.sha256


async def test_a_kind_the_receiver_links_is_delivered_as_a_link_to_the_cache(signaling_server, room, tmp_path):
    path = make_file(tmp_path / "v.mp4", MiB + 3)
    async with pair(signaling_server.url, room, tmp_path) as (client, worker):
        worker.transfers.link_kinds = frozenset({"video"})
        await client.send_file(path, meta={"kind": "video"})
        linked = await worker.receive_file(5)
        await client.send_file(path, name="other.bin")  # no kind: a copy, as always
        copied = await worker.receive_file(5)
    cached = worker.transfers.cache_dir / "files" / sha(path)
    assert os.path.samefile(linked.path, cached) and not os.path.samefile(copied.path, cached)
    assert sha(linked.path) == sha(copied.path) == sha(path)


async def test_resume_after_dropped_connection(signaling_server, room, tmp_path):
    path = make_file(tmp_path / "r.bin", 12 * MiB)
    async with pair(signaling_server.url, room, tmp_path) as (client, worker):
        def drop(done: int, size: int) -> None:
            # Drop once the receiver has verified 2 MiB: how far it is when the sender has
            # handed out 4 MiB depends on the backend's buffering (native sometimes < 1 MiB).
            verified = max((v for _name, v, _size in worker.transfers.incoming_progress()), default=0)
            if verified >= 2 * MiB and not client.closed:
                asyncio.ensure_future(client.abort("test drops the connection"))

        with pytest.raises(PeerClosedError):
            await client.send_file(path, progress=drop)
        await worker.wait_closed(15)
        assert files_under(tmp_path / "worker-recv") == []  # no partial file in the destination
    async with pair(signaling_server.url, room, tmp_path) as (client, worker):
        receipt = await client.send_file(path)
        got = await worker.receive_file(5)
    # The receiver had verified at least 2 MiB when the connection dropped: at least 1 MiB is kept.
    assert 0 < receipt.bytes_sent <= path.stat().st_size - MiB
    assert got.bytes_received == receipt.bytes_sent
    assert sha(got.path) == sha(path) == got.sha256


async def _spawn_worker(url, room, tmp_path, *extra):
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "_peer_proc.py"), url, *room, str(tmp_path / "w-recv"), str(tmp_path / "w-cache"), *extra],
        stdout=subprocess.PIPE, text=True,
    )
    line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 20)
    assert line.startswith("PEER "), line
    return proc, line.split()[1]


async def test_receiver_process_killed_mid_transfer(signaling_server, room, tmp_path):
    path = make_file(tmp_path / "k.bin", 40 * MiB)
    csig = await registered(signaling_server.url, room, "client")
    proc, peer = await _spawn_worker(signaling_server.url, room, tmp_path)
    try:
        ch = await connect(csig, peer, timeout=15, receive_dir=tmp_path / "r", cache_dir=tmp_path / "c")
        killed: list[float] = []

        def kill(done: int, size: int) -> None:
            if done > 3 * MiB and not killed:
                os.kill(proc.pid, signal.SIGKILL)
                killed.append(time.monotonic())

        with pytest.raises(PeerClosedError):
            await asyncio.wait_for(ch.send_file(path, progress=kill), 30)
        assert killed and time.monotonic() - killed[0] < 15
        assert files_under(tmp_path / "w-recv") == []  # partial bytes only ever live in the cache
    finally:
        proc.kill()
        proc.wait(5)
        await csig.close()


async def test_sender_process_killed_mid_transfer(signaling_server, room, tmp_path):
    path = make_file(tmp_path / "k2.bin", 40 * MiB)
    csig = await registered(signaling_server.url, room, "client")
    proc, peer = await _spawn_worker(signaling_server.url, room, tmp_path, str(path))
    try:
        ch = await connect(csig, peer, timeout=15, receive_dir=tmp_path / "r", cache_dir=tmp_path / "c")
        for _ in range(200):  # wait until some bytes have arrived
            parts = files_under(tmp_path / "c" / "partial")
            if parts and parts[0].stat().st_size > 2 * MiB:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("no bytes arrived")
        os.kill(proc.pid, signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(PeerClosedError):
            await ch.receive_file(20)
        assert time.monotonic() - t0 < 15
        assert files_under(tmp_path / "r") == []
    finally:
        proc.kill()
        proc.wait(5)
        await csig.close()


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_256mib_round_trip(signaling_server, room, tmp_path):
    """The issue's "done when": 256 MiB client -> worker -> client, verified, memory flat."""
    path = make_file(tmp_path / "huge.bin", 256 * MiB)
    proc = psutil.Process()
    async with pair(signaling_server.url, room, tmp_path) as (client, worker):
        base = proc.memory_info().rss
        up = await client.send_file(path)
        there = await worker.receive_file(10)
        down = await worker.send_file(there.path, name="back.bin")
        back = await client.receive_file(10)
        growth = proc.memory_info().rss - base
    assert up.sha256 == there.sha256 == down.sha256 == back.sha256 == sha(back.path) == sha(path)
    assert growth < 64 * MiB


@pytest.mark.parametrize(
    "raw, safe",
    [("../../etc/passwd", "passwd"), ("/abs/path.txt", "path.txt"), ("C:\\Users\\me\\labels.slp", "labels.slp"),
     ("..", "file"), ("", "file"), ("a/..", "file"), ("bad:name?.slp", "bad_name_.slp"), ("x\x00y", "x_y"),
     (None, "file"), ("ok name.v1.pkg.slp", "ok name.v1.pkg.slp")],
)
def test_sanitize_name(raw, safe):
    assert sanitize_name(raw) == safe


# ---------------------------------------------------------------------- cache pruning


def _cache_file(root: Path, sub: str, name: str, size: int, age_s: float, now: float) -> Path:
    path = root / sub / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    os.utime(path, (now - age_s, now - age_s))
    return path


def test_prune_transfer_cache_policy(tmp_path):
    from sleap_rtc.core.files import prune_transfer_cache

    now = time.time()
    cache = tmp_path / "cache"
    hour = 3600.0
    # Completed files, most recently used first: 400 + 300 fit under 800, 200 would not.
    newest = _cache_file(cache, "files", "a" * 64, 400, 1 * hour, now)
    second = _cache_file(cache, "files", "b" * 64, 300, 2 * hour, now)
    third = _cache_file(cache, "files", "c" * 64, 200, 3 * hour, now)
    oldest = _cache_file(cache, "files", "d" * 64, 10, 4 * hour, now)  # small, but older: LRU goes
    fresh_partial = _cache_file(cache, "partial", "e" * 64 + ".part", 50, 1 * hour, now)
    stale_partial = _cache_file(cache, "partial", "f" * 64 + ".part", 50, 25 * hour, now)
    outside = _cache_file(tmp_path, "cache", "not-mine.txt", 10_000, 100 * hour, now)

    removed = prune_transfer_cache(cache, max_bytes=800, now=now)

    assert sorted(removed) == sorted([third, oldest, stale_partial])
    assert all(p.exists() for p in (newest, second, fresh_partial, outside))
    assert prune_transfer_cache(cache, max_bytes=800, now=now) == [], "idempotent"


def test_prune_never_removes_a_file_in_use(tmp_path):
    from sleap_rtc.core.files import prune_transfer_cache

    now = time.time()
    cache = tmp_path / "cache"
    busy = _cache_file(cache, "files", "a" * 64, 1000, 5.0, now)  # just arrived, above the cap alone
    old = _cache_file(cache, "files", "b" * 64, 10, 7200.0, now)
    assert prune_transfer_cache(cache, max_bytes=100, grace=600.0, now=now) == [old]
    assert busy.exists()
    assert prune_transfer_cache(cache, max_bytes=100, grace=600.0, now=now + 3600) == [busy]


def test_prune_of_a_missing_cache_is_a_no_op(tmp_path):
    from sleap_rtc.core.files import prune_transfer_cache

    assert prune_transfer_cache(tmp_path / "nothing-here") == []


async def test_a_cache_hit_counts_as_a_use(signaling_server, room, tmp_path):
    path = make_file(tmp_path / "src" / "again.bin", 1000)
    async with pair(signaling_server.url, room, tmp_path) as (client, worker):
        await client.send_file(path)
        await worker.receive_file(10)
        cached = next((Path(worker.transfers.cache_dir) / "files").iterdir())
        os.utime(cached, (1, 1))  # long unused
        receipt = await client.send_file(path)
        await worker.receive_file(10)
        assert receipt.cached and time.time() - cached.stat().st_mtime < 60


async def test_m3_received_files_and_caches_are_private(signaling_server, room, tmp_path):
    import stat

    path = make_file(tmp_path / "x.bin", 200_000)
    async with pair(signaling_server.url, room, tmp_path) as (client, worker):
        await client.send_file(path)
        received = await worker.receive_file(10)
    assert stat.S_IMODE(received.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(received.path.parent.stat().st_mode) == 0o700
    for sub in ("files", "partial"):
        assert stat.S_IMODE((tmp_path / "worker-cache" / sub).stat().st_mode) == 0o700
    cached = next((tmp_path / "worker-cache" / "files").iterdir())
    assert stat.S_IMODE(cached.stat().st_mode) == 0o600


def test_place_new_never_replaces(tmp_path):
    from sleap_rtc.core.files import place_new

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.predictions.slp").write_text("mine")
    (tmp_path / "out" / "run").mkdir()
    (tmp_path / "out" / "run" / "best.ckpt").write_text("mine")
    new = tmp_path / "new.slp"
    new.write_text("theirs")
    assert place_new(new, tmp_path / "out" / "a.predictions.slp") == tmp_path / "out" / "a-2.predictions.slp"
    folder = tmp_path / "staging"
    folder.mkdir()
    (folder / "best.ckpt").write_text("theirs")
    assert place_new(folder, tmp_path / "out" / "run") == tmp_path / "out" / "run-2"
    assert (tmp_path / "out" / "a.predictions.slp").read_text() == "mine"
    assert (tmp_path / "out" / "run" / "best.ckpt").read_text() == "mine"
    assert (tmp_path / "out" / "run-2" / "best.ckpt").read_text() == "theirs"
