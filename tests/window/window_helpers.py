"""Helpers of the real-window tests: waiting on the running loop, where to click a widget."""

from __future__ import annotations

import asyncio


async def wait_until(predicate, timeout: float = 5.0, interval: float = 0.02):
    """Poll ``predicate`` on the running loop until truthy; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


def centre(widget) -> tuple[int, int]:
    """Screen coordinates where a user would click ``widget``: its centre, or for a check
    box its box (a click on the empty part of a wide check box does nothing)."""
    from qtpy import QtCore, QtWidgets

    rect = widget.rect()
    local = QtCore.QPoint(9, rect.height() // 2) if isinstance(widget, QtWidgets.QCheckBox) else rect.center()
    point = widget.mapToGlobal(local)
    return point.x(), point.y()
