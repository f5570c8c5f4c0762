"""Tests of the worker status state machine, the atomic guard and the reservation lease."""

from __future__ import annotations

import asyncio

import pytest

from sleap_rtc.core.protocol import WorkerStatus
from sleap_rtc.core.status import TRANSITIONS, StatusChange, StatusError, StatusGuard

A, R, B, M = WorkerStatus.AVAILABLE, WorkerStatus.RESERVED, WorkerStatus.BUSY, WorkerStatus.MAINTENANCE


def test_transition_table_covers_every_status_and_has_no_self_loops():
    assert set(TRANSITIONS) == set(WorkerStatus)
    for old, targets in TRANSITIONS.items():
        assert old not in targets
    assert B not in TRANSITIONS[A]  # a job never starts without a reservation


async def test_full_cycle_and_listener_order():
    guard = StatusGuard()
    seen: list[tuple[str, StatusChange]] = []
    guard.add_listener(lambda c: seen.append(("first", c)))
    guard.add_listener(lambda c: seen.append(("second", c)))
    res = guard.try_reserve("client-1")
    assert res is not None and res.client_peer_id == "client-1"
    guard.mark_busy(res)
    assert guard.release(res, "job done")
    assert guard.status == A and guard.reservation is None
    # Each change goes to both listeners, first-registered first, in order of change.
    assert [(who, c.old, c.new) for who, c in seen] == [
        ("first", A, R), ("second", A, R), ("first", R, B), ("second", R, B), ("first", B, A), ("second", B, A)
    ]
    assert seen[-1][1].reason == "job done" and seen[-1][1].reservation is res


async def test_twenty_concurrent_offers_give_exactly_one_reservation():
    guard = StatusGuard()

    async def offer(i: int):
        await asyncio.sleep(0)  # let all offers interleave on the loop
        return guard.try_reserve(f"client-{i}")

    results = await asyncio.gather(*(offer(i) for i in range(20)))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    assert guard.status == R and guard.reservation is winners[0]


async def test_busy_or_reserved_refuses_offers():
    guard = StatusGuard()
    res = guard.try_reserve("a")
    assert guard.try_reserve("b") is None
    guard.mark_busy(res)
    assert guard.try_reserve("b") is None
    guard.release(res)
    assert guard.try_reserve("b") is not None


async def test_lease_expires_when_not_confirmed():
    guard = StatusGuard(lease_timeout=0.05)
    changes: list[StatusChange] = []
    guard.add_listener(changes.append)
    res = guard.try_reserve("slow-client")
    await asyncio.sleep(0.15)
    assert guard.status == A and guard.reservation is None
    assert "lease expired" in changes[-1].reason
    # The stale reservation can no longer start a job or release anything.
    with pytest.raises(StatusError):
        guard.mark_busy(res)
    assert guard.release(res) is False
    assert not guard.confirm(res)


async def test_confirmed_lease_does_not_expire():
    guard = StatusGuard(lease_timeout=0.05)
    res = guard.try_reserve("c")
    assert guard.confirm(res)
    await asyncio.sleep(0.15)
    assert guard.status == R and guard.is_current(res)


async def test_stale_release_does_not_free_a_newer_reservation():
    guard = StatusGuard()
    first = guard.try_reserve("a")
    guard.release(first)
    second = guard.try_reserve("b")
    assert guard.release(first) is False
    assert guard.status == R and guard.is_current(second)


async def test_maintenance_drops_reservation_and_refuses_offers():
    guard = StatusGuard()
    guard.try_reserve("a")
    guard.enter_maintenance()
    assert guard.status == M and guard.reservation is None
    assert guard.try_reserve("b") is None
    guard.leave_maintenance()
    assert guard.status == A
    with pytest.raises(StatusError):
        guard.leave_maintenance()


async def test_broken_listener_does_not_break_the_guard():
    guard = StatusGuard()
    guard.add_listener(lambda c: 1 / 0)
    ok: list[StatusChange] = []
    guard.add_listener(ok.append)
    assert guard.try_reserve("a") is not None
    assert len(ok) == 1


def test_lease_timeout_must_be_positive():
    with pytest.raises(ValueError):
        StatusGuard(lease_timeout=0)


def test_w9_wasted_reservations_back_off_doubling_and_a_job_clears_it():
    from sleap_rtc.core.status import BACKOFF_FORGET, BACKOFF_MAX, BACKOFF_START

    now = [1000.0]
    guard = StatusGuard()
    guard.clock = lambda: now[0]
    delays = []
    for i in range(8):
        r = guard.try_reserve("client-a")
        assert r is not None
        guard.release(r, "lease expired")  # no job_submit: wasted
        delays.append(guard.backoff_remaining("client-a"))
        assert guard.try_reserve("client-a") is None and guard.status == WorkerStatus.AVAILABLE
        assert guard.try_reserve(f"client-b{i}") is not None  # others are not punished
        guard.release(guard.reservation, "b done")
        now[0] += delays[-1] + 0.1
    assert delays[:3] == [BACKOFF_START, 2 * BACKOFF_START, 4 * BACKOFF_START] and max(delays) == BACKOFF_MAX
    r = guard.try_reserve("client-a")
    guard.note_submit(r)
    guard.release(r, "job rejected")  # a job was asked for: no new back-off
    assert guard.backoff_remaining("client-a") == 0
    r = guard.try_reserve("client-a")
    guard.mark_busy(r)
    guard.release(r, "job done")
    assert guard.backoff_remaining("client-a") == 0
    r = guard.try_reserve("client-a")
    guard.release(r, "wasted again")
    assert guard.backoff_remaining("client-a") == BACKOFF_START, "a job forgives the history"
    now[0] += BACKOFF_FORGET + 1
    assert guard.backoff_remaining("client-a") == 0
