"""The shared backend: several ``sleap-rtc server`` instances, one set of rooms, in Redis.

Every instance keeps a *view* (replica) of each room it has peers in, so discovery and
event fan-out never wait for Redis; every change to a room goes through one Lua script
that changes the room's hash and, in the same atomic step, appends the change to the
inbox stream of every other instance following that room. Relays to a peer on another
instance are appended to that instance's inbox too.

Why streams, not pub/sub: an inbox stream is read from the last entry id seen, so an
instance whose Redis connection blips misses nothing (at-least-once), and one stream per
instance is in append order, so the offer and the candidates of one sender, and the
changes of one room, arrive in the order they were made. Pub/sub drops whatever is
published while a subscriber reconnects. Each change carries its room's change number
(``seq``); a view keeps, per peer, only a change newer than the one it holds, so a
duplicate or an echo is harmless.

Presence lease: each instance renews ``lease:<instance>`` (a key with a TTL) every
``lease_ttl / 3`` seconds. An instance whose lease lapsed for longer than ``peer_grace``
is *fenced* by any other instance (its entry in ``instances`` is deleted, so it can never
renew that lease again) and its peers that did not re-register elsewhere are removed,
each with a ``peer_left``. A fenced instance that wakes up learns it on its next renewal,
closes all its sockets (its peers reconnect and resume anywhere) and starts over under
a new instance id.

Keys (``prefix`` first, default ``sleap-rtc:``)::

    room:<room>        hash: salt, token_hash (client), worker_hash, created_at, expires_at, used_at
    rooms              set of room ids (for /metrics)
    peers:<room>       hash: peer_id -> record JSON (with its seq)
    meta:<room>        hash: seq (the room's change counter), watchers
    follow:<room>      set: instances holding a view of the room
    irooms:<instance>  set: rooms an instance follows (what to clean when it dies)
    inbox:<instance>   stream: changes of followed rooms, relays to its peers
    lease:<instance>   the instance's presence lease (TTL)
    instances          hash: instance -> start time (deleted = fenced)
    fenced             set: fenced instances whose peers are still to be removed
    fail:<name>:<key>  sorted set: timestamps of one shared sliding-window counter

This assumes one Redis (optionally with replicas / Sentinel), not Redis Cluster: the
scripts touch keys of several rooms and instances.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from sleap_rtc.core.credentials import NewRoom, client_token_for
from sleap_rtc.core.protocol import ErrorCode, ProtocolError, dumps
from sleap_rtc.server.backend import Backend, BackendListener, Caps, Peer, SharedCounter
from sleap_rtc.server.rooms import MAX_ROOMS, ROOM_ID_BYTES, TOKEN_BYTES, UNUSED_ROOM_TTL, Access, RoomLimitError, hash_token

log = logging.getLogger(__name__)

LEASE_TTL = 10.0
"""Seconds an instance's presence lease lasts without renewal (renewed every third of it)."""

PEER_GRACE = 10.0
"""Seconds after an instance's lease lapsed before its peers that did not re-register
elsewhere are removed (and ``peer_left`` is sent for them)."""

INBOX_MAXLEN = 100_000
"""Entries an instance's inbox keeps (approximately) if it falls behind; read entries are trimmed."""

FORWARD_QUEUE = 10_000
"""Relays waiting to be written to Redis before new ones are dropped (a stalled Redis)."""

UNFOLLOW_AFTER = 30.0
"""Seconds a room's view is kept after this instance's last peer there left."""

ROOM_EXPIRED_KEEP = 7 * 24 * 3600.0
"""Seconds an expired room is kept so that peers get ``ROOM_EXPIRED`` rather than ``ROOM_NOT_FOUND``."""

REDIS_CONNECTIONS = 64
"""Connections one instance opens to Redis at most; more concurrent commands wait for one."""

REDIS_WAIT = 10.0
"""Seconds a command waits for a free Redis connection before the request fails as unavailable."""

MAX_ROOM_ID_LENGTH = 64
"""Longest room id looked up in Redis (ours are 12 characters)."""

MAX_TRACKED_ROOMS = 100_000
"""Rooms remembered as already marked used (forgotten all at once past this)."""

SETTLE_TIMEOUT = 1.0
"""Seconds ``settle`` waits for changes still on their way before it re-reads the room."""

_BACKOFF_MAX = 2.0

# Appends one change to the inbox of every follower of a room but ``skip``.
# ARGV layout of the caller: see each script. KEYS[3] is always follow:<room>.
_FANOUT = """
local function fanout(prefix, maxlen, skip, kind, room, peer, seq, data)
  for _, inst in ipairs(redis.call('SMEMBERS', KEYS[3])) do
    if inst ~= skip then
      redis.call('XADD', prefix .. inst, 'MAXLEN', '~', maxlen, '*', 'k', kind, 'r', room, 'p', peer, 's', seq, 'd', data)
    end
  end
end
local function stamp(seq, record)
  return '{"seq":' .. seq .. ',' .. string.sub(record, 2)
end
"""

# KEYS: peers, meta, follow, irooms(self)
# ARGV: peer_id, record, expected_hash|'', max_peers, max_watchers, watcher 0/1, instance, inbox prefix, room, maxlen
_CLAIM = _FANOUT + """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local was = 0
if cur then
  local old = cjson.decode(cur)
  if ARGV[3] == '' or old['resume_hash'] ~= ARGV[3] then return {'PEER_ID_TAKEN', 0} end
  if old['events'] == true then was = 1 end
elseif redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then
  return {'ROOM_FULL', 0}
end
local watcher = tonumber(ARGV[6])
if watcher == 1 and was == 0 and tonumber(redis.call('HGET', KEYS[2], 'watchers') or '0') >= tonumber(ARGV[5]) then
  return {'TOO_MANY_WATCHERS', 0}
end
if watcher ~= was then redis.call('HINCRBY', KEYS[2], 'watchers', watcher - was) end
local seq = redis.call('HINCRBY', KEYS[2], 'seq', 1)
local stored = stamp(seq, ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], stored)
redis.call('SADD', KEYS[3], ARGV[7])
redis.call('SADD', KEYS[4], ARGV[9])
fanout(ARGV[8], ARGV[10], ARGV[7], 'put', ARGV[9], ARGV[1], seq, stored)
return {'OK', seq}
"""

# KEYS: peers, meta, follow
# ARGV: peer_id, record, instance, resume_hash, inbox prefix, room, maxlen
_UPDATE = _FANOUT + """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return 0 end
local old = cjson.decode(cur)
if old['instance'] ~= ARGV[3] or old['resume_hash'] ~= ARGV[4] then return 0 end
local seq = redis.call('HINCRBY', KEYS[2], 'seq', 1)
local stored = stamp(seq, ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], stored)
fanout(ARGV[5], ARGV[7], ARGV[3], 'put', ARGV[6], ARGV[1], seq, stored)
return seq
"""

# KEYS: peers, meta, follow
# ARGV: peer_id, instance, resume_hash, inbox prefix, room, maxlen
_RELEASE = _FANOUT + """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return 0 end
local old = cjson.decode(cur)
if old['instance'] ~= ARGV[2] or old['resume_hash'] ~= ARGV[3] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
if old['events'] == true then redis.call('HINCRBY', KEYS[2], 'watchers', -1) end
local seq = redis.call('HINCRBY', KEYS[2], 'seq', 1)
fanout(ARGV[4], ARGV[6], ARGV[2], 'del', ARGV[5], ARGV[1], seq, cur)
return seq
"""

# Removes every peer of a fenced instance from one room (peers that resumed elsewhere
# carry another instance and stay). KEYS: peers, meta, follow. ARGV: dead, inbox prefix, room, maxlen
_REAP = _FANOUT + """
local all = redis.call('HGETALL', KEYS[1])
local n = 0
for i = 1, #all, 2 do
  local old = cjson.decode(all[i + 1])
  if old['instance'] == ARGV[1] then
    redis.call('HDEL', KEYS[1], all[i])
    if old['events'] == true then redis.call('HINCRBY', KEYS[2], 'watchers', -1) end
    local seq = redis.call('HINCRBY', KEYS[2], 'seq', 1)
    fanout(ARGV[2], ARGV[4], '', 'del', ARGV[3], all[i], seq, all[i + 1])
    n = n + 1
  end
end
redis.call('SREM', KEYS[3], ARGV[1])
return n
"""

# KEYS: peers, meta, follow, irooms(self). ARGV: instance, room
_FOLLOW = """
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('SADD', KEYS[4], ARGV[2])
return {redis.call('HGET', KEYS[2], 'seq') or '0', redis.call('HVALS', KEYS[1])}
"""

# KEYS: follow, irooms(self), peers. ARGV: instance, room
_UNFOLLOW = """
for _, raw in ipairs(redis.call('HVALS', KEYS[3])) do
  if cjson.decode(raw)['instance'] == ARGV[1] then return 0 end
end
redis.call('SREM', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[2], ARGV[2])
return 1
"""

# KEYS: lease, instances. ARGV: instance, ttl ms. 0 = fenced: this lease can never be renewed.
_RENEW = """
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('SET', KEYS[1], '1', 'PX', ARGV[2])
return 1
"""

# KEYS: lease(dead), instances, fenced. ARGV: dead. 1 = fenced now (its lease is still gone).
_FENCE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if redis.call('HDEL', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('SADD', KEYS[3], ARGV[1])
return 1
"""

# Sliding-window counter with FailureCounter's semantics.
# KEYS: zset. ARGV: now, window, limit, 'add'|'check', member
_COUNTER = """
local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if ARGV[4] == 'add' then
  redis.call('ZADD', KEYS[1], now, ARGV[5])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window * 1000) + 1000)
  return '0'
end
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then return '0' end
local oldest = tonumber(redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2])
return tostring(math.max(0.001, oldest + window - now))
"""

# KEYS: room, rooms. ARGV: room id, salt hex, client hash hex, worker hash hex, created,
# expires|'', unused ttl s, max rooms. -1: too many rooms; 0: the id is taken.
# A new room's key expires after the unused TTL; the first registration (MARK_USED) keeps it.
_CREATE_ROOM = """
if redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[8]) then return -1 end
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'salt', ARGV[2], 'token_hash', ARGV[3], 'worker_hash', ARGV[4], 'created_at', ARGV[5], 'expires_at', ARGV[6])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[7])))
redis.call('SADD', KEYS[2], ARGV[1])
return 1
"""

# KEYS: room. ARGV: now, expire-at|'' (the room's own expiry, plus the time it is kept).
_MARK_USED = """
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HEXISTS', KEYS[1], 'used_at') == 1 then return 0 end
redis.call('HSET', KEYS[1], 'used_at', ARGV[1])
if ARGV[2] == '' then redis.call('PERSIST', KEYS[1]) else redis.call('EXPIREAT', KEYS[1], ARGV[2]) end
return 1
"""


def _unavailable(exc: Exception) -> ProtocolError:
    log.warning("Redis unavailable: %s", exc)
    return ProtocolError(ErrorCode.SERVER_UNAVAILABLE, "The server's shared state is unreachable; retry in a few seconds.")


class _RedisCounter:
    """A sliding-window counter every instance shares (``FailureCounter`` semantics)."""

    def __init__(self, backend: RedisBackend, name: str, limit: int, window: float):
        self._backend = backend
        self._name = name
        self.limit = limit
        self.window = window

    def _key(self, key: str) -> str:
        # Keys come from peers (addresses, room ids): hashed to a bounded length.
        return self._backend.key(f"fail:{self._name}:{hashlib.sha256(key.encode('utf-8', 'surrogatepass')).hexdigest()[:32]}")

    async def retry_after(self, key: str) -> float:
        try:
            out = await self._backend.scripts["counter"](keys=[self._key(key)], args=[time.time(), self.window, self.limit, "check", ""])
        except RedisError as exc:
            raise _unavailable(exc) from None
        return float(out)

    async def add(self, key: str) -> None:
        now = time.time()
        try:
            await self._backend.scripts["counter"](keys=[self._key(key)], args=[now, self.window, self.limit, "add", f"{now}:{secrets.token_hex(4)}"])
        except RedisError as exc:
            raise _unavailable(exc) from None


class RedisBackend(Backend):
    """Rooms, presence, shared limits and relays in one Redis; see the module docstring."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "sleap-rtc:",
        room_ttl: float | None = None,
        unused_room_ttl: float = UNUSED_ROOM_TTL,
        max_rooms: int = MAX_ROOMS,
        lease_ttl: float = LEASE_TTL,
        peer_grace: float = PEER_GRACE,
        inbox_maxlen: int = INBOX_MAXLEN,
    ):
        self.url = url
        self.prefix = prefix
        self.room_ttl = room_ttl
        self.unused_room_ttl = unused_room_ttl
        self.max_rooms = max_rooms
        self._dummy_salt = secrets.token_bytes(16)
        self._used: set[str] = set()
        """Rooms this instance already marked used."""
        self.lease_ttl = lease_ttl
        self.peer_grace = peer_grace
        self.inbox_maxlen = inbox_maxlen
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=REDIS_CONNECTIONS, timeout=REDIS_WAIT, decode_responses=True,
            socket_connect_timeout=5.0, health_check_interval=30,
        )
        self.redis = aioredis.Redis(connection_pool=pool)
        self.scripts = {
            name: self.redis.register_script(text)
            for name, text in {
                "claim": _CLAIM, "update": _UPDATE, "release": _RELEASE, "reap": _REAP, "follow": _FOLLOW,
                "unfollow": _UNFOLLOW, "renew": _RENEW, "fence": _FENCE, "counter": _COUNTER, "create_room": _CREATE_ROOM,
                "mark_used": _MARK_USED,
            }.items()
        }
        self.instance_id = _new_instance_id()
        self._listener: BackendListener | None = None
        self._views: dict[str, dict[str, Peer]] = {}
        self._floors: dict[str, int] = {}
        """Room -> the seq its view was built at: older changes are already in it."""
        self._gone: dict[str, dict[str, int]] = {}
        """Room -> peer -> seq of its removal (so a late, older 'put' cannot revive it)."""
        self._watermark: dict[str, int] = {}
        """Room -> the seq up to which every change is in the view (no gap below it)."""
        self._ahead: dict[str, set[int]] = {}
        """Room -> seqs applied above the watermark (waiting for the gap to close)."""
        self._settling: dict[str, list[tuple[int, asyncio.Future]]] = {}
        self._busy: dict[str, asyncio.Future] = {}
        """Rooms being followed or unfollowed right now (the next caller waits)."""
        self._buffered: dict[str, list[dict[str, str]]] = {}
        self._idle_since: dict[str, float] = {}
        self._dead_since: dict[str, float] = {}
        self._unreleased: list[Peer] = []
        self._forwards: asyncio.Queue[tuple[str, str, str, str]] = asyncio.Queue(FORWARD_QUEUE)
        self._tasks: list[asyncio.Task] = []
        self._inbox_read: tuple[str, str] | None = None

    def key(self, name: str) -> str:
        """The Redis key ``name`` under this deployment's prefix."""
        return self.prefix + name

    def _room_keys(self, room_id: str) -> list[str]:
        return [self.key(f"peers:{room_id}"), self.key(f"meta:{room_id}"), self.key(f"follow:{room_id}")]

    # ------------------------------------------------------------------ life

    async def start(self, listener: BackendListener) -> None:
        """Take a lease under a fresh instance id and start the inbox reader and the keeper."""
        self._listener = listener
        try:
            await self._join()
        except RedisError as exc:
            raise ConnectionError(f"Cannot reach Redis at {_safe_url(self.url)}: {exc}") from None
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._read_inbox(), name="redis-inbox"),
            loop.create_task(self._write_forwards(), name="redis-forwards"),
            loop.create_task(self._keep(), name="redis-lease"),
        ]
        log.info("instance %s joined the shared backend at %s", self.instance_id, _safe_url(self.url))

    async def _join(self) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.key("instances"), self.instance_id, str(time.time()))
            pipe.set(self.key(f"lease:{self.instance_id}"), "1", px=int(self.lease_ttl * 1000))
            await pipe.execute()

    async def stop(self) -> None:
        """Stop the tasks and drop the lease, so that others count the grace from now."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        with contextlib.suppress(RedisError, OSError):
            await self.redis.delete(self.key(f"lease:{self.instance_id}"))
        with contextlib.suppress(RedisError, OSError, RuntimeError):
            await self.redis.aclose()

    # ------------------------------------------------------------------ rooms

    async def create_room(self) -> NewRoom:
        worker_token = secrets.token_urlsafe(TOKEN_BYTES)
        salt = secrets.token_bytes(16)
        now = time.time()
        expires = now + self.room_ttl if self.room_ttl else None
        unused = self.unused_room_ttl if expires is None else min(self.unused_room_ttl, self.room_ttl + ROOM_EXPIRED_KEEP)
        try:
            while True:
                room_id = secrets.token_hex(ROOM_ID_BYTES)
                created = await self.scripts["create_room"](
                    keys=[self.key(f"room:{room_id}"), self.key("rooms")],
                    args=[room_id, salt.hex(), hash_token(salt, client_token_for(worker_token)).hex(), hash_token(salt, worker_token).hex(),
                          now, "" if expires is None else expires, max(1.0, unused), self.max_rooms],
                )
                if created == -1 and await self.expire_unused() == 0:
                    raise RoomLimitError(f"This server already holds {self.max_rooms} rooms.")
                if created == 1:
                    return NewRoom(room_id, worker_token)
        except RedisError as exc:
            raise _unavailable(exc) from None

    async def check_room(self, room_id: str, token: str) -> tuple[ErrorCode | None, Access | None]:
        if len(room_id) > MAX_ROOM_ID_LENGTH:  # never a real room: no key that long is looked up
            hmac.compare_digest(hash_token(self._dummy_salt, token), hash_token(self._dummy_salt, ""))
            return ErrorCode.INVALID_TOKEN, None
        try:
            row = await self.redis.hgetall(self.key(f"room:{room_id}"))
        except RedisError as exc:
            raise _unavailable(exc) from None
        if not row:
            # Same hashing work as a known room, so a refusal does not tell whether it exists.
            hmac.compare_digest(hash_token(self._dummy_salt, token), hash_token(self._dummy_salt, ""))
            return ErrorCode.INVALID_TOKEN, None
        given = hash_token(bytes.fromhex(row["salt"]), token)
        if row.get("worker_hash") and hmac.compare_digest(given, bytes.fromhex(row["worker_hash"])):
            access = Access.WORKER
        elif hmac.compare_digest(given, bytes.fromhex(row["token_hash"])):
            access = Access.CLIENT
        else:
            return ErrorCode.INVALID_TOKEN, None
        if row.get("expires_at") and time.time() > float(row["expires_at"]):
            return ErrorCode.ROOM_EXPIRED, None
        return None, access

    async def mark_used(self, room_id: str) -> None:
        if room_id in self._used:
            return  # once per room and instance: later registrations cost no round trip
        expires = await self.redis.hget(self.key(f"room:{room_id}"), "expires_at")
        keep_until = int(float(expires) + ROOM_EXPIRED_KEEP) if expires else ""
        try:
            await self.scripts["mark_used"](keys=[self.key(f"room:{room_id}")], args=[time.time(), keep_until])
        except RedisError as exc:
            raise _unavailable(exc) from None
        if len(self._used) >= MAX_TRACKED_ROOMS:
            self._used.clear()
        self._used.add(room_id)

    async def expire_unused(self) -> int:
        # Room keys expire by themselves (Redis TTL); this drops their ids from the count.
        removed = 0
        try:
            async for room_id in self.redis.sscan_iter(self.key("rooms"), count=1000):
                if not await self.redis.exists(self.key(f"room:{room_id}")):
                    removed += await self.redis.srem(self.key("rooms"), room_id)
        except RedisError as exc:
            raise _unavailable(exc) from None
        return removed

    async def count_rooms(self) -> int:
        try:
            return int(await self.redis.scard(self.key("rooms")))
        except RedisError:
            return -1

    def counter(self, name: str, limit: int, window: float, clock: Callable[[], float]) -> SharedCounter:
        # Shared windows run on wall time: instances on different machines share no monotonic clock.
        return _RedisCounter(self, name, limit, window)

    # ------------------------------------------------------------------ presence

    def view(self, room_id: str) -> dict[str, Peer]:
        return self._views.get(room_id, {})

    def views(self) -> dict[str, dict[str, Peer]]:
        return {room: view for room, view in self._views.items() if view}

    async def follow(self, room_id: str) -> dict[str, Peer]:
        while room_id in self._busy:
            await asyncio.shield(self._busy[room_id])
        view = self._views.get(room_id)
        if view is not None:
            self._idle_since.pop(room_id, None)
            await self.settle(room_id)
            return self._views.get(room_id, view)
        done = self._busy[room_id] = asyncio.get_running_loop().create_future()
        self._buffered[room_id] = []
        try:
            seq, records = await self.scripts["follow"](
                keys=[*self._room_keys(room_id), self.key(f"irooms:{self.instance_id}")], args=[self.instance_id, room_id]
            )
            view = {}
            for raw in records:
                peer = Peer.from_record(json.loads(raw))
                view[peer.peer_id] = peer
            self._views[room_id] = view
            self._floors[room_id] = self._watermark[room_id] = int(seq)
            self._ahead[room_id] = set()
            self._gone[room_id] = {}
            for fields in self._buffered.pop(room_id, []):
                self._apply(fields)
            return view
        except RedisError as exc:
            raise _unavailable(exc) from None
        finally:
            self._buffered.pop(room_id, None)
            del self._busy[room_id]
            done.set_result(None)

    async def claim(self, peer: Peer, expected_resume_hash: str | None, caps: Caps) -> ErrorCode | None:
        room_id = peer.room_id
        try:
            status, seq = await self.scripts["claim"](
                keys=[*self._room_keys(room_id), self.key(f"irooms:{self.instance_id}")],
                args=[peer.peer_id, dumps(peer.record()), expected_resume_hash or "", caps.max_peers, caps.max_watchers,
                      1 if peer.events else 0, self.instance_id, self.key("inbox:"), room_id, self.inbox_maxlen],
            )
        except RedisError as exc:
            raise _unavailable(exc) from None
        if status != "OK":
            return ErrorCode(status)
        peer.seq = int(seq)
        view = self._views.setdefault(room_id, {})
        view[peer.peer_id] = peer
        self._gone.get(room_id, {}).pop(peer.peer_id, None)
        self._idle_since.pop(room_id, None)
        self._mark(room_id, peer.seq)
        await self._settle_to(room_id, peer.seq)  # the peer_list sent next is complete
        return None

    async def update(self, peer: Peer) -> None:
        try:
            seq = await self.scripts["update"](
                keys=self._room_keys(peer.room_id),
                args=[peer.peer_id, dumps(peer.record()), self.instance_id, peer.resume_hash, self.key("inbox:"), peer.room_id, self.inbox_maxlen],
            )
        except RedisError as exc:
            raise _unavailable(exc) from None
        if seq:
            peer.seq = int(seq)
            self._mark(peer.room_id, peer.seq)

    async def release(self, peer: Peer) -> bool:
        view = self._views.get(peer.room_id, {})
        if view.get(peer.peer_id) is not peer:
            return False
        try:
            seq = await self.scripts["release"](
                keys=self._room_keys(peer.room_id),
                args=[peer.peer_id, self.instance_id, peer.resume_hash, self.key("inbox:"), peer.room_id, self.inbox_maxlen],
            )
        except RedisError as exc:
            # Retried by the keeper: a record left behind would be a ghost peer.
            self._unreleased.append(peer)
            log.warning("could not release %s (Redis: %s); will retry", peer.peer_id, exc)
            return False
        if view.get(peer.peer_id) is peer:
            del view[peer.peer_id]
            self._gone.setdefault(peer.room_id, {})[peer.peer_id] = int(seq or 0)
        if seq:
            self._mark(peer.room_id, int(seq))
        if not any(p.instance == self.instance_id for p in view.values()):
            self._idle_since.setdefault(peer.room_id, time.monotonic())
        return bool(seq)

    async def settle(self, room_id: str) -> None:
        if room_id not in self._views:
            return
        try:
            seq = int(await self.redis.hget(self.key(f"meta:{room_id}"), "seq") or 0)
        except RedisError as exc:
            raise _unavailable(exc) from None
        await self._settle_to(room_id, seq)

    async def _settle_to(self, room_id: str, seq: int) -> None:
        if self._watermark.get(room_id, seq) >= seq:
            return
        fut = asyncio.get_running_loop().create_future()
        self._settling.setdefault(room_id, []).append((seq, fut))
        try:
            await asyncio.wait_for(fut, SETTLE_TIMEOUT)
        except asyncio.TimeoutError:
            # A change never arrived (an inbox trimmed while this instance lagged): re-read the room.
            log.warning("room %s: changes up to %d did not arrive within %.1f s; re-reading it", room_id[:16], seq, SETTLE_TIMEOUT)
            await self._resync(room_id)
        finally:
            waiting = self._settling.get(room_id, [])
            if (seq, fut) in waiting:
                waiting.remove((seq, fut))

    def _mark(self, room_id: str, seq: int) -> None:
        """Record that change ``seq`` of ``room_id`` is in the view; advance the watermark."""
        mark = self._watermark.get(room_id)
        if mark is None or seq <= mark:
            return
        self._ahead[room_id].add(seq)
        self._advance(room_id, mark)

    def _advance(self, room_id: str, mark: int) -> None:
        ahead = self._ahead[room_id]
        while mark + 1 in ahead:
            mark += 1
            ahead.discard(mark)
        self._watermark[room_id] = mark
        for wanted, fut in self._settling.get(room_id, []):
            if wanted <= mark and not fut.done():
                fut.set_result(None)

    async def _resync(self, room_id: str) -> None:
        try:
            seq, records = await self.scripts["follow"](
                keys=[*self._room_keys(room_id), self.key(f"irooms:{self.instance_id}")], args=[self.instance_id, room_id]
            )
        except RedisError as exc:
            raise _unavailable(exc) from None
        view = self._views.get(room_id)
        if view is None:
            return
        fresh = {p.peer_id: p for p in (Peer.from_record(json.loads(raw)) for raw in records)}
        for peer_id, peer in fresh.items():
            old = view.get(peer_id)
            if old is None or old.seq < peer.seq:
                if old is not None and old.conn is not None and peer.instance == self.instance_id:
                    continue  # our own live record: ours is the truth
                view[peer_id] = peer
                if self._listener is not None:
                    self._listener.peer_changed(old, peer)
        for peer_id, old in list(view.items()):
            if peer_id not in fresh and old.seq <= int(seq):
                del view[peer_id]
                if self._listener is not None:
                    self._listener.peer_changed(old, None)
        self._floors[room_id] = max(self._floors.get(room_id, 0), int(seq))
        self._mark_through(room_id, int(seq))

    def _mark_through(self, room_id: str, seq: int) -> None:
        """Everything up to ``seq`` is in the view (it was just re-read)."""
        if self._watermark.get(room_id, 0) >= seq:
            return
        self._ahead[room_id] = {s for s in self._ahead.get(room_id, set()) if s > seq}
        self._advance(room_id, seq)

    def forward(self, peer: Peer, frame: dict[str, Any]) -> None:
        try:
            self._forwards.put_nowait((peer.instance, peer.room_id, peer.peer_id, dumps(frame)))
        except asyncio.QueueFull:
            log.warning("dropped a relay to %s: %d relays already wait for Redis", peer.peer_id, FORWARD_QUEUE)

    # ------------------------------------------------------------------ inbox

    def _on_entry(self, fields: dict[str, str]) -> None:
        kind = fields.get("k")
        if kind == "relay":
            try:
                frame = json.loads(fields["d"])
            except (KeyError, ValueError):
                return
            if self._listener is not None:
                self._listener.relayed(fields.get("r", ""), fields.get("p", ""), frame)
            return
        room = fields.get("r", "")
        if room in self._buffered:
            self._buffered[room].append(fields)
        else:
            self._apply(fields)

    def _apply(self, fields: dict[str, str]) -> None:
        room, peer_id = fields.get("r", ""), fields.get("p", "")
        view = self._views.get(room)
        if view is None:
            return
        seq = int(fields.get("s") or 0)
        self._mark(room, seq)
        old = view.get(peer_id)
        if seq <= self._floors.get(room, 0) or (old is not None and old.seq >= seq) or self._gone[room].get(peer_id, 0) >= seq:
            return  # already known: an echo, a duplicate, or older than the snapshot
        try:
            record = Peer.from_record({**json.loads(fields["d"]), "seq": seq})
        except (KeyError, ValueError, TypeError):
            log.warning("ignoring a malformed change in the inbox")
            return
        if fields.get("k") == "put":
            view[peer_id] = record
            self._gone[room].pop(peer_id, None)
            new: Peer | None = record
        else:
            if old is None:
                self._gone[room][peer_id] = seq
                return
            del view[peer_id]
            self._gone[room][peer_id] = seq
            new = None
        if self._listener is not None:
            self._listener.peer_changed(old, new)

    async def _read_inbox(self) -> None:
        last, inbox, delay = "0-0", None, 0.1
        while True:
            key = self.key(f"inbox:{self.instance_id}")
            if key != inbox:  # a new instance id after a lost lease: a new, empty inbox
                inbox, last = key, "0-0"
            try:
                reply = await self.redis.xread({inbox: last}, count=500, block=1000)
                delay = 0.1
            except RedisError as exc:
                log.warning("inbox read failed (%s); retrying", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX)
                continue
            for _stream, entries in reply or []:
                for entry_id, fields in entries:
                    last = entry_id
                    try:
                        self._on_entry(fields)
                    except Exception:  # one bad entry must not stop the reader
                        log.exception("inbox entry failed")
                if entries:
                    self._inbox_read = (inbox, last)  # trimmed by the keeper, off the read path

    async def _write_forwards(self) -> None:
        while True:
            batch = [await self._forwards.get()]
            while not self._forwards.empty() and len(batch) < 500:
                batch.append(self._forwards.get_nowait())
            for attempt in range(3):
                try:
                    async with self.redis.pipeline(transaction=False) as pipe:
                        for instance, room, peer_id, data in batch:
                            pipe.xadd(self.key(f"inbox:{instance}"), {"k": "relay", "r": room, "p": peer_id, "d": data}, maxlen=self.inbox_maxlen, approximate=True)
                        await pipe.execute()
                    break
                except RedisError as exc:
                    log.warning("relay write failed (%s), attempt %d", exc, attempt + 1)
                    await asyncio.sleep(0.2 * (attempt + 1))

    # ------------------------------------------------------------------ lease, reaping

    async def _keep(self) -> None:
        interval = self.lease_ttl / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await self._renew()
                await self._trim_inbox()
                await self._reap_dead()
                await self._retry_releases()
                await self._unfollow_idle()
            except RedisError as exc:
                log.warning("lease upkeep failed: %s", exc)
            except Exception:
                log.exception("lease upkeep failed")

    async def _renew(self) -> None:
        renewed = await self.scripts["renew"](
            keys=[self.key(f"lease:{self.instance_id}"), self.key("instances")], args=[self.instance_id, int(self.lease_ttl * 1000)]
        )
        if renewed:
            return
        log.error("instance %s lost its lease (fenced by another instance); closing its peers and starting over", self.instance_id)
        for mapping in (self._views, self._floors, self._gone, self._watermark, self._ahead):
            mapping.clear()
        self._idle_since.clear()
        self._unreleased.clear()
        self.instance_id = _new_instance_id()
        await self._join()
        if self._listener is not None:
            self._listener.lease_lost()

    async def _trim_inbox(self) -> None:
        read, self._inbox_read = self._inbox_read, None
        if read is not None:
            await self.redis.xtrim(read[0], minid=read[1], approximate=False)

    async def _reap_dead(self) -> None:
        now = time.monotonic()
        instances = await self.redis.hkeys(self.key("instances"))
        others = [i for i in instances if i != self.instance_id]
        if others:
            async with self.redis.pipeline(transaction=False) as pipe:
                for instance in others:
                    pipe.exists(self.key(f"lease:{instance}"))
                leases = await pipe.execute()
            for instance, has_lease in zip(others, leases, strict=True):
                if has_lease:
                    self._dead_since.pop(instance, None)
                    continue
                since = self._dead_since.setdefault(instance, now)
                if now - since >= self.peer_grace:
                    fenced = await self.scripts["fence"](
                        keys=[self.key(f"lease:{instance}"), self.key("instances"), self.key("fenced")], args=[instance]
                    )
                    if fenced:
                        log.warning("instance %s lost its lease %.0f s ago: removing its peers that did not come back", instance, now - since)
        for instance in await self.redis.smembers(self.key("fenced")):
            self._dead_since.pop(instance, None)
            removed = 0
            for room in await self.redis.smembers(self.key(f"irooms:{instance}")):
                removed += int(await self.scripts["reap"](keys=self._room_keys(room), args=[instance, self.key("inbox:"), room, self.inbox_maxlen]))
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(self.key(f"irooms:{instance}"), self.key(f"inbox:{instance}"), self.key(f"lease:{instance}"))
                pipe.srem(self.key("fenced"), instance)
                await pipe.execute()
            if removed:
                log.warning("removed %d peers of dead instance %s", removed, instance)

    async def _retry_releases(self) -> None:
        pending, self._unreleased = self._unreleased, []
        for peer in pending:
            seq = await self.scripts["release"](
                keys=self._room_keys(peer.room_id),
                args=[peer.peer_id, self.instance_id, peer.resume_hash, self.key("inbox:"), peer.room_id, self.inbox_maxlen],
            )
            view = self._views.get(peer.room_id, {})
            if seq and view.get(peer.peer_id) is peer:
                del view[peer.peer_id]
                self._gone.setdefault(peer.room_id, {})[peer.peer_id] = int(seq)
                if self._listener is not None:
                    self._listener.peer_changed(peer, None)

    async def _unfollow_idle(self) -> None:
        now = time.monotonic()
        for room, since in list(self._idle_since.items()):
            if now - since < UNFOLLOW_AFTER or room in self._busy:
                continue
            view = self._views.get(room, {})
            if any(p.instance == self.instance_id for p in view.values()):
                self._idle_since.pop(room, None)
                continue
            done = self._busy[room] = asyncio.get_running_loop().create_future()
            try:
                dropped = await self.scripts["unfollow"](
                    keys=[self.key(f"follow:{room}"), self.key(f"irooms:{self.instance_id}"), self.key(f"peers:{room}")],
                    args=[self.instance_id, room],
                )
                if dropped:
                    for mapping in (self._views, self._floors, self._gone, self._watermark, self._ahead):
                        mapping.pop(room, None)
                self._idle_since.pop(room, None)
            finally:
                del self._busy[room]
                done.set_result(None)


def _new_instance_id() -> str:
    return f"{socket.gethostname()[:32]}-{os.getpid()}-{secrets.token_hex(4)}"


def _safe_url(url: str) -> str:
    # Never log a password embedded in the URL.
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url

