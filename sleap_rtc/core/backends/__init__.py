"""Transport backends: what moves data-channel messages between two peers, and nothing more.

Everything above this seam (hello, heartbeat, control messages, file transfer, jobs) lives in
``core.channel`` / ``core.files`` and is the same for every backend. A backend only offers
one ``Connection`` per peer connection, carrying exactly one reliable, ordered data channel:

* set-up, non-trickle (each side gathers first, then one complete SDP goes through our
  signaling): the offerer calls ``await conn.offer(label) -> sdp`` then
  ``await conn.accept_answer(sdp)``; the answerer calls ``await conn.answer(offer_sdp) -> sdp``;
* ``conn.set_handlers(events)``: ``events`` gets ``channel_open()``, ``channel_message(data)`` (``str``
  for text frames, ``bytes`` for binary ones), ``channel_low()`` and ``channel_closed(reason)``;
  every call comes on the event loop;
* ``conn.send(data)`` (never blocks), ``conn.buffered_amount``, ``conn.low_threshold``,
  ``conn.is_open``, ``conn.state`` (the connection's ICE/DTLS state, for error texts),
  ``conn.relayed`` (True when the path goes through a TURN relay, None when unknown);
* ``await conn.close()``, bounded by ``CLOSE_TIMEOUT``.

Backends: ``aiortc`` (pure Python, always installed), ``libdatachannel`` (native, from the
``sleap-rtc[fast]`` extra, Python 3.12+; used automatically when importable), ``memory``
(an in-process pair for tests, no sockets). Both real backends speak standard WebRTC, so
either side may use either: the choice is per side (``choose_backend``).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from typing import Any, Protocol

CLOSE_TIMEOUT = 5.0
"""Seconds a backend's ``close()`` may take before it gives up waiting (nothing hangs)."""

BACKEND_ENV = "SLEAP_RTC_BACKEND"
"""Environment variable that forces a backend (``aiortc`` or ``libdatachannel``)."""

BACKENDS = ("aiortc", "libdatachannel", "memory")
"""Backend names ``make_connection`` knows."""


class ChannelEvents(Protocol):
    """What a backend calls on the layer above (``PeerChannel`` implements it)."""

    def channel_open(self) -> None:
        """The data channel opened."""

    def channel_message(self, data: str | bytes) -> None:
        """One whole message arrived (text: ``str``; binary: ``bytes``)."""

    def channel_low(self) -> None:
        """``buffered_amount`` fell to ``low_threshold`` or below."""

    def channel_closed(self, reason: str) -> None:
        """The data channel or its connection closed or failed (called at most once)."""


class Connection(Protocol):
    """One peer connection with one data channel (see the module docstring)."""

    backend: str
    low_threshold: int

    def set_handlers(self, events: ChannelEvents) -> None:
        """Route this connection's events to ``events``."""

    async def offer(self, label: str) -> str:
        """Create the data channel, gather, and return the complete offer SDP."""

    async def accept_answer(self, sdp: str) -> None:
        """Apply the peer's answer SDP."""

    async def answer(self, offer_sdp: str) -> str:
        """Apply the peer's offer, gather, and return the complete answer SDP."""

    def send(self, data: str | bytes) -> None:
        """Queue one message; raises ``ConnectionError`` once closed."""

    @property
    def buffered_amount(self) -> int:
        """Bytes queued and not yet handed to the network."""

    @property
    def is_open(self) -> bool:
        """True while the data channel is open."""

    @property
    def state(self) -> str:
        """The connection's state in words (``new``, ``connecting``, ``connected``, ``failed``, ...)."""

    @property
    def relayed(self) -> bool | None:
        """True when the selected path goes through a TURN relay; None when unknown."""

    def dtls_fingerprints(self) -> tuple[tuple[str, str], tuple[str, str]]:
        """``((algorithm, local), (algorithm, remote))`` DTLS certificate fingerprints, the
        remote one as verified in the handshake (for identity proofs bound to the connection)."""

    async def close(self) -> None:
        """Close the connection; returns within ``CLOSE_TIMEOUT``."""


def native_available() -> bool:
    """True when the native stack (``aiolibdatachannel``) can be imported here."""
    return importlib.util.find_spec("aiolibdatachannel") is not None


def choose_backend(preferred: str | None = None) -> str:
    """The backend this side uses: ``preferred``, else ``$SLEAP_RTC_BACKEND``, else the
    native one when installed, else aiortc. An unknown name is a ``ValueError``."""
    name = preferred or os.environ.get(BACKEND_ENV) or ("libdatachannel" if native_available() else "aiortc")
    if name not in BACKENDS:
        raise ValueError(f"Unknown transport backend {name!r}; choose one of {', '.join(BACKENDS)}.")
    if name == "libdatachannel" and not native_available():
        raise ValueError("The libdatachannel backend needs `pip install 'sleap-rtc[fast]'` (Python 3.12+).")
    return name


def make_connection(backend: str, ice_servers: list[dict[str, Any]]) -> Connection:
    """A new, unconnected ``Connection`` of ``backend`` using ``ice_servers`` (RTCIceServer-shaped dicts)."""
    if backend == "aiortc":
        from sleap_rtc.core.backends.aiortc import AiortcConnection

        return AiortcConnection(ice_servers)
    if backend == "libdatachannel":
        from sleap_rtc.core.backends.libdatachannel import LibdatachannelConnection

        return LibdatachannelConnection(ice_servers)
    if backend == "memory":
        from sleap_rtc.core.backends.memory import MemoryConnection

        return MemoryConnection()
    raise ValueError(f"Unknown transport backend {backend!r}.")


def server_urls(server: dict[str, Any]) -> list[str]:
    """The URLs of one RTCIceServer-shaped dict (``urls`` may be a string or a list)."""
    urls = server.get("urls") or server.get("url") or []
    return [urls] if isinstance(urls, str) else [u for u in urls if isinstance(u, str)]


Handler = Callable[..., None]
