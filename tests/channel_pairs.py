"""Test helper: a client and a worker ``PeerChannel`` over the in-memory backend pair."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from sleap_rtc.core.backends.memory import link, memory_pair
from sleap_rtc.core.channel import PeerChannel


async def memory_channels(tmp_path: Path, *, start: bool = True, **memory_kw: Any) -> tuple[PeerChannel, PeerChannel]:
    """``(client, worker)`` channels linked in memory (``memory_kw`` go to ``memory_pair``:
    ``delay``, ``rate``); with ``start`` they have exchanged hellos."""
    a, b = memory_pair(**memory_kw)
    client = PeerChannel(a, local_peer_id="c", remote_peer_id="w", role="client",
                         receive_dir=tmp_path / "c-recv", cache_dir=tmp_path / "c-cache")
    worker = PeerChannel(b, local_peer_id="w", remote_peer_id="c", role="worker",
                         receive_dir=tmp_path / "w-recv", cache_dir=tmp_path / "w-cache")
    link(a, b)
    if start:
        await asyncio.gather(client.start(5), worker.start(5))
    return client, worker
