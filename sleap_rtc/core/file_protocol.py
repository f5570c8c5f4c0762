"""One file transfer without I/O, both sides: offsets and answers in, decisions out.

``IncomingTransfer`` holds what a receiver knows of one incoming file (its offer, the
verified contiguous prefix ``pos``, the chunks held ahead of it) and decides what each
event means, in the manner of ``core.channel_protocol``: it never opens a file, hashes a
byte, awaits or reads a clock. ``FileTransfers`` (``core.files``) is its I/O driver: it
writes and hashes the bytes, waits for stragglers, and reports back what it did
(``held``, ``advanced``); tests drive it with offsets alone.

* ``offer_problem(msg, incoming)``, ``limit_problem`` and ``space_problem``: whether a
  ``file_offer`` is refused before anything is written.
* ``on_chunk(offset, n)`` -> ``Ignore`` | ``Duplicate`` | ``Refuse`` | ``WriteAhead`` |
  ``WriteInOrder`` for one binary frame of ``n`` payload bytes.
* ``end_arrived()`` (whether a ``file_end`` is to be handled at all), then
  ``on_end(waited)`` -> ``WaitForStragglers`` | ``AskMissing`` | ``Refuse`` | ``Verify``,
  and ``digest_problem(hexdigest)`` once the bytes are all there.

The rules, all of them here:

* Chunks of a sender without ``repair`` must arrive in order. A ``repair`` sender's may
  come in any order: one beyond ``pos`` is held (written at its offset, its extent kept in
  a ``chunkfile.Ahead``; at most ``MAX_PENDING_CHUNKS``, none overlapping), and once the
  gap before it fills it is read back and hashed in order. A chunk of such a sender that
  repeats one already held, or lies wholly inside the prefix, is a resend whose first copy
  came late: ignored. Anything else that does not fit is refused (``BAD_OFFSET``).
* At ``file_end`` a complete file is verified. A ``repair`` transfer still missing bytes
  first waits for chunks in flight on other stripes (how long is the driver's:
  ``files.GAP_WAIT`` without progress), then asks for the missing ranges
  (``MAX_MISSING_RANGES`` per round) and waits for the next ``file_end``; after
  ``MAX_REPAIR_ROUNDS`` rounds, or at once without ``repair``, it is refused
  (``INCOMPLETE``).
* An interrupted transfer keeps only its prefix (``truncate_to``), so a resume starts
  at a verified offset.
* A sender that says ``progress: true`` in its offer is told, every ``PROGRESS_INTERVAL``
  while bytes arrive, how many this session wrote (``file_progress {transfer_id, received}``,
  ``progress_due``): what reached the receiver, where the sender's own count includes the
  megabytes still queued in its send buffers (stripe growth samples it, ``core.stripes``).

The send side of one transfer, ``OutgoingTransfer``, is the same kind of object: what the
answers of the receiver (``file_accept``, ``file_missing``) ask to stream next, what its
``file_progress`` reports add (``on_progress``), when a
``file_end`` is due and when the sender gives up (after ``MAX_REPAIR_ROUNDS`` repairs, or
on an answer that does not fit the file); ``chunks`` cuts ranges into frames.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sleap_rtc.core import chunkfile
from sleap_rtc.core.protocol import (
    BAD_OFFSET,
    FILE_TOO_LARGE,
    INCOMPLETE,
    NO_SPACE,
    SHA256_MISMATCH,
    TOO_MANY_TRANSFERS,
)
from sleap_rtc.core.transport_errors import FileTransferError, IntegrityError

MAX_REPAIR_ROUNDS = 8
"""How often one transfer may ask for / resend missing ranges before it fails."""
MAX_MISSING_RANGES = 1024
"""Ranges named in one ``file_missing`` (the rest are asked for in the next round)."""
PROGRESS_INTERVAL = 0.25
"""Seconds between a receiver's ``file_progress`` reports (each ~60 bytes, going the way
that carries no payload): six per growth sample (``stripes.SAMPLE_INTERVAL``)."""
MAX_PENDING_CHUNKS = 4096
"""Chunks a receiver holds ahead of its contiguous prefix (on disk; only their offsets in
memory): 256 MiB of look-ahead, far more than lanes x ``HIGH_WATER`` in flight."""

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
"""What an offer's ``sha256`` must look like (it names files in the cache)."""


# ------------------------------------------------------------------ decisions


@dataclass(frozen=True)
class Ignore:
    """Drop the chunk: the transfer is not accepted (yet), so a late frame is no error."""


@dataclass(frozen=True)
class Duplicate:
    """A resent chunk whose first copy arrived after all: drop it, nothing changes."""


@dataclass(frozen=True)
class Refuse:
    """Fail the transfer: answer ``file_error {reason, message}`` and remove the partial file."""

    reason: str
    message: str


@dataclass(frozen=True)
class WriteAhead:
    """Write the chunk at ``offset`` (beyond the prefix, not hashed yet), then call ``held``."""

    offset: int


@dataclass(frozen=True)
class WriteInOrder:
    """Write and hash the chunk at ``offset`` (it continues the prefix) and call ``advanced(n)``;
    then read back and hash each held chunk ``(at, length)`` of ``then_in_order``, in order,
    calling ``advanced(length)`` after each."""

    offset: int
    then_in_order: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class WaitForStragglers:
    """Bytes are missing: wait while chunks in flight on other stripes keep arriving, then
    call ``on_end(waited=True)``."""


@dataclass(frozen=True)
class AskMissing:
    """Send ``file_missing`` with these ``(offset, length)`` ranges; a new ``file_end`` follows."""

    ranges: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Verify:
    """Every byte is there: check the hash (unless ``cached``) and hand the file over."""

    cached: bool


ChunkDecision = Ignore | Duplicate | Refuse | WriteAhead | WriteInOrder
"""What ``IncomingTransfer.on_chunk`` returns."""
EndDecision = WaitForStragglers | AskMissing | Refuse | Verify
"""What ``IncomingTransfer.on_end`` returns."""


# ------------------------------------------------------------------ offers


def offer_problem(msg: dict[str, Any], incoming: Iterable[IncomingTransfer]) -> str | None:
    """Why a ``file_offer`` is malformed or repeats a transfer in ``incoming`` (the message of
    a ``BAD_OFFER`` refusal), or None."""
    tid, size, sha, meta = msg.get("transfer_id"), msg.get("size"), msg.get("sha256"), msg.get("meta") or {}
    if not isinstance(size, int) or size < 0:
        return "size must be a non-negative integer"
    if not isinstance(sha, str) or not SHA256_RE.match(sha):
        return "sha256 must be 64 lowercase hex digits"
    if not isinstance(meta, dict):
        return "meta must be an object"
    # One file at a time per hash: two transfers would write the same partial file.
    if any(t.transfer_id == tid or t.sha256 == sha for t in incoming):
        return "this file is already being received"
    return None


def limit_problem(name: str, size: int, *, max_file_bytes: int, receiving: int, max_incoming: int) -> Refuse | None:
    """The refusal of an offer of ``size`` bytes over the per-file cap, or one more than
    ``max_incoming`` while ``receiving`` files arrive; else None."""
    if size > max_file_bytes:
        return Refuse(FILE_TOO_LARGE, f"{name!r} declares {size} bytes; this side takes at most {max_file_bytes} per file.")
    if receiving >= max_incoming:
        return Refuse(TOO_MANY_TRANSFERS, f"Already receiving {receiving} files; at most {max_incoming} at once.")
    return None


def space_problem(name: str, size: int, *, have: int, free: int, reserve: int) -> Refuse | None:
    """The refusal of an offer whose missing bytes (``size`` less the ``have`` of a partial
    file) would leave less than ``reserve`` of ``free`` disk, else None."""
    # The cached copy is placed into receive_dir too (same disk, usually): twice the bytes.
    need = (size - min(have, size)) + size + reserve
    if need > free:
        return Refuse(NO_SPACE, f"{name!r} needs {need} bytes of free disk (file, copy and reserve); {free} are free.")
    return None


# ------------------------------------------------------------------ one transfer


@dataclass
class IncomingTransfer:
    """What the receiver knows of one incoming file, and the rules it follows (module docstring).

    ``pos`` is the contiguous prefix written and hashed so far, ``start`` where this
    session began (what was on disk already), ``ahead`` the chunks written beyond ``pos``.
    """

    transfer_id: int
    name: str
    size: int
    sha256: str
    meta: dict[str, Any]
    repair: bool = False
    """The sender may send out of order and answers ``file_missing``."""
    progress: bool = False
    """The sender counts ``file_progress`` reports (``progress_due``)."""
    reported_at: float | None = None
    """Clock time of the last ``file_progress`` (None: none yet)."""
    pos: int = 0
    start: int = 0
    cached: bool = False
    """The receiver already has the whole file: no payload is expected."""
    ready: bool = False
    """``file_accept`` was sent: chunks and ``file_end`` count from now on."""
    ending: bool = False
    """A ``file_end`` is being handled."""
    rounds: int = 0
    """``file_missing`` rounds asked for so far."""
    ahead: chunkfile.Ahead = field(default_factory=chunkfile.Ahead)

    @classmethod
    def from_offer(cls, msg: dict[str, Any], name: str) -> IncomingTransfer:
        """The state of an offer that passed ``offer_problem``, under its sanitized ``name``."""
        return cls(msg["transfer_id"], name, msg["size"], msg["sha256"], msg.get("meta") or {},
                   repair=msg.get("repair") is True, progress=msg.get("progress") is True)

    @property
    def complete(self) -> bool:
        """Every byte is written and hashed."""
        return self.pos == self.size

    @property
    def received(self) -> int:
        """Payload bytes this session contributed (0 when cached, ``size - offset`` when resumed)."""
        return self.size - self.start

    @property
    def arrived(self) -> int:
        """Payload bytes written this session, in order or held ahead (``file_progress``)."""
        return self.pos - self.start + self.ahead.bytes

    @property
    def truncate_to(self) -> int | None:
        """Where a partial file kept for resume must be cut (chunks were written beyond the
        verified prefix), or None when it ends at ``pos`` already."""
        return self.pos if self.ahead else None

    # -- setting up, before ``file_accept``

    def from_cache(self) -> None:
        """The receiver has the file already: nothing is to come."""
        self.cached, self.pos, self.start = True, self.size, self.size

    def resume_offset(self, have: int) -> int:
        """How much of a partial file of ``have`` bytes to hash and keep (a larger one than
        the offer is stale: start over)."""
        return 0 if have > self.size else have

    def resumed(self, have: int) -> None:
        """The first ``have`` bytes are on disk and hashed: the transfer continues from there."""
        self.pos = self.start = have

    def accept(self) -> int:
        """``file_accept`` goes out now; returns its ``offset``."""
        self.ready = True
        return self.pos

    # -- chunks

    def on_chunk(self, offset: int, n: int) -> ChunkDecision:
        """What to do with a binary frame of ``n`` payload bytes at ``offset`` (changes nothing:
        the driver reports the writes with ``held`` and ``advanced``)."""
        if not self.ready:
            return Ignore()  # cancelled or failed while preparing: late frames are expected
        if self.repair and (offset + n <= self.pos or self.ahead.has(offset, n)):
            return Duplicate()
        if offset < self.pos or offset + n > self.size or (offset > self.pos and not self.repair):
            return Refuse(BAD_OFFSET, f"Chunk at offset {offset} (+{n}) does not follow {self.pos} of {self.size}.")
        if offset > self.pos:
            problem = self.ahead.check(offset, n, MAX_PENDING_CHUNKS)
            return Refuse(BAD_OFFSET, problem) if problem else WriteAhead(offset)
        return WriteInOrder(offset, tuple(self.ahead.following(offset + n)))

    def held(self, offset: int, n: int) -> None:
        """The chunk of ``WriteAhead`` is on disk: hold it until the gap before it fills."""
        self.ahead.add(offset, n)

    def progress_due(self, now: float) -> bool:
        """Whether a ``file_progress`` should go out now (``now``: the caller's clock): the
        sender asked for reports, and ``PROGRESS_INTERVAL`` passed since the last one (the
        first goes out with the first bytes). Marks it sent."""
        if not self.progress or (self.reported_at is not None and now - self.reported_at < PROGRESS_INTERVAL):
            return False
        self.reported_at = now
        return True

    def advanced(self, n: int) -> None:
        """The ``n`` bytes at ``pos`` are written and hashed (a new chunk, or a held one read back)."""
        length = self.ahead.discard(self.pos)
        if length is not None and length != n:
            raise ValueError(f"advanced({n}) over a held chunk of {length} bytes at {self.pos}")
        self.pos += n

    # -- the end

    def end_arrived(self) -> bool:
        """A ``file_end`` came: True when it is to be handled now (``on_end``); a repeated one
        while the first is handled must not finish the file twice."""
        if not self.ready or self.ending:
            return False
        self.ending = True
        return True

    def on_end(self, waited: bool = False) -> EndDecision:
        """What a handled ``file_end`` means; ``waited``: after ``WaitForStragglers``."""
        if not self.complete and self.repair and self.rounds < MAX_REPAIR_ROUNDS:
            if not waited:
                return WaitForStragglers()
            self.rounds += 1
            self.ending = False
            return AskMissing(tuple((at, length) for at, length in self.ahead.gaps(self.pos, self.size, MAX_MISSING_RANGES)))
        if not self.complete:
            return Refuse(INCOMPLETE, f"Got {self.pos} of {self.size} bytes of {self.name!r}.")
        return Verify(self.cached)

    def digest_problem(self, hexdigest: str) -> Refuse | None:
        """The refusal when the bytes received hash to ``hexdigest`` instead of the offered SHA-256."""
        if hexdigest != self.sha256:
            return Refuse(SHA256_MISMATCH, f"{self.name!r} arrived corrupted: SHA-256 does not match.")
        return None


# ------------------------------------------------------------------ the send side


@dataclass(frozen=True)
class Stream:
    """Send these ``(offset, length)`` ranges of the file (``chunks`` cuts them into frames)."""

    ranges: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class SendEnd:
    """Send ``file_end`` and wait for ``file_done`` or ``file_missing``."""


@dataclass(frozen=True)
class Fail:
    """The sender gives up: the transfer fails with ``FileTransferError(message)``."""

    message: str


@dataclass
class OutgoingTransfer:
    """What the sender knows of one file it offered, and what the receiver's answers mean."""

    transfer_id: int
    name: str
    size: int
    offset: int | None = None
    """Where the receiver asked to start (``file_accept``), once it answered."""
    cached: bool = False
    """The receiver had the file already (``file_accept`` said so)."""
    ends: int = 0
    """``file_end`` messages sent so far."""
    delivered: int = 0
    """Payload bytes the receiver reported written (``file_progress``), at most ``size``."""

    def on_progress(self, msg: dict[str, Any]) -> int:
        """The receiver's ``file_progress``: returns how many more bytes it reports received
        (0 for a report that goes backwards; capped at the file's size, so a hostile count
        moves nothing beyond it)."""
        received = msg.get("received")
        if not isinstance(received, int) or isinstance(received, bool):
            return 0
        now = max(self.delivered, min(received, self.size))
        gained, self.delivered = now - self.delivered, now
        return gained

    def on_accept(self, msg: dict[str, Any]) -> Stream | Fail:
        """The receiver's ``file_accept``: stream from its offset to the end, or fail on an
        offset outside the file."""
        offset = msg.get("offset")
        if not isinstance(offset, int) or not 0 <= offset <= self.size:
            return Fail(f"Receiver asked for an invalid offset {offset!r}.")
        self.offset, self.cached = offset, bool(msg.get("cached"))
        return Stream(((offset, self.size - offset),))

    def next_end(self) -> SendEnd | Fail:
        """Every byte asked for went out: a ``file_end`` is due, unless the receiver was sent
        ``MAX_REPAIR_ROUNDS`` repairs already (the first ``file_end`` plus one per repair)."""
        if self.ends > MAX_REPAIR_ROUNDS:
            return Fail(f"Transfer of {self.name!r} still incomplete after {MAX_REPAIR_ROUNDS} repairs.")
        self.ends += 1
        return SendEnd()

    def on_missing(self, ranges: list[tuple[int, int]]) -> Stream | Fail:
        """The receiver's ``file_missing`` (ranges parsed by ``chunkfile.parse_ranges``):
        resend them, or fail when they reach beyond the file."""
        if any(at + length > self.size for at, length in ranges):
            return Fail("The receiver asked for bytes beyond the end of the file.")
        return Stream(tuple(ranges))


def chunks(ranges: Iterable[tuple[int, int]], chunk_size: int) -> list[tuple[int, int]]:
    """``ranges`` cut into frames ``(offset, length)`` of at most ``chunk_size``, in order."""
    return [(pos, min(chunk_size, start + length - pos)) for start, length in ranges
            for pos in range(start, start + length, chunk_size)]


def refusal_error(msg: dict[str, Any]) -> FileTransferError:
    """What a ``file_error`` from the receiver raises on the sending side (``IntegrityError``
    for a hash mismatch)."""
    reason = str(msg.get("reason", ""))
    text = str(msg.get("message") or reason or "receiver refused the file")
    return IntegrityError(text) if reason == SHA256_MISMATCH else FileTransferError(text)
