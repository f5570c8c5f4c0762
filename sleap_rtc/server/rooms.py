"""Durable room store: which rooms exist and how to check their tokens (SQLite).

Rooms outlive the server process so that workers can register again after a restart.
Tokens carry 128 bits from ``secrets`` and are never stored: each room keeps a random salt
and ``sha256(salt + token)``, compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
import time
from pathlib import Path

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

ROOM_ID_BYTES = 6
"""Room ids are 12 hex characters: an address, not a secret."""

TOKEN_BYTES = 16
"""Room tokens carry 128 bits of randomness."""


def hash_token(salt: bytes, token: str) -> bytes:
    """What a room keeps of its token: ``sha256(salt + token)`` (the token is never stored)."""
    return hashlib.sha256(salt + token.encode("utf-8", "surrogatepass")).digest()


class RoomStore:
    """Rooms persisted in one SQLite file (``":memory:"`` for a throwaway store).

    ``room_ttl`` (seconds) makes new rooms expire; ``None`` (the default) keeps them until
    deleted, because a lab's workers stay registered in one room for months.
    """

    def __init__(self, path: str | Path = ":memory:", *, room_ttl: float | None = None):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.room_ttl = room_ttl
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        if self.path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)

    def create(self, *, ttl: float | None = None) -> tuple[str, str]:
        """Create a room; returns ``(room_id, token)``. The token is not kept anywhere."""
        ttl = self.room_ttl if ttl is None else ttl
        token = secrets.token_urlsafe(TOKEN_BYTES)
        salt = secrets.token_bytes(16)
        now = time.time()
        while True:
            room_id = secrets.token_hex(ROOM_ID_BYTES)
            try:
                self._db.execute(
                    "INSERT INTO rooms (room_id, salt, token_hash, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
                    (room_id, salt, hash_token(salt, token), now, now + ttl if ttl else None),
                )
                return room_id, token
            except sqlite3.IntegrityError:  # a 48-bit id collided: draw another
                continue

    def check(self, room_id: str, token: str) -> ErrorCode | None:
        """``None`` when ``token`` opens ``room_id``, else the error code to refuse with."""
        row = self._db.execute(
            "SELECT salt, token_hash, expires_at FROM rooms WHERE room_id = ?", (room_id,)
        ).fetchone()
        if row is None:
            return ErrorCode.ROOM_NOT_FOUND
        salt, token_hash, expires_at = row
        if not hmac.compare_digest(hash_token(salt, token), token_hash):
            return ErrorCode.INVALID_TOKEN
        if expires_at is not None and time.time() > expires_at:
            return ErrorCode.ROOM_EXPIRED
        return None

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
