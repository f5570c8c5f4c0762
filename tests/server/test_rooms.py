"""The room store: role-bound tokens, state files from before worker tokens, expiry, cap."""

from __future__ import annotations

import hashlib
import secrets
import sqlite3

import pytest

from sleap_rtc.server.rooms import Access, RoomLimitError, RoomStore


def test_a_state_file_from_before_worker_tokens_keeps_its_rooms_for_clients(tmp_path):
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE rooms (room_id TEXT PRIMARY KEY, salt BLOB NOT NULL, token_hash BLOB NOT NULL, created_at REAL NOT NULL, expires_at REAL)")
    salt = secrets.token_bytes(16)
    db.execute("INSERT INTO rooms VALUES (?, ?, ?, ?, NULL)", ("oldroom", salt, hashlib.sha256(salt + b"old-token").digest(), 0.0))
    db.commit()
    db.close()
    store = RoomStore(path, unused_ttl=10**12)
    assert store.check("oldroom", "old-token") == (None, Access.CLIENT)  # workers need a new room
    assert store.check("oldroom", "other") == ("INVALID_TOKEN", None)
    room = store.create()
    assert store.check(room.room_id, room.worker_token) == (None, Access.WORKER)
    store.close()


def test_unused_rooms_expire_used_ones_stay_and_the_cap_holds():
    now = [1000.0]
    store = RoomStore(unused_ttl=60, max_rooms=3, clock=lambda: now[0])
    used, idle, fresh = store.create(), store.create(), None
    store.mark_used(used.room_id)
    now[0] += 30
    fresh = store.create()
    with pytest.raises(RoomLimitError):
        store.create()
    now[0] += 31  # idle is 61 s old and never used; fresh is 31 s old
    assert store.expire_unused() == 1
    assert store.exists(used.room_id) and store.exists(fresh.room_id) and not store.exists(idle.room_id)
    store.create()  # room for one more
    assert store.count() == 3
