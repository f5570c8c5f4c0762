"""Abuse limits of the signaling server: sizes, counts and rates.

Everything here is pure bookkeeping on a caller-supplied clock (``time.monotonic`` in the
server, a fake clock in tests); refusing and replying is the hub's job.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from sleap_rtc.core.protocol import MAX_FRAME_BYTES


@dataclass
class Limits:
    """Configurable limits; each is also a ``start_server`` keyword and a CLI option."""

    max_frame_bytes: int = MAX_FRAME_BYTES
    """Largest frame answered normally; bigger ones get ``FRAME_TOO_LARGE``."""
    max_peers_per_room: int = 5000
    """Registrations beyond this many live peers in one room get ``ROOM_FULL``."""
    max_watchers_per_room: int = 1000
    """Peers of one room that may take room events; one more gets ``TOO_MANY_WATCHERS``."""
    messages_per_second: float = 50.0
    """Sustained frames per second per connection."""
    message_burst: int = 200
    """Frames a connection may send at once before the per-second rate applies."""
    max_failed_registrations: int = 10
    """Failed registrations allowed per client address (and per room) in one window."""
    failed_registration_window: float = 60.0
    """Seconds over which failed registrations are counted."""
    max_rooms_per_minute: int = 60
    """Rooms one client address may create per minute over HTTP."""
    max_peer_id_length: int = 256
    """Longest accepted ``peer_id``."""
    send_queue_frames: int = 4096
    """Frames queued for one slow receiver before it is disconnected."""


class TokenBucket:
    """Rate limiter: ``rate`` tokens per second, at most ``burst`` saved up."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float):
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float) -> float:
        """Spend one token; returns 0 when allowed, else seconds until one is available."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate if self.rate > 0 else float("inf")


class FailureCounter:
    """Counts events per key in a sliding window (failed registrations, room creations).

    Memory is bounded: keys whose events all left the window are dropped when the table
    grows past ``max_keys``.
    """

    def __init__(self, limit: int, window: float, max_keys: int = 100_000):
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._events: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float] | None:
        events = self._events.get(key)
        if events is not None:
            while events and events[0] <= now - self.window:
                events.popleft()
        return events

    def retry_after(self, key: str, now: float) -> float:
        """0 when ``key`` is under its limit, else seconds until the oldest event expires."""
        events = self._recent(key, now)
        if events is None or len(events) < self.limit:
            return 0.0
        return max(0.001, events[0] + self.window - now)

    def add(self, key: str, now: float) -> None:
        """Record one event for ``key``."""
        if len(self._events) >= self.max_keys and key not in self._events:
            self._prune(now)
        events = self._recent(key, now)
        if events is None:
            events = self._events[key] = deque()
        events.append(now)

    def _prune(self, now: float) -> None:
        for key in list(self._events):
            events = self._recent(key, now)
            if not events:
                del self._events[key]
        if len(self._events) >= self.max_keys:  # still full of live keys: forget the oldest
            oldest = min(self._events, key=lambda k: self._events[k][-1])
            del self._events[oldest]
