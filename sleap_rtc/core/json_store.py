"""Small per-user state files in JSON: read whole and forgivingly, written whole and atomically.

The client keeps a few such files (worker keys, file hashes, data-root mappings, learned
paths). Each is rewritten as a temporary file in the same directory and renamed over the
old one, so a reader, or a second client process, sees either the old file or the new one,
never half of one. The files hold only what this user's own processes wrote: private
(mode 0600, a new directory 0700), as a worker's key or a video's path is nobody else's.

A file that is missing, too large, unreadable or not JSON reads as ``None``: each of these
stores forgets in that case (the next use is a first use), which costs little and never
stops a job.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_STATE_BYTES = 4 * 1024 * 1024
"""A state file larger than this is ignored (none of the stores writes one that large)."""


def read_json(path: Path, max_bytes: int = MAX_STATE_BYTES) -> Any:
    """The JSON value in ``path``; ``None`` when the file is missing, larger than
    ``max_bytes``, unreadable or malformed (the last three logged as warnings)."""
    try:
        if path.stat().st_size > max_bytes:
            log.warning("ignoring %s: larger than %d bytes", path, max_bytes)
            return None
        return json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: deeply nested JSON
        log.warning("ignoring unreadable %s (%s)", path, exc)
        return None


def write_json(path: Path, value: Any, indent: int | None = None) -> None:
    """Replace ``path`` with ``value`` as JSON, atomically and private to this user; the
    directory is created as needed. Raises ``OSError`` (the old file is then untouched)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    text = json.dumps(value, indent=indent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)  # created 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


__all__ = ["MAX_STATE_BYTES", "read_json", "write_json"]
