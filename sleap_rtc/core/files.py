"""Streamed, SHA-256 verified, resumable, content-addressed file transfer on a data channel.

Wire exchange (control messages are JSON text frames, payload only in binary frames built
by ``protocol.pack_chunk``, so nothing else can ever end up inside a file)::

    sender                                   receiver
    file_offer {transfer_id,name,size,sha256,meta} ->
                                             <- file_accept {transfer_id, offset, cached}
    binary frames (transfer_id, offset, payload) from ``offset`` to ``size`` ->
    file_end {transfer_id, size}         ->
                                             <- file_done {transfer_id, sha256, name}
                                                or file_error {transfer_id, reason, message}
    either side, any time: file_cancel {transfer_id}
                                             <- file_progress {transfer_id, received}
                                                every file_protocol.PROGRESS_INTERVAL, when
                                                the offer said progress: true

A sender that may stripe (``core.stripes``) says ``repair: true`` in its offer; its chunks
may then arrive out of order (each is written at its offset), and after ``file_end`` a
receiver still missing bytes waits ``GAP_WAIT`` for stragglers, then answers
``file_missing {transfer_id, ranges}``; the sender resends those ranges and ends again
(at most ``file_protocol.MAX_REPAIR_ROUNDS`` times). The hash runs over the contiguous prefix as it
grows (bytes that came early are read back from the partial file), and an interrupted
transfer keeps only that prefix, so resume is unchanged.

The decisions about one transfer live without I/O in ``core.file_protocol``, tested with
offsets in and decisions out: the receiver's (``IncomingTransfer``: which chunk is in
order, held ahead, a duplicate or refused; what a ``file_end`` leads to; whether an offer
is malformed or over a limit) and the sender's (``OutgoingTransfer``: the accepted offset,
when a ``file_end`` is due, which ranges to resend). This module is their driver: it does
the disk reads and writes, the hashing, the cache, flow control and the waits, and it
sends the messages.

The receiver keeps two things under ``cache_dir``: ``files/<sha256>`` (completed files,
so a re-sent unchanged file is answered with ``offset == size`` and moves no payload) and
``partial/<sha256>.part`` (bytes of an interrupted transfer, so a re-send after a
reconnect resumes at the offset it has). Partial bytes never live in the destination
directory: a file appears there only once verified. A cancel removes the partial file;
a lost connection keeps it for resume.

Limits on what a peer may send (the peer is not trusted): one file at most
``max_file_bytes`` (default ``MAX_FILE_BYTES``), at most ``max_incoming`` files at once per
channel (``MAX_INCOMING``, which also bounds the open files), and never more than the free
disk minus ``DISK_RESERVE_BYTES``; the owner may add its own ``accept_offer`` check (the
client accepts only the result files a worker announced). A refused offer gets a
``file_error`` and nothing is written. ``discard_partials`` removes the partial files this
channel wrote, for owners that do not resume across sessions (the worker, at the end of
each session, and the client once a job ended).

Nothing here prunes the cache by itself: its owner calls ``prune_transfer_cache`` (the
worker does after each job). Policy: partial files untouched for ``PARTIAL_MAX_AGE`` (a
day) are abandoned transfers and go; completed AND partial files are kept
least-recently-used first under ``CACHE_MAX_BYTES``, and none used in the last ``IN_USE_GRACE`` seconds is removed
(it may be the file a transfer is handing over right now). "Used" is the file's mtime:
written when the file arrived, touched when an offer is answered from the cache.

Transfer ids are unique per channel across both directions: the offering side (client)
uses odd ids, the answering side (worker) even ones, so ``file_cancel`` is unambiguous.

Flow control: the sender writes 64 KiB chunks while the channel buffers less than 4 MiB
and otherwise waits for aiortc's ``bufferedamountlow`` event (threshold 1 MiB); no
polling. These sizes gave the best throughput when measured (``docs/bench/transfer.md``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import itertools
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sleap_rtc.core.protocol import (
    BAD_OFFER,
    NOT_EXPECTED,
    WRITE_FAILED,
    ChannelType,
    pack_chunk,
    unpack_chunk,
)
from sleap_rtc.core import chunkfile
from sleap_rtc.core import file_protocol as fp
from sleap_rtc.core.tasks import spawn
from sleap_rtc.core.transport_errors import (
    FileTransferError,
    PeerClosedError,
    TransferCancelledError,
)

log = logging.getLogger(__name__)

CHUNK_SIZE = 64 * 1024
"""Payload bytes per binary frame."""
HIGH_WATER = 4 * 1024 * 1024
"""The sender pauses while the channel buffers more than this."""
LOW_WATER = 1 * 1024 * 1024
"""``bufferedAmountLowThreshold``: the sender resumes when the buffer drains below this."""
LANE_QUEUE_S = 0.25
"""Striped: seconds of its own measured throughput each lane may hold queued (at least
``LANE_MIN_QUEUE``, at most ``HIGH_WATER``). The receiver's verified prefix waits for the
slowest lane's queue, so a fixed 4 MiB per lane held 16 s of data on a lane moving 0.25 MB/s
(1 % loss): see docs/bench/lab_transfer.md."""
MAX_PATH_RTT = 1.0
"""Cap on ``FileTransfers.path_rtt``: a receiver that hashes a partial file before it
accepts makes the first round trip look long."""
LANE_MIN_QUEUE = 256 * 1024
"""Striped: what a lane may always hold queued (a lane just opened has no measured rate)."""

ACCEPT_TIMEOUT = 60.0
"""Seconds to wait for ``file_accept`` (the receiver may re-hash a large partial file)."""
DONE_TIMEOUT = 120.0
"""Seconds to wait for ``file_done`` after ``file_end`` (the receiver copies into its cache)."""
STALL_TIMEOUT = 30.0
"""Seconds the send buffer may stay full before the transfer is declared stalled."""

CACHE_MAX_BYTES = 4 * 1024**3
"""Default cap on the completed files of a transfer cache (``prune_transfer_cache``)."""
PARTIAL_MAX_AGE = 24 * 3600.0
"""Seconds after which an untouched partial file counts as abandoned and is removed."""
IN_USE_GRACE = 600.0
"""Completed files used within this many seconds are never pruned, whatever the cap."""

GAP_WAIT = 1.0
"""Seconds a receiver missing bytes at ``file_end`` waits for chunks still in flight on
other stripes (no progress for this long: it asks for the missing ranges)."""
MAX_FILE_BYTES = 64 * 1024**3
"""Default cap on one incoming file (a package or a result); a larger offer is refused."""
MAX_INCOMING = 4
"""Most files one channel may be receiving at once (each holds an open file)."""
DISK_RESERVE_BYTES = 1024**3
"""Free disk an accepted offer must leave behind (checked against what is still to come)."""

OfferCheck = Callable[[str, int, str, dict], Any]
"""``accept_offer(name, size, sha256, meta)``: ``None`` to accept, else the refusal message
(or an awaitable of either)."""

_BAD_CHARS = re.compile(r'[\x00-\x1f\x7f<>:"|?*]')
_MAX_NAME = 200

Progress = Callable[[int, int], Any]
"""``progress(bytes_done, size)``, called as bytes are handed to the channel."""


@dataclass(frozen=True)
class FileReceipt:
    """What the sender learns once the receiver verified a file."""

    name: str
    size: int
    sha256: str
    bytes_sent: int
    """Payload bytes actually sent: 0 when cached, ``size - offset`` when resumed."""
    cached: bool
    """The receiver already had the file (content cache): nothing was sent."""


@dataclass(frozen=True)
class ReceivedFile:
    """A verified file that arrived from the peer."""

    path: Path
    name: str
    size: int
    sha256: str
    meta: dict[str, Any] = field(default_factory=dict)
    bytes_received: int = 0
    cached: bool = False
    transfer_id: int = 0


def sanitize_name(name: Any, fallback: str = "file") -> str:
    """A file name that is data, never a path: last component only, no ``..``, no odd chars.

    Both ``/`` and ``\\`` separate components (a Windows sender's path must not escape),
    control characters and characters Windows refuses are replaced with ``_``, and an empty
    result, ``.`` or ``..`` becomes ``fallback``.
    """
    text = str(name) if name is not None else ""
    text = re.split(r"[\\/]", text)[-1]
    text = _BAD_CHARS.sub("_", text).strip().rstrip(".")
    if text in {"", ".", ".."}:
        return fallback
    if len(text) > _MAX_NAME:
        stem, dot, ext = text.rpartition(".")
        text = (stem[: _MAX_NAME - len(ext) - 1] + dot + ext) if dot and len(ext) < 20 else text[:_MAX_NAME]
    return text


PRIVATE_DIR_MODE = 0o700
"""Mode of the transfer cache and receive folders this module creates (owner only)."""
PRIVATE_FILE_MODE = 0o600
"""Mode of every file received (partial, cached, placed)."""


def _private_dir(path: Path) -> None:
    # Parents the caller did not own keep their mode; the folders made here are owner-only.
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)


NEW_NAME_TRIES = 1000
"""Most ``-2``, ``-3`` ... suffixes ``place_new`` tries before giving up."""


def _candidates(dest: Path, is_dir: bool):
    yield dest
    if is_dir:
        suffix = ""
    elif dest.name.endswith(".predictions.slp"):
        suffix = ".predictions.slp"
    else:
        suffix = dest.suffix
    stem = dest.name[: len(dest.name) - len(suffix)] if suffix else dest.name
    for n in range(2, NEW_NAME_TRIES + 1):
        yield dest.with_name(f"{stem}-{n}{suffix}")


def place_new(src: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Move ``src`` (a file or a folder) to ``dest``, or to ``dest`` with a ``-N`` suffix
    when that exists: an existing file or folder is never replaced. Returns where it went.

    Both must be on one file system. Files are hard-linked then unlinked (``link`` fails
    on an existing name, so there is no window to overwrite); a folder takes a name by
    ``mkdir`` (exclusive) and is renamed onto that empty folder.
    """
    src, dest = Path(src), Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    for cand in _candidates(dest, src.is_dir()):
        try:
            if src.is_dir():
                cand.mkdir()
                try:
                    os.rename(src, cand)
                except OSError:
                    cand.rmdir()
                    raise
            else:
                os.link(src, cand)
                src.unlink()
            return cand
        except FileExistsError:
            continue
    raise FileExistsError(f"{dest} and its first {NEW_NAME_TRIES} numbered variants all exist.")


def sha256_file(path: str | os.PathLike, *, limit: int | None = None) -> tuple[int, Any]:
    """Hash a file (or its first ``limit`` bytes) streaming; returns ``(size, hasher)``."""
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as fh:
        while limit is None or n < limit:
            want = 1024 * 1024 if limit is None else min(1024 * 1024, limit - n)
            block = fh.read(want)
            if not block:
                break
            h.update(block)
            n += len(block)
    return n, h


class Link(Protocol):
    """What ``FileTransfers`` needs from the channel (``PeerChannel`` implements it)."""

    chunk_filter: Callable[[int, bytes], bytes] | None

    def send_control(self, msg: dict[str, Any]) -> None:
        """Send one JSON control message now; ``PeerClosedError`` once closed."""

    def send_binary(self, data: bytes) -> None:
        """Send one binary file frame now; ``PeerClosedError`` once closed."""

    @property
    def buffered_amount(self) -> int:
        """Bytes queued in the channel and not yet sent (for flow control)."""

    async def drain(self, timeout: float) -> None:
        """Wait until the send buffer drains below ``LOW_WATER``; ``PeerClosedError`` on timeout."""

    async def guard(self, aw: Any, timeout: float | None) -> Any:
        """Await ``aw`` unless the channel closes first or ``timeout`` passes."""


@dataclass
class _Outgoing:
    """One file being sent: its state (``file_protocol.OutgoingTransfer``) and the futures
    the receiver's answers resolve."""

    state: fp.OutgoingTransfer
    accept: asyncio.Future
    done: asyncio.Future
    missing: asyncio.Future | None = None

    @property
    def transfer_id(self) -> int:
        """The transfer's id on this channel."""
        return self.state.transfer_id


@dataclass
class _Incoming:
    """One incoming file: its state machine (``file_protocol.IncomingTransfer``) and the I/O
    that goes with it."""

    state: fp.IncomingTransfer
    part_path: Path | None = None
    fh: Any = None
    hasher: Any = None
    progressed: asyncio.Event = field(default_factory=asyncio.Event)
    accepted_at: float | None = None
    """``time.monotonic()`` when ``file_accept`` went out, until the first chunk came."""

    @property
    def pos(self) -> int:
        """The verified contiguous prefix (``IncomingTransfer.pos``)."""
        return self.state.pos


class _LaneQueues:
    """How much each lane of a striped send may hold queued: ``LANE_QUEUE_S`` of what it
    drained since it joined this stream (``LANE_MIN_QUEUE`` .. ``HIGH_WATER``). A slow lane
    thus holds little, so the receiver's in-order prefix does not wait seconds behind it,
    while a fast one keeps enough to never run dry. Each lane's buffered-low threshold is a
    quarter of its allowance, so the sender wakes while the lane still has data to send."""

    def __init__(self) -> None:
        self._given: dict[int, tuple[Any, float, int]] = {}  # id(lane) -> (lane, first send, bytes given)

    def allowance(self, lane: Any) -> int:
        """Bytes ``lane`` may hold queued now."""
        entry = self._given.get(id(lane))
        if entry is None:
            return LANE_MIN_QUEUE
        _lane, t0, given = entry
        rate = max(0, given - lane.buffered_amount) / max(1e-3, time.monotonic() - t0)
        return int(min(HIGH_WATER, max(LANE_MIN_QUEUE, rate * LANE_QUEUE_S)))

    def fits(self, lane: Any) -> bool:
        """Whether ``lane`` has room for one more chunk."""
        return lane.buffered_amount + CHUNK_SIZE <= self.allowance(lane)

    def pick(self, lanes: list[Any]) -> Any:
        """The lane with the most room (relative to its allowance), or None when all are full."""
        best, best_room = None, 0.0
        for lane in lanes:
            allowance = self.allowance(lane)
            room = (allowance - lane.buffered_amount - CHUNK_SIZE) / allowance
            if room >= 0 and (best is None or room > best_room):
                best, best_room = lane, room
            threshold = allowance // 4
            conn = getattr(lane, "conn", None)
            if conn is not None and abs(conn.low_threshold - threshold) > threshold // 4:
                conn.low_threshold = threshold
        return best

    def sent(self, lane: Any, n: int) -> None:
        """``n`` payload bytes were handed to ``lane``."""
        entry = self._given.get(id(lane))
        self._given[id(lane)] = (lane, entry[1], entry[2] + n) if entry else (lane, time.monotonic(), n)

    def reset(self, link: Any) -> None:
        """Back to one lane: the channel's own threshold again (``LOW_WATER``)."""
        conn = getattr(link, "conn", None)
        if conn is not None and conn.low_threshold != LOW_WATER:
            conn.low_threshold = LOW_WATER


class FileTransfers:
    """Both directions of file transfer on one channel (owned by a ``PeerChannel``).

    ``deliver(received_file)`` is called for each verified incoming file.
    """

    def __init__(
        self,
        link: Link,
        *,
        receive_dir: Path,
        cache_dir: Path,
        odd_ids: bool,
        deliver: Callable[[ReceivedFile], None],
        max_file_bytes: int = MAX_FILE_BYTES,
        max_incoming: int = MAX_INCOMING,
        disk_reserve_bytes: int = DISK_RESERVE_BYTES,
        accept_offer: OfferCheck | None = None,
    ):
        self.max_file_bytes = max_file_bytes
        """Cap on one incoming file (owners may lower it after construction)."""
        self.max_incoming = max_incoming
        """Most concurrent incoming files on this channel."""
        self.disk_reserve_bytes = disk_reserve_bytes
        """Free disk an accepted offer must leave."""
        self.accept_offer = accept_offer
        """The owner's own offer check (``OfferCheck``), or ``None``."""
        self.link_kinds: frozenset[str] = frozenset()
        """Offer ``meta.kind`` values delivered as hard links to the cached file (``_place``)."""
        self.partials: set[Path] = set()
        """Partial files this channel created or resumed (``discard_partials`` removes them)."""
        self.last_activity = time.monotonic()
        """``time.monotonic()`` of the last file message or chunk from the peer."""
        self.link = link
        self.receive_dir = Path(receive_dir)
        self.cache_dir = Path(cache_dir)
        self._ids = itertools.count(1 if odd_ids else 2, 2)
        self._deliver = deliver
        self._outgoing: dict[int, _Outgoing] = {}
        self._incoming: dict[int, _Incoming] = {}
        self._tasks: set[asyncio.Task] = set()
        self.bytes_moved = 0
        """Payload bytes sent plus received on this channel."""
        self.bytes_delivered = 0
        """Payload bytes received here plus those the peer reported receiving of ours
        (``file_progress``): unlike ``bytes_moved``, no byte still queued in a send buffer."""
        self.delivery_reported = False
        """Whether the peer has reported (``file_progress``): else ``bytes_delivered`` misses
        what we send (an older peer)."""
        self.path_rtt: float | None = None
        """Seconds of the last transfer's first round trip (``file_offer`` to ``file_accept``,
        or ``file_accept`` to the first chunk), at most ``MAX_PATH_RTT``; None before one."""
        self.offer_rtt: float | None = None
        """Seconds from the last ``file_offer`` sent here to its ``file_accept`` (at most
        ``MAX_PATH_RTT``): the path's round trip, where the first chunk's arrival also counts the
        sender's slow start on a new connection (several round trips for one 64 KiB frame); None
        where this side only received."""

    @property
    def active(self) -> bool:
        """True while any transfer runs, either direction."""
        return bool(self._outgoing or self._incoming)

    def throughput_count(self) -> int:
        """The byte count stripe growth samples: ``bytes_delivered``, or ``bytes_moved``
        while we send to a peer that does not report."""
        return self.bytes_moved if self._outgoing and not self.delivery_reported else self.bytes_delivered

    def incoming_progress(self) -> list[tuple[str, int, int]]:
        """``(name, verified, size)`` of each file being received: ``verified`` is the
        contiguous prefix hashed so far (bytes that arrived early are not counted yet)."""
        return [(t.name, t.pos, t.size) for t in (st.state for st in self._incoming.values()) if t.ready]

    # ------------------------------------------------------------------ sending

    async def send_file(
        self,
        path: str | os.PathLike,
        *,
        name: str | None = None,
        meta: dict[str, Any] | None = None,
        progress: Progress | None = None,
        sha256: str | None = None,
    ) -> FileReceipt:
        """Send one file; returns once the receiver verified it (see ``PeerChannel.send_file``)."""
        path = Path(path)
        if not path.is_file():
            raise FileTransferError(f"Not a file: {path}")
        if sha256 is None:
            size, hasher = await asyncio.to_thread(sha256_file, path)
            sha = hasher.hexdigest()
        else:  # the caller hashed it already; the receiver still verifies every byte
            size, sha = path.stat().st_size, sha256
        wire_name = sanitize_name(name if name is not None else path.name)
        loop = asyncio.get_running_loop()
        tid = next(self._ids)
        state = fp.OutgoingTransfer(tid, wire_name, size)
        st = _Outgoing(state, loop.create_future(), loop.create_future(), loop.create_future())
        self._outgoing[tid] = st
        finished = False
        stripes = getattr(self.link, "stripes", None)
        try:
            if stripes is not None:
                stripes.prepare(size)
            self.link.send_control(
                {"type": ChannelType.FILE_OFFER.value, "transfer_id": tid, "name": wire_name,
                 "size": size, "sha256": sha, "meta": dict(meta or {}), "repair": True, "progress": True}
            )
            offered = time.monotonic()
            todo = state.on_accept(await self.link.guard(st.accept, ACCEPT_TIMEOUT))
            self.offer_rtt = self._round_trip(offered)
            if isinstance(todo, fp.Fail):
                raise FileTransferError(todo.message)
            if stripes is not None:
                stripes.transfer_started(size - state.offset)
            with open(path, "rb") as fh:
                sent = await self._stream(fh, path, st, todo.ranges, size, progress)
                while True:
                    end = state.next_end()
                    if isinstance(end, fp.Fail):
                        raise FileTransferError(end.message)
                    self.link.send_control({"type": ChannelType.FILE_END.value, "transfer_id": tid, "size": size})
                    ranges = await self.link.guard(self._done_or_missing(st), DONE_TIMEOUT)
                    if ranges is None:
                        break
                    todo = state.on_missing(ranges)
                    if isinstance(todo, fp.Fail):
                        raise FileTransferError(todo.message)
                    log.info("resending %d range(s) of %r the receiver missed", len(ranges), wire_name)
                    sent += await self._stream(fh, path, st, todo.ranges, size, None)
            finished = True
            return FileReceipt(name=wire_name, size=size, sha256=sha, bytes_sent=sent, cached=state.cached)
        except TimeoutError:
            raise FileTransferError(f"Transfer of {wire_name!r} timed out waiting for the receiver.") from None
        finally:
            self._outgoing.pop(tid, None)
            for fut in (st.accept, st.done, st.missing):
                if fut is not None and fut.done() and not fut.cancelled():
                    fut.exception()  # mark retrieved: the error is already reported
            if not finished:
                # Cancelled by our caller or failed: tell the receiver to drop its state.
                with contextlib.suppress(Exception):
                    self.link.send_control({"type": ChannelType.FILE_CANCEL.value, "transfer_id": tid})

    async def _done_or_missing(self, st: _Outgoing) -> list[tuple[int, int]] | None:
        """Wait for ``file_done`` (None) or ``file_missing`` (the ranges to resend)."""
        await asyncio.wait({st.done, st.missing}, return_when=asyncio.FIRST_COMPLETED)
        if st.done.done():
            st.done.result()  # raises the receiver's refusal
            return None
        ranges = st.missing.result()
        st.missing = asyncio.get_running_loop().create_future()
        return ranges

    async def _stream(
        self, fh: Any, path: Path, st: _Outgoing, ranges: Iterable[tuple[int, int]], size: int, progress: Progress | None
    ) -> int:
        """Send ``ranges`` of the file in ``CHUNK_SIZE`` frames, each to the least loaded lane
        (the channel itself, or a stripe: ``core.stripes``); returns the payload bytes sent.

        A stripe that fails a send is dropped and its chunk goes to another lane; chunks it
        had in flight come back as ``file_missing`` ranges. Only the channel failing ends it.
        """
        link = self.link
        stripes = getattr(link, "stripes", None)
        tid = st.transfer_id
        sent = 0
        todo = fp.chunks(ranges, CHUNK_SIZE)
        todo.reverse()  # pop() from the end: in file order
        queues = _LaneQueues()
        try:
            while todo:
                if st.done.done():  # the receiver cancelled or failed the transfer
                    st.done.result()
                lanes = stripes.send_lanes() if stripes is not None and stripes.lanes else [link]
                if len(lanes) == 1:
                    lane = link
                    if link.buffered_amount > HIGH_WATER:
                        queues.reset(link)
                        if stripes is None:
                            await link.drain(STALL_TIMEOUT)
                        else:
                            # A stripe opening ends the wait too: on a lossy link HIGH_WATER of
                            # the primary's drains for seconds while the first stripes open.
                            await stripes.drain_any(lambda lane: lane is not link or link.drained, STALL_TIMEOUT)
                        continue
                else:
                    lane = queues.pick(lanes)
                    if lane is None:
                        await stripes.drain_any(queues.fits, STALL_TIMEOUT)
                        continue
                pos, n = todo.pop()
                fh.seek(pos)
                chunk = fh.read(n)
                if len(chunk) != n:
                    raise FileTransferError(f"{path} shrank while it was being sent.")
                if link.chunk_filter is not None:
                    chunk = link.chunk_filter(pos, chunk)
                try:
                    lane.send_binary(pack_chunk(tid, pos, chunk))
                except PeerClosedError:
                    if lane is link:
                        raise
                    todo.append((pos, n))  # a stripe died: this chunk goes elsewhere
                    continue
                queues.sent(lane, n)
                sent += n
                self.bytes_moved += n
                if progress is not None:
                    progress(min(size, pos + n), size)
                if len(lanes) > 1 and sent % (16 * CHUNK_SIZE) == 0:
                    await asyncio.sleep(0)  # let the other lanes' events in
        finally:
            queues.reset(link)
        return sent

    # ------------------------------------------------------------------ receiving

    def on_control(self, msg: dict[str, Any]) -> None:
        """Handle one ``file_*`` control message from the peer."""
        kind = msg.get("type")
        tid = msg.get("transfer_id")
        self.last_activity = time.monotonic()
        if not isinstance(tid, int):
            log.warning("ignoring %s without an integer transfer_id", kind)
            return
        if kind == ChannelType.FILE_OFFER:
            size = msg.get("size")
            stripes = getattr(self.link, "stripes", None)
            if stripes is not None and isinstance(size, int):
                stripes.transfer_started(size)
            self._spawn(self._on_offer(msg))
        elif kind == ChannelType.FILE_END:
            st = self._incoming.get(tid)
            if st is not None and st.state.end_arrived():
                self._spawn(self._on_end(st, msg))
        elif kind == ChannelType.FILE_MISSING:
            out = self._outgoing.get(tid)
            ranges = chunkfile.parse_ranges(msg.get("ranges"))
            if out is not None and out.missing is not None and not out.missing.done():
                if ranges is None:
                    self._fail_outgoing(out, FileTransferError("The receiver sent malformed missing ranges."))
                else:
                    out.missing.set_result(ranges)
        elif kind == ChannelType.FILE_PROGRESS:
            out = self._outgoing.get(tid)
            if out is not None:
                self.bytes_delivered += out.state.on_progress(msg)
                self.delivery_reported = True
        elif kind == ChannelType.FILE_ACCEPT:
            out = self._outgoing.get(tid)
            if out is not None and not out.accept.done():
                out.accept.set_result(msg)
        elif kind == ChannelType.FILE_DONE:
            out = self._outgoing.get(tid)
            if out is not None and not out.done.done():
                out.done.set_result(msg)
        elif kind == ChannelType.FILE_ERROR:
            out = self._outgoing.get(tid)
            if out is not None:
                self._fail_outgoing(out, fp.refusal_error(msg))
            elif tid in self._incoming:
                self._drop_incoming(tid, remove_partial=True)
        elif kind == ChannelType.FILE_CANCEL:
            out = self._outgoing.get(tid)
            if out is not None:
                self._fail_outgoing(out, TransferCancelledError("The peer cancelled the transfer."))
            if tid in self._incoming:
                log.info("transfer %d cancelled by the sender", tid)
                self._drop_incoming(tid, remove_partial=True)

    def on_chunk(self, frame: bytes) -> None:
        """Write one binary frame to its transfer's partial file."""
        self.last_activity = now = time.monotonic()
        try:
            tid, offset, payload = unpack_chunk(frame)
        except ValueError:
            log.warning("dropping a malformed binary frame")
            return
        st = self._incoming.get(tid)
        if st is None:
            return  # a transfer that was cancelled or failed: late frames are expected
        if st.accepted_at is not None:
            self._round_trip(st.accepted_at, now)
            st.accepted_at = None
        n = len(payload)
        todo = st.state.on_chunk(offset, n)
        if isinstance(todo, (fp.Ignore, fp.Duplicate)):
            return
        if isinstance(todo, fp.Refuse):
            self._refuse(st, todo.reason, todo.message)
            return
        try:
            chunkfile.write_at(st.fh, offset, payload)
            if isinstance(todo, fp.WriteAhead):
                st.state.held(offset, n)
            else:
                st.hasher.update(payload)
                st.state.advanced(n)
                for at, length in todo.then_in_order:  # bytes that came early, now in order
                    st.hasher.update(chunkfile.read_at(st.fh, at, length))
                    st.state.advanced(length)
        except OSError as exc:
            self._refuse(st, WRITE_FAILED, f"Cannot write {st.state.name!r}: {exc}")
            return
        self.bytes_moved += n
        self.bytes_delivered += n
        st.progressed.set()
        if st.state.progress_due(now):
            self._send({"type": ChannelType.FILE_PROGRESS.value, "transfer_id": tid, "received": st.state.arrived})

    def discard_partials(self) -> list[Path]:
        """Remove the partial files this channel wrote that no transfer is writing now."""
        busy = {st.part_path for st in self._incoming.values() if st.part_path is not None}
        removed = []
        for path in list(self.partials):
            if path in busy:
                continue
            self.partials.discard(path)
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
        return removed

    def on_closed(self) -> None:
        """The channel closed: close partial files (kept for resume), fail pending sends."""
        for tid in list(self._incoming):
            self._drop_incoming(tid, remove_partial=False)
        for task in list(self._tasks):
            task.cancel()

    # ------------------------------------------------------------------ internals

    def _spawn(self, coro: Any) -> None:
        task = spawn(coro, name="file-transfer")  # held, and a failure is logged at once
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _fail_outgoing(self, out: _Outgoing, exc: Exception) -> None:
        for fut in (out.accept, out.done):
            if not fut.done():
                fut.set_exception(exc)
        if out.missing is not None and not out.missing.done():
            out.missing.cancel()

    def _round_trip(self, since: float, now: float | None = None) -> float:
        self.path_rtt = min(MAX_PATH_RTT, (time.monotonic() if now is None else now) - since)
        return self.path_rtt

    def _send(self, msg: dict[str, Any]) -> None:
        with contextlib.suppress(PeerClosedError):
            self.link.send_control(msg)

    def _refuse(self, st: _Incoming, reason: str, message: str) -> None:
        tid = st.state.transfer_id
        log.warning("refusing transfer %d (%s): %s", tid, reason, message)
        self._send({"type": ChannelType.FILE_ERROR.value, "transfer_id": tid, "reason": reason, "message": message})
        self._drop_incoming(tid, remove_partial=True)

    def _drop_incoming(self, tid: int, *, remove_partial: bool) -> None:
        st = self._incoming.pop(tid, None)
        if st is None:
            return
        if st.fh is not None:
            with contextlib.suppress(OSError):
                cut = st.state.truncate_to
                if not remove_partial and cut is not None:
                    st.fh.truncate(cut)  # keep only the verified-in-order prefix for resume
                st.fh.close()
            st.fh = None
        if remove_partial and st.part_path is not None:
            with contextlib.suppress(OSError):
                st.part_path.unlink()

    def _limit_refusal(self, name: str, size: int, sha: str) -> fp.Refuse | None:
        """The refusal when an offer breaks a limit, else ``None`` (nothing written yet)."""
        refusal = fp.limit_problem(name, size, max_file_bytes=self.max_file_bytes,
                                   receiving=len(self._incoming), max_incoming=self.max_incoming)
        if refusal is not None:
            return refusal
        cached = self._cached_path(sha)
        if not (cached.is_file() and cached.stat().st_size == size):
            part = self.cache_dir / "partial" / f"{sha}.part"
            have = part.stat().st_size if part.is_file() else 0
            probe = self.cache_dir if self.cache_dir.exists() else self.cache_dir.parent
            while not probe.exists() and probe != probe.parent:
                probe = probe.parent
            try:
                free = shutil.disk_usage(probe).free
            except OSError:
                free = 0
            return fp.space_problem(name, size, have=have, free=free, reserve=self.disk_reserve_bytes)
        return None

    def _cached_path(self, sha: str) -> Path:
        return self.cache_dir / "files" / sha

    async def _on_offer(self, msg: dict[str, Any]) -> None:
        tid = msg["transfer_id"]
        bad = fp.offer_problem(msg, (st.state for st in self._incoming.values()))
        if bad:
            self._send({"type": ChannelType.FILE_ERROR.value, "transfer_id": tid, "reason": BAD_OFFER, "message": bad})
            return
        size, sha, meta = msg["size"], msg["sha256"], msg.get("meta") or {}
        name = sanitize_name(msg.get("name"), fallback=f"file-{sha[:12]}")
        refusal = self._limit_refusal(name, size, sha)
        if refusal is None and self.accept_offer is not None:
            text = self.accept_offer(name, size, sha, meta)
            if inspect.isawaitable(text):
                text = await text
            refusal = fp.Refuse(NOT_EXPECTED, text) if text else None
        if refusal:
            log.warning("refusing offer %d of %r (%d bytes): %s", tid, name, size, refusal.message)
            self._send({"type": ChannelType.FILE_ERROR.value, "transfer_id": tid, "reason": refusal.reason,
                        "message": refusal.message})
            return
        state = fp.IncomingTransfer.from_offer(msg, name)
        st = _Incoming(state)
        self._incoming[tid] = st
        try:
            cached = self._cached_path(sha)
            if cached.is_file() and cached.stat().st_size == size:
                state.from_cache()
                os.utime(cached)  # a use: the LRU pruning goes by mtime
            else:
                part = self.cache_dir / "partial" / f"{sha}.part"
                _private_dir(part.parent)
                have = state.resume_offset(part.stat().st_size if part.is_file() else 0)
                # Resume: the running hash must cover the bytes already on disk.
                have, hasher = await asyncio.to_thread(sha256_file, part, limit=have) if have else (0, hashlib.sha256())
                self.partials.add(part)
                fh = os.fdopen(os.open(part, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), PRIVATE_FILE_MODE), "r+b")
                fh.truncate(have)
                fh.seek(have)
                st.part_path, st.fh, st.hasher = part, fh, hasher
                state.resumed(have)
            if self._incoming.get(tid) is not st:
                return  # cancelled while we were preparing
            offset = state.accept()
            st.accepted_at = None if state.cached else time.monotonic()
            self._send({"type": ChannelType.FILE_ACCEPT.value, "transfer_id": tid, "offset": offset, "cached": state.cached})
        except OSError as exc:
            self._refuse(st, WRITE_FAILED, f"Cannot store {name!r}: {exc}")

    async def _on_end(self, st: _Incoming, msg: dict[str, Any]) -> None:
        state = st.state
        tid = state.transfer_id
        todo = state.on_end()
        if isinstance(todo, fp.WaitForStragglers):
            # Chunks may still be in flight on other stripes: wait while they keep coming.
            while not state.complete and self._incoming.get(tid) is st:
                st.progressed.clear()
                try:
                    await asyncio.wait_for(st.progressed.wait(), GAP_WAIT)
                except asyncio.TimeoutError:
                    break
            if self._incoming.get(tid) is not st:
                return
            todo = state.on_end(waited=True)
        if isinstance(todo, fp.AskMissing):
            self._send({"type": ChannelType.FILE_MISSING.value, "transfer_id": tid,
                        "ranges": [[at, length] for at, length in todo.ranges]})
            return
        if isinstance(todo, fp.Refuse):
            self._refuse(st, todo.reason, todo.message)
            return
        try:
            if not todo.cached:
                st.fh.close()
                st.fh = None
                wrong = state.digest_problem(st.hasher.hexdigest())
                if wrong is not None:
                    self._refuse(st, wrong.reason, wrong.message)
                    return
                final = self._cached_path(state.sha256)
                _private_dir(final.parent)
                os.replace(st.part_path, final)
                st.part_path = None
            dest = await asyncio.to_thread(self._place, state)
        except OSError as exc:
            self._refuse(st, WRITE_FAILED, f"Cannot store {state.name!r}: {exc}")
            return
        if self._incoming.get(tid) is not st:
            dest.unlink(missing_ok=True)  # cancelled meanwhile
            return
        self._incoming.pop(tid, None)
        self._send({"type": ChannelType.FILE_DONE.value, "transfer_id": tid, "sha256": state.sha256, "name": state.name})
        self._deliver(
            ReceivedFile(path=dest, name=state.name, size=state.size, sha256=state.sha256, meta=state.meta,
                         bytes_received=state.received, cached=state.cached, transfer_id=tid)
        )

    def _place(self, st: fp.IncomingTransfer) -> Path:
        """Copy the cached file to the destination atomically (a copy, not a link, so that
        editing the received file can never corrupt the cache). A file whose offer's
        ``meta.kind`` is in ``link_kinds`` (the worker's videos: only ever read) is
        hard-linked where it can be: a copy of a large video per job would cost what the
        cache saves."""
        _private_dir(self.receive_dir)
        dest = self.receive_dir / st.name
        tmp = self.receive_dir / f".{st.name}.{st.transfer_id}.tmp"
        try:
            if st.meta.get("kind") in self.link_kinds:
                with contextlib.suppress(OSError):
                    os.link(self._cached_path(st.sha256), tmp)
            if not tmp.exists():
                shutil.copyfile(self._cached_path(st.sha256), tmp)
            os.chmod(tmp, PRIVATE_FILE_MODE)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return dest


def prune_transfer_cache(
    cache_dir: str | os.PathLike,
    *,
    max_bytes: int = CACHE_MAX_BYTES,
    partial_max_age: float = PARTIAL_MAX_AGE,
    grace: float = IN_USE_GRACE,
    now: float | None = None,
) -> list[Path]:
    """Apply the cache policy (module docstring) to ``cache_dir``; returns the removed files.

    Partial files older than ``partial_max_age`` go; completed and partial files go least
    recently used first until the rest fit in ``max_bytes``, except those used within ``grace``
    seconds. Only ``files/`` and ``partial/`` of ``cache_dir`` are looked at, and a file
    that cannot be removed (or vanished meanwhile) is skipped: pruning never fails a job.
    """
    now = time.time() if now is None else now
    root = Path(cache_dir)
    removed: list[Path] = []

    def entries(sub: str) -> list[tuple[Path, os.stat_result]]:
        try:
            paths = list((root / sub).iterdir())
        except OSError:
            return []
        out = []
        for path in paths:
            with contextlib.suppress(OSError):
                st = path.lstat()
                if path.is_file() and not path.is_symlink():
                    out.append((path, st))
        return out

    def remove(path: Path) -> None:
        with contextlib.suppress(OSError):
            path.unlink()
            removed.append(path)

    partials = []
    for path, st in entries("partial"):
        if now - st.st_mtime > partial_max_age:
            remove(path)
        else:
            partials.append((path, st))
    kept, full = 0, False
    # Partial files count against the cap too (else a peer fills the disk outside it).
    for path, st in sorted(entries("files") + partials, key=lambda e: e[1].st_mtime, reverse=True):
        full = full or kept + st.st_size > max_bytes  # from here on, everything older goes
        if not full or now - st.st_mtime < grace:
            kept += st.st_size
        else:
            remove(path)
    if removed:
        log.info("pruned %d file(s) from the transfer cache %s", len(removed), root)
    return removed
