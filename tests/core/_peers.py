"""Test helpers: registered signaling clients and connected peer pairs on a real server."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Any

from sleap_rtc.core.protocol import MessageType
from sleap_rtc.core.signaling import SignalingClient
from sleap_rtc.core.transport import accept, connect


async def registered(url: str, room: tuple[str, str], role: str) -> SignalingClient:
    """A ``SignalingClient`` registered in ``room``."""
    client = SignalingClient(url, room_id=room[0], token=room[1], role=role, events=False)
    await asyncio.wait_for(client.connect(), 10)
    return client


class Worker:
    """A worker-side signaling client that accepts every offer (or answers with ``reply``)."""

    def __init__(self, sig: SignalingClient, base: Path, **accept_kwargs: Any):
        self.sig = sig
        self.channels: asyncio.Queue = asyncio.Queue()
        self.reply: dict[str, Any] | None = None  # e.g. a busy error frame instead of accepting
        self.ignore = False
        self.kwargs = {"receive_dir": base / "worker-recv", "cache_dir": base / "worker-cache", **accept_kwargs}
        sig.add_listener(self._on_frame)

    async def _on_frame(self, frame: dict[str, Any]) -> None:
        if frame.get("type") != MessageType.OFFER or self.ignore:
            return
        if self.reply is not None:
            await self.sig.send({**self.reply, "target": frame["sender"]})
            return
        asyncio.get_running_loop().create_task(self._accept(frame))

    async def _accept(self, frame: dict[str, Any]) -> None:
        try:
            self.channels.put_nowait(await accept(self.sig, frame, **self.kwargs))
        except Exception as exc:  # the test sees it through next_channel
            self.channels.put_nowait(exc)

    async def next_channel(self, timeout: float = 15):
        item = await asyncio.wait_for(self.channels.get(), timeout)
        if isinstance(item, Exception):
            raise item
        return item


@contextlib.asynccontextmanager
async def pair(url: str, room: tuple[str, str], base: Path, **kwargs: Any):
    """Yield ``(client_channel, worker_channel)`` connected through the real server."""
    wsig = await registered(url, room, "worker")
    csig = await registered(url, room, "client")
    worker = Worker(wsig, base)
    chans = []
    try:
        cch = await connect(csig, wsig.peer_id, timeout=15, receive_dir=base / "client-recv",
                            cache_dir=base / "client-cache", **kwargs)
        chans.append(cch)
        wch = await worker.next_channel()
        chans.append(wch)
        yield cch, wch
    finally:
        for ch in chans:
            await ch.close()
        await csig.close()
        await wsig.close()


def make_file(path: Path, size: int, seed: int = 0) -> Path:
    """A file of ``size`` pseudo-random bytes (streamed, so large files cost no memory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    block = os.urandom(1 << 20) if seed == 0 else bytes((i * seed) & 0xFF for i in range(1 << 20))
    with open(path, "wb") as fh:
        left = size
        while left > 0:
            n = min(left, len(block))
            fh.write(block[:n])
            left -= n
    return path
