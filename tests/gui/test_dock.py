"""The dock and its worker table against a real loopback server with in-process workers."""

from __future__ import annotations

import asyncio
import time

from qtpy import QtCore, QtWidgets

from sleap_rtc.gui.dock import DOCK_OBJECT_NAME, RemoteTrainingDock, worker_command
from sleap_rtc.gui.session import RoomSession, SessionState

from fakes import start_fake_worker

LIVE_BOUND = 1.0  # generous bound for "within 100 ms" on a loaded 2-core machine


async def _joined_dock(qtbot, server, room):
    session = RoomSession(server.url)
    dock = RemoteTrainingDock(session)
    qtbot.addWidget(dock)
    dock.show()
    await session.join(*room)
    return session, dock


async def test_worker_list_is_live(qtbot, signaling_server, room, wait_until):
    a = await start_fake_worker(signaling_server.url, room, "gpu-a", memory_mb=24576)
    session, dock = await _joined_dock(qtbot, signaling_server, room)
    try:
        model = dock.model
        assert dock.objectName() == DOCK_OBJECT_NAME
        assert session.state == SessionState.CONNECTED
        assert [w.name for w in model.workers] == ["gpu-a"]
        assert model.data(model.index(0, 1)) == "NVIDIA RTX A5000"
        assert model.data(model.index(0, 2)) == "24.0 GB"
        assert model.data(model.index(0, 3)) == "available"
        assert dock.credentials.room_edit.text() == room[0]
        assert dock.credentials.token_edit.echoMode() == QtWidgets.QLineEdit.Password

        # join: a second worker appears without any refresh
        t0 = time.monotonic()
        b = await start_fake_worker(signaling_server.url, room, "gpu-b", gpu="NVIDIA A100", memory_mb=81920)
        await wait_until(lambda: model.rowCount() == 2, LIVE_BOUND)
        assert time.monotonic() - t0 < LIVE_BOUND + 0.5

        # busy: hidden by default ...
        await b.update_metadata({"properties": {"status": "busy"}})
        await wait_until(lambda: [w.name for w in model.workers] == ["gpu-a"], LIVE_BOUND)
        # ... shown greyed and not selectable with the toggle
        dock.show_busy_check.setChecked(True)
        assert [w.name for w in model.workers] == ["gpu-a", "gpu-b"]
        busy_index = model.index(1, 0)
        assert not (model.flags(busy_index) & QtCore.Qt.ItemIsSelectable)
        assert not (model.flags(busy_index) & QtCore.Qt.ItemIsEnabled)
        assert model.data(model.index(1, 3), QtCore.Qt.ForegroundRole).color().name() == "#c62828"
        assert dock.select_worker("worker-gpu-b") is False
        assert dock.select_worker("worker-gpu-a") is True
        assert dock.selected_worker().peer_id == "worker-gpu-a"

        # the selected worker turns busy: the choice stays (never moved behind the user's
        # back), the dock says it is reserved; it comes back selected when free again
        dock.show_busy_check.setChecked(False)
        await a.update_metadata({"properties": {"status": "reserved"}})
        await wait_until(lambda: "reserved" in dock.choice_label.text(), LIVE_BOUND)
        assert dock.selected_worker().peer_id == "worker-gpu-a"
        assert dock.choice_state() == "busy"
        await a.update_metadata({"properties": {"status": "available"}})
        await wait_until(lambda: dock.choice_state() == "available", LIVE_BOUND)
        assert dock.table.selectionModel().selectedRows()[0].row() == dock.model.row_of("worker-gpu-a")
        await a.update_metadata({"properties": {"status": "reserved"}})
        await wait_until(lambda: dock.choice_state() == "busy", LIVE_BOUND)

        # leave: rows disappear; with nobody left, the empty state says how to start a worker
        await a.close()
        await wait_until(lambda: dock.choice_state() == "gone", LIVE_BOUND)
        assert dock.selected_worker().peer_id == "worker-gpu-a"
        assert "left the room" in dock.choice_label.text()
        dock.auto_button.click()
        assert dock.selected_worker() is None and "Auto-select" in dock.choice_label.text()
        await b.close()
        await wait_until(lambda: dock.model.total_workers == 0, LIVE_BOUND)
        assert dock.stack.currentIndex() == 1
        assert worker_command(*room, session.server_url, masked=True) in dock.empty_state_text()
    finally:
        await session.leave()


async def test_empty_room_shows_the_exact_worker_command(qtbot, signaling_server, room):
    session, dock = await _joined_dock(qtbot, signaling_server, room)
    try:
        assert dock.stack.currentIndex() == 1
        shown = dock.empty_state_text()
        assert f"sleap-rtc worker --server {signaling_server.url} --room-id {room[0]} --token ••••••••" in shown
        assert room[1] not in shown  # the token is masked on screen
        dock.copy_command_button.click()
        copied = QtWidgets.QApplication.clipboard().text()
        assert copied == f"sleap-rtc worker --server {signaling_server.url} --room-id {room[0]} --token {room[1]}"
        dock.credentials.reveal_button.setChecked(True)
        assert dock.credentials.token_edit.echoMode() == QtWidgets.QLineEdit.Normal
    finally:
        await session.leave()
    assert session.state == SessionState.DISCONNECTED
    assert dock.credentials.room_edit.text() == ""


async def test_wrong_token_is_reported(qtbot, signaling_server, room):
    session = RoomSession(signaling_server.url)
    dock = RemoteTrainingDock(session)
    qtbot.addWidget(dock)
    errors = []
    session.error.connect(errors.append)
    try:
        await session.join(room[0], "not-the-token")
    except Exception as exc:  # noqa: BLE001 - the message is what matters
        assert "token" in str(exc).lower()
    else:
        raise AssertionError("joining with a wrong token succeeded")
    assert session.state == SessionState.FAILED
    assert errors and "token" in errors[0].lower()
    assert "Could not join" in dock.state_label.text()
    await asyncio.sleep(0)


async def test_failed_switch_keeps_the_room_that_worked(qtbot, signaling_server, room):
    """A mistyped token on "Switch room…" is refused; the user stays in the old room."""
    session, dock = await _joined_dock(qtbot, signaling_server, room)
    old_room = session.room
    try:
        errors = []
        session.error.connect(errors.append)
        try:
            await session.join(room[0], "mistyped-token")
        except Exception as exc:  # noqa: BLE001
            assert "token" in str(exc).lower()
        else:
            raise AssertionError("a wrong token was accepted")
        assert errors
        assert session.state == SessionState.CONNECTED
        assert session.room is old_room and session.credentials.token == room[1]
        assert dock.credentials.room_edit.text() == room[0]
        assert "Connected" in dock.state_label.text()
    finally:
        await session.leave()
