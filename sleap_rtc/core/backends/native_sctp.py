"""SCTP settings for the native stack: libdatachannel's ``rtcSetSctpSettings``, called
through ``ctypes`` because aiolibdatachannel binds no Python call for it.

The C function is part of libdatachannel's public C API (``rtc/rtc.h``) and is exported by
the extension module aiolibdatachannel builds it into, so ``ctypes`` reaches the very copy
of the library the wrapper uses (``RTLD_NOLOAD``: never a second one). The settings are
process-wide and apply to peer connections created afterwards, so ``apply`` runs once,
before the backend makes its first connection. Where the symbol is missing (another build
of the wrapper) the library's own defaults stay and the backend still works.
"""

from __future__ import annotations

import ctypes
import logging
import os
from typing import Any

log = logging.getLogger(__name__)

FIELDS = (
    "recvBufferSize", "sendBufferSize", "maxChunksOnQueue", "initialCongestionWindow",
    "maxBurst", "congestionControlModule", "delayedSackTimeMs", "minRetransmitTimeoutMs",
    "maxRetransmitTimeoutMs", "initialRetransmitTimeoutMs", "maxRetransmitAttempts",
    "heartbeatIntervalMs",
)
"""``rtcSctpSettings``'s int fields, in the C struct's order (``rtc/rtc.h``); a layout change
in a later libdatachannel shows in tests/native/test_sctp_settings_reach_usrsctp.py, which reads usrsctp back."""


class _Settings(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int) for name in FIELDS]


DEFAULTS: dict[str, int] = {name: 0 for name in FIELDS} | {"congestionControlModule": -1}
"""All "library default" (0, or -1 for the congestion-control module, where 0 is Reno)."""

SETTINGS: dict[str, int] = {"congestionControlModule": 1, "minRetransmitTimeoutMs": 1000}
"""What this project changes from libdatachannel's defaults (docs/bench/lab_transfer_notes.md
sections 9 and 17):

* ``congestionControlModule`` 1 is HighSpeed TCP (RFC 3649) instead of Reno: the same as Reno
  below a 38-segment window (lossy paths stay as fair as before) and faster to grow and gentler
  to back off above it. In the lab native striping at 20 ms / 0.1 % loss moved +18 % (median of
  three runs each). H-TCP (module 2) lost up to 7x.
* ``minRetransmitTimeoutMs`` 1000 (RFC 4960's RTO.min, and aiortc's) instead of 200: a lost
  chunk holds the cumulative ack, so the retransmission timer runs from before the loss until
  the fast retransmission is acked, two loaded round trips, over 200 ms on an 80 ms path. Each
  such timeout cuts the window to one packet: at 80 ms / 0.1 % one native connection sending
  8 MiB lost and fast-retransmitted the same 7 chunks either way, and timed out 47-77 times with
  200 ms, twice with 1 s (tests/netlab/test_transfer.py); native striping there moved 3.83 MB/s,
  not 2.18."""

ENV = "SLEAP_RTC_NATIVE_SCTP"
"""``name=value,...`` overriding ``SETTINGS`` (lab experiments)."""

_applied: dict[str, int] | None = None


def settings() -> dict[str, int]:
    """The settings ``apply`` passes: ``DEFAULTS``, then ``SETTINGS``, then ``ENV``."""
    out = DEFAULTS | SETTINGS
    for item in filter(None, os.environ.get(ENV, "").split(",")):
        name, _, value = (part.strip() for part in item.partition("="))
        if name not in out:
            raise ValueError(f"{ENV}: unknown SCTP setting {name!r} (known: {', '.join(FIELDS)})")
        try:
            out[name] = int(value)
        except ValueError:
            raise ValueError(f"{ENV}: {name} needs a whole number, not {value!r}") from None
    return out


def loaded(native: Any) -> ctypes.CDLL:
    """The libdatachannel/usrsctp copy inside ``native`` (a loaded extension module), never a
    second one (``RTLD_NOLOAD``); raises OSError where it is not loaded."""
    return ctypes.CDLL(native.__file__, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)


def apply(native: Any) -> dict[str, int] | None:
    """Pass ``settings()`` to the library inside ``native`` (a loaded extension module),
    once per process; returns what was applied, or None where the library has no such call
    (``native`` None included)."""
    global _applied
    if _applied is not None:  # {}: tried before, and the library had no such call
        return _applied or None
    try:
        call = loaded(native).rtcSetSctpSettings
    except (OSError, AttributeError) as exc:
        log.info("native SCTP settings left at the library's defaults: %s", exc)
        _applied = {}
        return None
    try:
        values = settings()
    except ValueError as exc:  # an admin's typo must not stop every connection
        log.error("%s; using this project's settings instead", exc)
        values = DEFAULTS | SETTINGS
    call.argtypes = [ctypes.POINTER(_Settings)]
    call.restype = ctypes.c_int
    rc = call(ctypes.byref(_Settings(**values)))
    if rc < 0:
        log.warning("rtcSetSctpSettings refused %s (error %d)", values, rc)
        _applied = {}
        return None
    _applied = values
    return values
