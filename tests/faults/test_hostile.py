"""Hostile input against the real processes.

* Garbage, malformed and oversized frames to the signaling server's WebSocket, cross-room
  offers and spoofed relays from another room: the server keeps serving, and nothing reaches
  (or is visible from) the other room.
* Malformed session strings and half room credentials to the real CLI: a clear message,
  exit code 2, no traceback.
* Hostile zips (zip-slip, absolute path, symlink, zip bomb, not a zip) sent to a real worker
  over the real transport: the client gets the rejection reason, nothing is written outside
  the job directory, and the worker keeps serving (available again; a good job then works).
"""

from __future__ import annotations

import asyncio
import base64
import json
import stat
import subprocess
import zipfile
from pathlib import Path

import aiohttp
import pytest
from fault_helpers import TINY_PACKAGE, Observer, checkpoints, tiny_package

from sleap_rtc.core.credentials import RoomCredentials
from sleap_rtc.core.job_policy import DirectWorker
from sleap_rtc.core.job_runner import RemoteJob
from sleap_rtc.core.remote_job import JobError
from sleap_rtc.core.signaling import SignalingClient
from sleap_rtc.local_room import sleap_rtc_argv

pytestmark = pytest.mark.faults


# ---------------------------------------------------------------------- server


async def _create_room(room) -> tuple[str, str]:
    async with aiohttp.ClientSession() as http:
        async with http.post(room.http_url + "/create-room") as resp:
            body = await resp.json()
    return body["room_id"], body["token"]


@pytest.mark.timeout(90)
async def test_hostile_frames_to_the_server(local_room):
    room = local_room
    await asyncio.to_thread(room.start_workers, "w1")
    other_room, other_token = await _create_room(room)

    async with Observer(room.url, room.room_id, room.token) as victim:
        await victim.wait_status("w1", "available", 10)
        worker_id = victim.peer_id("w1")
        seen_by_victim: list[dict] = []
        victim.signaling.add_listener(seen_by_victim.append)

        # An attacker registered in ANOTHER room, speaking raw WebSocket.
        attacker_id = "client-attacker"
        async with aiohttp.ClientSession() as http:
            # 1. Garbage before registering, on its own socket.
            async with http.ws_connect(room.url, max_msg_size=0) as raw:
                for junk in ["not json {{{", "[]", "42", '"str"', "{}", '{"type": 5}', '{"type": "nope"}',
                             '{"type": "discover_peers"}', '{"type": "offer", "target": "%s", "sdp": "x"}' % worker_id]:
                    await raw.send_str(junk)
                await raw.send_bytes(b"\x00\xff" * 100)
                await asyncio.sleep(0.3)

            async with http.ws_connect(room.url, max_msg_size=0) as ws:
                await ws.send_json({"type": "register", "peer_id": attacker_id, "room_id": other_room,
                                    "token": other_token, "role": "client", "metadata": {}, "id": "reg"})
                reply = await asyncio.wait_for(ws.receive_json(), 10)
                assert reply["type"] == "registered_auth", reply
                hostile = [
                    "not json", "[1,2]", "{}", '{"type": null}', '{"type": "does_not_exist"}',
                    json.dumps({"type": "discover_peers", "from_peer_id": worker_id,
                                "filters": {"properties": {"gpu_memory_mb": {"$gte": "lots"}}, "tags": 7}}),
                    # Cross-room: offer / relay / spoofed sender aimed at the other room's peers.
                    json.dumps({"type": "offer", "sender": worker_id, "target": worker_id, "sdp": "v=0"}),
                    json.dumps({"type": "peer_message", "from_peer_id": worker_id,
                                "to_peer_id": victim.signaling.peer_id, "payload": {"evil": True}}),
                    json.dumps({"type": "error", "target": victim.signaling.peer_id, "reason": "worker_busy"}),
                    json.dumps({"type": "update_metadata", "peer_id": worker_id,
                                "metadata": {"properties": {"status": "maintenance"}}}),
                    json.dumps({"type": "register", "peer_id": worker_id, "room_id": room.room_id,
                                "token": "0" * 6, "role": "worker"}),
                    "[" * 5000 + "]" * 5000,  # deep nesting
                    json.dumps({"type": "peer_message", "payload": "x" * (3 * 1024 * 1024)}),  # oversized
                ]
                for frame in hostile:
                    if ws.closed:
                        break
                    await ws.send_str(frame)
                await asyncio.sleep(1.0)
                replies = []
                while not ws.closed:
                    try:
                        msg = await asyncio.wait_for(ws.receive(), 0.5)
                    except asyncio.TimeoutError:
                        break
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        break
                    replies.append(json.loads(msg.data))
                assert all(r.get("type") in ("error", "peer_list", "metadata_updated", "ping") for r in replies), replies
                for r in replies:  # every reply stays in the attacker's room
                    assert worker_id not in json.dumps(r.get("peers", [])), f"room A leaked into room B: {r}"

        # The victim's room saw nothing of it, and its worker is untouched.
        leaked = [f for f in seen_by_victim if "evil" in json.dumps(f) or f.get("reason") == "worker_busy"
                  or attacker_id in json.dumps(f)]
        assert not leaked, f"frames crossed rooms: {leaked}"
        assert victim.status("w1") == "available", victim.history

    # The server still serves both rooms: fresh clients discover and register.
    for rid, tok, want in [(room.room_id, room.token, ["w1"]), (other_room, other_token, [])]:
        fresh = SignalingClient(room.url, room_id=rid, token=tok, role="client", reconnect=False)
        await fresh.connect()
        try:
            peers = await fresh.discover({"role": "worker"})
        finally:
            await fresh.close()
        assert sorted(p["metadata"]["properties"]["worker_name"] for p in peers) == want
    assert room.server.alive, "\n".join(room.server.lines[-20:])
    assert not any("Traceback" in l for l in room.server.lines), "\n".join(room.server.lines[-40:])


# ---------------------------------------------------------------------- CLI


def _session(obj) -> str:
    raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return "sleap-session:" + base64.urlsafe_b64encode(raw).decode()


CLI_CASES = [
    # (argv after the command, words the message must contain)
    (["--session-string", "garbage"], "sleap-session:"),
    (["--session-string", "sleap-session:"], "nothing after"),
    (["--session-string", "sleap-session:!!!$$$"], "base64"),
    (["--session-string", "sleap-session:eyJyIjogIm"], "cut short"),
    (["--session-string", _session(b"\xff\xfe not json")], "base64-encoded JSON"),
    (["--session-string", _session([1, 2])], "not an object"),
    (["--session-string", _session({"r": "abc", "t": ""})], "missing"),
    (["--room-id", "abcdef12"], "--token"),
    (["--token", "abcdef"], "--room-id"),
    (["--room-id", "abcdef12", "--token", "abcdef", "--session-string", _session({"r": "a", "t": "b", "p": "c"})], "session"),
]


@pytest.mark.timeout(120)
def test_malformed_credentials_to_the_cli(tmp_path: Path):
    package = tiny_package(tmp_path / "pkg")
    runs = []
    for args, words in CLI_CASES:
        argv = sleap_rtc_argv("client-train", str(package), "--server", "ws://127.0.0.1:9", *args)
        runs.append((args, words, subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                   stdin=subprocess.DEVNULL, text=True, cwd=tmp_path)))
    worker_argv = sleap_rtc_argv("worker", "--server", "ws://127.0.0.1:9", "--room-id", "abcdef12", "--work-dir", str(tmp_path / "w"))
    runs.append((["worker --room-id only"], "Both --room-id and --token must be provided together",
                 subprocess.Popen(worker_argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, text=True, cwd=tmp_path)))
    problems = []
    try:
        for args, words, proc in runs:
            out, _ = proc.communicate(timeout=90)
            if proc.returncode != 2 or "Traceback" in out or words.lower() not in out.lower():
                problems.append(f"{args}: exit {proc.returncode}, expected 2 and {words!r} in:\n{out}")
    finally:
        for _, _, proc in runs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert not problems, "\n\n".join(problems)


# ---------------------------------------------------------------------- worker


def _with_entry(dest: Path, info: zipfile.ZipInfo | str, data: bytes, compress=zipfile.ZIP_STORED) -> Path:
    """The tiny package plus one hostile entry."""
    with zipfile.ZipFile(TINY_PACKAGE) as src, zipfile.ZipFile(dest, "w", compress) as out:
        for item in src.infolist():
            out.writestr(item, src.read(item))
        out.writestr(info, data, compress_type=compress)
    return dest


def _hostile_packages(tmp: Path, outside: Path) -> list[tuple[str, Path, str]]:
    tmp.mkdir(parents=True, exist_ok=True)
    link = zipfile.ZipInfo("link_to_passwd")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    bomb_dest = tmp / "bomb.training_job.zip"
    with zipfile.ZipFile(TINY_PACKAGE) as src, zipfile.ZipFile(bomb_dest, "w", zipfile.ZIP_DEFLATED) as out:
        for item in src.infolist():
            out.writestr(item, src.read(item))
        bomb = zipfile.ZipInfo("bomb.bin", date_time=(2024, 1, 1, 0, 0, 0))
        bomb.compress_type = zipfile.ZIP_DEFLATED
        with out.open(bomb, "w") as fh:  # 64 MiB of zeros, ~64 KiB compressed
            for _ in range(64):
                fh.write(bytes(1 << 20))
    not_zip = tmp / "notzip.training_job.zip"
    not_zip.write_bytes(b"PK\x03\x04 this is not really a zip" * 100)
    return [
        ("zip-slip", _with_entry(tmp / "slip.training_job.zip", "../../evil_slip.txt", b"owned"), "'..'"),
        ("absolute", _with_entry(tmp / "abs.training_job.zip", str(outside / "evil_abs.txt"), b"owned"), "absolute"),
        ("symlink", _with_entry(tmp / "link.training_job.zip", link, b"/etc/passwd"), "symbolic link"),
        ("zip bomb", bomb_dest, "zip bomb"),
        ("not a zip", not_zip, "not a readable zip"),
    ]


@pytest.mark.timeout(180)
async def test_hostile_packages_to_a_real_worker(local_room, tmp_path: Path):
    room = local_room
    await asyncio.to_thread(room.start_workers, "w1")
    outside = tmp_path / "outside"
    outside.mkdir()
    cases = await asyncio.to_thread(_hostile_packages, tmp_path / "hostile", outside)
    async with Observer(room.url, room.room_id, room.token) as obs:
        await obs.wait_status("w1", "available", 10)
        worker_id = obs.peer_id("w1")
        wrong = []
        for label, package, words in cases:
            job = RemoteJob(package, server_url=room.url, credentials=RoomCredentials(room.room_id, room.token),
                            results_dir=tmp_path / f"out-{label.replace(' ', '_')}", policy=DirectWorker(worker_id))
            try:
                await asyncio.wait_for(job.run(), 60)
                wrong.append(f"{label}: the worker ACCEPTED and ran the package")
            except JobError as exc:
                if words.lower() not in str(exc).lower():
                    wrong.append(f"{label}: rejection without a clear reason ({words!r} expected): {exc}")
            # The worker is free again for the next client after each refusal.
            await obs.wait_status("w1", "available", 15)
            assert room.workers["w1"].alive, f"the worker died on the {label} package"
        assert not wrong, "\n".join(wrong)

        # Nothing was written outside the job directories.
        escaped = [p for p in tmp_path.rglob("evil_*") if p.parent != tmp_path / "hostile"]
        assert not escaped, f"hostile entries were written: {escaped}"
        assert not list(outside.iterdir()), f"absolute-path entry written: {list(outside.iterdir())}"
        assert not any(p.is_symlink() for p in (tmp_path / "room").rglob("*")), "a symlink was extracted"
        assert not any(p.name == "bomb.bin" for p in (tmp_path / "room").rglob("*")), "the zip bomb was inflated"

        # ...and it still does real work: a good job right after.
        output = tmp_path / "out-good"
        summary = await asyncio.wait_for(
            RemoteJob(tiny_package(tmp_path / "good"), server_url=room.url,
                      credentials=RoomCredentials(room.room_id, room.token), results_dir=output,
                      policy=DirectWorker(worker_id)).run(), 120)
        assert summary.worker == "w1"
        assert checkpoints(output), f"no best.ckpt after the hostile packages: {summary.files}"
    assert not any("Traceback" in l for l in room.workers["w1"].lines), "\n".join(room.workers["w1"].lines[-40:])


@pytest.mark.timeout(90)
async def test_hostile_frames_over_the_data_channel(local_room):
    """Garbage on an open data channel: the worker refuses or ignores it and keeps serving."""
    from sleap_rtc.core import transport

    room = local_room
    await asyncio.to_thread(room.start_workers, "w1")
    async with Observer(room.url, room.room_id, room.token) as obs:
        await obs.wait_status("w1", "available", 10)
        worker_id = obs.peer_id("w1")
        channel = await transport.connect(obs.signaling, worker_id, timeout=30)
        try:
            for raw in ["not json", "[" * 5000 + "]" * 5000, "[]", '{"type": 7}',
                        json.dumps({"type": "job_submit"}),
                        json.dumps({"type": "job_submit", "job_id": "j1", "package": "x", "options": []}),
                        json.dumps({"type": "file_offer", "transfer_id": -1, "name": "../../x", "size": -5, "sha256": "zz"})]:
                channel._send_raw(raw)
            channel._send_raw(b"\x00" * 10)  # a binary chunk for no transfer
            await asyncio.sleep(2.0)
            assert not channel.closed, f"the worker hung up on garbage: {channel.close_reason}"
        finally:
            await channel.close()
        await obs.wait_status("w1", "available", 20)
        assert room.workers["w1"].alive
        # It still accepts a normal connection afterwards.
        again = await transport.connect(obs.signaling, worker_id, timeout=30)
        await again.close()
    assert not any("Traceback" in l for l in room.workers["w1"].lines), "\n".join(room.workers["w1"].lines[-40:])
