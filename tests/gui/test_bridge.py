"""The qasync bridge: coroutines from slots, error reporting, and a long soak run."""

from __future__ import annotations

import asyncio

import pytest
from qtpy import QtWidgets

from sleap_rtc.gui import bridge


async def test_run_coro_returns_result_to_on_done(wait_until):
    results = []

    async def work():
        await asyncio.sleep(0.01)
        return 42

    task = bridge.run_coro(work(), on_done=results.append)
    await asyncio.wait_for(task, 2)
    await wait_until(lambda: results == [42], 2)


async def test_run_coro_shows_failure_in_a_non_modal_box(qtbot, wait_until):
    parent = QtWidgets.QWidget()
    qtbot.addWidget(parent)

    async def boom():
        raise RuntimeError("the worker left the room")

    bridge.run_coro(boom(), parent=parent, title="Remote training")
    box = await wait_until(lambda: parent.findChild(QtWidgets.QMessageBox, "sleap_rtc_error_box"), 2)
    assert box.text() == "the worker left the room"
    assert box.windowTitle() == "Remote training"
    assert box.isVisible()  # open(), not exec(): the loop kept running to get here
    box.close()


async def test_async_slot_connects_to_a_signal(qtbot, wait_until):
    button = QtWidgets.QPushButton()
    qtbot.addWidget(button)
    seen = []

    @bridge.async_slot
    async def clicked(*_):
        await asyncio.sleep(0)
        seen.append("ran")

    button.clicked.connect(clicked)
    button.click()
    await wait_until(lambda: seen == ["ran"], 2)


async def test_timer_fires_while_coroutines_run(wait_until):
    """Qt timers and asyncio tasks share the loop: a QTimer fires during awaits."""
    from qtpy import QtCore

    ticks = []
    timer = QtCore.QTimer()
    timer.timeout.connect(lambda: ticks.append(1))
    timer.start(5)
    try:
        await wait_until(lambda: len(ticks) >= 5, 2)
    finally:
        timer.stop()


@pytest.mark.timeout(120)
async def test_soak_loop_iterations():
    """30,000 loop iterations with Qt work in each: PySide6 6.12.0 dies here (none_dealloc).

    Keep this test when bumping PySide6: it is the canary for that interpreter crash.
    """
    from qtpy import QtCore

    obj = QtCore.QObject()
    fired = []
    timer = QtCore.QTimer()
    timer.timeout.connect(lambda: fired.append(1))
    timer.start(0)
    try:
        for i in range(30_000):
            if i % 100 == 0:
                obj.setObjectName(f"soak-{i}")  # one of the leaking calls in 6.12.0
            if i % 3 == 0:
                QtCore.QCoreApplication.processEvents()  # another one
            await asyncio.sleep(0)
    finally:
        timer.stop()
    assert obj.objectName() == "soak-29900"
    assert fired, "the Qt timer never fired during the soak"


async def test_tests_run_on_a_qasync_loop():
    import qasync

    assert isinstance(asyncio.get_running_loop(), qasync.QEventLoop)
