"""Hashes of large files without re-reading them: a memo of full SHA-256s, and a digest of
sampled blocks.

``HashMemo`` remembers ``(resolved path, size, mtime_ns, inode) -> sha256`` in a JSON file
(the client keeps it in its transfer cache dir), so a second inference on the same video
does not read the video again before it is offered: an unchanged file (same size, same
modification time to the nanosecond, same inode) is taken to have the same content. A file
edited in place in the same nanosecond with the same size would be missed; the receiver
verifies every byte it receives, so the cost of such a miss is a refused transfer, never a
wrong file. At most ``MEMO_MAX_ENTRIES`` entries are kept (the most recent).

``sampled_digest`` reads ``SAMPLE_BLOCKS`` blocks of ``SAMPLE_BLOCK_BYTES`` spread evenly
over a file (the first and the last included) and hashes them with the size: what a worker
compares before it uses a file from a data root instead of an upload (``core.data_roots``).
It tells "the same video" from "another file at that path" cheaply; it is not a proof of
identical content.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

from sleap_rtc.core.files import sha256_file
from sleap_rtc.core.json_store import read_json, write_json

MEMO_MAX_ENTRIES = 10_000
"""Most files a ``HashMemo`` remembers."""
SAMPLE_BLOCKS = 16
"""Blocks read by ``sampled_digest``."""
SAMPLE_BLOCK_BYTES = 64 * 1024
"""Bytes per sampled block."""


def sampled_digest(path: str | os.PathLike) -> str:
    """SHA-256 (hex) over the size and ``SAMPLE_BLOCKS`` evenly spread blocks of ``path``."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        hasher = hashlib.sha256(f"sampled-v1:{size}:".encode())
        if size <= SAMPLE_BLOCKS * SAMPLE_BLOCK_BYTES:
            hasher.update(fh.read())
            return hasher.hexdigest()
        span = size - SAMPLE_BLOCK_BYTES
        for i in range(SAMPLE_BLOCKS):
            fh.seek(span * i // (SAMPLE_BLOCKS - 1))
            hasher.update(fh.read(SAMPLE_BLOCK_BYTES))
    return hasher.hexdigest()


class HashMemo:
    """Full SHA-256s of files, remembered by (path, size, mtime_ns, inode) in ``path``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.hashed_bytes = 0
        """Bytes this memo read to hash files (0 when every file was remembered)."""
        data = read_json(self.path)
        self._entries: dict[str, list] = (
            {k: v for k, v in data.items() if isinstance(v, list) and len(v) == 4} if isinstance(data, dict) else {}
        )

    @staticmethod
    def _key(path: Path) -> tuple[str, list]:
        st = path.stat()
        return str(path.resolve()), [st.st_size, st.st_mtime_ns, st.st_ino, ""]

    def sha256(self, path: str | os.PathLike) -> str:
        """The file's SHA-256 (hex): remembered if unchanged, else computed and remembered."""
        path = Path(path)
        key, stamp = self._key(path)
        known = self._entries.get(key)
        if known is not None and known[:3] == stamp[:3] and isinstance(known[3], str) and len(known[3]) == 64:
            return known[3]
        size, hasher = sha256_file(path)
        self.hashed_bytes += size
        stamp[3] = hasher.hexdigest()
        self._entries.pop(key, None)
        self._entries[key] = stamp
        self._save()
        return stamp[3]

    def _save(self) -> None:
        entries = dict(list(self._entries.items())[-MEMO_MAX_ENTRIES:])
        with contextlib.suppress(OSError):  # a memo that cannot be written costs a re-read later
            write_json(self.path, entries)


__all__ = ["HashMemo", "MEMO_MAX_ENTRIES", "SAMPLE_BLOCKS", "SAMPLE_BLOCK_BYTES", "sampled_digest"]
