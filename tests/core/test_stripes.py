"""Striped transfers (core.stripes + the out-of-order path of core.files) over the in-memory
backend: hash, resume, a stripe killed mid-transfer, out-of-order arrival, admission, growth.
A real aiortc striped transfer through the signaling server runs in test_stripes_real.py."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sleap_rtc.core import files as files_mod
from sleap_rtc.core import stripes as stripes_mod
from sleap_rtc.core.backends.memory import link, memory_pair
from sleap_rtc.core.channel import PeerChannel
from sleap_rtc.core.files import CHUNK_SIZE

from channel_pairs import memory_channels

pytestmark = pytest.mark.timeout(60)
MiB = 1 << 20


class Pair:
    """A client and a worker PeerChannel over memory, the worker allowing stripes."""

    def __init__(self, tmp_path: Path, *, primary_delay: float = 0.0, stripe_delays=(0.0,), rate=None):
        self.tmp = tmp_path
        self.stripe_delays = list(stripe_delays)
        self.rate = rate
        self.stripe_conns = []
        a, b = memory_pair(delay=primary_delay, rate=rate)
        self.client = PeerChannel(a, local_peer_id="c", remote_peer_id="w", role="client",
                                  receive_dir=tmp_path / "c-recv", cache_dir=tmp_path / "c-cache")
        self.worker = PeerChannel(b, local_peer_id="w", remote_peer_id="c", role="worker",
                                  receive_dir=tmp_path / "w-recv", cache_dir=tmp_path / "w-cache")
        link(a, b)
        self.client.stripes.opener = self.open_stripe

    async def start(self):
        await asyncio.gather(self.client.start(5), self.worker.start(5))
        self.token = self.worker.stripes.allow(7)  # as the worker runtime does once the channel is up
        return self

    async def open_stripe(self, token: str):
        delay = self.stripe_delays[len(self.stripe_conns) % len(self.stripe_delays)]
        a, b = memory_pair(delay=delay, rate=self.rate)
        if not self.worker.stripes.admits(token, "c"):
            raise ConnectionError("refused")
        self.worker.stripes.attach(b)
        link(a, b)
        self.stripe_conns.append(a)
        return a


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def payload(tmp_path: Path, size: int) -> Path:
    path = tmp_path / "src" / "data.bin"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    return path


async def test_striped_upload_verified_and_spread_over_lanes(tmp_path):
    pair = await Pair(tmp_path, rate=100e6).start()
    assert await pair.client.stripes.ensure(4) == 4
    src = payload(tmp_path, 12 * MiB + 123)
    receipt = await pair.client.send_file(src)
    got = await pair.worker.receive_file(5)
    assert got.sha256 == receipt.sha256 == sha(src) == sha(got.path)
    assert receipt.bytes_sent == src.stat().st_size
    used = [c.sent_messages for c in pair.stripe_conns]
    assert len(used) == 3 and all(n > 10 for n in used), used
    await pair.client.close()


async def test_striped_download_uses_the_same_lanes(tmp_path):
    pair = await Pair(tmp_path, rate=100e6).start()
    await pair.client.stripes.ensure(3)
    src = payload(tmp_path, 9 * MiB)
    receipt = await pair.worker.send_file(src)  # worker -> client over the client's stripes
    got = await pair.client.receive_file(5)
    assert got.sha256 == receipt.sha256 == sha(src)
    assert len(pair.worker.stripes.lanes) == 2
    await pair.client.close()


async def test_a_stripe_that_opens_while_the_sender_waits_on_the_primary_gets_frames_at_once(tmp_path):
    # A download starts streaming before the client's stripes open: the worker's sender has
    # queued HIGH_WATER on the primary, which drains to LOW_WATER in ~3 s at 1 MB/s. A stripe
    # that opens meanwhile must be used then, not once the primary drained.
    pair = await Pair(tmp_path, rate=1e6).start()
    pair.client.stripes.opener = None  # no growth: the test opens the one stripe itself
    src = payload(tmp_path, 8 * MiB)
    sending = asyncio.ensure_future(pair.worker.send_file(src))

    async def primary_full():
        while pair.worker.buffered_amount < files_mod.HIGH_WATER:
            await asyncio.sleep(0.02)

    await asyncio.wait_for(primary_full(), 10)
    pair.client.stripes.opener = pair.open_stripe
    pair.client.stripes.granted(pair.worker.stripes.grant_fields())
    assert await pair.client.stripes.ensure(2) == 2
    lane = pair.worker.stripes.lanes[0]
    await asyncio.sleep(0.5)
    assert lane.conn.sent_messages > 0, "the sender went on waiting for the primary to drain"
    assert pair.worker.buffered_amount > files_mod.LOW_WATER  # the primary had not drained yet
    got = await pair.client.receive_file(30)
    assert (await sending).sha256 == got.sha256 == sha(src)
    await pair.client.close()


async def test_out_of_order_arrival_is_written_by_offset(tmp_path):
    # The stripe is slower than the primary, so its chunks land after later ones.
    pair = await Pair(tmp_path, stripe_delays=(0.003,)).start()
    await pair.client.stripes.ensure(2)
    offsets = []
    original = pair.worker.transfers.on_chunk

    def spy(frame):
        offsets.append(int.from_bytes(frame[4:12], "big"))
        original(frame)

    pair.worker.transfers.on_chunk = spy
    src = payload(tmp_path, 4 * MiB + 17)
    receipt = await pair.client.send_file(src)
    got = await pair.worker.receive_file(5)
    assert got.sha256 == receipt.sha256 == sha(src)
    assert offsets != sorted(offsets), "the test did not produce out-of-order arrival"
    await pair.client.close()


async def test_a_stripe_killed_mid_transfer_does_not_fail_it(tmp_path):
    pair = await Pair(tmp_path, rate=60e6, stripe_delays=(0.002,)).start()
    await pair.client.stripes.ensure(3)
    src = payload(tmp_path, 10 * MiB)
    size = src.stat().st_size
    killed = asyncio.Event()

    def progress(done, total):
        if done > size // 3 and not killed.is_set():
            killed.set()
            pair.stripe_conns[0].kill()  # its in-flight chunks are lost

    receipt = await pair.client.send_file(src, progress=progress)
    got = await pair.worker.receive_file(5)
    assert killed.is_set()
    assert got.sha256 == receipt.sha256 == sha(src)
    assert receipt.bytes_sent > size  # the lost chunks were sent again
    assert not pair.stripe_conns[0].is_open and not pair.client.closed
    assert all(lane.conn is not pair.stripe_conns[0] for lane in pair.client.stripes.lanes)
    await pair.client.close()


async def test_resume_after_a_broken_striped_transfer_keeps_only_the_prefix(tmp_path):
    pair = await Pair(tmp_path, rate=60e6, stripe_delays=(0.002,)).start()
    await pair.client.stripes.ensure(3)
    src = payload(tmp_path, 10 * MiB)
    size = src.stat().st_size

    async def kill_when_half_arrived():
        while not any(st.pos > size // 2 for st in pair.worker.transfers._incoming.values()):
            await asyncio.sleep(0.005)
        pair.client.conn.kill()  # the whole channel dies, stripes with it

    killer = asyncio.ensure_future(kill_when_half_arrived())
    with pytest.raises(Exception):
        await pair.client.send_file(src)
    await asyncio.wait_for(killer, 5)
    await asyncio.sleep(0.2)
    part = next((tmp_path / "w-cache" / "partial").glob("*.part"))
    kept = part.stat().st_size
    assert 0 < kept < size and kept % CHUNK_SIZE == 0
    assert hashlib.sha256(part.read_bytes()).digest() == hashlib.sha256(src.read_bytes()[:kept]).digest()

    again = await Pair(tmp_path).start()
    receipt = await again.client.send_file(src)
    got = await again.worker.receive_file(5)
    assert receipt.bytes_sent == size - kept and got.sha256 == sha(src)
    await again.client.close()


async def test_admission_needs_the_token_the_sender_and_room_under_the_cap(tmp_path):
    pair = await Pair(tmp_path).start()
    st = pair.worker.stripes
    st.allow(2)
    assert not st.admits("wrong", "c")
    assert not st.admits(st.token, "someone-else")
    assert st.admits(st.token, "c") and st.admits(st.token, "c")
    assert not st.admits(st.token, "c")  # the cap
    await pair.client.close()
    st.release()
    assert not st.admits(st.token, "c")  # closed channel


async def test_no_grant_means_no_stripes(tmp_path):
    pair = await Pair(tmp_path).start()
    pair.worker.stripes.deny()  # a worker that does not stripe answers max 0
    assert await pair.client.stripes.ensure(4) == 1
    await pair.client.close()


async def test_growth_adds_connections_while_throughput_grows(tmp_path, monkeypatch):
    monkeypatch.setattr(stripes_mod, "SAMPLE_INTERVAL", 0.3)
    monkeypatch.setattr(stripes_mod, "SETTLE_INTERVAL", 0.1)
    monkeypatch.setattr(stripes_mod, "STRIPE_MIN_BYTES", 1 * MiB)
    # Each connection is paced, so each added one adds throughput until the cap.
    pair = await Pair(tmp_path, rate=8e6).start()
    pair.client.stripes.max_connections = 4
    src = payload(tmp_path, 16 * MiB)
    receipt = await pair.client.send_file(src)
    got = await pair.worker.receive_file(5)
    assert got.sha256 == receipt.sha256
    assert pair.client.stripes.count >= 3, pair.client.stripes.count
    await pair.client.close()


async def test_closing_the_channel_closes_its_stripes_within_bounds(tmp_path):
    pair = await Pair(tmp_path).start()
    await pair.client.stripes.ensure(4)
    await asyncio.wait_for(pair.client.close(), 6)
    assert all(not c.is_open for c in pair.stripe_conns)
    assert pair.worker.stripes.lanes == [] or all(lane.closed for lane in pair.worker.stripes.lanes)


async def test_a_request_before_the_runtime_decides_is_answered_when_it_does(tmp_path):
    client, worker = await memory_channels(tmp_path)
    asking = asyncio.ensure_future(client.stripes._get_grant())
    await asyncio.sleep(0.05)  # the request is in; the worker has not decided yet
    assert not asking.done()
    token = worker.stripes.allow(3)
    assert await asyncio.wait_for(asking, 2) == (token, 3)
    await client.close()


async def test_the_grant_is_asked_before_the_first_chunk(tmp_path, monkeypatch):
    # On a slow link a stripe_request sent once streaming began waits behind HIGH_WATER of
    # chunks (2 s here), longer than the grant may take: no stripe would ever open.
    monkeypatch.setattr(stripes_mod, "GRANT_TIMEOUT", 1.0)
    monkeypatch.setattr(stripes_mod, "SAMPLE_INTERVAL", 0.3)
    monkeypatch.setattr(stripes_mod, "SETTLE_INTERVAL", 0.1)
    monkeypatch.setattr(stripes_mod, "STRIPE_MIN_BYTES", 1 * MiB)
    pair = await Pair(tmp_path, rate=2e6).start()
    src = payload(tmp_path, 12 * MiB)
    receipt = await pair.client.send_file(src)
    got = await pair.worker.receive_file(5)
    assert got.sha256 == receipt.sha256 == sha(src)
    assert pair.stripe_conns, "no stripe opened: the grant came too late"
    await pair.client.close()


async def test_a_grant_from_the_answer_opens_stripes_while_the_primary_handshakes(tmp_path):
    # transport.connect(stripes=N): the worker's answer carried the grant, so the extra
    # connections start before the primary is open and no stripe_request goes out.
    client, worker = await memory_channels(tmp_path, start=False, delay=0.05)
    worker.stripes.allow(3)
    opened = []

    async def opener(token):
        x, y = memory_pair()
        assert worker.stripes.admits(token, "c")
        worker.stripes.attach(y)
        link(x, y)
        opened.append(not client._hello.done())  # before the primary's hello came back?
        return x

    client.stripes.opener = opener
    client.stripes.granted(worker.stripes.grant_fields())
    client.stripes.open_early(3)
    await asyncio.gather(client.start(5), worker.start(5))
    assert await asyncio.wait_for(client.stripes.ensure(3), 5) == 3
    assert opened == [True, True]  # both extra ones opened ahead of the primary's hello
    assert not worker.stripes._requested  # no stripe_request round trip was needed
    assert await client.stripes.ensure(3) == 3  # already there: nothing more opens
    assert len(opened) == 2
    await client.close()


class _Lane:
    """A lane's buffer only (unit test of the per-lane allowance)."""

    def __init__(self):
        self.buffered_amount = 0
        self.conn = self
        self.low_threshold = files_mod.LOW_WATER


async def test_each_lane_may_queue_a_quarter_second_of_its_own_rate():
    queues = files_mod._LaneQueues()
    fast, slow, new = _Lane(), _Lane(), _Lane()
    queues.sent(fast, 8 * MiB)
    queues.sent(slow, 1 * MiB)
    await asyncio.sleep(0.5)
    fast.buffered_amount = 2 * MiB  # drained 6 MiB in 0.5 s: 12 MB/s
    slow.buffered_amount = 1 * MiB - 64 * 1024  # drained 64 KiB: a lossy lane
    assert queues.allowance(new) == files_mod.LANE_MIN_QUEUE
    assert queues.allowance(slow) == files_mod.LANE_MIN_QUEUE
    assert 1.5 * MiB < queues.allowance(fast) <= 3.2 * MiB  # 0.25 s of ~12 MB/s (less if the sleep ran long)
    assert queues.pick([slow, fast]) is fast  # the slow lane is over its allowance
    assert queues.pick([slow, fast, new]) is new  # the most room relative to its allowance
    assert slow.low_threshold == files_mod.LANE_MIN_QUEUE // 4 and fast.low_threshold < files_mod.LOW_WATER
    fast.buffered_amount = slow.buffered_amount = new.buffered_amount = 4 * MiB
    assert queues.pick([slow, fast, new]) is None and not any(queues.fits(x) for x in (slow, fast, new))
    queues.reset(fast)
    assert fast.low_threshold == files_mod.LOW_WATER


def test_growth_needs_ten_percent_or_half_a_share_with_many_connections():
    assert stripes_mod.growth_needed(2) == pytest.approx(stripes_mod.GROWTH)
    assert stripes_mod.growth_needed(6) == pytest.approx(stripes_mod.GROWTH)
    # the 11th connection adds a tenth when each is path-limited: half of that is enough
    assert stripes_mod.growth_needed(11) == pytest.approx(1.05)
    assert stripes_mod.growth_needed(stripes_mod.MAX_CONNECTIONS) < stripes_mod.GROWTH


def test_a_step_doubles_where_each_added_connection_brought_half_a_share_and_quadruples_at_nearly_a_whole():
    cap = stripes_mod.MAX_CONNECTIONS
    # 2 -> 4 took throughput up 1.6x (a whole share is 2x): the path holds each one, double.
    assert stripes_mod.next_step(4, 2, 1.6, cap) == 4
    # 2 -> 4 took it up 1.9x, 2 -> 3 1.45x: each added one moved as much as those before: x4.
    assert stripes_mod.next_step(4, 2, 1.9, cap) == 12
    assert stripes_mod.next_step(3, 1, 1.45, cap) == 9
    assert stripes_mod.next_step(4, 2, 1.9, 10) == 6  # capped
    # 4 -> 8 took it up 1.9x: up to the cap.
    assert stripes_mod.next_step(8, 4, 1.9, cap) == min(8, cap - 8)
    assert stripes_mod.next_step(12, 6, 1.8, cap) == cap - 12
    # a link or a CPU is the limit: +15 % from the third is growth, not loss-bound: one at a time
    assert stripes_mod.next_step(3, 1, 1.15, cap) == 1
    assert stripes_mod.next_step(4, 2, 1.4, cap) == 1
    # 6 -> 12 brought under 10 %: stop
    assert stripes_mod.next_step(12, 6, 1.05, cap) == 0
    assert stripes_mod.next_step(4, 1, 1.02, cap) == 0
    assert stripes_mod.next_step(cap, 4, 2.0, cap) == 0  # at the cap
    assert stripes_mod.growth_needed(12, 6) == pytest.approx(stripes_mod.GROWTH)


def test_the_first_step_doubles_unless_each_connection_already_keeps_a_loss_free_window():
    cap = stripes_mod.MAX_CONNECTIONS
    # 80 ms / 0.1 % in the lab: 2 connections moved ~2.8 MB/s, ~0.11 MB in flight each: double.
    assert stripes_mod.first_step(2, 2.8e6, 0.08, cap) == 2
    # 20 ms / 0 %: 10 MB/s over 2 is 0.1 MB each: still double (more need not hurt there).
    assert stripes_mod.first_step(2, 10e6, 0.02, cap) == 2
    # 80 ms / 0 %: 2 native connections moved 9.3 MB/s, 0.37 MB each: add one, no burst of two.
    assert stripes_mod.first_step(2, 9.3e6, 0.08, cap) == 1
    assert stripes_mod.first_step(2, 9.3e6, None, cap) == 2  # no round trip measured: as before
    assert stripes_mod.first_step(2, 9.3e6, 0.08, 2) == 0  # at the cap
    assert stripes_mod.first_step(3, 1e6, 0.08, 4) == 1  # doubling capped


def test_a_sample_still_falling_from_a_slow_start_is_not_steady():
    # 80 ms / 0.1 %: two new connections moved 6 MB/s, then 2.4 once their slow start ended.
    assert not stripes_mod.steady(6.0, 2.4)
    assert stripes_mod.steady(2.4, 2.2)  # noise, not a fall
    assert stripes_mod.steady(1.0, 3.0)  # rising: what a new connection's ramp looks like


async def test_growth_samples_what_the_receiver_reported_not_what_the_send_buffers_took(tmp_path):
    # A paced link: the sender hands megabytes to its send buffers at once, the receiver's
    # file_progress reports say what got through; growth must count the latter.
    pair = await Pair(tmp_path, rate=8e6).start()
    src = payload(tmp_path, 12 * MiB)
    counts = []
    transfers = pair.client.transfers
    receipt = await pair.client.send_file(
        src, progress=lambda _done, _size: counts.append((transfers.bytes_moved, transfers.throughput_count())))
    got = await pair.worker.receive_file(5)
    assert got.sha256 == receipt.sha256
    # Reports come every PROGRESS_INTERVAL, so the last quarter second may go unreported.
    assert transfers.delivery_reported and src.stat().st_size // 2 < transfers.bytes_delivered <= src.stat().st_size
    assert all(reported <= moved for moved, reported in counts)
    # Mid-transfer the buffers held a megabyte or more the receiver had not reported yet.
    assert max(moved - reported for moved, reported in counts) >= MiB, counts[-1]
    assert pair.worker.transfers.bytes_delivered == src.stat().st_size  # received bytes count on that side
    assert transfers.path_rtt is not None and 0 <= transfers.path_rtt <= files_mod.MAX_PATH_RTT
    await pair.client.close()


async def test_growth_counts_bytes_moved_where_the_receiver_does_not_report(tmp_path, monkeypatch):
    # An older receiver ignores progress: true in the offer.
    monkeypatch.setattr("sleap_rtc.core.file_protocol.IncomingTransfer.progress_due", lambda self, now: False)
    pair = await Pair(tmp_path, rate=8e6).start()
    src = payload(tmp_path, 4 * MiB)
    transfers = pair.client.transfers
    counts = []
    await pair.client.send_file(
        src, progress=lambda _done, _size: counts.append((transfers.bytes_moved, transfers.throughput_count())))
    await pair.worker.receive_file(5)
    assert counts and all(moved == counted for moved, counted in counts)
    assert not transfers.delivery_reported and transfers.bytes_delivered == 0
    await pair.client.close()


def test_path_memory_forgets_after_its_ttl_and_keeps_the_newest_workers(monkeypatch):
    now = [0.0]
    memory = stripes_mod.PathMemory(ttl=60, clock=lambda: now[0])
    memory.remember("w", 8, settled=True)
    now[0] = 59
    assert memory.recall("w") == stripes_mod.LearnedPath(8, True, 0.0)  # reuse does not extend it
    now[0] = 61
    assert memory.recall("w") is None and memory.recall("never") is None
    monkeypatch.setattr(stripes_mod, "MAX_PATHS", 3)
    for i in range(5):
        memory.remember(f"w{i}", 2 + i, settled=False)
    memory.remember("w2", 9, settled=True)  # replacing makes it the newest
    memory.remember("w5", 3, settled=True)
    assert [memory.recall(f"w{i}") is not None for i in range(6)] == [False, False, True, False, True, True]


async def _learning_pair(tmp_path, monkeypatch, memory, cap=4):
    monkeypatch.setattr(stripes_mod, "SAMPLE_INTERVAL", 0.3)
    monkeypatch.setattr(stripes_mod, "SETTLE_INTERVAL", 0.1)
    monkeypatch.setattr(stripes_mod, "STRIPE_MIN_BYTES", 1 * MiB)
    pair = await Pair(tmp_path, rate=8e6).start()
    pair.client.stripes.memory = memory
    pair.client.stripes.max_connections = cap
    return pair


def _scripted_samples(pair, monkeypatch, rate_of) -> list[int]:
    """Growth's samples answer ``rate_of(connections)``; returns the connections at each sample."""
    sampled = []

    async def sample(_transfers):
        sampled.append(pair.client.stripes.count)
        return rate_of(pair.client.stripes.count)

    monkeypatch.setattr(pair.client.stripes, "_sample", sample)
    return sampled


async def _loss_free_samples(tmp_path, monkeypatch, rtt_attr: str, rtt: float):
    """A pair whose growth samples read 10 MB/s over any number of connections, with the
    client's ``transfers.<rtt_attr>`` set to ``rtt`` (the in-memory link's own round trip is ~0);
    returns the pair and the connections at each sample."""
    pair = await _learning_pair(tmp_path, monkeypatch, stripes_mod.PathMemory(), cap=8)
    monkeypatch.setattr(stripes_mod, "SETTLE_RTTS", 0)

    def rate_of(_n):
        setattr(pair.client.transfers, rtt_attr, rtt)
        return 10e6

    return pair, _scripted_samples(pair, monkeypatch, rate_of)


async def test_growth_adds_one_where_the_first_sample_shows_a_loss_free_path(tmp_path, monkeypatch):
    # 2 connections keep 0.4 MB each in flight over an 80 ms round trip: the link or a window
    # limits them, not loss, so the first step opens one more, not two.
    pair, sampled = await _loss_free_samples(tmp_path, monkeypatch, "offer_rtt", 0.08)
    src = payload(tmp_path, 16 * MiB)
    receipt = await pair.client.send_file(src)
    assert (await pair.worker.receive_file(5)).sha256 == receipt.sha256
    # 2 -> 3 brought nothing: the need is the 2 before the probe, and no doubling ever opened.
    assert sampled == [2, 3] and pair.client.stripes.count == 3, (sampled, pair.client.stripes.count)
    assert pair.client.stripes.memory.recall("w").connections == 2
    await pair.client.close()


async def test_a_receiving_client_doubles_as_its_round_trip_ends_at_a_slow_started_chunk(tmp_path, monkeypatch):
    # A download: the client's only round trip is its accept to the first chunk, several round
    # trips late on a new connection, so it does not say the path is loss-free.
    pair, sampled = await _loss_free_samples(tmp_path, monkeypatch, "path_rtt", 0.3)
    src = payload(tmp_path, 16 * MiB)
    receipt = await pair.worker.send_file(src)
    assert (await pair.client.receive_file(5)).sha256 == receipt.sha256
    assert pair.client.transfers.offer_rtt is None and sampled == [2, 4], sampled
    await pair.client.close()


async def test_the_next_channel_to_a_worker_starts_with_what_growth_found_and_does_not_grow(tmp_path, monkeypatch):
    # A paced link: each connection adds throughput, so the first transfer grows to the cap.
    memory = stripes_mod.PathMemory()
    first = await _learning_pair(tmp_path / "1", monkeypatch, memory)
    src = payload(tmp_path, 16 * MiB)
    await first.client.send_file(src)
    await first.worker.receive_file(5)
    assert memory.recall("w") == stripes_mod.LearnedPath(4, True, memory.recall("w").at)
    await first.client.close()

    second = await _learning_pair(tmp_path / "2", monkeypatch, memory)
    sampled = []

    async def no_sample(_transfers):
        sampled.append(1)
        return 0.0

    monkeypatch.setattr(second.client.stripes, "_sample", no_sample)
    counts = []
    receipt = await second.client.send_file(src, progress=lambda _d, _s: counts.append(second.client.stripes.count))
    got = await second.worker.receive_file(5)
    assert got.sha256 == receipt.sha256 == sha(src)
    assert not sampled, "a known path grew again"
    # All three extra connections were opened at the start, not one step at a time.
    assert len(second.stripe_conns) == 3 and 4 in counts[: len(counts) // 2], counts
    await second.client.close()


async def test_a_path_left_while_growing_grows_on_from_where_it_was(tmp_path, monkeypatch):
    memory = stripes_mod.PathMemory()
    memory.remember("w", 2, settled=False)  # the last transfer ended before growth stopped
    pair = await _learning_pair(tmp_path, monkeypatch, memory)
    src = payload(tmp_path, 16 * MiB)
    receipt = await pair.client.send_file(src)
    assert (await pair.worker.receive_file(5)).sha256 == receipt.sha256
    assert pair.client.stripes.count == 4 and memory.recall("w").settled  # doubled from 2: the cap
    await pair.client.close()


async def test_a_second_transfer_on_the_channel_keeps_its_connections(tmp_path, monkeypatch):
    # The results coming down after the upload: the lanes are open and the path is known.
    # Growth used to start over with the next transfer, and its first step doubled the lanes.
    memory = stripes_mod.PathMemory()
    pair = await _learning_pair(tmp_path, monkeypatch, memory, cap=8)
    sampled = _scripted_samples(pair, monkeypatch, lambda _n: 4e6)  # the link is the limit: no step gains
    src = payload(tmp_path, 16 * MiB)
    await pair.client.send_file(src)
    await pair.worker.receive_file(5)
    # 2 -> 4 brought nothing, but a doubling's gain can hide in a slow start's tail: 4 are kept.
    assert sampled == [2, 4] and memory.recall("w").connections == 4 and memory.recall("w").settled
    receipt = await pair.worker.send_file(src)
    assert (await pair.client.receive_file(5)).sha256 == receipt.sha256
    await asyncio.sleep(0.5)  # a grower, had one started, would have sampled by now
    assert sampled == [2, 4] and len(pair.stripe_conns) == 3
    assert memory.recall("w").connections == 4
    await pair.client.close()


async def test_a_new_channel_probes_one_more_than_a_known_path_needed_and_grows_where_it_gains(tmp_path, monkeypatch):
    # The need was found on a slow start's tail (2), but each connection is held by the path's
    # loss: the probe gains a whole share, so growth quadruples on from there.
    memory = stripes_mod.PathMemory()
    memory.remember("w", 2, settled=True)
    pair = await _learning_pair(tmp_path, monkeypatch, memory, cap=8)
    sampled = _scripted_samples(pair, monkeypatch, lambda n: 1e6 * n)
    src = payload(tmp_path, 16 * MiB)
    receipt = await pair.client.send_file(src)
    assert (await pair.worker.receive_file(5)).sha256 == receipt.sha256
    # probe 2 -> 3 (x1.5: a whole share), then x4, capped: 8 at once (doubling would open 6)
    assert sampled == [2, 3] and pair.client.stripes.count == 8, (sampled, pair.client.stripes.count)
    assert memory.recall("w") == stripes_mod.LearnedPath(8, True, memory.recall("w").at)
    await pair.client.close()


async def test_a_probe_that_brings_nothing_leaves_the_known_need_as_it_was(tmp_path, monkeypatch):
    memory = stripes_mod.PathMemory()
    memory.remember("w", 3, settled=True)
    for run in range(2):  # no creeping up by one per job
        pair = await _learning_pair(tmp_path / str(run), monkeypatch, memory, cap=8)
        sampled = _scripted_samples(pair, monkeypatch, lambda _n: 4e6)
        src = payload(tmp_path, 16 * MiB)
        await pair.client.send_file(src)
        await pair.worker.receive_file(5)
        assert sampled == [3, 4] and memory.recall("w").connections == 3, (run, sampled)
        await pair.client.close()


async def test_what_growth_reached_is_kept_when_the_peer_hangs_up_before_it_settles(tmp_path, monkeypatch):
    # The worker closes its side once the file is in, stripes first (lab, 20 ms / 1 %): growth,
    # still sampling, finds the transfer over and no lanes left to count.
    memory = stripes_mod.PathMemory()
    pair = await _learning_pair(tmp_path, monkeypatch, memory, cap=8)
    sampled = []

    async def linear_then_outlived(_transfers):
        sampled.append(pair.client.stripes.count)
        if len(sampled) > 1:  # this sample outlasts the transfer and the worker's stripes
            await asyncio.wait_for(lanes_gone.wait(), 10)
        return 1e6 * pair.client.stripes.count

    lanes_gone = asyncio.Event()
    monkeypatch.setattr(pair.client.stripes, "_sample", linear_then_outlived)
    src = payload(tmp_path, 16 * MiB)
    sending = asyncio.ensure_future(pair.client.send_file(src))
    await pair.worker.receive_file(5)
    await sending
    await pair.worker.stripes.close()
    for _ in range(200):
        if pair.client.stripes.count == 1:
            break
        await asyncio.sleep(0.01)
    assert pair.client.stripes.count == 1
    lanes_gone.set()
    for _ in range(200):
        if memory.recall("w") is not None:
            break
        await asyncio.sleep(0.01)
    assert sampled == [2, 4]
    assert memory.recall("w") == stripes_mod.LearnedPath(4, False, memory.recall("w").at)
    await pair.client.close()


def test_path_memory_with_a_store_is_shared_by_processes_and_survives_a_bad_file(tmp_path):
    store = tmp_path / "learned_paths.json"
    now = [1000.0]
    first = stripes_mod.PathMemory(ttl=60, clock=lambda: now[0], store=store)
    first.remember("worker-a", 16, settled=True)
    later = stripes_mod.PathMemory(ttl=60, clock=lambda: now[0], store=store)  # a next client process
    assert later.recall("worker-a") == stripes_mod.LearnedPath(16, True, 1000.0)
    later.remember("worker-b", 5, settled=False)
    assert first.recall("worker-b") == stripes_mod.LearnedPath(5, False, 1000.0)  # read again, not cached
    now[0] = 1061
    assert later.recall("worker-a") is None
    # Entries that are not what a PathMemory writes are dropped; the sound one stays.
    store.write_text(json.dumps({"version": 1, "paths": {
        "ok": [4, True, 1050.0], "huge": [10**9, True, 1050.0], "zero": [0, True, 1050.0],
        "flag": [4, 1, 1050.0], "when": [4, True, "soon"], "big": [4, True, 10**400], "inf": [4, True, float("inf")], "short": [4],
    }}))
    assert [later.recall(p) is not None for p in ("ok", "huge", "zero", "flag", "when", "big", "inf", "short")] == [
        True, False, False, False, False, False, False, False]
    store.write_text("{broken")
    assert later.recall("ok") is not None  # an unreadable file leaves what this process knew
    now[0] = 900.0
    assert later.recall("ok") is None  # found "later" than now: the clock went back


def test_path_memory_that_cannot_save_still_remembers_in_this_process(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    memory = stripes_mod.PathMemory(store=blocker / "learned_paths.json")
    memory.remember("w", 8, settled=True)
    assert memory.recall("w").connections == 8


def test_a_client_process_finds_the_path_a_previous_one_learned(tmp_path):
    # Two real processes on the default store (the user data dir, pointed here).
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data")}
    code = "from sleap_rtc.core import stripes; stripes.PATHS.remember('worker-x-1', 12, settled=True)"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    code = "from sleap_rtc.core import stripes; p = stripes.PATHS.recall('worker-x-1'); print(p.connections, p.settled)"
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60, capture_output=True, text=True)
    assert out.stdout.split() == ["12", "True"]
    assert (tmp_path / "data" / "sleap-rtc" / stripes_mod.PATHS_FILE).is_file()
