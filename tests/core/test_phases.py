"""The job phase state machine: every allowed and forbidden move, terminals, listeners."""

from __future__ import annotations

import itertools

import pytest

from sleap_rtc.core.phases import TERMINAL, TRANSITIONS, JobPhases, Phase, PhaseChange, PhaseError

NON_TERMINAL = [p for p in Phase if p not in TERMINAL]
ENDINGS = (Phase.FAILED, Phase.CANCELLED)


def at(phase: Phase) -> JobPhases:
    """A ``JobPhases`` already in ``phase`` (set directly: reaching it is tested below)."""
    jp = JobPhases()
    jp.phase = phase
    return jp


def test_table_covers_every_non_terminal_phase_and_no_terminal_one():
    assert set(TRANSITIONS) == set(NON_TERMINAL)
    assert TERMINAL == {Phase.DONE, Phase.FAILED, Phase.CANCELLED}
    assert JobPhases().phase == Phase.IDLE and not JobPhases().finished


@pytest.mark.parametrize(("old", "new"), list(itertools.product(NON_TERMINAL, list(Phase))))
def test_every_move_from_a_running_phase(old, new):
    jp = at(old)
    allowed = new in TRANSITIONS[old] or new in ENDINGS
    if allowed:
        jp.advance(new, "why")
        assert (jp.phase, jp.detail) == (new, "why")
        assert jp.finished == (new in TERMINAL)
    else:
        with pytest.raises(PhaseError, match=f"from {old.value} to {new.value}"):
            jp.advance(new)
        assert jp.phase == old, "a refused move changes nothing"


@pytest.mark.parametrize(("old", "new"), list(itertools.product(sorted(TERMINAL), list(Phase))))
def test_terminal_phases_are_never_left(old, new):
    jp = at(old)
    with pytest.raises(PhaseError, match=f"already {old.value}"):
        jp.advance(new)
    assert jp.phase == old and jp.finished


def test_the_happy_path_and_a_retry_on_another_worker():
    jp = JobPhases()
    for phase in (Phase.JOINING, Phase.DISCOVERING, Phase.SELECTING, Phase.RESERVING, Phase.CONNECTING,
                  Phase.UPLOADING, Phase.TRAINING, Phase.SELECTING, Phase.RESERVING, Phase.CONNECTING,
                  Phase.UPLOADING, Phase.TRAINING, Phase.DOWNLOADING, Phase.DONE):
        jp.advance(phase)
    assert jp.finished


def test_listeners_see_moves_and_updates_until_removed():
    jp = JobPhases()
    seen: list[PhaseChange] = []
    remove = jp.subscribe(seen.append)
    jp.advance(Phase.CONNECTING, "gpu-1")
    jp.update("42%")
    assert seen == [PhaseChange(Phase.IDLE, Phase.CONNECTING, "gpu-1"), PhaseChange(Phase.CONNECTING, Phase.CONNECTING, "42%")]
    assert jp.detail == "42%"
    remove()
    remove()  # removing twice is harmless
    jp.advance(Phase.UPLOADING)
    assert len(seen) == 2


def test_a_broken_listener_does_not_stop_the_others_or_the_move(caplog):
    jp = JobPhases()
    seen = []
    jp.subscribe(lambda change: 1 / 0)
    jp.subscribe(seen.append)
    jp.advance(Phase.JOINING)
    assert jp.phase == Phase.JOINING and len(seen) == 1
    assert "phase listener failed" in caplog.text


def test_a_listener_may_unsubscribe_while_being_called():
    jp = JobPhases()
    calls = []
    remove = None

    def once(change):
        calls.append(change)
        remove()

    remove = jp.subscribe(once)
    jp.advance(Phase.JOINING)
    jp.advance(Phase.DISCOVERING)
    assert len(calls) == 1
