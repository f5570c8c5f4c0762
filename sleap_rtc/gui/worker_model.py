"""``WorkerTableModel``: the room's live worker list as a Qt table model.

It subscribes to a ``RoomView`` (the single source of truth for "who is in the room"), so
a join, leave or status change reaches every attached view synchronously, as soon as the
room event arrives. Workers that are not ``available`` (reserved, busy, maintenance) count
as busy: hidden unless ``show_busy`` is on, and then greyed and not selectable.

A worker whose advertised numbers are not believable (``WorkerInfo.valid``) is listed
with status ``invalid`` and cannot be chosen. The "Key" column shows the worker's short
identity fingerprint and how it compares with the key this computer remembers for that
name (``RoomView.trust``): ``known``, ``new``, ``none``, or ``CHANGED`` in red with a
warning tooltip.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qtpy import QtCore, QtGui

from sleap_rtc.core.known_workers import Trust
from sleap_rtc.core.room import RoomChange, RoomView, WorkerInfo
from sleap_rtc.core.selection import TRUST_WORDS

Qt = QtCore.Qt

COLUMNS = ("Name", "GPU", "GPU memory", "Status", "Key")
"""Column headers, in order."""

STATUS_COLUMN, KEY_COLUMN = 3, 4
"""Indices of the status and identity-key columns."""

CHANGED_KEY_COLOUR = "#c62828"
"""Text colour of a key that is not the one remembered for the worker's name."""

STATUS_COLOURS: dict[str, str] = {
    "available": "#2e7d32",
    "reserved": "#ef6c00",
    "busy": "#c62828",
    "maintenance": "#6d6d6d",
}
"""Colour of each worker status; anything else is grey."""

BUSY_FOREGROUND = "#9e9e9e"
"""Text colour of rows that cannot be chosen."""

WORKER_ROLE = int(Qt.UserRole) + 1
"""Item data role returning the row's ``WorkerInfo``."""


def format_memory(mb: object) -> str:
    """``24.0 GB`` for 24576 MB; ``–`` when unknown, zero or not a believable number."""
    if isinstance(mb, bool) or not isinstance(mb, (int, float)):
        return "–"
    try:
        return f"{mb / 1024:.1f} GB" if 0 < mb < float("inf") else "–"
    except (OverflowError, ValueError):  # an int too large for a float
        return "–"


def key_text(worker: WorkerInfo, trust: Trust) -> str:
    """The "Key" cell: short fingerprint and its trust state."""
    short = worker.short_fingerprint
    if trust == Trust.NONE or not short:
        return "none"
    return f"{short} {'CHANGED' if trust == Trust.CHANGED else trust.value}"


def status_colour(status: str) -> QtGui.QColor:
    """The colour shown for ``status``."""
    return QtGui.QColor(STATUS_COLOURS.get(status, "#6d6d6d"))


class WorkerTableModel(QtCore.QAbstractTableModel):
    """Rows are the room's workers (join order): name, GPU model, GPU memory, status.

    ``set_room(view)`` follows a ``RoomView`` (``None`` empties the table).
    ``show_busy`` (off by default) also lists workers that cannot take a job.
    """

    show_busy_changed = QtCore.Signal(bool)
    """Emitted when the "show busy workers" toggle changes."""

    def __init__(self, room: RoomView | None = None, parent: QtCore.QObject | None = None):
        super().__init__(parent)
        self._room: RoomView | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._rows: list[WorkerInfo] = []
        self._show_busy = False
        self.set_room(room)

    # ------------------------------------------------------------------ configuration

    @property
    def room(self) -> RoomView | None:
        """The ``RoomView`` followed, if any."""
        return self._room

    def set_room(self, room: RoomView | None) -> None:
        """Follow ``room`` instead of the current one."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._room = room
        if room is not None:
            self._unsubscribe = room.subscribe(self._on_change)
        self._reload(force_reset=True)

    @property
    def show_busy(self) -> bool:
        """Whether workers that cannot take a job are listed."""
        return self._show_busy

    def set_show_busy(self, show: bool) -> None:
        """Toggle listing of busy/reserved/maintenance workers."""
        show = bool(show)
        if show != self._show_busy:
            self._show_busy = show
            self._reload(force_reset=True)
            self.show_busy_changed.emit(show)

    # ------------------------------------------------------------------ reading

    @property
    def workers(self) -> list[WorkerInfo]:
        """The listed workers, in row order."""
        return list(self._rows)

    @property
    def total_workers(self) -> int:
        """Every worker in the room, listed or not (the empty state uses it)."""
        return len(self._room.workers) if self._room is not None else 0

    def trust(self, worker: WorkerInfo) -> Trust:
        """The room's trust in the worker's key (``NEW`` when the room cannot tell)."""
        lookup = getattr(self._room, "trust", None)
        return lookup(worker) if callable(lookup) else Trust.NEW

    def worker_at(self, row: int) -> WorkerInfo | None:
        """The worker shown on ``row``."""
        return self._rows[row] if 0 <= row < len(self._rows) else None

    def row_of(self, peer_id: str) -> int:
        """Row of the worker with that peer id, or -1."""
        for row, worker in enumerate(self._rows):
            if worker.peer_id == peer_id:
                return row
        return -1

    # ------------------------------------------------------------------ Qt model API

    def rowCount(self, parent: QtCore.QModelIndex = QtCore.QModelIndex()) -> int:  # noqa: N802
        """Number of listed workers."""
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: QtCore.QModelIndex = QtCore.QModelIndex()) -> int:  # noqa: N802
        """Number of columns (name, GPU, memory, status, key)."""
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.DisplayRole) -> Any:  # noqa: N802
        """Column titles."""
        if orientation == Qt.Horizontal and role == Qt.DisplayRole and 0 <= section < len(COLUMNS):
            return COLUMNS[section]
        return None

    def data(self, index: QtCore.QModelIndex, role: int = Qt.DisplayRole) -> Any:
        """Text, status colour, greyed text for busy rows, tooltips and the ``WorkerInfo``."""
        worker = self.worker_at(index.row()) if index.isValid() else None
        if worker is None:
            return None
        col = index.column()
        status = worker.status if worker.valid else "invalid"
        if role == Qt.DisplayRole:
            trust = self.trust(worker)
            return (worker.name, worker.gpu_model, format_memory(worker.gpu_memory_mb), status, key_text(worker, trust))[col]
        if role == WORKER_ROLE:
            return worker
        if role == Qt.ForegroundRole:
            if col == STATUS_COLUMN:
                return QtGui.QBrush(status_colour(status))
            if col == KEY_COLUMN and self.trust(worker) == Trust.CHANGED:
                return QtGui.QBrush(QtGui.QColor(CHANGED_KEY_COLOUR))
            if not (worker.available and worker.valid):
                return QtGui.QBrush(QtGui.QColor(BUSY_FOREGROUND))
        if role == Qt.DecorationRole and col == STATUS_COLUMN:
            return status_colour(status)
        if role == Qt.ToolTipRole:
            if col == KEY_COLUMN:
                trust = self.trust(worker)
                text = f"Identity key {worker.fingerprint or '(none)'}: {TRUST_WORDS[trust]}"
                if trust == Trust.CHANGED:
                    text += ". Not the key this computer used before: reinstalled, or someone posing as it."
                return text
            if not worker.valid:
                return f"{worker.peer_id}: invalid ({'; '.join(worker.problems)}); it cannot be chosen"
            extra = f", CUDA {worker.cuda_version}" if worker.cuda_version else ""
            host = f" on {worker.hostname}" if worker.hostname else ""
            return f"{worker.peer_id}{host}{extra}: {worker.status}"
        return None

    def flags(self, index: QtCore.QModelIndex) -> Qt.ItemFlags:
        """Available, valid workers are selectable; the others are disabled (greyed)."""
        worker = self.worker_at(index.row()) if index.isValid() else None
        if worker is None:
            return Qt.NoItemFlags
        if worker.available and worker.valid:
            return Qt.ItemIsEnabled | Qt.ItemIsSelectable
        return Qt.NoItemFlags

    # ------------------------------------------------------------------ updates

    def _visible(self) -> list[WorkerInfo]:
        if self._room is None:
            return []
        return [w for w in self._room.workers if self._show_busy or w.available]

    def _on_change(self, change: RoomChange) -> None:
        self._reload(force_reset=change.kind == "reset")

    def _reload(self, force_reset: bool = False) -> None:
        new = self._visible()
        old_ids = [w.peer_id for w in self._rows]
        new_ids = [w.peer_id for w in new]
        if not force_reset and old_ids == new_ids:
            # Same rows: only their content changed; keep the selection.
            self._rows = new
            if new:
                self.dataChanged.emit(self.index(0, 0), self.index(len(new) - 1, len(COLUMNS) - 1))
            return
        if not force_reset and set(old_ids) <= set(new_ids) and new_ids[: len(old_ids)] == old_ids:
            # Workers appended (join order): insert rows, keep the selection.
            self.beginInsertRows(QtCore.QModelIndex(), len(old_ids), len(new_ids) - 1)
            self._rows = new
            self.endInsertRows()
            return
        if not force_reset and set(new_ids) <= set(old_ids) and [i for i in old_ids if i in set(new_ids)] == new_ids:
            # Workers gone (left or became busy): remove their rows one by one.
            keep = set(new_ids)
            for row in range(len(old_ids) - 1, -1, -1):
                if old_ids[row] not in keep:
                    self.beginRemoveRows(QtCore.QModelIndex(), row, row)
                    del self._rows[row]
                    self.endRemoveRows()
            self._rows = new
            if new:
                self.dataChanged.emit(self.index(0, 0), self.index(len(new) - 1, len(COLUMNS) - 1))
            return
        self.beginResetModel()
        self._rows = new
        self.endResetModel()
