"""The retry table itself: complete, bounded, and never swapping a worker the user picked."""

from __future__ import annotations

import pytest

from sleap_rtc.core.retry import RETRY_TABLE, Allowed, Move, Origin, Outcome, classify, next_move
from sleap_rtc.core.selection import AllWorkersBusyError, NoWorkersError, UnknownWorkerError, WorkerUnavailableError
from sleap_rtc.core.transport_errors import AnswerTimeoutError, PeerClosedError, PeerNotFoundError, WorkerBusyError


def test_every_origin_and_outcome_has_an_entry_ending_in_fail():
    assert set(RETRY_TABLE) == {(o, r) for o in Origin for r in Outcome}
    for key, moves in RETRY_TABLE.items():
        assert moves[-1] == Move.FAIL, key
        assert len(set(moves)) == len(moves), key


def test_a_worker_the_user_chose_is_never_replaced_without_asking():
    for origin in (Origin.PICKED, Origin.DIRECT, Origin.SESSION):
        for outcome in Outcome:
            assert Move.NEXT_BEST not in RETRY_TABLE[(origin, outcome)], (origin, outcome)


def test_link_lost_tries_a_reconnect_first_for_everyone():
    for origin in Origin:
        assert RETRY_TABLE[(origin, Outcome.LINK_LOST)][0] == Move.RECONNECT


@pytest.mark.parametrize(
    ("origin", "outcome", "allowed", "move"),
    [
        (Origin.AUTO, Outcome.BUSY, Allowed(attempts=True), Move.NEXT_BEST),
        (Origin.AUTO, Outcome.NONE_FREE, Allowed(attempts=True), Move.FAIL),  # no wait, nobody to ask
        (Origin.AUTO, Outcome.NONE_FREE, Allowed(wait=True), Move.WAIT),
        (Origin.AUTO, Outcome.NONE_FREE, Allowed(ask=True), Move.ASK),
        (Origin.AUTO, Outcome.LOST, Allowed(ask=True), Move.ASK),  # job attempts used up
        (Origin.AUTO, Outcome.LINK_LOST, Allowed(attempts=True), Move.NEXT_BEST),  # no reconnect handler yet
        (Origin.AUTO, Outcome.LINK_LOST, Allowed(attempts=True, reconnect=True), Move.RECONNECT),
        (Origin.PICKED, Outcome.BUSY, Allowed(ask=True, wait=True, attempts=True), Move.ASK),
        (Origin.PICKED, Outcome.LOST, Allowed(attempts=True), Move.FAIL),
        (Origin.DIRECT, Outcome.BUSY, Allowed(wait=True), Move.WAIT),
        (Origin.DIRECT, Outcome.BUSY, Allowed(attempts=True), Move.FAIL),
        (Origin.SESSION, Outcome.BUSY, Allowed(ask=True, wait=True, attempts=True), Move.FAIL),
    ],
)
def test_next_move_takes_the_first_allowed(origin, outcome, allowed, move):
    assert next_move(origin, outcome, allowed) == move


def test_classify_names_the_outcome_of_each_error():
    assert classify(WorkerBusyError("busy", status="busy")) == Outcome.BUSY
    assert classify(WorkerUnavailableError("x is busy")) == Outcome.BUSY
    assert classify(PeerNotFoundError("gone")) == Outcome.VANISHED
    assert classify(AnswerTimeoutError("silent")) == Outcome.VANISHED
    assert classify(UnknownWorkerError("no such worker")) == Outcome.VANISHED
    assert classify(NoWorkersError("none")) == Outcome.NONE_FREE
    assert classify(AllWorkersBusyError("all busy")) == Outcome.NONE_FREE
    assert classify(PeerClosedError("closed")) is None  # mid-job loss: the runner decides LOST / LINK_LOST
    assert classify(ValueError("bug")) is None
