"""The GUI's room session: switching rooms keeps the old one when the new one fails."""

from __future__ import annotations

import pytest

from sleap_rtc.core.signaling import SignalingError
from sleap_rtc.gui.session import RoomSession, SessionState

from fakes import start_fake_worker


async def test_a_failed_switch_keeps_the_room_that_worked(signaling_server, room, wait_until):
    worker = await start_fake_worker(signaling_server.url, room, "gpu-a")
    session = RoomSession(signaling_server.url)
    states, errors = [], []
    session.state_changed.connect(states.append)
    session.error.connect(errors.append)
    try:
        view = await session.join(*room)
        assert [w.peer_id for w in view.workers] == ["worker-gpu-a"]
        signaling = session.signaling
        states.clear()
        with pytest.raises(SignalingError, match="rejected the token"):
            await session.join(room[0], "not-the-token")
        assert session.state == SessionState.CONNECTED and states == []
        assert session.room is view and session.signaling is signaling
        assert session.credentials.token == room[1]
        assert errors and "token" in errors[0]
        # the kept connection still works: live room events arrive
        await worker.update_metadata({"properties": {"status": "busy"}})
        await wait_until(lambda: view.get("worker-gpu-a").status == "busy", 3)
        # a good switch replaces the room
        other = await signaling_server.create_room()
        new_view = await session.join(*other)
        assert session.room is new_view and session.credentials.room_id == other[0]
        assert session.state == SessionState.CONNECTED
    finally:
        await session.leave()
        await worker.close()


async def test_a_failed_first_join_is_failed(signaling_server, room):
    session = RoomSession(signaling_server.url)
    with pytest.raises(SignalingError):
        await session.join(room[0], "not-the-token")
    assert session.state == SessionState.FAILED and session.room is None and session.signaling is None
