"""Striped transfers: file payload over several peer connections to the same peer.

One SCTP association backs off like one TCP Reno flow, so a lossy or long link starves a
single data channel; independent associations recover most of it (docs/benchmarks.md).
A ``PeerChannel`` therefore owns a ``Stripes``: zero or more extra peer connections
("stripes", one data channel each) that carry only binary file frames. Control messages,
hello, heartbeats and the file protocol stay on the channel itself (the primary).

Admission (the extra connections belong to the same job, not to new clients):

* a worker whose runtime allows striping for this reservation before it answers the
  first offer (``Stripes.allow`` from ``transport.accept``'s ``on_channel``) puts the
  grant in that answer (``protocol.STRIPE_GRANT: {max, token}``): the client may open its
  extra connections while the first one still handshakes (``connect(stripes=N)``), so N
  connections take little longer to set up than one;
* otherwise the client asks on the open channel: ``stripe_request {}``, and the worker
  answers ``stripe_grant {max, token}`` once its runtime allowed striping,
  ``stripe_grant {max: 0}`` when it refused (``Stripes.deny``); a request that comes
  before either is answered at that point;
* each extra connection is an ordinary signaling ``offer`` carrying ``stripe: token``. The
  worker's offer guard admits it only when the token belongs to a live channel with the
  same (server-stamped) sender and fewer than ``max`` stripes, and hands the connection to
  that channel; anything else is refused like a busy worker.

Sending (``core.files``): chunks are dealt from one queue (the file, in order) to the least
loaded open lane, the primary included, each lane flow-controlled on its own (a queue
of ``files.LANE_QUEUE_S`` of its measured rate, at most ``files.HIGH_WATER``), so memory
stays bounded by lanes x HIGH_WATER. The receiver writes
each chunk at its offset. A stripe that dies loses the chunks it had in flight; the
receiver names the missing ranges (``file_missing``) after ``file_end`` and the sender
resends them on the lanes still alive, so the transfer goes on while the primary lives.

Growth (client side, while a transfer of at least ``STRIPE_MIN_BYTES`` runs; the grant is
asked for before the file's first chunk, ``prepare``): open up to ``START_CONNECTIONS``
connections in all, then one step per sample (``SETTLE_INTERVAL`` or ``SETTLE_RTTS`` round
trips after the last step, then ``SAMPLE_INTERVAL`` long, taken again while it is still
falling: ``steady``) while the throughput grows by ``growth_needed`` (``GROWTH``, less with
many connections), up to ``MAX_CONNECTIONS`` (``RELAY_MAX_CONNECTIONS`` when the path goes
through a TURN relay, where each connection costs an allocation). The first step doubles the
connections, or adds one where each already keeps ``LOSS_FREE_WINDOW`` in flight
(``first_step``); later ones quadruple where the last step's connections each brought nearly a
whole share (``WHOLE_SHARE``), double where they brought half a share or more (``FULL_SHARE``),
else add one (``next_step``): where the path's loss, not the link, limits each connection, the
rest of the transfer runs at the rate of the connections it has.
Samples count bytes that reached the receiver (``FileTransfers.throughput_count``: received
here, or reported by the receiver in ``file_progress``), not bytes handed to send buffers,
which swallow megabytes the moment a connection opens.
What growth found is kept per worker for ``PATH_MEMORY_S`` (``PathMemory``, in a file of the
client's user data dir, so a next client process finds it too):
the next striped transfer to that worker, on this channel (the results after the upload) or
a later one (the inference after the training), opens that many connections at once; where
growth had stopped on its own, a new channel then probes one more, and where the last
transfer ended while still growing, it goes on doubling from there. A 64 MiB transfer on a
lossy link spends half its time in the growth ramp (docs/bench/lab_transfer_notes.md),
which a known path skips.
Lab figures for these numbers, and for growth rules that were tried and measured no better:
docs/bench/lab_transfer_notes.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sleap_rtc.core.config import user_data_dir
from sleap_rtc.core.json_store import read_json, write_json
from sleap_rtc.core.protocol import ChannelType
from sleap_rtc.core.tasks import cancel_and_wait, spawn
from sleap_rtc.core.transport_errors import PeerClosedError, TransportError

if TYPE_CHECKING:
    from sleap_rtc.core.backends import Connection
    from sleap_rtc.core.channel import PeerChannel

log = logging.getLogger(__name__)

STRIPE_LABEL = "sleap-rtc-stripe"
"""Label of a stripe's data channel."""
START_CONNECTIONS = 2
"""Connections (primary included) a striped transfer starts with."""
MAX_CONNECTIONS = 16
"""Cap on connections (primary included) to one peer: at 80 ms and 1 % loss one association
moves ~0.12-0.18 MB/s (the Reno bound, ~MSS / (RTT sqrt(loss)), less while it slow-starts), so
the link's 0.15x target takes eleven or more; memory stays bounded (each lane queues a quarter
second of its own rate)."""
RELAY_MAX_CONNECTIONS = 2
"""Cap when the primary goes through a TURN relay (each connection is one allocation)."""
STRIPE_MIN_BYTES = 8 * 1024 * 1024
"""Transfers smaller than this never open stripes (set-up would cost more than it gains)."""
SETTLE_INTERVAL = 1.0
"""Seconds after a step before its sample starts, at least: a new association slow-starts,
runs for a moment at several times the rate the path's loss lets it keep, and takes some
tens of round trips to come down (at 0.1 % loss and 80 ms, 2 connections moved 6 MB/s in
their first 1.5 s and 2.4 with a third one the next 1.5 s); counted, that reads as gain
after the step and as loss after the next."""
SETTLE_RTTS = 25
"""... or this many of the path's round trips (``FileTransfers.path_rtt``), when longer..."""
MAX_SETTLE = 4.0
"""... but at most this many seconds."""
SAMPLE_INTERVAL = 1.5
"""Seconds of throughput measured before deciding the next step."""
GROWTH = 1.10
"""Add a connection while the last one raised throughput by at least this factor..."""
SHARE = 0.5
"""... or, with many connections, by half of an average connection's share: the n-th adds
1/(n-1) when the path limits each connection (loss) and ~0 when the link or the CPU is
the limit, so growth goes on only where connections still add throughput."""
GRANT_TIMEOUT = 10.0
"""Seconds the client waits for ``stripe_grant``."""
STRIPE_OPEN_TIMEOUT = 15.0
"""Seconds one extra connection may take to open."""
CLOSE_TIMEOUT = 5.0
"""Seconds closing all stripes of a channel may take."""

Opener = Callable[[str], Awaitable["Connection"]]
"""``opener(token) -> Connection``: opens one extra connection (``transport.open_stripe``)."""


FULL_SHARE = 0.5
"""A step whose connections each added at least this fraction of an average connection's
share is followed by one that doubles the connections (each is held by the path's loss):
halfway between ~1 (loss-bound) and ~0 (the link or a CPU is the limit)."""
WHOLE_SHARE = 0.8
"""... and one whose connections each added this much or more is followed by one that
quadruples them: every connection added moved as much as those before it, so the path's loss
holds each one and far more are needed (1 % loss takes 11-16); a doubling step at a time took
three steps, 8-12 s, of a 64 MiB transfer lasting 15-50 s to get there."""
STEADY = 0.8
"""A sample whose second half moved less than this fraction of its first is the tail of a
slow start (``steady``): it is taken again..."""
MAX_RESAMPLES = 3
"""... at most this many times in a row."""


LOSS_FREE_WINDOW = 256 * 1024
"""Bytes in flight per connection (its rate times the path's round trip) from which the first
step adds one connection, not as many as are open: a Reno-like association keeps ~1.22 /
sqrt(p) segments in flight at loss rate p, so ~200 segments of 1,200 bytes mean p below ~4e-5.
There the path's loss does not hold the connections (the link, the peer's window or a CPU
does), and a doubling of slow-starting connections overflows the bottleneck's queue: at 80 ms /
0 % in the lab, 2 connections moved 6.3-11.6 MB/s and, doubled, fell to 0.7-5 MB/s
(docs/bench/lab_transfer_notes.md section 19). On a lossy path each connection keeps far less
(at 80 ms / 0.1 %, 2 moved 0.8-3.0 MB/s: 0.03-0.12 MB each), so growth still doubles there; a path
whose connections are held by their receive windows (a fast link) grows on from the probe."""


PATH_MEMORY_S = 900.0
"""Seconds what growth found for a worker's path is reused, counted from when growth last
measured it (a transfer that starts at the cap, with nothing to measure, does not extend
it): a GUI session's training, its results and the inference after it take minutes; a
laptop carried to another network an hour later learns its new path again. A stale count
costs little either way: growth probes one more connection and goes on where it gains, and
the extra connections of a path that got cleaner cost a little CPU."""
MAX_PATHS = 256
"""Workers a ``PathMemory`` remembers at most (the oldest is forgotten first)."""
PATHS_FILE = "learned_paths.json"
"""File name of the client's ``PathMemory`` in the user data dir."""


@dataclass(frozen=True)
class LearnedPath:
    """What growth found on one worker's path: ``connections`` in all (the primary included);
    ``settled`` when growth stopped on its own or at the cap, not because the transfer ended;
    ``at`` the ``PathMemory`` clock's time it was found."""

    connections: int
    settled: bool
    at: float


class PathMemory:
    """The connections each worker's path needed, as growth found them, for the next striped
    transfer to that worker: ``ttl`` seconds each, at most ``MAX_PATHS`` workers, kept in
    ``store`` (a JSON file, ``core.json_store``) when given, so a next client process (the
    CLI's inference after its training) starts where the last one's growth ended; in memory
    only without one. ``clock`` (wall time: the file outlives the process) is injected for tests."""

    def __init__(self, ttl: float = PATH_MEMORY_S, clock: Callable[[], float] = time.time, store: Path | None = None):
        self.ttl = ttl
        self.clock = clock
        self.store = store
        self._paths: dict[str, LearnedPath] = {}

    def remember(self, peer_id: str, connections: int, settled: bool) -> None:
        """Keep what growth found for ``peer_id`` (replacing what was there), and save."""
        self._load()
        self._paths.pop(peer_id, None)
        self._paths[peer_id] = LearnedPath(connections, settled, self.clock())
        while len(self._paths) > MAX_PATHS:
            del self._paths[next(iter(self._paths))]  # dicts keep insertion order: the oldest
        if self.store is not None:
            saved = {peer: [p.connections, p.settled, p.at] for peer, p in self._paths.items()}
            try:
                write_json(self.store, {"version": 1, "paths": saved})
            except OSError as exc:  # this process still remembers; a next one learns again
                log.warning("could not save learned paths to %s (%s)", self.store, exc)

    def recall(self, peer_id: str) -> LearnedPath | None:
        """What growth found for ``peer_id`` within ``ttl``, else None."""
        self._load()
        learned = self._paths.get(peer_id)
        if learned is not None and not 0 <= self.clock() - learned.at <= self.ttl:
            del self._paths[peer_id]  # expired, or found "later" than now (the clock went back)
            return None
        return learned

    def _load(self) -> None:
        # The file is read each time: another client process may have learned since. Entries
        # are checked as the file is the user's own but could be anything.
        if self.store is None:
            return
        data = read_json(self.store)
        paths = data.get("paths") if isinstance(data, dict) else None
        if not isinstance(paths, dict):
            return
        self._paths = {
            peer: LearnedPath(entry[0], entry[1], entry[2])
            for peer, entry in list(paths.items())[-MAX_PATHS:]
            if isinstance(peer, str) and isinstance(entry, list) and len(entry) == 3
            and type(entry[0]) is int and 1 <= entry[0] <= MAX_CONNECTIONS and type(entry[1]) is bool
            and type(entry[2]) is float and math.isfinite(entry[2])  # time.time()'s; not 10**400
        }


def default_paths_file() -> Path:
    """``learned_paths.json`` in the user data dir: where a client keeps what growth found."""
    return user_data_dir() / PATHS_FILE


PATHS = PathMemory(store=default_paths_file())
"""This process's memory, kept in the user data dir: every ``Stripes`` uses it unless given
another. Only a client's growth remembers or recalls, so a worker never writes it."""


def steady(first: float, second: float) -> bool:
    """Whether a sample whose halves moved ``first`` then ``second`` (rates) has stopped
    falling: a slow start's burst, still coming down, would read as the connections' rate."""
    return second >= STEADY * first


def growth_needed(connections: int, added: int = 1) -> float:
    """Throughput factor the last step (``added`` connections, ``connections`` now open) must
    have brought for growth to go on: ``GROWTH``, or half a share per added one when less."""
    return 1.0 + min(GROWTH - 1.0, SHARE * added / max(1, connections - added))


def first_step(connections: int, rate: float, rtt: float | None, cap: int) -> int:
    """Connections to add after the first sample (``rate`` bytes/s over ``connections``, the
    path's round trip ``rtt`` s, None where unmeasured): double, the step whose gain reads
    clearest, unless each connection already keeps ``LOSS_FREE_WINDOW`` in flight; then add
    one (capped). ``rtt`` is ``FileTransfers.offer_rtt``: on the receiving side the only round
    trip measured ends at the first chunk, several round trips late on a new connection (a
    download at 80 ms / 0.1 % read 2 connections as loss-free), so a receiver doubles."""
    room = max(0, cap - connections)
    in_flight = rate / max(1, connections) * (rtt or 0.0)
    return min(room, 1 if in_flight >= LOSS_FREE_WINDOW else connections)


def next_step(connections: int, added: int, gain: float, cap: int) -> int:
    """Connections to add after a step of ``added`` that took throughput up by ``gain`` (a
    factor) with ``connections`` now open: 0 stops growth, 1 probes further, ``connections``
    doubles when each added one brought ``FULL_SHARE`` of a share or more, and three times
    ``connections`` quadruples when each brought ``WHOLE_SHARE`` (both capped)."""
    room = max(0, cap - connections)
    if room == 0 or gain < growth_needed(connections, added):
        return 0
    per_share = (gain - 1.0) * max(1, connections - added) / max(1, added)
    if per_share >= WHOLE_SHARE:
        return min(room, 3 * connections)
    return min(room, connections) if per_share >= FULL_SHARE else 1


def wait_open(conn: Connection) -> asyncio.Future:
    """A future that resolves when ``conn`` opens and fails if it closes first.

    Installs temporary handlers; the ``StripeLane`` built on ``conn`` replaces them.
    """
    fut = asyncio.get_running_loop().create_future()

    class _Waiter:
        def channel_open(self) -> None:
            if not fut.done():
                fut.set_result(None)

        def channel_message(self, data: str | bytes) -> None:
            pass  # nothing is sent on a stripe before its lane exists

        def channel_low(self) -> None:
            pass

        def channel_closed(self, reason: str) -> None:
            if not fut.done():
                fut.set_exception(PeerClosedError(f"The extra connection closed while opening: {reason}."))

    conn.set_handlers(_Waiter())
    if conn.is_open and not fut.done():
        fut.set_result(None)
    fut.add_done_callback(lambda f: f.cancelled() or f.exception())
    return fut


class StripeLane:
    """One open stripe: a backend connection whose binary frames belong to ``owner``'s transfers."""

    def __init__(self, conn: Connection, owner: Stripes):
        from sleap_rtc.core.files import LOW_WATER

        self.conn = conn
        self.owner = owner
        self.closed = False
        self.opened_at = time.monotonic()
        conn.low_threshold = LOW_WATER
        conn.set_handlers(self)

    # -- lane API used by files._stream
    @property
    def buffered_amount(self) -> int:
        """Bytes queued on this stripe."""
        return self.conn.buffered_amount

    @property
    def low_threshold(self) -> int:
        """The stripe's buffered-low threshold."""
        return self.conn.low_threshold

    @property
    def usable(self) -> bool:
        """True while the stripe can take frames."""
        return not self.closed and self.conn.is_open

    def send_binary(self, data: bytes) -> None:
        """Send one binary frame; ``PeerClosedError`` once the stripe is gone."""
        if self.closed:
            raise PeerClosedError("The stripe is closed.")
        try:
            self.conn.send(data)
        except Exception as exc:
            self.channel_closed(f"send failed ({exc.__class__.__name__})")
            raise PeerClosedError("The stripe closed.") from None

    # -- backend events
    def channel_open(self) -> None:
        """The stripe opened (it normally is already)."""

    def channel_message(self, data: str | bytes) -> None:
        """A frame from the peer: binary frames go to the owner's transfers, text is ignored."""
        if isinstance(data, (bytes, bytearray, memoryview)):
            self.owner.channel.transfers.on_chunk(bytes(data))
        else:
            log.warning("ignoring a text frame on a stripe from %s", self.owner.channel.remote_peer_id)

    def channel_low(self) -> None:
        """The stripe's buffer drained: wake a sender waiting for any lane."""
        self.owner.lane_low()

    def channel_closed(self, reason: str) -> None:
        """The stripe died or was closed: drop it from the lanes."""
        if self.closed:
            return
        self.closed = True
        log.info("stripe to %s closed: %s", self.owner.channel.remote_peer_id, reason)
        self.owner.lane_closed(self)


class Stripes:
    """The extra connections of one ``PeerChannel`` and the policy that adds them."""

    def __init__(self, channel: PeerChannel, memory: PathMemory | None = None):
        self.channel = channel
        self.memory = PATHS if memory is None else memory
        self.lanes: list[StripeLane] = []
        self.opener: Opener | None = None  # client side: set by transport.connect
        self.token: str | None = None  # worker side: set by allow()
        self.allowed = 0
        self.max_connections = MAX_CONNECTIONS
        self._admitted = 0
        self._grant: asyncio.Future | None = None
        self._low = asyncio.Event()
        self._grower: asyncio.Task | None = None
        self._opening: set[asyncio.Task] = set()
        self._ensurer: asyncio.Task | None = None
        self._requested = False  # a stripe_request came before the runtime decided
        self._measured = False  # growth on this channel found what the path needs
        self._reached = 0  # connections open after growth's last step
        self._decided = False

    # ------------------------------------------------------------------ worker side

    def allow(self, max_stripes: int = MAX_CONNECTIONS - 1) -> str:
        """Let the peer open up to ``max_stripes`` extra connections; returns their token."""
        self.allowed = max(0, max_stripes)
        self.token = secrets.token_urlsafe(24)
        self._decide()
        return self.token

    def deny(self) -> None:
        """Refuse extra connections on this channel (answers a pending request with ``max: 0``)."""
        self.allowed, self.token = 0, None
        self._decide()

    def _decide(self) -> None:
        self._decided = True
        if self._requested:
            self._requested = False
            self._send_grant()

    def grant_fields(self) -> dict[str, Any]:
        """The grant as it travels: ``{max}``, plus ``token`` when striping is allowed."""
        if self.token is not None and self.allowed > 0:
            return {"max": self.allowed, "token": self.token}
        return {"max": 0}

    def _send_grant(self) -> None:
        with contextlib.suppress(TransportError):
            self.channel.send_control({"type": ChannelType.STRIPE_GRANT.value, **self.grant_fields()})

    def admits(self, token: Any, sender: Any) -> bool:
        """Whether an offer with ``token`` from ``sender`` may become a stripe of this channel
        (right token, same peer, channel open, under the cap); counts it when admitted."""
        ok = (
            isinstance(token, str) and self.token is not None and hmac.compare_digest(token, self.token)
            and sender == self.channel.remote_peer_id and not self.channel.closed
            and self._admitted < self.allowed
        )
        if ok:
            self._admitted += 1
        return ok

    def release(self) -> None:
        """An admitted stripe failed to open: free its place under the cap."""
        self._admitted = max(0, self._admitted - 1)

    # ------------------------------------------------------------------ both sides

    def attach(self, conn: Connection) -> StripeLane:
        """Adopt an open connection as a stripe of this channel."""
        lane = StripeLane(conn, self)
        if self.channel.closed:
            spawn(conn.close(), name="stripe-close")
            lane.closed = True
            return lane
        self.lanes.append(lane)
        self._low.set()  # a sender waiting for room (``drain_any``) has a new lane now
        log.info("stripe %d to %s open (%s)", len(self.lanes), self.channel.remote_peer_id, conn.backend)
        return lane

    def send_lanes(self) -> list[Any]:
        """Where file frames may go now: the channel itself, then each usable stripe."""
        return [self.channel] + [lane for lane in self.lanes if lane.usable]

    @property
    def count(self) -> int:
        """Open connections to the peer, the primary included."""
        return 1 + sum(1 for lane in self.lanes if lane.usable)

    async def drain_any(self, fits: Callable[[Any], bool], timeout: float) -> None:
        """Wait until ``fits(lane)`` for some lane (checked on each lane's buffered-low event);
        ``PeerClosedError`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            self._low.clear()
            if any(fits(lane) for lane in self.send_lanes()):
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise PeerClosedError(f"The peer accepted no data for {timeout:.0f} s.")
            try:
                await self.channel.guard(self._low.wait(), left)
            except TimeoutError:
                raise PeerClosedError(f"The peer accepted no data for {timeout:.0f} s.") from None

    def lane_low(self) -> None:
        """Some lane's buffer drained (the primary's or a stripe's)."""
        self._low.set()

    def lane_closed(self, lane: StripeLane) -> None:
        """Forget a dead stripe and wake the sender (its chunks are repaired at the end)."""
        with contextlib.suppress(ValueError):
            self.lanes.remove(lane)
        self._low.set()

    def on_control(self, msg: dict[str, Any]) -> None:
        """Handle ``stripe_request`` (worker) and ``stripe_grant`` (client)."""
        kind = msg.get("type")
        if kind == ChannelType.STRIPE_REQUEST:
            if self._decided:
                self._send_grant()
            else:  # the channel just opened: its runtime has not said yet whether it may stripe
                self._requested = True
        elif kind == ChannelType.STRIPE_GRANT and self._grant is not None and not self._grant.done():
            self._grant.set_result(msg)

    async def close(self) -> None:
        """Close every stripe and stop growing; bounded by ``CLOSE_TIMEOUT``."""
        tasks = [t for t in (self._grower, self._ensurer, *self._opening) if t is not None]
        await cancel_and_wait(tasks, CLOSE_TIMEOUT / 2)
        lanes, self.lanes = self.lanes, []
        if lanes:
            await asyncio.wait([asyncio.ensure_future(lane.conn.close()) for lane in lanes], timeout=CLOSE_TIMEOUT / 2)

    # ------------------------------------------------------------------ client side: growth

    def prepare(self, size: int) -> None:
        """A transfer of ``size`` bytes is about to be offered: ask for the grant now, ahead
        of the file's first chunk. Asked later, ``stripe_request`` waits behind the chunks
        already queued on the channel: up to ``HIGH_WATER``, over 20 s on a lossy long link,
        which outlasted ``GRANT_TIMEOUT`` (docs/bench/lab_transfer.md)."""
        if self.opener is not None and size >= STRIPE_MIN_BYTES and not self.channel.closed and self._grant is None:
            self._request_grant()

    def _request_grant(self) -> None:
        self._grant = asyncio.get_running_loop().create_future()
        with contextlib.suppress(TransportError):
            self.channel.send_control({"type": ChannelType.STRIPE_REQUEST.value})

    def granted(self, grant: Any) -> None:
        """The worker's answer carried its grant (``protocol.STRIPE_GRANT``): keep it, so no
        ``stripe_request`` round trip is needed. Anything but a dict is ignored."""
        if not isinstance(grant, dict) or self._grant is not None:
            return
        self._grant = asyncio.get_running_loop().create_future()
        self._grant.set_result(grant)

    def open_early(self, connections: int) -> None:
        """Start opening extra connections up to ``connections`` in all now, while the primary
        still handshakes (``transport.connect(stripes=N)``); ``ensure`` joins them."""
        if self.opener is not None and connections > 1 and not self.channel.closed:
            self._ensurer = spawn(self.ensure(connections), name=f"stripes-open-{self.channel.remote_peer_id}")

    def transfer_started(self, size: int) -> None:
        """A transfer of ``size`` bytes began (either direction): maybe start growing."""
        if self.opener is None or size < STRIPE_MIN_BYTES or self.channel.closed:
            return
        if self._grower is None or self._grower.done():
            self._grower = spawn(self._grow(), name=f"stripes-{self.channel.remote_peer_id}")

    async def ensure(self, connections: int) -> int:
        """Open extra connections until ``connections`` in all (capped), counting those already
        opening; returns how many are open once none is still opening."""
        token, allowed = await self._get_grant()
        if token is None:
            return self.count
        for _ in range(min(connections, self._cap(allowed)) - self.count - len(self._opening)):
            self._start_one(token)
        if self._opening:
            await asyncio.wait(set(self._opening))
        return self.count

    def _cap(self, allowed: int) -> int:
        cap = min(self.max_connections, MAX_CONNECTIONS, 1 + allowed)
        return min(cap, RELAY_MAX_CONNECTIONS) if self._relayed() else cap

    def _relayed(self) -> bool:
        return bool(getattr(self.channel.conn, "relayed", None))

    async def _get_grant(self) -> tuple[str | None, int]:
        if self._grant is None:
            self._request_grant()
        try:
            grant = await self.channel.guard(asyncio.shield(self._grant), GRANT_TIMEOUT)
        except (TimeoutError, TransportError):
            return None, 0
        token, allowed = grant.get("token"), grant.get("max")
        if not isinstance(token, str) or not isinstance(allowed, int) or allowed <= 0:
            return None, 0
        return token, allowed

    def _start_one(self, token: str) -> asyncio.Task:
        task = spawn(self._open_one(token), name=f"stripe-open-{self.channel.remote_peer_id}")
        self._opening.add(task)
        task.add_done_callback(self._opening.discard)
        return task

    async def _open_one(self, token: str) -> None:
        assert self.opener is not None
        try:
            conn = await asyncio.wait_for(self.opener(token), STRIPE_OPEN_TIMEOUT)
            self.attach(conn)
        except (TransportError, TimeoutError, OSError, ConnectionError) as exc:
            log.info("an extra connection to %s did not open: %s", self.channel.remote_peer_id, exc)

    async def _sample(self, transfers: Any) -> float:
        """Bytes per second ``transfers`` moved over ``SAMPLE_INTERVAL``, once ``steady``
        (at most ``MAX_RESAMPLES`` more samples)."""
        for _ in range(1 + MAX_RESAMPLES):
            halves = []
            for _ in range(2):
                before, t0 = transfers.throughput_count(), time.monotonic()
                await asyncio.sleep(SAMPLE_INTERVAL / 2)
                halves.append((transfers.throughput_count() - before) / max(1e-6, time.monotonic() - t0))
            if steady(*halves) or not transfers.active:
                break
            log.debug("stripes to %s: %.2f then %.2f MB/s, still falling: sampled again",
                      self.channel.remote_peer_id, halves[0] / 1e6, halves[1] / 1e6)
        return sum(halves) / 2

    async def _grow(self) -> None:
        token, allowed = await self._get_grant()
        if token is None:
            return
        peer = self.channel.remote_peer_id
        learned = self.memory.recall(peer)
        if learned is not None:
            log.info("stripes to %s: starting with the %d connections found %.0f s ago%s", peer, learned.connections,
                     self.memory.clock() - learned.at, "" if learned.settled else " (still growing then)")
        await self.ensure(max(START_CONNECTIONS, learned.connections if learned else 0))
        known = learned is not None and learned.settled
        if known and self._measured:  # this channel's own growth found it: a next transfer keeps its lanes
            return
        needed = None
        self._reached = self.count
        try:
            needed = await self._grow_from_here(token, allowed, probe_first=known)
        finally:
            if needed is not None:
                self._measured = True
                self.memory.remember(peer, needed, settled=True)
            elif not known and self._reached >= START_CONNECTIONS:
                # Ended while growing: go on from there next time. Counted when the last step
                # opened, as a peer that hung up after the transfer has closed the lanes by now.
                self.memory.remember(peer, self._reached, settled=False)

    async def _grow_from_here(self, token: str, allowed: int, probe_first: bool) -> int | None:
        """Grow from the connections open now; the connections the path needs once growth stops
        on its own or at the cap, None when the transfer or the channel ended first. The first
        step doubles, or, on a path whose need is known (``probe_first``), adds one: a need
        found on a slow start's tail, or on a path that since got worse, is found again."""
        transfers = self.channel.transfers
        last: float | None = None
        added = 0
        before_step = self.count
        while not self.channel.closed and transfers.active:
            cap = self._cap(allowed)
            if self.count >= cap:
                # Found only where a step got here; the relay's cap says nothing about what a
                # direct path to the worker needs.
                return None if last is None or self._relayed() else self.count
            await asyncio.sleep(min(MAX_SETTLE, max(SETTLE_INTERVAL, SETTLE_RTTS * (transfers.path_rtt or 0.0))))
            rate = await self._sample(transfers)
            cap = self._cap(allowed)
            # The first sample has nothing to compare with: double (2x where loss holds each
            # connection, ~1x where the link or a CPU does), or probe one more where the path's
            # need is known or its connections are not held by loss (``first_step``).
            gain = None if last is None else rate / max(1.0, last)
            if gain is None:
                step = 1 if probe_first else first_step(self.count, rate, transfers.offer_rtt, cap)
            else:
                step = next_step(self.count, added, gain, cap)
            log.debug("stripes to %s: %d connections moved %.2f MB/s (x%s), step %d", self.channel.remote_peer_id,
                      self.count, rate / 1e6, "-" if gain is None else f"{gain:.2f}", step)
            if not transfers.active:
                return None
            if step == 0:
                # One connection that brought too little: the path needs those before it. After a
                # doubling, a slow start's tail can hide the gain: keep what is open (a new channel
                # probes one more).
                needed = before_step if added == 1 else self.count
                log.info("stripes to %s: %d connections (throughput stopped growing at %.1f MB/s; %d needed)",
                         self.channel.remote_peer_id, self.count, rate / 1e6, needed)
                return needed
            last, before_step = rate, self.count
            await asyncio.wait({self._start_one(token) for _ in range(step)})
            self._reached = self.count
            added = max(1, self.count - before_step)  # an open that failed brought nothing
        return None
