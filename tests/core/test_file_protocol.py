"""The sans-I/O receive side of one file transfer: offsets in, decisions out, no disk, no
sockets. (The same rules over real peers: tests/core/test_files.py, test_stripes.py.)"""

from __future__ import annotations

import pytest

from sleap_rtc.core import file_protocol as fp
from sleap_rtc.core.protocol import (
    BAD_OFFSET,
    FILE_TOO_LARGE,
    INCOMPLETE,
    NO_SPACE,
    SHA256_MISMATCH,
    TOO_MANY_TRANSFERS,
)
from sleap_rtc.core.transport_errors import FileTransferError, IntegrityError

C = 10  # chunk size of these tests: any works, the state machine only sees offsets
SHA = "ab" * 32


def make(size: int = 10 * C, *, repair: bool = True, tid: int = 1, sha: str = SHA) -> fp.IncomingTransfer:
    """An accepted transfer of ``size`` bytes with nothing received yet."""
    t = fp.IncomingTransfer.from_offer(
        {"transfer_id": tid, "size": size, "sha256": sha, "meta": {"k": 1}, "repair": repair}, "f.bin")
    t.resumed(0)
    assert t.accept() == 0
    return t


def deliver(t: fp.IncomingTransfer, offset: int, n: int = C) -> fp.ChunkDecision:
    """What the driver does with a chunk: decide, then report the writes."""
    todo = t.on_chunk(offset, n)
    if isinstance(todo, fp.WriteAhead):
        t.held(offset, n)
    elif isinstance(todo, fp.WriteInOrder):
        t.advanced(n)
        for _at, length in todo.then_in_order:
            t.advanced(length)
    return todo


# ------------------------------------------------------------------ chunks


def test_in_order_chunks_advance_the_prefix():
    t = make(3 * C, repair=False)
    for i in range(3):
        assert t.on_chunk(i * C, C) == fp.WriteInOrder(i * C, ())
        assert t.pos == i * C  # nothing changes until the driver reports the write
        t.advanced(C)
        assert t.pos == (i + 1) * C
    assert t.complete and not t.ahead and t.received == 3 * C


def test_out_of_order_chunks_are_held_then_the_gap_returns_them_in_order():
    t = make()
    assert deliver(t, 2 * C) == fp.WriteAhead(2 * C)
    assert deliver(t, 3 * C) == fp.WriteAhead(3 * C)
    assert deliver(t, 5 * C) == fp.WriteAhead(5 * C)
    assert t.pos == 0 and len(t.ahead) == 3
    assert deliver(t, 0) == fp.WriteInOrder(0, ())  # 1*C is still missing
    assert t.pos == C
    # The gap fills: the held chunks that now continue the prefix come back, in order; 5*C
    # stays held behind the hole at 4*C.
    assert t.on_chunk(C, C) == fp.WriteInOrder(C, ((2 * C, C), (3 * C, C)))
    assert len(t.ahead) == 3  # deciding changes nothing
    t.advanced(C)
    t.advanced(C)
    t.advanced(C)
    assert t.pos == 4 * C and len(t.ahead) == 1 and t.truncate_to == 4 * C
    assert deliver(t, 4 * C) == fp.WriteInOrder(4 * C, ((5 * C, C),))
    assert t.pos == 6 * C and not t.ahead and t.truncate_to is None


def test_advancing_over_a_held_chunk_of_another_length_is_a_driver_bug():
    t = make()
    deliver(t, C)
    deliver(t, 0)
    assert t.pos == 2 * C
    deliver(t, 3 * C)
    t.on_chunk(2 * C, C)
    t.advanced(C)
    with pytest.raises(ValueError):
        t.advanced(C // 2)  # the chunk held at 3*C is C bytes


def test_a_resent_chunk_is_a_duplicate_when_repairing():
    t = make()
    deliver(t, 0)
    deliver(t, 3 * C)
    assert t.on_chunk(0, C) == fp.Duplicate()  # inside the prefix
    assert t.on_chunk(3 * C, C) == fp.Duplicate()  # exactly the held chunk
    assert t.pos == C and len(t.ahead) == 1


def test_overlapping_chunks_are_refused():
    t = make()
    deliver(t, 3 * C)
    got = t.on_chunk(3 * C + 5, C)
    assert isinstance(got, fp.Refuse) and got.reason == BAD_OFFSET and "overlaps" in got.message
    got = t.on_chunk(2 * C + 5, C)
    assert isinstance(got, fp.Refuse) and got.reason == BAD_OFFSET and "overlaps" in got.message
    deliver(t, 0)
    # Straddling the prefix: neither a resend nor a continuation.
    assert t.on_chunk(C // 2, C) == fp.Refuse(BAD_OFFSET, f"Chunk at offset {C // 2} (+{C}) does not follow {C} of {10 * C}.")


def test_a_chunk_beyond_the_size_is_refused():
    t = make(3 * C)
    assert t.on_chunk(2 * C + 1, C) == fp.Refuse(BAD_OFFSET, f"Chunk at offset {2 * C + 1} (+{C}) does not follow 0 of {3 * C}.")
    assert isinstance(make(3 * C, repair=False).on_chunk(3 * C, 1), fp.Refuse)
    assert make(3 * C).on_chunk(2 * C, C) == fp.WriteAhead(2 * C)  # the last chunk, exactly


def test_out_of_order_without_repair_is_refused():
    t = make(repair=False)
    assert t.on_chunk(C, C) == fp.Refuse(BAD_OFFSET, f"Chunk at offset {C} (+{C}) does not follow 0 of {10 * C}.")
    deliver(t, 0)
    # A resend of what it has is no duplicate either: an in-order sender never resends.
    assert isinstance(t.on_chunk(0, C), fp.Refuse)


def test_too_many_chunks_ahead_are_refused():
    t = make((fp.MAX_PENDING_CHUNKS + 2) * C)
    for i in range(1, fp.MAX_PENDING_CHUNKS + 1):
        assert deliver(t, i * C) == fp.WriteAhead(i * C)
    got = t.on_chunk((fp.MAX_PENDING_CHUNKS + 1) * C, C)
    assert isinstance(got, fp.Refuse) and got.reason == BAD_OFFSET
    assert f"More than {fp.MAX_PENDING_CHUNKS} chunks" in got.message
    # The gap still fills: every held chunk follows in order.
    todo = t.on_chunk(0, C)
    assert isinstance(todo, fp.WriteInOrder) and len(todo.then_in_order) == fp.MAX_PENDING_CHUNKS


def test_chunks_before_accept_are_ignored():
    t = fp.IncomingTransfer.from_offer({"transfer_id": 3, "size": 100, "sha256": SHA, "meta": {}}, "f")
    assert t.on_chunk(0, C) == fp.Ignore() and not t.end_arrived()
    assert not t.repair  # no "repair": true in the offer, an in-order sender


# ------------------------------------------------------------------ the end


def test_end_complete_is_verified_and_the_digest_checked():
    t = make(2 * C)
    deliver(t, 0)
    deliver(t, C)
    assert t.end_arrived() and not t.end_arrived()  # a repeated file_end is not handled twice
    assert t.on_end() == fp.Verify(cached=False)
    assert t.digest_problem(SHA) is None
    wrong = t.digest_problem("00" * 32)
    assert wrong == fp.Refuse(SHA256_MISMATCH, "'f.bin' arrived corrupted: SHA-256 does not match.")


def test_end_with_gaps_asks_for_missing_ranges_until_the_rounds_run_out():
    t = make(10 * C)
    deliver(t, 0)
    deliver(t, 3 * C)
    deliver(t, 4 * C)
    deliver(t, 7 * C)
    for round_ in range(1, fp.MAX_REPAIR_ROUNDS + 1):
        assert t.end_arrived()
        assert t.on_end() == fp.WaitForStragglers()
        assert t.rounds == round_ - 1 and t.ending
        got = t.on_end(waited=True)
        assert got == fp.AskMissing(((C, 2 * C), (5 * C, 2 * C), (8 * C, 2 * C)))
        assert t.rounds == round_ and not t.ending  # the next file_end is handled again
    assert t.end_arrived()
    assert t.on_end() == fp.Refuse(INCOMPLETE, f"Got {C} of {10 * C} bytes of 'f.bin'.")


def test_stragglers_that_complete_the_file_while_waiting_lead_to_verify():
    t = make(3 * C)
    deliver(t, 0)
    deliver(t, 2 * C)
    assert t.end_arrived() and t.on_end() == fp.WaitForStragglers()
    assert deliver(t, C) == fp.WriteInOrder(C, ((2 * C, C),))
    assert t.on_end(waited=True) == fp.Verify(cached=False) and t.rounds == 0


def test_missing_ranges_are_capped_per_round():
    n = fp.MAX_MISSING_RANGES + 5
    t = make(2 * n * C)
    for i in range(n):
        deliver(t, (2 * i + 1) * C)  # every other chunk: a gap before each
    t.end_arrived()
    t.on_end()
    got = t.on_end(waited=True)
    assert isinstance(got, fp.AskMissing) and len(got.ranges) == fp.MAX_MISSING_RANGES
    assert got.ranges[0] == (0, C) and got.ranges[-1] == (2 * (fp.MAX_MISSING_RANGES - 1) * C, C)


def test_end_incomplete_without_repair_is_refused_at_once():
    t = make(3 * C, repair=False)
    deliver(t, 0)
    t.end_arrived()
    assert t.on_end() == fp.Refuse(INCOMPLETE, f"Got {C} of {3 * C} bytes of 'f.bin'.")


def test_a_cached_file_is_complete_at_accept():
    t = fp.IncomingTransfer.from_offer({"transfer_id": 1, "size": 50, "sha256": SHA, "meta": {}}, "f")
    t.from_cache()
    assert t.accept() == 50 and t.complete and t.received == 0
    assert t.end_arrived() and t.on_end() == fp.Verify(cached=True)


def test_resume_keeps_what_fits_the_offer():
    t = fp.IncomingTransfer.from_offer({"transfer_id": 1, "size": 50, "sha256": SHA, "meta": {}}, "f")
    assert t.resume_offset(30) == 30 and t.resume_offset(50) == 50
    assert t.resume_offset(51) == 0  # larger than the offer: a stale partial, start over
    t.resumed(30)
    assert t.accept() == 30 and t.pos == t.start == 30 and t.received == 20
    assert t.on_chunk(0, C) == fp.Refuse(BAD_OFFSET, "Chunk at offset 0 (+10) does not follow 30 of 50.")


# ------------------------------------------------------------------ offers


def offer(**kw) -> dict:
    msg = {"type": "file_offer", "transfer_id": 5, "name": "a.bin", "size": 10, "sha256": SHA, "meta": {}}
    msg.update(kw)
    return msg


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"size": -1}, "size must be a non-negative integer"),
        ({"size": "10"}, "size must be a non-negative integer"),
        ({"size": None}, "size must be a non-negative integer"),
        ({"sha256": "AB" * 32}, "sha256 must be 64 lowercase hex digits"),
        ({"sha256": "ab" * 31}, "sha256 must be 64 lowercase hex digits"),
        ({"sha256": 7}, "sha256 must be 64 lowercase hex digits"),
        ({"meta": [1]}, "meta must be an object"),
        ({"meta": "x"}, "meta must be an object"),
    ],
)
def test_malformed_offers_are_named(change, problem):
    assert fp.offer_problem(offer(**change), []) == problem


def test_a_good_offer_passes_and_missing_meta_is_empty():
    assert fp.offer_problem(offer(), []) is None
    assert fp.offer_problem(offer(meta=None, size=0), []) is None
    t = fp.IncomingTransfer.from_offer(offer(meta=None), "a.bin")
    assert t.meta == {} and t.size == 10 and not t.repair and not t.ready


def test_an_offer_repeating_a_transfer_or_a_file_being_received_is_refused():
    busy = [make(tid=5, sha="cd" * 32)]
    assert fp.offer_problem(offer(), busy) == "this file is already being received"  # same id
    busy = [make(tid=7, sha=SHA)]
    assert fp.offer_problem(offer(), busy) == "this file is already being received"  # same hash
    assert fp.offer_problem(offer(), [make(tid=7, sha="cd" * 32)]) is None


def test_limits_on_size_and_concurrent_files():
    kw = {"max_file_bytes": 100, "receiving": 0, "max_incoming": 2}
    assert fp.limit_problem("a", 100, **kw) is None
    big = fp.limit_problem("a", 101, **kw)
    assert big == fp.Refuse(FILE_TOO_LARGE, "'a' declares 101 bytes; this side takes at most 100 per file.")
    busy = fp.limit_problem("a", 1, **{**kw, "receiving": 2})
    assert busy == fp.Refuse(TOO_MANY_TRANSFERS, "Already receiving 2 files; at most 2 at once.")


def test_space_counts_the_missing_bytes_the_copy_and_the_reserve():
    # 100 bytes, 40 on disk already: 60 to come + 100 for the copy + 10 reserve = 170.
    assert fp.space_problem("a", 100, have=40, free=170, reserve=10) is None
    short = fp.space_problem("a", 100, have=40, free=169, reserve=10)
    assert short == fp.Refuse(NO_SPACE, "'a' needs 170 bytes of free disk (file, copy and reserve); 169 are free.")
    # A partial file larger than the offer counts for no more than the offer.
    assert fp.space_problem("a", 100, have=500, free=110, reserve=10) is None


def test_progress_counts_bytes_written_this_session_at_most_once_per_interval():
    t = fp.IncomingTransfer.from_offer(
        {"transfer_id": 1, "size": 10 * C, "sha256": SHA, "meta": {}, "repair": True, "progress": True}, "f.bin")
    t.resumed(2 * C)  # resumed: what was on disk does not count
    t.accept()
    assert t.arrived == 0
    deliver(t, 4 * C)  # held ahead
    assert t.arrived == C
    deliver(t, 2 * C)
    deliver(t, 3 * C)  # fills the gap: the held chunk is read back, not counted twice
    assert (t.pos, t.arrived) == (5 * C, 3 * C)
    assert t.progress_due(10.0)  # the first report goes out with the first bytes
    assert not t.progress_due(10.0 + fp.PROGRESS_INTERVAL / 2)
    assert t.progress_due(10.0 + fp.PROGRESS_INTERVAL)
    assert not make().progress_due(10.0)  # the offer did not ask: an older sender


# ------------------------------------------------------------------ the send side


@pytest.mark.parametrize("hostile", [-5, True, "50", None, 2.5, [1]])
def test_progress_reports_add_what_is_new_and_nothing_beyond_the_file(hostile):
    out = fp.OutgoingTransfer(1, "f.bin", 100)
    assert out.on_progress({"received": 30}) == 30
    assert out.on_progress({"received": 20}) == 0  # backwards: nothing
    assert out.on_progress({"received": hostile}) == 0
    assert out.on_progress({"received": 10**18}) == 70  # capped at the file's size
    assert out.on_progress({"received": 100}) == 0
    assert out.delivered == 100


def test_accept_streams_from_the_receivers_offset():
    out = fp.OutgoingTransfer(1, "f.bin", 100)
    assert out.on_accept({"offset": 30, "cached": False}) == fp.Stream(((30, 70),))
    assert (out.offset, out.cached) == (30, False)
    cached = fp.OutgoingTransfer(3, "f.bin", 100)
    assert cached.on_accept({"offset": 100, "cached": True}) == fp.Stream(((100, 0),))
    assert cached.cached and fp.chunks(((100, 0),), C) == []  # nothing moves


@pytest.mark.parametrize("offset", [-1, 101, "5", None, 2.0])
def test_an_offset_outside_the_file_fails(offset):
    out = fp.OutgoingTransfer(1, "f.bin", 100)
    assert out.on_accept({"offset": offset}) == fp.Fail(f"Receiver asked for an invalid offset {offset!r}.")
    assert out.offset is None


def test_missing_ranges_are_resent_until_the_repairs_run_out():
    out = fp.OutgoingTransfer(1, "f.bin", 100)
    out.on_accept({"offset": 0})
    # The first file_end, then one after each of MAX_REPAIR_ROUNDS resends.
    for _ in range(fp.MAX_REPAIR_ROUNDS + 1):
        assert out.next_end() == fp.SendEnd()
        assert out.on_missing([(10, 5), (90, 10)]) == fp.Stream(((10, 5), (90, 10)))
    assert out.next_end() == fp.Fail(f"Transfer of 'f.bin' still incomplete after {fp.MAX_REPAIR_ROUNDS} repairs.")
    assert out.ends == fp.MAX_REPAIR_ROUNDS + 1


def test_missing_ranges_beyond_the_file_fail():
    out = fp.OutgoingTransfer(1, "f.bin", 100)
    out.on_accept({"offset": 0})
    out.next_end()
    assert out.on_missing([(0, 10), (95, 6)]) == fp.Fail("The receiver asked for bytes beyond the end of the file.")
    assert out.on_missing([(95, 5)]) == fp.Stream(((95, 5),))


def test_chunks_cut_ranges_into_frames_in_order():
    assert fp.chunks([(0, 25), (40, 10), (60, 1)], C) == [(0, 10), (10, 10), (20, 5), (40, 10), (60, 1)]
    assert fp.chunks([], C) == []


def test_a_receivers_refusal_becomes_the_senders_error():
    bad = fp.refusal_error({"reason": SHA256_MISMATCH, "message": "corrupted"})
    assert type(bad) is IntegrityError and str(bad) == "corrupted"
    other = fp.refusal_error({"reason": NO_SPACE, "message": "full"})
    assert type(other) is FileTransferError and str(other) == "full"
    assert str(fp.refusal_error({"reason": INCOMPLETE})) == INCOMPLETE
    assert str(fp.refusal_error({})) == "receiver refused the file"
