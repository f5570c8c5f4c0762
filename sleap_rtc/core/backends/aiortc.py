"""The aiortc backend: pure-Python WebRTC (aioice, DTLS, SCTP), always installed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import types
from typing import Any

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

from sleap_rtc.core.backends import CLOSE_TIMEOUT, ChannelEvents, server_urls
from sleap_rtc.core.backends import sockets

log = logging.getLogger(__name__)

sockets.install_aioice_hook()


def rtc_configuration(servers: list[dict[str, Any]]) -> RTCConfiguration:
    """aiortc's configuration for ``servers`` (RTCIceServer-shaped dicts)."""
    # An explicit empty list matters: iceServers=None makes aiortc use Google's STUN.
    return RTCConfiguration(
        iceServers=[
            RTCIceServer(urls=server_urls(s), username=s.get("username"), credential=s.get("credential"))
            for s in servers
        ]
    )


def sha256_fingerprint_only(sdp: str) -> str:
    """``sdp`` with only its SHA-256 DTLS fingerprint lines.

    aiortc lists its certificate under SHA-256, -384 and -512; libdatachannel keeps one
    of them (the SHA-512 one) and verifies the handshake against it, so the two ends would
    bind different fingerprints of the same certificate into the identity proof
    (``core.identity``) and a native-stack worker's proof would never verify. With one
    algorithm offered, both ends bind (and verify) the SHA-256 one.
    """
    lines = sdp.split("\r\n")
    kept = [line for line in lines if not line.startswith("a=fingerprint:") or line.lower().startswith("a=fingerprint:sha-256 ")]
    return "\r\n".join(kept)


class AiortcConnection:
    """A ``Connection`` on an aiortc ``RTCPeerConnection`` (see ``core.backends``)."""

    backend = "aiortc"

    def __init__(self, ice_servers: list[dict[str, Any]]):
        self.pc = RTCPeerConnection(rtc_configuration(ice_servers))
        self.dc: Any = None
        self._events: ChannelEvents | None = None
        self._low_threshold = 0
        self._closed = False
        self.pc.on("connectionstatechange", self._on_state)
        self.pc.on("datachannel", self._adopt)

    # -- set-up
    def set_handlers(self, events: ChannelEvents) -> None:
        """Route events to ``events`` (see ``core.backends.ChannelEvents``)."""
        self._events = events

    async def offer(self, label: str) -> str:
        """Create the data channel, gather (non-trickle), return the offer SDP."""
        self._adopt(self.pc.createDataChannel(label, ordered=True))
        await self.pc.setLocalDescription(await self.pc.createOffer())
        self._tune()
        return sha256_fingerprint_only(self.pc.localDescription.sdp)

    async def accept_answer(self, sdp: str) -> None:
        """Apply the answer SDP."""
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))

    async def answer(self, offer_sdp: str) -> str:
        """Apply the offer, gather, return the answer SDP."""
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        self._tune()
        return sha256_fingerprint_only(self.pc.localDescription.sdp)

    # -- data
    def send(self, data: str | bytes) -> None:
        """Queue one message (aiortc buffers it; never blocks)."""
        if self.dc is None or self.dc.readyState != "open":
            raise ConnectionError("the data channel is not open")
        self.dc.send(data)

    @property
    def buffered_amount(self) -> int:
        """Bytes the data channel holds that SCTP has not sent yet."""
        return self.dc.bufferedAmount if self.dc is not None else 0

    @property
    def low_threshold(self) -> int:
        """``bufferedAmountLowThreshold`` of the data channel."""
        return self._low_threshold

    @low_threshold.setter
    def low_threshold(self, value: int) -> None:
        self._low_threshold = value
        if self.dc is not None:
            self.dc.bufferedAmountLowThreshold = value

    @property
    def is_open(self) -> bool:
        """True while the data channel is open."""
        return self.dc is not None and self.dc.readyState == "open"

    @property
    def state(self) -> str:
        """aiortc's ``connectionState``."""
        return str(self.pc.connectionState)

    @property
    def relayed(self) -> bool | None:
        """Whether the nominated ICE pair uses a TURN relay (aioice's private state; None if unknown)."""
        with contextlib.suppress(Exception):
            conn = self.pc.sctp.transport.transport.iceGatherer._connection
            pairs = list(conn._nominated.values())
            if pairs:
                return any(p.local_candidate.type == "relay" or p.remote_candidate.type == "relay" for p in pairs)
        return None

    def dtls_fingerprints(self) -> tuple[tuple[str, str], tuple[str, str]]:
        """``((algorithm, local), (algorithm, remote))`` DTLS certificate fingerprints; the remote
        one is computed from the certificate the peer presented in the handshake."""
        from cryptography.hazmat.primitives import hashes

        dtls = self.pc.sctp.transport
        local = next(f for f in dtls.getLocalParameters().fingerprints if f.algorithm.lower() == "sha-256")
        # aiortc has no public API for the peer's certificate; its SSL object holds the
        # one the handshake verified, which is what must be bound (not the relayed SDP).
        cert = dtls._ssl.get_peer_certificate(as_cryptography=True)
        digest = cert.fingerprint(hashes.SHA256()).hex().upper()
        return (local.algorithm, local.value), ("sha-256", ":".join(digest[i : i + 2] for i in range(0, len(digest), 2)))

    async def close(self) -> None:
        """Close the peer connection, waiting at most ``CLOSE_TIMEOUT``."""
        self._fire_closed("closed locally")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.pc.close(), CLOSE_TIMEOUT)

    # -- internals
    def _adopt(self, dc: Any) -> None:
        if self.dc is not None:
            log.warning("ignoring a second data channel %r from the peer", getattr(dc, "label", "?"))
            return
        self.dc = dc
        dc.bufferedAmountLowThreshold = self._low_threshold
        dc.on("open", lambda: self._events and self._events.channel_open())
        dc.on("message", lambda data: self._events and self._events.channel_message(data))
        dc.on("bufferedamountlow", lambda: self._events and self._events.channel_low())
        dc.on("close", lambda: self._fire_closed("the data channel was closed by the peer"))
        if dc.readyState == "open" and self._events is not None:
            self._events.channel_open()

    def _on_state(self) -> None:
        if self.pc.connectionState in ("failed", "closed"):
            self._fire_closed(f"the connection {self.pc.connectionState}")

    def _fire_closed(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        if self._events is not None:
            self._events.channel_closed(reason)

    def _tune(self) -> None:
        with contextlib.suppress(Exception):
            for ice in _ice_connections(self.pc):
                sockets.enlarge_aioice_sockets(ice)
                ice.query_consent = types.MethodType(_query_consent, ice)


def _ice_connections(pc: RTCPeerConnection) -> list[Any]:
    """The aioice ``Connection`` objects behind ``pc`` (data channel only: the SCTP one)."""
    out = []
    with contextlib.suppress(Exception):
        out.append(pc.sctp.transport.transport.iceGatherer._connection)
    return out


CONSENT_INTERVAL = 5.0
"""Seconds between ICE consent checks (RFC 7675: about 5 s)."""
CONSENT_TIMEOUT = 30.0
"""Consent expires, and the connection closes, after this many seconds without an answer."""
CONSENT_RETRANSMISSIONS = 3
"""Retransmissions of one consent check (0.5 + 1 + 2 + 4 s: an answer may take 7.5 s)."""


async def _query_consent(self: Any) -> None:
    """aioice's consent freshness check, tolerant of a busy receiver.

    aioice's own check sends each request once and gives up after 0.5 s, and expires consent
    after six such misses. A receiver whose event loop is saturated (hashing and writing a
    large file) drains its UDP socket late, by up to the socket buffer's worth of datagrams:
    with a 4 MiB buffer that is seconds, so every check missed its 0.5 s and a healthy
    connection was closed 30 s into a transfer. Here each check retransmits, and consent
    expires only after ``CONSENT_TIMEOUT`` s with no answer at all, as RFC 7675 says.
    """
    from aioice import stun

    last_ok = time.monotonic()
    while True:
        await asyncio.sleep(CONSENT_INTERVAL * (0.8 + 0.4 * random.random()))
        for pair in list(self._nominated.values()):
            request = self.build_request(pair, nominate=False)
            try:
                await pair.protocol.request(
                    request, pair.remote_addr, integrity_key=self.remote_password.encode("utf8"),
                    retransmissions=CONSENT_RETRANSMISSIONS,
                )
                last_ok = time.monotonic()
            except stun.TransactionError:
                pass
        if time.monotonic() - last_ok > CONSENT_TIMEOUT:
            log.info("ICE consent expired: no answer for %.0f s", time.monotonic() - last_ok)
            self._query_consent_task = None
            await self.close()
            return
