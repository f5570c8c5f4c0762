"""The libdatachannel backend: the native WebRTC stack (libjuice ICE, usrsctp) through
``aiolibdatachannel``, installed by the ``sleap-rtc[fast]`` extra (CPython 3.12+ wheels on
Linux and macOS arm64). It speaks standard WebRTC, so it talks to the aiortc backend.

aiolibdatachannel hands incoming messages to a bounded queue that drops the oldest message
when full, which would lose file chunks under load. This backend therefore replaces that
queue with ``_Forward``, which calls the layer above at once; the same goes for the
buffered-amount-low event. Replacing the queue, not the wrapper's dispatcher method,
matters for the answering side: its channel object exists (and the offerer's first message,
``hello``, may already be scheduled for the wrapper's own dispatcher) before this backend
adopts it, and a message scheduled that early used to land in the dropped queue, so the
channel never saw the peer's ``hello`` and failed to open (1 in 3 loopback runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from typing import Any

import aiolibdatachannel as ldc

from sleap_rtc.core.backends import CLOSE_TIMEOUT, ChannelEvents, native_sctp, server_urls
from sleap_rtc.core.tasks import spawn

log = logging.getLogger(__name__)


def ice_urls(servers: list[dict[str, Any]]) -> list[ldc.IceServer]:
    """libdatachannel's ICE server list for ``servers`` (RTCIceServer-shaped dicts).

    libdatachannel takes one URL per entry, with TURN credentials inlined.
    """
    out = []
    for server in servers:
        for url in server_urls(server):
            out.append(ldc.IceServer(url=url, username=server.get("username"), credential=server.get("credential")))
    return out


class _LowEvent(asyncio.Event):
    """The wrapper's low-water event, which also tells us when it is set."""

    def __init__(self, callback: Any):
        super().__init__()
        self._callback = callback
        super().set()

    def set(self) -> None:
        """Set the event and report the low-water crossing."""
        super().set()
        self._callback()


class _Forward:
    """Stands in for the wrapper's receive queue: each message goes to ``deliver`` at once
    (nothing queued, nothing dropped); the wrapper's close marker is not a message."""

    def __init__(self, deliver: Any):
        self._deliver = deliver

    def put_nowait(self, item: Any) -> None:
        """A message (``str``/``bytes``) from the wrapper's dispatcher."""
        if isinstance(item, (str, bytes)):
            self._deliver(item)


class LibdatachannelConnection:
    """A ``Connection`` on an ``aiolibdatachannel.PeerConnection`` (see ``core.backends``)."""

    backend = "libdatachannel"

    def __init__(self, ice_servers: list[dict[str, Any]]):
        native_sctp.apply(getattr(ldc, "_native", None))  # the wrapper's extension module
        self.pc = ldc.PeerConnection(ldc.RTCConfiguration(ice_servers=ice_urls(ice_servers)))
        self.dc: Any = None
        self._events: ChannelEvents | None = None
        self._low_threshold = 0
        self._closed = False
        self._opened = False
        self._tasks: list[asyncio.Task] = [spawn(self._watch_state(), name="ldc-state")]

    # -- set-up
    def set_handlers(self, events: ChannelEvents) -> None:
        """Route events to ``events`` (see ``core.backends.ChannelEvents``)."""
        self._events = events

    async def offer(self, label: str) -> str:
        """Create the data channel, gather (non-trickle), return the offer SDP."""
        self._adopt(await self.pc.create_data_channel(label, ldc.DataChannelOptions(ordered=True)))
        return (await self.pc.create_offer()).sdp

    async def accept_answer(self, sdp: str) -> None:
        """Apply the answer SDP."""
        await self.pc.set_remote_description(sdp, "answer")

    async def answer(self, offer_sdp: str) -> str:
        """Apply the offer, gather, return the answer SDP; the peer's channel is adopted when it arrives."""
        await self.pc.set_remote_description(offer_sdp, "offer")
        self._tasks.append(spawn(self._accept_channel(), name="ldc-accept"))
        return (await self.pc.create_answer()).sdp

    # -- data
    def send(self, data: str | bytes) -> None:
        """Queue one message in libdatachannel (never blocks)."""
        dc = self.dc
        if dc is None or not self._opened or self._closed:
            raise ConnectionError("the data channel is not open")
        try:
            if isinstance(data, str):
                dc._native.send_text(data)
            else:
                dc._native.send_bytes(bytes(data))
        except Exception as exc:  # RTCError once the native channel closed
            raise ConnectionError(str(exc)) from None

    @property
    def buffered_amount(self) -> int:
        """Bytes libdatachannel holds that SCTP has not sent yet."""
        if self.dc is None or self._closed:
            return 0
        with contextlib.suppress(Exception):
            return int(self.dc.buffered_amount)
        return 0

    @property
    def low_threshold(self) -> int:
        """The buffered-amount-low threshold."""
        return self._low_threshold

    @low_threshold.setter
    def low_threshold(self, value: int) -> None:
        self._low_threshold = value
        if self.dc is not None:
            with contextlib.suppress(Exception):
                self.dc.set_buffered_amount_low_threshold(value)

    @property
    def is_open(self) -> bool:
        """True while the data channel is open."""
        return self._opened and not self._closed

    @property
    def state(self) -> str:
        """libdatachannel's peer-connection state, in lower case."""
        return self.pc.state.name.lower()

    @property
    def relayed(self) -> bool | None:
        """Not exposed by the wrapper: unknown."""
        return None

    def dtls_fingerprints(self) -> tuple[tuple[str, str], tuple[str, str]]:
        """``((algorithm, local), (algorithm, remote))`` DTLS certificate fingerprints.

        Both come from the descriptions: libdatachannel fails the DTLS handshake unless the
        peer's certificate matches the fingerprint of the remote description, so the remote
        one is the certificate the handshake verified.
        """
        local = self.pc.local_description
        return _fingerprint(local.sdp if local else None), _fingerprint(self.pc.remote_description)

    async def close(self) -> None:
        """Close the peer connection, waiting at most ``CLOSE_TIMEOUT``."""
        self._fire_closed("closed locally")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.pc.aclose(), CLOSE_TIMEOUT)
        for task in self._tasks:
            task.cancel()

    # -- internals
    def _adopt(self, dc: Any) -> None:
        self.dc = dc
        early = dc._recv_queue  # what arrived before this backend took the channel over
        dc._recv_queue = _Forward(self._on_message)
        while not early.empty():
            dc._recv_queue.put_nowait(early.get_nowait())
        dc._buffered_low_event = _LowEvent(self._on_low)
        dc.set_buffered_amount_low_threshold(self._low_threshold)
        self._tasks.append(spawn(self._watch_channel(dc), name="ldc-channel"))

    def _on_message(self, data: bytes | str) -> None:
        if self._events is not None and not self._closed:
            self._events.channel_message(data)

    def _on_low(self) -> None:
        if self._events is not None and not self._closed:
            self._events.channel_low()

    async def _accept_channel(self) -> None:
        with contextlib.suppress(Exception):
            self._adopt(await self.pc.accept_data_channel())

    async def _watch_channel(self, dc: Any) -> None:
        try:
            await dc.wait_open()
        except Exception as exc:
            self._fire_closed(f"the data channel failed to open ({exc})")
            return
        self._opened = True
        if self._events is not None and not self._closed:
            self._events.channel_open()
        with contextlib.suppress(Exception):
            await dc.wait_closed()
        self._fire_closed("the data channel was closed by the peer")

    async def _watch_state(self) -> None:
        with contextlib.suppress(Exception):
            async for event in self.pc.events():
                if isinstance(event, ldc.StateChangeEvent) and event.state in (ldc.RTCState.FAILED, ldc.RTCState.CLOSED):
                    self._fire_closed(f"the connection {event.state.name.lower()}")
                    return

    def _fire_closed(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        if self._events is not None:
            self._events.channel_closed(reason)


_FINGERPRINT = re.compile(r"^a=fingerprint:(\S+) (\S+)", re.M)


def _fingerprint(sdp: str | None) -> tuple[str, str]:
    match = _FINGERPRINT.search(sdp or "")
    if match is None:
        raise ValueError("no DTLS fingerprint in the session description")
    return match.group(1), match.group(2)
