"""Helpers of the real-window tests: where a user would click a widget."""

from __future__ import annotations


def centre(widget) -> tuple[int, int]:
    """Screen coordinates where a user would click ``widget``: its centre, or for a check
    box its box (a click on the empty part of a wide check box does nothing)."""
    from qtpy import QtCore, QtWidgets

    rect = widget.rect()
    local = QtCore.QPoint(9, rect.height() // 2) if isinstance(widget, QtWidgets.QCheckBox) else rect.center()
    point = widget.mapToGlobal(local)
    return point.x(), point.y()
