"""SLEAP's window and a ``LocalRoom`` (real server, one real worker process) started together."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from sleap_rtc.local_room import LocalRoom, free_port


async def window_with_room(room: LocalRoom, labels_path: Path, worker: str, timeout: float = 90) -> Any:
    """Start ``room``'s server, a room and ``worker`` while SLEAP builds its window on
    ``labels_path`` (the worker's imports overlap with SLEAP's); returns the window."""
    from sleap_rtc.gui.sleap_attach import create_window

    room.port = free_port()

    def start_room() -> None:
        room.start_server(room.port)
        room.create_room()
        room.start_worker(worker)

    starting = asyncio.ensure_future(asyncio.to_thread(start_room))
    await asyncio.sleep(0)
    win = create_window(str(labels_path), server_url=room.url)
    await asyncio.wait_for(starting, timeout)
    return win
