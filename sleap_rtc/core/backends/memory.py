"""An in-process backend pair for tests: no sockets, same events as the real backends.

Two ``MemoryConnection`` objects are paired either directly (``memory_pair()``) or through
real signaling, since ``offer()`` returns a token ("memory:<id>") as its SDP and
``answer()`` looks the offerer up by it (both ends in one process). Messages are
delivered in order on the event loop after ``delay`` seconds; ``buffered_amount`` counts
bytes sent and not yet delivered, and ``rate`` (bytes/s, optional) paces delivery so that
flow control is exercised. ``kill()`` makes the connection die as a broken link does:
undelivered messages are lost and both ends see ``channel_closed``.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import weakref

from sleap_rtc.core.backends import ChannelEvents

_offers: weakref.WeakValueDictionary[str, MemoryConnection] = weakref.WeakValueDictionary()
_ids = itertools.count(1)


class MemoryConnection:
    """A ``Connection`` whose peer lives in the same process (see module docstring)."""

    backend = "memory"

    def __init__(self, *, delay: float = 0.0, rate: float | None = None):
        self.delay = delay
        self.rate = rate
        self.low_threshold = 0
        self.peer: MemoryConnection | None = None
        self.sent_messages = 0
        self._events: ChannelEvents | None = None
        self._queue: collections.deque[str | bytes] = collections.deque()
        self._buffered = 0
        self._open = False
        self._closed = False
        self._pump: asyncio.Task | None = None
        self._wake = asyncio.Event()

    # -- set-up
    def set_handlers(self, events: ChannelEvents) -> None:
        """Route events to ``events``."""
        self._events = events

    async def offer(self, label: str) -> str:
        """Register this end and return its token as the "SDP"."""
        token = f"memory:{next(_ids)}:{label}"
        _offers[token] = self
        return token

    async def accept_answer(self, sdp: str) -> None:
        """Nothing to apply: ``answer`` already linked both ends."""

    async def answer(self, offer_sdp: str) -> str:
        """Link to the offerer named by ``offer_sdp`` and open both ends."""
        peer = _offers.pop(offer_sdp, None)
        if peer is None:
            raise ConnectionError(f"no in-memory offer {offer_sdp[:40]!r} in this process")
        link(peer, self)
        return "memory:answer"

    # -- data
    def send(self, data: str | bytes) -> None:
        """Queue one message for delivery."""
        if not self.is_open:
            raise ConnectionError("the data channel is not open")
        self._queue.append(data)
        self._buffered += len(data)
        self.sent_messages += 1
        self._wake.set()

    @property
    def buffered_amount(self) -> int:
        """Bytes sent and not yet delivered."""
        return self._buffered

    @property
    def is_open(self) -> bool:
        """True while linked and not closed."""
        return self._open and not self._closed

    @property
    def state(self) -> str:
        """``connected``, ``closed`` or ``new``."""
        return "closed" if self._closed else ("connected" if self._open else "new")

    @property
    def relayed(self) -> bool | None:
        """Never relayed."""
        return False

    def dtls_fingerprints(self) -> tuple[tuple[str, str], tuple[str, str]]:
        """No DTLS in memory: identity proofs cannot be bound to this connection."""
        raise NotImplementedError("the in-memory backend has no DTLS")

    async def close(self) -> None:
        """Close both ends (messages still queued are dropped, like a hang-up)."""
        self._die("closed locally", "the data channel was closed by the peer")

    def kill(self) -> None:
        """Break the link: undelivered messages are lost, both ends see ``channel_closed``."""
        self._die("the connection failed", "the connection failed")

    # -- internals
    def _start(self) -> None:
        self._open = True
        self._pump = asyncio.get_running_loop().create_task(self._deliver())
        if self._events is not None:
            self._events.channel_open()

    async def _deliver(self) -> None:
        while not self._closed:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            if self.delay:
                await asyncio.sleep(self.delay)
            data = self._queue.popleft() if self._queue else None
            if data is None or self._closed:
                continue
            if self.rate:
                await asyncio.sleep(len(data) / self.rate)
            before = self._buffered
            self._buffered -= len(data)
            peer = self.peer
            if peer is not None and not peer._closed and peer._events is not None:
                peer._events.channel_message(data)
            if before > self.low_threshold >= self._buffered and self._events is not None and not self._closed:
                self._events.channel_low()
            if not self.delay and not self.rate:
                await asyncio.sleep(0)  # let the sender and receiver run between messages

    def _die(self, here: str, there: str) -> None:
        for end, reason in ((self, here), (self.peer, there)):
            if end is None or end._closed:
                continue
            end._closed = True
            end._queue.clear()
            end._buffered = 0
            end._wake.set()
            if end._events is not None:
                end._events.channel_closed(reason)


def link(a: MemoryConnection, b: MemoryConnection) -> None:
    """Pair two ends and open both (call on the running loop)."""
    a.peer, b.peer = b, a
    a._start()
    b._start()


def memory_pair(*, delay: float = 0.0, rate: float | None = None) -> tuple[MemoryConnection, MemoryConnection]:
    """Two unlinked ends; ``link(a, b)`` opens them once their handlers are set."""
    return MemoryConnection(delay=delay, rate=rate), MemoryConnection(delay=delay, rate=rate)
