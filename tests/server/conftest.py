"""Raw WebSocket peers for server tests (plain ``websockets`` client, no sleap_rtc client code).

Every test that takes ``signaling_server`` (directly, or through ``room`` / ``connect`` /
``peer_in_room``) runs twice: against one in-process server, and (marker ``redis``, run by
``make test-redis``) against three ``sleap-rtc server --redis`` processes sharing a real
Redis, with consecutive peers on different instances. Tests that read the in-process
server's own state carry ``@pytest.mark.in_process`` and skip the second run.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import websockets
from redis_cluster import Cluster, RedisServer, find_redis_server
from websockets.asyncio.client import ClientConnection

from sleap_rtc.server.app import start_server

WAIT = 5.0
"""Upper bound of any single wait for a frame (generous: the machine is shared)."""


class RawPeer:
    """One WebSocket to the server with small helpers to send frames and read replies."""

    def __init__(self, ws: ClientConnection):
        self.ws = ws
        self.peer_id: str | None = None

    async def send(self, frame: dict[str, Any] | str | bytes) -> None:
        """Send a dict as JSON, or a str/bytes frame as is."""
        await self.ws.send(json.dumps(frame) if isinstance(frame, dict) else frame)

    async def recv(self, timeout: float = WAIT, *, skip_pings: bool = True) -> dict[str, Any]:
        """The next frame (pings skipped unless asked for)."""
        while True:
            frame = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
            if not (skip_pings and frame.get("type") == "ping"):
                return frame

    async def request(self, frame: dict[str, Any], timeout: float = WAIT) -> dict[str, Any]:
        """Send and return the next frame."""
        await self.send(frame)
        return await self.recv(timeout)

    async def nothing(self, within: float = 0.3) -> None:
        """Assert that no frame (other than ping) arrives within ``within`` seconds."""
        try:
            frame = await self.recv(within)
        except (asyncio.TimeoutError, TimeoutError):
            return
        raise AssertionError(f"unexpected frame {frame}")

    async def register(self, room: tuple[str, str], peer_id: str, role: str = "worker", **extra: Any) -> dict[str, Any]:
        """Register and return ``registered_auth``; fails the test on an error reply."""
        reply = await self.request({"type": "register", "peer_id": peer_id, "room_id": room[0], "token": room[1], "role": role, **extra})
        assert reply["type"] == "registered_auth", reply
        self.peer_id = peer_id
        return reply

    async def close(self) -> None:
        """Close the socket."""
        await self.ws.close()


@pytest.fixture(scope="session")
def redis_server():
    """A real ``redis-server`` for the session (installed with apt as root when missing)."""
    path, why = find_redis_server()
    if path is None:
        pytest.skip(why)
    server = RedisServer(path)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(redis_server):
    """Three ``sleap-rtc server --redis`` processes on ``redis_server`` for the session."""
    cluster = Cluster(redis_server, 3)
    yield cluster
    cluster.stop()


@pytest.fixture(params=["single", pytest.param("redis", marks=pytest.mark.redis)])
async def signaling_server(request):
    """One in-process server, or (``redis``) the three-instance cluster, fresh limits."""
    if request.param == "single":
        server = await start_server("127.0.0.1", 0)
        try:
            yield server
        finally:
            await server.stop()
        return
    if request.node.get_closest_marker("in_process"):
        pytest.skip("reads the in-process server's own state")
    cluster = request.getfixturevalue("redis_cluster")
    cluster.reset_limits()
    yield cluster


@pytest.fixture
async def connect(signaling_server):
    """Factory: ``await connect()`` opens a ``RawPeer`` to ``signaling_server`` (closed after the test)."""
    opened: list[RawPeer] = []

    async def _connect(url: str | None = None) -> RawPeer:
        ws = await asyncio.wait_for(websockets.connect(url or signaling_server.url, compression=None, max_size=None, open_timeout=WAIT), WAIT)
        peer = RawPeer(ws)
        opened.append(peer)
        return peer

    yield _connect
    for peer in opened:
        await peer.ws.close()


@pytest.fixture
async def peer_in_room(connect, room):
    """Factory: ``await peer_in_room(peer_id, role, **register_fields)`` -> registered ``RawPeer``."""

    async def _make(peer_id: str, role: str = "worker", *, room_creds: tuple[str, str] | None = None, **extra: Any) -> RawPeer:
        peer = await connect()
        await peer.register(room_creds or room, peer_id, role, **extra)
        return peer

    return _make
