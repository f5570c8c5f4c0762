"""TCP connection caps of the signaling server, below HTTP: per address and in all.

Every accepted connection (HTTP, WebSocket, or one that never sends a byte) holds a file
descriptor, so the caps are applied where connections are accepted: ``GuardedProtocol``
wraps aiohttp's protocol and closes a connection over a cap before aiohttp sees it.
``raise_fd_limit`` lifts the soft ``RLIMIT_NOFILE`` to the hard one at start-up, and
``default_max_sockets`` derives the total cap from it, keeping descriptors in reserve for
the state file, logs and the listening socket.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

from sleap_rtc.server.limits import address_key

log = logging.getLogger(__name__)

FD_RESERVE = 64
"""File descriptors never used for client sockets (state file, logs, listeners)."""

FD_SHARE = 0.8
"""Share of the remaining file-descriptor limit that client sockets may take."""

FD_TARGET = 65536
"""The soft ``RLIMIT_NOFILE`` is raised to this much (or the hard limit, if lower)."""


def raise_fd_limit(target: int = FD_TARGET) -> int:
    """Raise the soft file-descriptor limit towards ``target``; returns the soft limit now."""
    try:
        import resource
    except ImportError:  # Windows: no RLIMIT_NOFILE; sockets are not fds there anyway
        return target
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = target if hard == resource.RLIM_INFINITY else min(target, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the file-descriptor limit from %d to %d: %s", soft, want, exc)
    return target if soft == resource.RLIM_INFINITY else int(soft)


def default_max_sockets(fd_limit: int) -> int:
    """The total socket cap for a process allowed ``fd_limit`` file descriptors."""
    return max(16, int((fd_limit - FD_RESERVE) * FD_SHARE))


class SocketGuard:
    """Counts open connections per address key and in all; refuses those over a cap."""

    def __init__(self, per_address: int, total: int):
        self.per_address = per_address
        self.total = total
        self.by_address: Counter[str] = Counter()
        self.open = 0
        self.refused = 0

    def admit(self, address: str) -> bool:
        """Count a new connection from ``address``; ``False`` (not counted) when over a cap."""
        key = address_key(address)
        if self.open >= self.total or self.by_address[key] >= self.per_address:
            self.refused += 1
            return False
        self.by_address[key] += 1
        self.open += 1
        return True

    def release(self, address: str) -> None:
        """Forget one connection from ``address`` that ``admit`` counted."""
        key = address_key(address)
        self.open -= 1
        self.by_address[key] -= 1
        if self.by_address[key] <= 0:
            del self.by_address[key]


class GuardedProtocol(asyncio.Protocol):
    """Wraps one aiohttp protocol: the connection reaches it only if ``guard`` admits it."""

    def __init__(self, inner: asyncio.Protocol, guard: SocketGuard):
        self._inner = inner
        self._guard = guard
        self._address: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        address = peer[0] if isinstance(peer, tuple) and peer else "?"
        if not self._guard.admit(address):
            log.warning("refusing a connection from %s: too many open connections", address)
            transport.abort()  # no bytes: an HTTP 503 would cost what the cap saves
            return
        self._address = address
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._address is None:
            return
        self._guard.release(self._address)
        self._address = None
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._address is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._address is not None else None

    def pause_writing(self) -> None:
        if self._address is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._address is not None:
            self._inner.resume_writing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)
