"""The GUI's worker table against a real loopback server: C6 numbers never crash a cell,
invalid workers are listed as such and cannot be chosen, and each worker's short
fingerprint is shown with its trust (a changed key in red, with a warning tooltip)."""

from __future__ import annotations

import sys
from pathlib import Path

from qtpy import QtCore

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "client"))

from hostile_workers import raw_worker  # noqa: E402
from sleap_rtc.core.identity import generate_key  # noqa: E402
from sleap_rtc.core.known_workers import KnownWorkers  # noqa: E402
from sleap_rtc.core.room import RoomView  # noqa: E402
from sleap_rtc.core.signaling import SignalingClient  # noqa: E402
from sleap_rtc.gui.worker_model import COLUMNS, KEY_COLUMN, STATUS_COLUMN, WorkerTableModel, format_memory  # noqa: E402

Qt = QtCore.Qt
ROLES = (Qt.DisplayRole, Qt.ForegroundRole, Qt.DecorationRole, Qt.ToolTipRole)


def test_c6_format_memory_of_anything():
    for value in (float("inf"), float("nan"), -1, 10**400, "24000", None, True):
        assert format_memory(value) == "–"
    assert format_memory(24576) == "24.0 GB"


async def test_c6_infinity_gpu_memory_and_c8_changed_key_in_the_table(qtbot, signaling_server, room, tmp_path):
    url = signaling_server.url
    known = KnownWorkers(tmp_path / "known.json")
    good, moved = generate_key(), generate_key()
    known.remember(room[0], "good", good.fingerprint)
    known.remember(room[0], "moved", generate_key().fingerprint)

    def props(name, key, mem="8000"):
        return ('{"worker_name":"%s","gpu_model":"GPU","gpu_memory_mb":%s,"status":"available",'
                '"public_key":"%s","fingerprint":"%s"}' % (name, mem, key.public_key, key.fingerprint))

    sig = SignalingClient(url, room_id=room[0], token=room[1], role="client")
    async with raw_worker(url, room, "good", props("good", good)), raw_worker(url, room, "moved", props("moved", moved)), \
            raw_worker(url, room, "inf", props("inf", generate_key(), "Infinity")) as inf_reply, \
            raw_worker(url, room, "nan", props("nan", generate_key(), "NaN")), \
            raw_worker(url, room, "big", props("big", generate_key(), "1e400")):
        await sig.connect()
        view = RoomView(sig, known=known)
        try:
            await view.start()
            model = WorkerTableModel(view)
            cells = {}
            for row in range(model.rowCount()):
                name = model.data(model.index(row, 0))
                for col in range(len(COLUMNS)):
                    for role in ROLES:  # every cell, every role: none raises
                        model.data(model.index(row, col), role)
                cells[name] = row
            assert model.data(model.index(cells["good"], KEY_COLUMN)) == f"{good.fingerprint[7:17]} known"
            row = cells["moved"]
            assert model.data(model.index(row, KEY_COLUMN)) == f"{moved.fingerprint[7:17]} CHANGED"
            assert model.data(model.index(row, KEY_COLUMN), Qt.ForegroundRole).color().name() == "#c62828"
            assert "posing" in model.data(model.index(row, KEY_COLUMN), Qt.ToolTipRole)
            if inf_reply["type"] == "registered_auth":  # a stricter server may refuse the frame itself
                for name in ("inf", "nan", "big"):
                    row = cells[name]
                    assert model.data(model.index(row, 2)) == "–"
                    assert model.data(model.index(row, STATUS_COLUMN)) == "invalid"
                    assert model.flags(model.index(row, 0)) == Qt.NoItemFlags
                    assert "gpu_memory_mb" in model.data(model.index(row, 0), Qt.ToolTipRole)
            assert model.flags(model.index(cells["good"], 0)) & Qt.ItemIsSelectable
        finally:
            view.close()
            await sig.close()
