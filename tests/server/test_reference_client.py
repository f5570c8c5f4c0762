"""The issue's "Done when" scenario, by a client written only from the protocol reference.

It uses nothing from sleap_rtc: the stdlib for HTTP and the plain ``websockets`` library.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request

import websockets


def _post_create_room(http_url: str) -> dict:
    req = urllib.request.Request(http_url + "/create-room", method="POST")
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


async def _recv(ws, timeout: float = 5.0) -> dict:
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if frame["type"] != "ping":
            return frame


async def test_reference_client_done_when_scenario(signaling_server):
    room = await asyncio.to_thread(_post_create_room, signaling_server.http_url)
    url = signaling_server.url
    async with websockets.connect(url, compression=None) as worker, websockets.connect(url, compression=None) as client:
        await worker.send(json.dumps({
            "type": "register", "peer_id": "worker-gpu1-abc", "room_id": room["room_id"], "token": room["worker_token"], "role": "worker",
            "metadata": {"tags": ["sleap-rtc", "training-worker"], "properties": {"gpu_memory_mb": 24576, "gpu_model": "RTX 4090", "status": "available"}},
        }))
        assert (await _recv(worker))["type"] == "registered_auth"
        await client.send(json.dumps({
            "type": "register", "peer_id": "client-1", "room_id": room["room_id"], "token": room["token"], "role": "client",
            "metadata": {"tags": [], "properties": {}}, "events": True,
        }))
        auth = await _recv(client)
        assert auth["type"] == "registered_auth" and auth["peer_id"] == "client-1"

        await client.send(json.dumps({"type": "discover_peers", "from_peer_id": "client-1", "filters": {"role": "worker", "properties": {"gpu_memory_mb": {"$gte": 16000}}}}))
        listing = await _recv(client)
        assert listing["type"] == "peer_list" and listing["count"] == 1
        assert listing["peers"][0]["peer_id"] == "worker-gpu1-abc"
        await client.send(json.dumps({"type": "discover_peers", "from_peer_id": "client-1", "filters": {"properties": {"gpu_memory_mb": {"$gte": 32000}}}}))
        assert (await _recv(client))["count"] == 0

        await worker.send(json.dumps({"type": "update_metadata", "peer_id": "worker-gpu1-abc", "metadata": {"properties": {"status": "reserved"}}}))
        assert (await _recv(worker))["type"] == "metadata_updated"
        event = await _recv(client)
        assert event["type"] == "peer_updated" and event["peer_id"] == "worker-gpu1-abc"
        assert event["metadata"]["properties"]["status"] == "reserved"

        await client.send(json.dumps({"type": "offer", "sender": "client-1", "target": "worker-gpu1-abc", "sdp": "v=0 offer"}))
        offer = await _recv(worker)
        assert offer["type"] == "offer" and offer["sdp"] == "v=0 offer" and offer["sender"] == "client-1"
        await worker.send(json.dumps({"type": "answer", "sender": "worker-gpu1-abc", "target": "client-1", "sdp": "v=0 answer"}))
        answer = await _recv(client)
        assert answer["type"] == "answer" and answer["sdp"] == "v=0 answer"

        await worker.send(json.dumps({"type": "error", "target": "client-1", "reason": "worker_busy", "message": "Worker is currently busy."}))
        busy = await _recv(client)
        assert busy["type"] == "error" and busy["reason"] == "worker_busy" and busy["sender"] == "worker-gpu1-abc"
