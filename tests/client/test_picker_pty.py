"""Interactive selection through a pseudo-terminal against a real loopback server.

Fake workers are plain SignalingClients registered as workers with metadata; the picker
runs in a child process whose terminal we drive like a user.
"""

from __future__ import annotations

from pathlib import Path

from sleap_rtc.core.signaling import SignalingClient
from pty_util import PtyProcess  # tests/client is on sys.path (rootdir-style test imports)

HELPER = str(Path(__file__).with_name("pick_helper.py"))


def meta(name, mem, status="available"):
    props = {
        "worker_name": name, "gpu_memory_mb": mem, "gpu_model": "RTX-" + name, "cuda_version": "12.4",
        "hostname": "host-" + name, "status": status,
    }
    return {"tags": ["sleap-rtc", "training-worker"], "properties": props}


async def workers(url, room_id, token, *specs):
    out = []
    for pid, m in specs:
        c = SignalingClient(url, room_id=room_id, token=token, role="worker", peer_id=pid, metadata=m, request_timeout=5)
        await c.connect()
        out.append(c)
    return out


async def test_live_table_updates_and_pick_by_number(signaling_server, room):
    room_id, token = room
    ws = await workers(signaling_server.url, room_id, token, ("w-a", meta("alpha", 8000)), ("w-b", meta("beta", 24000)))
    child = PtyProcess.python(HELPER, signaling_server.url, room_id, token, "60", "5")
    try:
        await child.expect(r"\(2 available\)")
        # Both rows, best first: beta is number 1, alpha number 2; facts shown.
        await child.expect(r"1 +│ beta +│ w-b +│ RTX-beta +│ +24,000 MB │ 12.4 +│ host-beta +│ available")
        await child.expect(r"2 +│ alpha +│ w-a")
        # beta turns busy: the table redraws by itself without it.
        mark = len(child.text)
        await ws[1].update_metadata({"properties": {"status": "busy"}})
        await child.expect(r"\(1 available\)", start=mark)
        last = child.text[child.text.rindex("Workers in room"):]
        assert "beta" not in last and "alpha" in last
        # A new worker appears live with the next number.
        ws += await workers(signaling_server.url, room_id, token, ("w-c", meta("gamma", 16000)))
        await child.expect(r"3 +│ gamma", start=mark)
        # A busy number is refused; an available one is chosen.
        child.send("1\n")
        await child.expect(r"There is no worker 1 in the list\.")
        child.send("9\x7f2\n")  # typed 9, backspace, 2
        await child.expect(r"SELECTED w-a")
        assert await child.wait() == 0
    finally:
        child.close()
        for w in ws:
            await w.close()


async def test_show_busy_lists_busy_but_not_selectable_and_refresh(signaling_server, room):
    room_id, token = room
    ws = await workers(signaling_server.url, room_id, token, ("w-a", meta("alpha", 8000)), ("w-b", meta("beta", 24000, "busy")))
    child = PtyProcess.python(HELPER, signaling_server.url, room_id, token, "60", "5", "--show-busy")
    try:
        await child.expect(r"- +│ beta +│ w-b .*│ busy")
        child.send("r")
        await child.expect(r"Refreshed the worker list\.")
        child.send("1\n")
        await child.expect(r"Worker 1 \(beta\) is busy; choose an available one\.")
        child.send("2\n")
        await child.expect(r"SELECTED w-a")
        assert await child.wait() == 0
    finally:
        child.close()
        for w in ws:
            await w.close()


async def test_timeout_warns_first(signaling_server, room):
    room_id, token = room
    child = PtyProcess.python(HELPER, signaling_server.url, room_id, token, "1.5", "1")
    try:
        await child.expect(r"No available workers yet; waiting")
        await child.expect(r"Selection times out in 1 s\.")
        await child.expect(r"ERROR No worker was chosen within 1\.5 s\. Run the command again, or use --auto-select")
        assert await child.wait() == 0
    finally:
        child.close()
