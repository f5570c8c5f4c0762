"""Trust on first use: the worker keys this client has used before, and what changed.

The store is one small JSON file, ``known_workers.json`` in the user data dir
(platformdirs; tests point ``XDG_DATA_HOME`` elsewhere). It maps a worker, named by its
room and worker name, to the key fingerprint it proved the first time this client ran a
job on it:

    {"version": 1, "workers": {"<room_id>/<worker name>": {"fingerprint": "SHA256:...",
     "first_seen": 1700000000.0, "last_used": 1700000500.0}}}

``check`` says ``NEW`` (never used), ``KNOWN`` (same key as before) or ``CHANGED`` (a known
worker name with another key: a reinstalled worker, or someone posing as it). What each
state means for selection is written in ``docs/security.md``: auto-select prefers KNOWN
workers and never picks a CHANGED one; choosing a CHANGED worker by hand warns and then
remembers its new key. ``remember`` records a key once a job's identity check passed.

The file is written atomically (``core.json_store``: temp file + rename, mode 0600). A
missing, unreadable or malformed file reads as empty (with a log warning), never as an
error: forgetting keys only makes the next use a first use again.
"""

from __future__ import annotations

import time
from enum import StrEnum
from pathlib import Path
from typing import Any

from sleap_rtc.core.config import user_data_dir
from sleap_rtc.core.identity import is_fingerprint
from sleap_rtc.core.json_store import MAX_STATE_BYTES, read_json, write_json

STORE_NAME = "known_workers.json"
"""File name of the store inside the user data dir."""

MAX_ENTRIES = 10_000
"""Entries kept; the least recently used are dropped beyond this."""

MAX_STORE_BYTES = MAX_STATE_BYTES
"""A store file larger than this is ignored (it is not one we wrote)."""


class Trust(StrEnum):
    """How a worker's key compares with what this client remembers."""

    NEW = "new"  # this worker name was never used from here
    KNOWN = "known"  # same key as last time
    CHANGED = "changed"  # a known name with a different key
    NONE = "none"  # the worker advertises no (valid) key at all


def default_store_path() -> Path:
    """``known_workers.json`` in the user data dir."""
    return user_data_dir() / STORE_NAME


def worker_key(room_id: str, name: str) -> str:
    """The store key of a worker: its room and its name."""
    return f"{room_id}/{name}"


class KnownWorkers:
    """The TOFU store (see the module docstring); ``path`` defaults to the user data dir."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else default_store_path()
        self._stamp: tuple[int, int] | None = None
        self._cache: dict[str, dict[str, Any]] = {}

    @property
    def _workers(self) -> dict[str, dict[str, Any]]:
        # Re-read when the file changed: the GUI's table and a job's check are two stores
        # on one file, and a key remembered by the job must show in the table.
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
        if stamp != self._stamp:
            self._stamp, self._cache = stamp, self._load()
        return self._cache

    def _load(self) -> dict[str, dict[str, Any]]:
        data = read_json(self.path, MAX_STORE_BYTES)
        workers = data.get("workers") if isinstance(data, dict) else None
        if not isinstance(workers, dict):
            return {}
        return {
            k: v for k, v in workers.items()
            if isinstance(k, str) and isinstance(v, dict) and is_fingerprint(v.get("fingerprint"))
        }

    def fingerprint(self, room_id: str, name: str) -> str | None:
        """The remembered fingerprint of that worker, if any."""
        entry = self._workers.get(worker_key(room_id, name))
        return entry["fingerprint"] if entry else None

    def check(self, room_id: str, name: str, fingerprint: str | None) -> Trust:
        """``NEW``/``KNOWN``/``CHANGED`` for a worker presenting ``fingerprint`` (``NONE`` without one)."""
        if not is_fingerprint(fingerprint):
            return Trust.NONE
        known = self.fingerprint(room_id, name)
        if known is None:
            return Trust.NEW
        return Trust.KNOWN if known == fingerprint else Trust.CHANGED

    def remember(self, room_id: str, name: str, fingerprint: str) -> None:
        """Record (or replace) the key of a worker a job just verified, and save."""
        if not is_fingerprint(fingerprint):
            raise ValueError(f"not a fingerprint: {fingerprint!r}")
        now = time.time()
        key = worker_key(room_id, name)
        workers = self._workers
        entry = workers.pop(key, None)
        if entry is None or entry.get("fingerprint") != fingerprint:
            entry = {"fingerprint": fingerprint, "first_seen": now}
        entry["last_used"] = now
        workers[key] = entry  # re-inserted last: dict order is least recently used first
        while len(workers) > MAX_ENTRIES:
            workers.pop(next(iter(workers)))
        self._save(workers)

    def _save(self, workers: dict[str, dict[str, Any]]) -> None:
        write_json(self.path, {"version": 1, "workers": workers}, indent=1)
        st = self.path.stat()
        self._stamp, self._cache = (st.st_mtime_ns, st.st_size), workers
