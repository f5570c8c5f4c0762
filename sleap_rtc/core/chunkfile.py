"""Writing a file whose chunks arrive out of order (striped transfers), with bounded memory.

``Ahead`` keeps the offsets and lengths of chunks written ahead of the contiguous prefix
(their bytes are on disk, not in memory); ``write_at``/``read_at`` are positional I/O that
works on every OS. ``parse_ranges`` checks the ``ranges`` of a ``file_missing`` message.
"""

from __future__ import annotations

import bisect
import os
from typing import Any


class Ahead:
    """Non-overlapping chunks ``(offset, length)`` received beyond the contiguous prefix."""

    def __init__(self) -> None:
        self._offsets: list[int] = []
        self._lengths: dict[int, int] = {}
        self.bytes = 0
        """Bytes held, all chunks together."""

    def __len__(self) -> int:
        return len(self._offsets)

    def has(self, offset: int, length: int) -> bool:
        """True when exactly this chunk is already held."""
        return self._lengths.get(offset) == length

    def check(self, offset: int, length: int, limit: int) -> str | None:
        """Why ``(offset, length)`` cannot be added (overlap, or ``limit`` chunks held), or None."""
        if len(self._offsets) >= limit:
            return f"More than {limit} chunks arrived ahead of offset {self._offsets[0] if self._offsets else 0}."
        i = bisect.bisect_left(self._offsets, offset)
        if i < len(self._offsets) and self._offsets[i] < offset + length:
            return f"Chunk at offset {offset} (+{length}) overlaps one at {self._offsets[i]}."
        if i > 0 and self._offsets[i - 1] + self._lengths[self._offsets[i - 1]] > offset:
            return f"Chunk at offset {offset} (+{length}) overlaps one at {self._offsets[i - 1]}."
        return None

    def add(self, offset: int, length: int) -> None:
        """Record a chunk (``check`` first)."""
        bisect.insort(self._offsets, offset)
        self._lengths[offset] = length
        self.bytes += length

    def following(self, pos: int) -> list[tuple[int, int]]:
        """The held chunks that continue the prefix ending at ``pos``, in order (kept held)."""
        out = []
        i = bisect.bisect_left(self._offsets, pos)
        while i < len(self._offsets) and self._offsets[i] == pos:
            length = self._lengths[pos]
            out.append((pos, length))
            pos += length
            i += 1
        return out

    def discard(self, offset: int) -> int | None:
        """Stop holding the chunk at ``offset``; returns its length, or None when none is held there."""
        length = self._lengths.pop(offset, None)
        if length is not None:
            self._offsets.pop(bisect.bisect_left(self._offsets, offset))
            self.bytes -= length
        return length

    def gaps(self, pos: int, size: int, limit: int) -> list[list[int]]:
        """The byte ranges ``[offset, length]`` between ``pos`` and ``size`` not held (at most ``limit``)."""
        out: list[list[int]] = []
        cursor = pos
        for offset in self._offsets:
            if offset > cursor:
                out.append([cursor, offset - cursor])
            cursor = max(cursor, offset + self._lengths[offset])
            if len(out) >= limit:
                return out
        if cursor < size:
            out.append([cursor, size - cursor])
        return out[:limit]


def write_at(fh: Any, offset: int, data: bytes | memoryview) -> None:
    """Write ``data`` at ``offset`` of the open binary file ``fh``."""
    if hasattr(os, "pwrite"):
        view = memoryview(data)
        while view:
            written = os.pwrite(fh.fileno(), view, offset)
            view, offset = view[written:], offset + written
    else:  # Windows: no positional I/O, the buffered file object keeps itself consistent
        fh.seek(offset)
        fh.write(data)


def read_at(fh: Any, offset: int, length: int) -> bytes:
    """Read ``length`` bytes at ``offset`` of the open binary file ``fh`` (``OSError`` if short)."""
    if hasattr(os, "pread"):
        data = os.pread(fh.fileno(), length, offset)
    else:
        fh.flush()
        fh.seek(offset)
        data = fh.read(length)
    if len(data) != length:
        raise OSError(f"short read at offset {offset}: {len(data)} of {length} bytes")
    return data


def parse_ranges(value: Any, limit: int = 4096) -> list[tuple[int, int]] | None:
    """``[[offset, length], ...]`` from a peer as tuples, or None when malformed or too many."""
    if not isinstance(value, list) or len(value) > limit:
        return None
    out = []
    for item in value:
        if (not isinstance(item, list) or len(item) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in item) or item[1] == 0):
            return None
        out.append((item[0], item[1]))
    return out
