"""HTTP routes, rooms kept across restarts, the CLI process, TLS."""

from __future__ import annotations

import asyncio
import datetime
import os
import re
import signal
import ssl
import subprocess
import sys

import aiohttp
import pytest
import websockets

from sleap_rtc.server.app import start_server, tls_context
from sleap_rtc.server.rooms import RoomStore


async def test_http_routes(signaling_server, peer_in_room):
    await peer_in_room("w")
    await peer_in_room("c", "client")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        async with http.post(signaling_server.http_url + "/create-room") as resp:
            assert resp.status == 200
            body = await resp.json()
        assert set(body) == {"room_id", "token", "worker_token"}  # no ICE/TURN servers (M1)
        assert len(body["token"]) >= 22 and len(body["worker_token"]) >= 22 and body["token"] != body["worker_token"]  # >= 128 bits
        async with http.get(signaling_server.http_url + "/health") as resp:
            health = await resp.json()
        assert health["status"] == "ok" and health["connections"] == 2 and health["peers"] == {"client": 1, "worker": 1}
        async with http.get(signaling_server.http_url + "/metrics") as resp:
            assert resp.content_type == "text/plain"
            metrics = await resp.text()
        assert 'sleap_rtc_peers{role="worker"} 1' in metrics
        assert 'sleap_rtc_messages_total{type="register"} 2' in metrics
        assert re.search(r"^sleap_rtc_rooms_stored 2$", metrics, re.M)
        async with http.get(signaling_server.http_url + "/") as resp:
            assert (await resp.json())["protocol"] == "2.0"
        async with http.get(signaling_server.http_url + "/nope") as resp:
            assert resp.status == 404


async def test_rejections_show_in_metrics(signaling_server, connect, room):
    peer = await connect()
    await peer.request({"type": "register", "peer_id": "w", "room_id": room[0], "token": "bad", "role": "worker"})
    async with aiohttp.ClientSession() as http, http.get(signaling_server.http_url + "/metrics") as resp:
        assert 'sleap_rtc_rejected_registrations_total{code="INVALID_TOKEN"} 1' in await resp.text()


async def test_room_creation_is_rate_limited():
    server = await start_server(max_rooms_per_minute=2)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            statuses = []
            for _ in range(3):
                async with http.post(server.http_url + "/create-room") as resp:
                    statuses.append(resp.status)
                    body = await resp.json()
            assert statuses == [200, 200, 429]
            assert body["code"] == "RATE_LIMITED" and body["retry_after"] > 0
    finally:
        await server.stop()


async def test_rooms_survive_a_restart(tmp_path, connect):
    state = tmp_path / "state.sqlite3"
    server = await start_server(state_path=state)
    room = await server.create_room()
    port = server.port
    await server.stop()
    server = await start_server(port=port, state_path=state)
    try:
        peer = await connect(server.url)
        await peer.register(room, "w")
        assert server.hub.rooms.count() == 1
    finally:
        await server.stop()
    # Only a salted hash of the token is stored.
    assert room[1].encode() not in state.read_bytes()


def test_room_store_tokens():
    store = RoomStore()
    room = store.create()
    room_id, worker_token = room
    assert store.check(room_id, worker_token) == (None, "worker")
    assert store.check(room_id, room.token) == (None, "client")
    assert room.token != worker_token
    assert store.check(room_id, worker_token[:-1] + ("A" if worker_token[-1] != "A" else "B")) == ("INVALID_TOKEN", None)
    assert store.check("missing", worker_token) == ("INVALID_TOKEN", None)
    assert store.delete(room_id) and store.check(room_id, worker_token) == ("INVALID_TOKEN", None)


def test_cli_serves_and_shuts_down_on_sigterm(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "sleap_rtc", "server", "--port", "0", "--state", str(tmp_path / "s.db")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        line = proc.stdout.readline()
        match = re.search(r"ws://127\.0\.0\.1:(\d+)/ws", line)
        assert match, line

        async def probe() -> dict:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
                async with http.post(f"http://127.0.0.1:{match.group(1)}/create-room") as resp:
                    return await resp.json()

        assert "room_id" in asyncio.run(probe())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        proc.stdout.close()


def _self_signed(tmp_path):
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    import ipaddress

    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    os.chmod(key_path, 0o600)
    return cert_path, key_path


async def test_tls(tmp_path):
    cert, key = _self_signed(tmp_path)
    server = await start_server(ssl_context=tls_context(cert, key))
    try:
        assert server.url.startswith("wss://") and server.http_url.startswith("https://")
        client_ctx = ssl.create_default_context(cafile=str(cert))
        room = await server.create_room()
        async with websockets.connect(server.url, ssl=client_ctx, open_timeout=5) as ws:
            await ws.send('{"type": "register", "peer_id": "w", "room_id": "%s", "token": "%s", "role": "worker"}' % room)
            assert '"registered_auth"' in await asyncio.wait_for(ws.recv(), 5)
    finally:
        await server.stop()
