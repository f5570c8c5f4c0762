"""The picker's table against a real loopback server: short fingerprints, trust marks, and
workers with unbelievable numbers (C6) listed as invalid instead of crashing the table."""

from __future__ import annotations

from rich.console import Console

from hostile_workers import raw_worker
from sleap_rtc.client.picker import WorkerPicker
from sleap_rtc.core.identity import generate_key
from sleap_rtc.core.known_workers import KnownWorkers
from sleap_rtc.core.room import RoomView
from sleap_rtc.core.signaling import SignalingClient


def text_of(picker: WorkerPicker) -> str:
    console = Console(record=True, width=220, color_system=None)
    console.print(picker.render())
    return console.export_text()


async def test_c6_and_c8_picker_shows_fingerprints_trust_and_invalid_workers(signaling_server, room, tmp_path):
    url = signaling_server.url
    known = KnownWorkers(tmp_path / "known.json")
    good, moved = generate_key(), generate_key()
    known.remember(room[0], "good", good.fingerprint)
    known.remember(room[0], "moved", generate_key().fingerprint)  # the key it had before
    def props(name, key):
        return ('{"worker_name":"%s","gpu_model":"[red]GPU[/red]","gpu_memory_mb":8000,"status":"available",'
                '"public_key":"%s","fingerprint":"%s"}' % (name, key.public_key, key.fingerprint))
    sig = SignalingClient(url, room_id=room[0], token=room[1], role="client")
    async with raw_worker(url, room, "good", props("good", good)), raw_worker(url, room, "moved", props("moved", moved)), \
            raw_worker(url, room, "inf", '{"worker_name":"inf","gpu_memory_mb":1e400,"status":"available"}') as reply:
        await sig.connect()
        try:
            view = RoomView(sig, known=known)
            await view.start()
            picker = WorkerPicker(view)
            text = text_of(picker)
            assert f"{good.fingerprint[7:17]} known" in text
            assert f"{moved.fingerprint[7:17]} CHANGED" in text and "Identity key CHANGED for moved" in text
            assert "[red]GPU[/red]" in text  # advertised text is shown as text, never as markup
            if reply["type"] == "registered_auth":
                line = next(line for line in text.splitlines() if " inf " in line)
                assert "invalid" in line and "1e400" not in line
                number = next(n for n, w in picker.rows() if w.name == "inf")
                assert picker.choose(str(number)) is None and "invalid" in picker.message
        finally:
            view.close()
            await sig.close()
