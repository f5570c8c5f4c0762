"""Shared fixtures: a real signaling server on an ephemeral loopback port, and a room on it."""

from __future__ import annotations

import pytest

from sleap_rtc.server.app import RunningServer, start_server


@pytest.fixture
async def signaling_server() -> RunningServer:
    """A fresh signaling server on 127.0.0.1 (random port, temporary state), stopped after."""
    server = await start_server("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def room(signaling_server: RunningServer) -> tuple[str, str]:
    """``(room_id, token)`` of a room created on ``signaling_server``."""
    return await signaling_server.create_room()
