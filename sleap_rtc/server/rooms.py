"""Durable room store: which rooms exist and how to check their tokens (SQLite).

Rooms outlive the server process so that workers can register again after a restart.
Each room has two role-bound secrets (see ``core/credentials.py``): the worker token,
which admits every role, and the client token derived from it, which admits clients only.
Tokens carry 128 bits from ``secrets`` and are never stored: each room keeps a random salt
and ``sha256(salt + token)`` of both, compared in constant time.

A room that no peer ever registered in expires after ``unused_ttl`` (a flood of created
rooms cleans itself up), and at most ``max_rooms`` are stored.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
import time
from enum import StrEnum
from pathlib import Path

from sleap_rtc.core.credentials import NewRoom, client_token_for
from sleap_rtc.core.protocol import ErrorCode

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rooms (
    room_id TEXT PRIMARY KEY,
    salt BLOB NOT NULL,
    token_hash BLOB NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL
)
"""
# Columns added after the first release; a state file from then gains them on open.
_ADDED_COLUMNS = {"worker_hash": "BLOB", "used_at": "REAL"}

ROOM_ID_BYTES = 6
"""Room ids are 12 hex characters: an address, not a secret."""

TOKEN_BYTES = 16
"""Room tokens carry 128 bits of randomness."""

UNUSED_ROOM_TTL = 24 * 3600.0
"""Seconds after which a room that no peer ever registered in is deleted."""

MAX_ROOMS = 10_000
"""Rooms stored at most; creating one more is refused with ``TOO_MANY_ROOMS``."""


class Access(StrEnum):
    """Which roles a checked token admits."""

    WORKER = "worker"  # the worker token: every role
    CLIENT = "client"  # the client token: clients only


class RoomLimitError(Exception):
    """The store already holds ``max_rooms`` rooms (after removing unused ones)."""


def _hash(salt: bytes, token: str) -> bytes:
    return hashlib.sha256(salt + token.encode("utf-8", "surrogatepass")).digest()


class RoomStore:
    """Rooms persisted in one SQLite file (``":memory:"`` for a throwaway store).

    ``room_ttl`` (seconds) makes new rooms expire; ``None`` (the default) keeps them until
    deleted, because a lab's workers stay registered in one room for months. Rooms never
    used expire after ``unused_ttl`` whatever ``room_ttl`` says.
    """

    def __init__(
        self,
        path: str | Path = ":memory:",
        *,
        room_ttl: float | None = None,
        unused_ttl: float = UNUSED_ROOM_TTL,
        max_rooms: int = MAX_ROOMS,
        clock=time.time,
    ):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.room_ttl = room_ttl
        self.unused_ttl = unused_ttl
        self.max_rooms = max_rooms
        self.clock = clock
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        if self.path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)
        have = {row[1] for row in self._db.execute("PRAGMA table_info(rooms)")}
        for name, kind in _ADDED_COLUMNS.items():
            if name not in have:
                self._db.execute(f"ALTER TABLE rooms ADD COLUMN {name} {kind}")
        self._dummy_salt = secrets.token_bytes(16)

    def create(self, *, ttl: float | None = None) -> NewRoom:
        """Create a room; returns its id and worker token (neither token is kept).

        Raises ``RoomLimitError`` when ``max_rooms`` rooms are stored.
        """
        if self.count() >= self.max_rooms:
            self.expire_unused()
            if self.count() >= self.max_rooms:
                raise RoomLimitError(f"This server already holds {self.max_rooms} rooms.")
        ttl = self.room_ttl if ttl is None else ttl
        worker_token = secrets.token_urlsafe(TOKEN_BYTES)
        salt = secrets.token_bytes(16)
        now = self.clock()
        while True:
            room_id = secrets.token_hex(ROOM_ID_BYTES)
            try:
                self._db.execute(
                    "INSERT INTO rooms (room_id, salt, token_hash, worker_hash, created_at, expires_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (room_id, salt, _hash(salt, client_token_for(worker_token)), _hash(salt, worker_token),
                     now, now + ttl if ttl else None),
                )
                return NewRoom(room_id, worker_token)
            except sqlite3.IntegrityError:  # a 48-bit id collided: draw another
                continue

    def check(self, room_id: str, token: str) -> tuple[ErrorCode | None, Access | None]:
        """``(None, access)`` when ``token`` opens ``room_id``, else ``(code, None)``.

        An unknown room and a wrong token give the same code (``INVALID_TOKEN``), after the
        same hashing work, so a refusal does not tell whether a room exists.
        """
        row = self._db.execute(
            "SELECT salt, token_hash, worker_hash, expires_at FROM rooms WHERE room_id = ?", (room_id,)
        ).fetchone()
        if row is None:
            hmac.compare_digest(_hash(self._dummy_salt, token), _hash(self._dummy_salt, ""))
            return ErrorCode.INVALID_TOKEN, None
        salt, token_hash, worker_hash, expires_at = row
        given = _hash(salt, token)
        if worker_hash is not None and hmac.compare_digest(given, worker_hash):
            access = Access.WORKER
        elif hmac.compare_digest(given, token_hash):
            # Rooms from before worker tokens have only this one; it admits clients only.
            access = Access.CLIENT
        else:
            return ErrorCode.INVALID_TOKEN, None
        if expires_at is not None and self.clock() > expires_at:
            return ErrorCode.ROOM_EXPIRED, None
        return None, access

    def mark_used(self, room_id: str) -> None:
        """Record that a peer registered in ``room_id`` (used rooms never expire as unused)."""
        self._db.execute("UPDATE rooms SET used_at = ? WHERE room_id = ? AND used_at IS NULL", (self.clock(), room_id))

    def expire_unused(self) -> int:
        """Delete rooms created more than ``unused_ttl`` ago that no peer ever used."""
        cutoff = self.clock() - self.unused_ttl
        return self._db.execute("DELETE FROM rooms WHERE used_at IS NULL AND created_at < ?", (cutoff,)).rowcount

    def exists(self, room_id: str) -> bool:
        """Whether a room with this id is stored (expired or not)."""
        return self._db.execute("SELECT 1 FROM rooms WHERE room_id = ?", (room_id,)).fetchone() is not None

    def delete(self, room_id: str) -> bool:
        """Forget a room; returns whether it existed."""
        return self._db.execute("DELETE FROM rooms WHERE room_id = ?", (room_id,)).rowcount > 0

    def count(self) -> int:
        """Number of stored rooms."""
        return int(self._db.execute("SELECT COUNT(*) FROM rooms").fetchone()[0])

    def close(self) -> None:
        """Close the database file."""
        self._db.close()
