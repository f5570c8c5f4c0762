"""UDP socket buffers for the peer-to-peer path.

The kernel's default UDP receive buffer (about 212 KB on Linux, ~170 full datagrams) overflows
while a single-threaded Python receiver is busy hashing and writing; SCTP takes the drops
as congestion and slows down. ``UDP_BUFFER_BYTES`` is asked for on every ICE socket, send
and receive. Linux grants at most ``net.core.rmem_max`` / ``net.core.wmem_max`` unless the
process may force more (``CAP_NET_ADMIN``); docs/deploy.md ("Socket buffers") has the sysctl lines.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from typing import Any

log = logging.getLogger(__name__)

UDP_BUFFER_BYTES = 4 * 1024 * 1024
"""SO_RCVBUF / SO_SNDBUF asked for on each ICE UDP socket (``UDP_BUFFER_ENV`` overrides it)."""
UDP_BUFFER_ENV = "SLEAP_RTC_UDP_BUFFER"
"""Environment variable: buffer size in bytes for ICE UDP sockets; 0 leaves the OS default."""


def buffer_bytes() -> int:
    """The UDP buffer size to ask for: ``$SLEAP_RTC_UDP_BUFFER`` when set to an integer, else ``UDP_BUFFER_BYTES``."""
    raw = os.environ.get(UDP_BUFFER_ENV, "").strip()
    try:
        return max(0, int(raw)) if raw else UDP_BUFFER_BYTES
    except ValueError:
        log.warning("ignoring %s=%r: not a number of bytes", UDP_BUFFER_ENV, raw)
        return UDP_BUFFER_BYTES

# Linux-only options that ignore rmem_max/wmem_max for a privileged process.
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", None)
_SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", None)


def enlarge(sock: socket.socket | None, size: int | None = None) -> tuple[int, int] | None:
    """Raise ``sock``'s receive and send buffers towards ``size``; returns what the OS granted
    as ``(rcvbuf, sndbuf)`` (Linux reports double the book-keeping size), None for no socket."""
    size = buffer_bytes() if size is None else size
    if sock is None or size <= 0:
        return None
    for force, plain in ((_SO_RCVBUFFORCE, socket.SO_RCVBUF), (_SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        done = False
        if force is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, force, size)
                done = True
        if not done:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, plain, size)
    try:
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF), sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    except OSError:
        return None


def install_aioice_hook() -> None:
    """Make aioice ask for ``UDP_BUFFER_BYTES`` on the sockets it creates.

    aioice sets ``SO_RCVBUF`` to ``aioice.turn.UDP_SOCKET_BUFFER_SIZE`` (256 KiB) on every
    host and TURN socket, reading the module constant at call time, so raising the constant
    is the hook; send buffers are raised after gathering by ``enlarge_aioice_sockets``.
    """
    with contextlib.suppress(ImportError):
        import aioice.turn

        if buffer_bytes() > 0:
            aioice.turn.UDP_SOCKET_BUFFER_SIZE = max(aioice.turn.UDP_SOCKET_BUFFER_SIZE, buffer_bytes())


def enlarge_aioice_sockets(connection: Any) -> list[tuple[int, int]]:
    """Raise both buffers on every UDP socket of an aioice ``Connection``; returns the grants."""
    granted = []
    for protocol in list(getattr(connection, "_protocols", []) or []):
        transport = getattr(protocol, "transport", None)
        sock = transport.get_extra_info("socket") if transport is not None else None
        got = enlarge(sock) if isinstance(sock, socket.socket) else None
        if got is not None:
            granted.append(got)
    if granted:
        log.debug("ICE socket buffers (rcv, snd): %s", granted)
    return granted
