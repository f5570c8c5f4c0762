"""Abuse limits of the signaling server: sizes, counts and rates.

Everything here is pure bookkeeping on a caller-supplied clock (``time.monotonic`` in the
server, a fake clock in tests); refusing and replying is the hub's job. Every limit is a
``Limits`` field, a ``start_server`` keyword and (for the ones an operator tunes) a CLI
option; docs/security.md lists them with their numbers.

The sizes fit together: ``Limits.peer_list_bytes()`` is the largest ``peer_list`` a room
can produce, and ``Limits`` refuses settings under which it would not fit in what a peer
accepts (``MAX_RECEIVE_BYTES``).
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict, deque
from dataclasses import dataclass

from sleap_rtc.core.protocol import MAX_FRAME_BYTES, MAX_METADATA_BYTES, MAX_RECEIVE_BYTES

PEER_ENTRY_OVERHEAD = 160
"""Bytes of one ``peer_list`` entry besides its metadata and peer id (keys, role, time)."""

REPLY_OVERHEAD = 64 * 1024
"""Bytes of a ``registered_auth`` besides its ``peer_list`` (ids, resume, ICE servers)."""

IPV6_PREFIX = 64
"""IPv6 clients are counted per /64: one host usually holds a whole /64."""


@dataclass
class Limits:
    """Configurable limits; each is also a ``start_server`` keyword."""

    max_frame_bytes: int = MAX_FRAME_BYTES
    """Largest frame answered normally; bigger ones get ``FRAME_TOO_LARGE``."""
    max_peers_per_room: int = 500
    """Registrations beyond this many live peers in one room get ``ROOM_FULL``."""
    max_metadata_bytes: int = MAX_METADATA_BYTES
    """Largest encoded metadata of one peer, at register and after every update."""
    messages_per_second: float = 50.0
    """Sustained frames per second per connection."""
    message_burst: int = 200
    """Frames a connection may send at once before the per-second rate applies."""
    address_messages_per_second: float = 100.0
    """Sustained frames per second from one address, all its connections together."""
    address_message_burst: int = 400
    """Frames one address may send at once before its per-second rate applies."""
    address_bytes_per_second: float = 8 * 1024 * 1024
    """Bytes per second the server sends because of one address's requests: its
    ``peer_list`` replies and the room events its registrations and updates fan out."""
    address_byte_burst: int = 24 * 1024 * 1024
    """Bytes of such replies one address may cause at once (at least two full peer lists)."""
    max_failed_registrations: int = 10
    """Failed registrations allowed per client address in one window; later failing tries
    from that address get ``RATE_LIMITED``. A correct token is never refused for this."""
    failed_registration_window: float = 60.0
    """Seconds over which failed registrations are counted."""
    max_rooms_per_minute: int = 60
    """Rooms one client address may create per minute over HTTP."""
    max_peer_id_length: int = 256
    """Longest accepted ``peer_id``."""
    send_queue_frames: int = 4096
    """Frames queued for one slow receiver before it is disconnected."""
    send_queue_bytes: int = 2 * MAX_RECEIVE_BYTES
    """Bytes queued for one slow receiver before it is disconnected."""
    register_timeout: float = 10.0
    """Seconds a WebSocket may stay open without registering."""
    max_sockets_per_address: int = 64
    """Open TCP connections (HTTP and WebSocket) from one address."""
    max_sockets: int | None = None
    """Open TCP connections in all; ``None`` derives it from the file-descriptor limit
    (``sockets.default_max_sockets``)."""
    http_idle_timeout: float = 15.0
    """Seconds a TCP connection may go without a complete HTTP request (slow or silent
    headers, idle keep-alive) before it is closed. WebSockets are not affected."""

    def __post_init__(self) -> None:
        if self.address_byte_burst < self.peer_list_bytes():
            raise ValueError(
                f"address_byte_burst ({self.address_byte_burst}) must hold one full peer list "
                f"({self.peer_list_bytes()} bytes)"
            )
        if self.peer_list_bytes() + REPLY_OVERHEAD > MAX_RECEIVE_BYTES:
            raise ValueError(
                f"max_peers_per_room={self.max_peers_per_room} with max_metadata_bytes={self.max_metadata_bytes} "
                f"makes a peer list of up to {self.peer_list_bytes()} bytes, more than peers accept "
                f"({MAX_RECEIVE_BYTES - REPLY_OVERHEAD} bytes)"
            )

    def peer_entry_bytes(self) -> int:
        """Largest encoded ``peer_list`` entry: metadata, a peer id JSON-escaped, the rest."""
        # A character of a peer id is at most 12 bytes once JSON-escaped (\\udXXX\\udXXX).
        return self.max_metadata_bytes + 12 * self.max_peer_id_length + PEER_ENTRY_OVERHEAD

    def peer_list_bytes(self) -> int:
        """Largest ``peer_list`` of a full room."""
        return self.max_peers_per_room * self.peer_entry_bytes()


def address_key(address: str) -> str:
    """The key an address is counted under: itself for IPv4, its /64 for IPv6."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/{IPV6_PREFIX}", strict=False))
    return str(ip)


class TokenBucket:
    """Rate limiter: ``rate`` tokens per second, at most ``burst`` saved up."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float):
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float, cost: float = 1.0) -> float:
        """Spend ``cost`` tokens; returns 0 when allowed, else seconds until they are there.

        A refused take spends nothing.
        """
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= cost:
            self.tokens -= cost
            return 0.0
        return (cost - self.tokens) / self.rate if self.rate > 0 else float("inf")


class FailureCounter:
    """Counts events per key in a sliding window (failed registrations, room creations).

    Memory is bounded: at most ``max_keys`` keys, the least recently counted one forgotten
    first, in O(1) per event.
    """

    def __init__(self, limit: int, window: float, max_keys: int = 100_000):
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._events: OrderedDict[str, deque[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._events)

    def _recent(self, key: str, now: float) -> deque[float] | None:
        events = self._events.get(key)
        if events is not None:
            while events and events[0] <= now - self.window:
                events.popleft()
            if not events:
                del self._events[key]
                return None
        return events

    def retry_after(self, key: str, now: float) -> float:
        """0 when ``key`` is under its limit, else seconds until the oldest event expires."""
        events = self._recent(key, now)
        if events is None or len(events) < self.limit:
            return 0.0
        return max(0.001, events[0] + self.window - now)

    def add(self, key: str, now: float) -> None:
        """Record one event for ``key``."""
        events = self._recent(key, now)
        if events is None:
            while len(self._events) >= self.max_keys:
                self._events.popitem(last=False)  # the key counted longest ago
            events = self._events[key] = deque(maxlen=max(1, self.limit))
        else:
            self._events.move_to_end(key)
        events.append(now)
