"""The aiohttp layer: which address a connection is counted under behind a load balancer."""

from __future__ import annotations

import asyncio
import json

import websockets

from sleap_rtc.server.app import start_server


async def _register(url: str, room, forwarded_for: str | None, token: str) -> str:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else None
    async with websockets.connect(url, additional_headers=headers, open_timeout=5) as ws:
        await ws.send(json.dumps({"type": "register", "peer_id": "w", "room_id": room[0], "token": token, "role": "worker"}))
        return json.loads(await asyncio.wait_for(ws.recv(), 5)).get("code") or "OK"


async def test_a_trusted_proxy_counts_failures_under_the_forwarded_client():
    server = await start_server(trusted_proxies={"127.0.0.1"}, max_failed_registrations=2)
    try:
        room = await server.create_room()
        attacker = [await _register(server.url, room, "198.51.100.7, 127.0.0.1", "bad") for _ in range(3)]
        assert attacker == ["INVALID_TOKEN", "INVALID_TOKEN", "RATE_LIMITED"]
        # Another client behind the same balancer is not locked out by the first one.
        assert await _register(server.url, room, "203.0.113.9", "bad") == "INVALID_TOKEN"
    finally:
        await server.stop()


async def test_without_trust_the_header_is_ignored():
    server = await start_server(max_failed_registrations=2)
    try:
        room = await server.create_room()
        codes = [await _register(server.url, room, f"198.51.100.{i}", "bad") for i in range(3)]
        assert codes == ["INVALID_TOKEN", "INVALID_TOKEN", "RATE_LIMITED"]  # all one address: the socket's
    finally:
        await server.stop()
