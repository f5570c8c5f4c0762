"""The worker runtime: registered in a room, guarding offers, running one job at a time.

Life of a connection:

1. an ``offer`` arrives (relayed by the server); ``StatusGuard.try_reserve`` checks and
   reserves atomically; a worker that is reserved/busy/in maintenance answers with
   ``busy_error_frame`` (an ``error`` with reason ``worker_busy`` and its status, the
   v2.0 refusal that clients already understand) and keeps running;
2. ``transport.accept`` opens the data channel; the reservation (a lease) is confirmed
   then, or released when the channel does not open within the lease timeout; from then
   on the client may open extra connections for striped transfers (``core.stripes``):
   offers carrying the token its channel granted pass the guard as part of the same
   reservation, any other stripe offer is refused (``STRIPE_REFUSED``);
3. the client sends the package (``send_file``) and ``job_submit``; the worker answers
   ``job_accepted``, becomes busy, runs ``JobExecutor`` (logs and training events
   streamed), sends each result (``job_result`` + ``send_file``) and ``job_complete`` (or
   ``job_failed``), and is available again; old job directories (``jobdirs``) and the
   transfer cache (``core.files.prune_transfer_cache``) are pruned after each job;
4. a client whose channel dies while its job runs (an outage on either network) gets
   ``reattach_grace`` seconds to come back: its new offer is accepted for the running job
   (``job_attach``), which kept running, and logs and results go to the new channel. A
   client that does not come back within the grace cancels its job and releases the worker.

Limits against a hostile room member (every one a ``WorkerConfig`` field): the lease before
the channel opens is short (``lease_timeout``); once open, ``job_submit`` must come within
``submit_timeout`` and the client may not stay silent (no message, no file bytes) for more
than ``submit_idle_timeout``; a reservation the client never used (no ICE, or never a
message or a file byte) puts it in back-off
(``core.status``). A file offer larger than ``max_package_bytes`` or than the free disk is
refused, at most ``core.files.MAX_INCOMING`` files arrive at once, and the partial files of
a session are removed when it ends (a video's are kept for a later resume, under the
cache's cap and age). A job runs at most ``max_job_seconds``.

Inference on videos: the client sends each video and model as a file of its own before the
package (``core.inference``); the job may use those files, videos on the declared
``data_roots`` (read-only; their names advertised as the ``data_roots`` property), and
models held in the transfer cache (``worker.inputs``). Each video's predictions are sent
as soon as they exist. A trained model's zip is kept in the transfer cache under its
sha256 (its id, in ``job_complete``), so inference with it sends no model bytes.

Status changes are published with ``update_metadata``; the signaling client re-registers
with the current metadata after a reconnect. ``error`` frames from the server are logged,
never fatal.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sleap_rtc.core import jobs_wire
from sleap_rtc.core.credentials import client_token_for, encode_session_string
from sleap_rtc.core.files import CACHE_MAX_BYTES, MAX_FILE_BYTES, prune_transfer_cache, sha256_file
from sleap_rtc.core.identity import WorkerKey, load_or_create_key
from sleap_rtc.core.protocol import (
    ChannelType,
    JobKind,
    MessageType,
    ProtocolError,
    Prop,
    ResultKind,
    OFFER_REF,
    STRIPE_TOKEN,
    STRIPE_REFUSED,
    Role,
    busy_error_frame,
)
from sleap_rtc.core.signaling import ConnectionState, SignalingClient, SignalingError, create_room, new_peer_id
from sleap_rtc.core.status import DEFAULT_LEASE_TIMEOUT, Reservation, StatusGuard
from sleap_rtc.core.tasks import cancel_and_wait, spawn
from sleap_rtc.core.transport_errors import PeerClosedError, TransportError
from sleap_rtc.worker.capabilities import Capabilities
from sleap_rtc.core.data_roots import DATA_ROOTS_PROP
from sleap_rtc.worker.executor import COMPLETED, DEFAULT_MAX_JOB_SECONDS, JobExecutor, JobOutcome
from sleap_rtc.worker.inputs import JobInputs
from sleap_rtc.worker.jobdirs import DEFAULT_KEEP, new_job_dir, private_dir, prune_job_dirs

log = logging.getLogger(__name__)

# Shutdown bounds: running sessions get time to hang up their channel; a helper task
# (status publisher, message collector, job controller) has at most one request in flight.
SESSIONS_CLOSE_TIMEOUT_S = 15.0
HELPER_CLOSE_TIMEOUT_S = 2.0
STRIPE_ACCEPT_TIMEOUT = 20.0
"""Seconds an admitted extra connection (stripe) may take to open."""

"""``options.kind`` values a worker accepts in ``job_submit``."""


@dataclass
class WorkerConfig:
    """How to run a worker; tests shorten the timeouts and inject an executor factory."""

    server_url: str
    work_dir: Path
    room_id: str | None = None
    token: str | None = None
    """The room's worker token (the client token does not admit workers)."""
    create_room_secret: str | None = None
    """The server's room-creation secret, used only when no room is given."""
    name: str | None = None
    lease_timeout: float = DEFAULT_LEASE_TIMEOUT
    submit_timeout: float = 300.0  # channel open -> package + job_submit
    submit_idle_timeout: float = 30.0  # ... but no silence (no message, no file bytes) longer than this
    max_package_bytes: int = MAX_FILE_BYTES  # largest file a client may offer
    max_job_seconds: float = DEFAULT_MAX_JOB_SECONDS  # wall-clock limit of one job
    linger_timeout: float = 10.0  # after the results: wait this long for the client to hang up
    reattach_grace: float = 60.0  # a running job waits this long for its client after its channel died
    keep_job_dirs: int = DEFAULT_KEEP
    cache_max_bytes: int = CACHE_MAX_BYTES  # transfer cache cap, applied after each job
    ice_servers: list[dict[str, Any]] | None = None
    executor_factory: Callable[[str], JobExecutor] | None = None
    data_roots: dict[str, Path] = field(default_factory=dict)  # name -> folder read by inference


def safe_worker_name(name: str) -> str:
    """A worker name usable inside a peer id (letters, digits, ``_`` and ``-``)."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", name).strip("-")[:40] or "worker"


def format_banner(
    room_id: str, token: str, peer_id: str, worker_token: str | None = None, fingerprint: str | None = None
) -> str:
    """The credentials banner (the v2.0 lines users paste, plus the worker token and key fingerprint).

    ``token`` is the client token: it is what the session string and the ``Token:`` line
    carry, since users paste them. The worker token goes on a separate line for whoever
    starts more workers in the room; the fingerprint lets users check the worker's key.
    """
    identity = f"[INFO] Worker fingerprint: {fingerprint}\n" if fingerprint else ""
    text = (
        "[INFO] Worker authenticated. Session string for direct connection:\n"
        f"{encode_session_string(room_id, token, peer_id, fingerprint)}\n"
        f"{identity}"
        "\n"
        "[INFO] Room credentials for other workers/clients to join:\n"
        f"[INFO]   Room ID: {room_id}\n"
        f"[INFO]   Token: {token}"
    )
    if worker_token:
        text += f"\n[INFO]   Worker token (for other workers only): {worker_token}"
    return text


ATTACH_TIMEOUT = 10.0
"""Seconds a reconnected client has to send ``job_attach`` on its new channel."""
MAX_OUTCOME_TRIES = 3
"""Channels the results of one job are sent on at most (the client may reconnect meanwhile)."""


class JobLink:
    """The channel a running job talks through; replaced when its client reconnects."""

    def __init__(self, channel: Any, job_id: str, client_peer_id: str):
        self.channel = channel
        self.job_id = job_id
        self.client_peer_id = client_peer_id
        self.gone = False
        """The client left the room (or never came back): stop waiting for it."""
        self._changed = asyncio.Event()

    def replace(self, channel: Any) -> None:
        """The client is back on ``channel``."""
        self.channel = channel
        self.gone = False
        self._changed.set()

    def left_room(self) -> None:
        """The room says the client left: the channel is checked at once (a hint for a live
        one), and once it is dead nobody waits for the client to come back. (In an outage
        the server keeps a silent client's socket for its ping window, 30-45 s.)"""
        self.gone = True
        self._changed.set()
        if not self.channel.closed:
            self.channel.suspect()

    async def wait_for_new(self, old: Any, timeout: float) -> bool:
        """Wait until the channel is no longer ``old`` (the client reattached); False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.channel is old and not self.gone:
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), max(0.0, deadline - loop.time()))
            except (asyncio.TimeoutError, TimeoutError):
                break
        if self.channel is old:
            self.gone = True
            return False
        return True

    async def send(self, message: dict[str, Any]) -> None:
        """Send on the current channel; dropped while the client is away."""
        if not self.channel.closed:
            with contextlib.suppress(TransportError):
                await self.channel.send(message)


class JobRefused(Exception):
    """A ``job_submit`` the worker will not run; the message goes back in ``job_rejected``."""


class Worker:
    """One ``sleap-rtc worker``: ``await start()``, then ``await serve_forever()`` or ``close()``."""

    def __init__(self, config: WorkerConfig, capabilities: Capabilities):
        self.config = config
        self.capabilities = capabilities
        self.work_dir = Path(config.work_dir)
        self.guard = StatusGuard(lease_timeout=config.lease_timeout)
        self.signaling: SignalingClient | None = None
        self.room_id: str | None = config.room_id
        self.worker_token: str | None = config.token
        self.token: str | None = client_token_for(config.token) if config.token else None
        """The room's client token (derived from the worker token), for the banner."""
        self.jobs_done = 0
        self.key: WorkerKey | None = None  # the identity key, loaded (or made) by start()
        self._sessions: dict[int, asyncio.Task] = {}
        self._clients: dict[int, tuple[str, Callable[[], None]]] = {}  # reservation id -> (peer, on_left_room)
        self._channels: dict[int, Any] = {}  # reservation id -> open PeerChannel (stripes attach to it)
        self._links: dict[str, JobLink] = {}  # running job id -> its channel link
        self._tasks: set[asyncio.Task] = set()
        self._sent: dict[Path, dict[str, Any]] = {}  # result file -> its job_result entry
        self._video_shas: set[str] = set()  # offers that said kind=video (their partials are kept)
        self._dirty = asyncio.Event()
        self._closed = asyncio.Event()
        self._publisher: asyncio.Task | None = None
        self.guard.add_listener(lambda change: self._dirty.set())

    @property
    def cache_dir(self) -> Path:
        """The content-addressed transfer cache (``core.files``), pruned after each job."""
        return self.work_dir / "transfer-cache"

    @property
    def peer_id(self) -> str:
        """This worker's peer id in the room."""
        assert self.signaling is not None, "start() first"
        return self.signaling.peer_id

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> str:
        """Create the room if needed, register, and return the banner text."""
        if bool(self.room_id) != bool(self.worker_token):
            raise ValueError("Both --room-id and --token must be provided together")
        if not self.room_id:
            room = await create_room(self.config.server_url, secret=self.config.create_room_secret)
            self.room_id, self.worker_token, self.token = room.room_id, room.worker_token, room.token
        private_dir(self.work_dir)  # 0700: users' data is not for other local accounts
        self.key = load_or_create_key(self.work_dir)  # persistent: clients remember it
        self.capabilities = replace(self.capabilities, public_key=self.key.public_key)
        name = safe_worker_name(self.capabilities.worker_name)
        self.signaling = SignalingClient(
            self.config.server_url, room_id=self.room_id, token=self.worker_token, role=Role.WORKER.value,
            peer_id=new_peer_id(Role.WORKER.value, name), metadata=self._metadata(),
        )
        self.signaling.add_listener(self._on_frame)
        self.signaling.add_state_listener(self._on_state)
        await self.signaling.connect()
        self._publisher = asyncio.create_task(self._publish_status(), name="worker-status-publisher")
        # aiortc takes seconds to import on a busy machine: load it before the banner, so the
        # first offer is not slower than the others (a failing one must fail within 10 s).
        importlib.import_module("sleap_rtc.core.transport")
        return format_banner(self.room_id, self.token, self.peer_id, self.worker_token, self.key.fingerprint)

    def _metadata(self) -> dict[str, Any]:
        """The registered metadata: capabilities, status and the data roots' names."""
        metadata = self.capabilities.metadata(self.guard.status)
        if self.config.data_roots:
            metadata["properties"][DATA_ROOTS_PROP] = sorted(self.config.data_roots)
        return metadata

    async def serve_forever(self) -> None:
        """Run until ``close()`` (or the room is gone for good)."""
        await self._closed.wait()

    def request_stop(self) -> None:
        """Make ``serve_forever`` return (e.g. from a signal handler)."""
        self._closed.set()

    async def close(self) -> None:
        """Cancel running jobs, hang up, leave the room."""
        self._closed.set()
        await cancel_and_wait([*self._sessions.values(), *self._tasks], SESSIONS_CLOSE_TIMEOUT_S)
        if self._publisher:
            await cancel_and_wait([self._publisher], HELPER_CLOSE_TIMEOUT_S)
        if self.signaling:
            await self.signaling.close()

    # ------------------------------------------------------------------ signaling

    def _spawn(self, coro: Any, name: str) -> asyncio.Task:
        task = spawn(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _on_frame(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == MessageType.OFFER:
            self._on_offer(frame)
        elif kind == MessageType.ERROR:
            # Never fatal (the old worker exited on any error and took the room with it).
            log.warning("signaling server error: %s", frame.get("message") or frame.get("reason"))
        elif kind == MessageType.PEER_LEFT:
            left = frame.get("peer_id")
            for peer, on_left in list(self._clients.values()):
                if peer == left:
                    log.info("client %s left the room", left)
                    on_left()

    def _on_state(self, state: ConnectionState) -> None:
        if state == ConnectionState.REGISTERED:
            self._dirty.set()  # re-publish in case a change happened while disconnected
        elif state == ConnectionState.CLOSED and not self._closed.is_set():
            log.error("the signaling connection is closed for good (room gone or token refused)")
            self._closed.set()

    def _on_offer(self, frame: dict[str, Any]) -> None:
        sender = frame.get("sender")
        if not isinstance(sender, str) or not sender:
            return
        if frame.get(STRIPE_TOKEN) is not None:  # an extra connection of a job already admitted
            self._on_stripe_offer(frame, sender)
            return
        # The guard: check-and-reserve in one step, before any await.
        reservation = self.guard.try_reserve(sender)
        if reservation is None:
            current = self.guard.reservation
            if current is not None and current.client_peer_id == sender:
                # Our own client offers again: its old channel is dead (an outage), even if
                # this side has not noticed yet. A running job gets the new channel; a
                # session before the job is replaced by a fresh one.
                link = next((lk for lk in self._links.values() if lk.client_peer_id == sender), None)
                if link is not None:
                    self._spawn(self._reattach(frame, link), f"reattach-{sender}")
                else:
                    self._spawn(self._replace_session(frame, current), f"replace-{sender}")
                return
            wait = self.guard.backoff_remaining(sender)
            status = self.guard.status.value
            if wait > 0:
                log.warning("refusing an offer from %s: back-off for %.0f s after a reservation it did not use", sender, wait)
                text = (f"Worker refuses offers from this client for {wait:.0f} s more: its last reservation "
                        "ended without a job. Choose another worker or retry later.")
                frame = busy_error_frame(sender, status, text)
            else:
                log.warning("refusing an offer from %s: worker is %s", sender, status)
                frame = busy_error_frame(sender, status)
            self._spawn(self._send_quietly(frame), "busy-reply")
            return
        task = asyncio.get_running_loop().create_task(self._session(frame, reservation), name=f"session-{sender}")
        self._sessions[reservation.id] = task
        task.add_done_callback(lambda _t: self._sessions.pop(reservation.id, None))

    def _on_stripe_offer(self, frame: dict[str, Any], sender: str) -> None:
        """Admit an extra connection only for the reserved client's open channel, with the
        token that channel granted and under its cap (``core.stripes``); refuse anything else."""
        channel = next((ch for ch in self._channels.values() if ch.stripes.admits(frame.get(STRIPE_TOKEN), sender)), None)
        if channel is None:
            log.warning("refusing an extra-connection offer from %s: no job of theirs grants it", sender)
            refusal = {"type": MessageType.ERROR.value, "target": sender, OFFER_REF: frame.get(OFFER_REF),
                       "reason": STRIPE_REFUSED, "message": "This worker has no striped transfer for you."}
            self._spawn(self._send_quietly(refusal), "stripe-refusal")
            return

        async def attach() -> None:
            from sleap_rtc.core import transport

            try:
                conn = await transport.accept_stripe(self.signaling, frame, ice_servers=self.config.ice_servers,
                                                     timeout=STRIPE_ACCEPT_TIMEOUT)
            except (TransportError, OSError, ConnectionError, asyncio.TimeoutError) as exc:
                channel.stripes.release()
                log.info("an extra connection from %s did not open: %s", sender, exc)
                return
            channel.stripes.attach(conn)

        self._spawn(attach(), f"stripe-{sender}")

    async def _send_quietly(self, frame: dict[str, Any]) -> None:
        try:
            await self.signaling.send(frame)
        except SignalingError as exc:
            log.warning("could not send %s: %s", frame.get("type"), exc)

    async def _publish_status(self) -> None:
        # One publisher, always the latest status: changes may come faster than replies.
        while not self._closed.is_set():
            await self._dirty.wait()
            self._dirty.clear()
            status = self.guard.status.value
            try:
                await self.signaling.update_metadata({"properties": {Prop.STATUS.value: status}})
            except SignalingError as exc:
                # The local copy is already merged: a reconnect registers with this status.
                log.info("could not publish status %s now (%s)", status, exc)

    # ------------------------------------------------------------------ one client

    async def _session(self, offer: dict[str, Any], reservation: Reservation) -> None:
        from sleap_rtc.core import transport  # aiortc is heavy: import on first offer

        channel = None
        baseline = 0.0
        reason = "client session ended"
        incoming = self.work_dir / "incoming" / f"r{reservation.id}"
        try:
            def registered(ch: Any) -> None:
                # This client may stripe its transfers (same reservation); its extra
                # connections may offer before this one opens, hence the early registration.
                ch.stripes.allow()
                self._channels[reservation.id] = ch

            channel = await transport.accept(
                self.signaling, offer, ice_servers=self.config.ice_servers, timeout=self.config.lease_timeout,
                receive_dir=incoming, cache_dir=self.cache_dir, on_channel=registered,
            )
            if self.key is not None:
                channel.prove_identity(self.key)  # the client uploads nothing before checking it
            # The package is the largest file a client sends: nothing larger is accepted.
            channel.transfers.max_file_bytes = self.config.max_package_bytes
            channel.transfers.accept_offer = self._note_offer
            channel.transfers.link_kinds = frozenset({"video"})  # read-only inputs: no copy per job
            baseline = channel.transfers.last_activity
            if not self.guard.confirm(reservation):
                reason = "lease expired before the channel opened"
                return
            # The room saying the client left is a hint, not proof (its signaling link may
            # have dropped while the data channel is fine): the channel decides.
            self._clients[reservation.id] = (reservation.client_peer_id, channel.suspect)
            await self._serve_job(channel, reservation)
        except PeerClosedError:
            reason = "client hung up"
        except TransportError as exc:
            reason = f"connection failed: {exc}"
            log.warning("connection with %s failed: %s", reservation.client_peer_id, exc)
        except asyncio.CancelledError:
            reason = "worker shutting down"
            raise
        except Exception:
            reason = "internal error"
            log.exception("session with %s failed", reservation.client_peer_id)
        finally:
            self._clients.pop(reservation.id, None)
            if channel is not None and channel.transfers.last_activity > baseline:
                self.guard.note_activity(reservation)  # it sent file bytes: not a wasted reservation
            self._channels.pop(reservation.id, None)
            if channel is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(channel.close(), 5)
                # What a client that hung up left half-sent goes now; after an outage (the
                # channel fell silent) it may come back within the grace and resume.
                videos = {p for p in channel.transfers.partials if p.name.removesuffix(".part") in self._video_shas}
                if channel.went_silent:
                    self._spawn(self._discard_partials_later(list(channel.transfers.partials - videos)), "discard-partials")
                else:
                    # A video's partial stays for a resume later (pruned by age and cap).
                    channel.transfers.partials -= videos
                    channel.transfers.discard_partials()
            shutil.rmtree(incoming, ignore_errors=True)
            self.guard.release(reservation, reason)

    def _note_offer(self, name: str, size: int, sha256: str, meta: dict) -> None:
        """Accepts every offer (the limits are checked before); remembers which are videos."""
        if meta.get("kind") == "video" and len(self._video_shas) < 10_000:
            self._video_shas.add(sha256)
        return None

    async def _discard_partials_later(self, partials: list[Path]) -> None:
        """Remove ``partials`` that nobody resumed within ``reattach_grace`` (not written since)."""
        await asyncio.sleep(self.config.reattach_grace)
        cutoff = time.time() - self.config.reattach_grace
        for path in partials:
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()

    async def _replace_session(self, offer: dict[str, Any], reservation: Reservation) -> None:
        """End the session of ``reservation`` (its channel is dead), then take ``offer`` anew.

        The old session counts as used only if its client used it (a message or file bytes):
        a client replaying offers into sessions it never uses still backs off."""
        task = self._sessions.get(reservation.id)
        if task is not None:
            await cancel_and_wait([task], SESSIONS_CLOSE_TIMEOUT_S)
        self.guard.release(reservation, "its client reconnected")
        self._on_offer(offer)

    async def _reattach(self, offer: dict[str, Any], link: JobLink) -> None:
        """Accept the returning client's offer and hand the new channel to its running job."""
        from sleap_rtc.core import transport

        channel = None
        try:
            channel = await transport.accept(
                self.signaling, offer, ice_servers=self.config.ice_servers, timeout=self.config.lease_timeout,
                receive_dir=self.work_dir / "incoming" / f"attach-{link.job_id}", cache_dir=self.cache_dir,
            )
            channel.stripes.deny()  # a reattached channel carries logs and results, not stripes
            if self.key is not None:
                channel.prove_identity(self.key)  # the returning client checks it like the first time
            loop = asyncio.get_running_loop()
            deadline = loop.time() + ATTACH_TIMEOUT
            while True:
                msg = await channel.receive(max(0.1, deadline - loop.time()))
                if msg.get("type") == ChannelType.JOB_ATTACH:
                    break
            if msg.get("job_id") != link.job_id:
                await channel.send(jobs_wire.job_rejected(str(msg.get("job_id")), "That job is not running here."))
                return
            await channel.send(jobs_wire.job_accepted(link.job_id))
            log.info("job %s: client %s reattached", link.job_id, link.client_peer_id)
            old = link.channel
            link.replace(channel)
            channel = None  # the job's session owns it now
            if not old.closed:  # this side had not noticed the outage yet
                with contextlib.suppress(Exception):
                    await old.abort("the client reconnected on a new channel")
        except (TransportError, asyncio.TimeoutError, TimeoutError) as exc:
            log.warning("reattach of %s failed: %s", link.client_peer_id, exc)
        finally:
            if channel is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(channel.close(), 5)

    async def _serve_job(self, channel: Any, reservation: Reservation) -> None:
        files: dict[str, Any] = {}
        arrived = asyncio.Event()
        collector = asyncio.create_task(self._collect_files(channel, files, arrived))
        try:
            submit = await self._wait_submit(channel, reservation)
            if submit is None:
                return
            job_id = submit["job_id"]
            try:
                package = await self._find_package(channel, submit, files, arrived)
            except JobRefused as exc:
                await channel.send(jobs_wire.job_rejected(job_id, str(exc)))
                return
            self.guard.mark_busy(reservation)
            await channel.send(jobs_wire.job_accepted(job_id))
            link = JobLink(channel, job_id, reservation.client_peer_id)
            self._links[job_id] = link
            self._clients[reservation.id] = (reservation.client_peer_id, link.left_room)
            try:
                outcome = await self._run_job(link, job_id, package, files)
                if not await self._deliver_outcome(link, outcome):
                    log.warning("job %s finished but its client did not come back; results kept in the job dir", job_id)
                    return
                self.jobs_done += 1
                # Free for the next client now; the old channel only waits for the hang-up.
                self.guard.release(reservation, f"job {outcome.status}")
                with contextlib.suppress(PeerClosedError, asyncio.TimeoutError, TimeoutError):
                    await link.channel.wait_closed(self.config.linger_timeout)
            finally:
                self._links.pop(job_id, None)
                if link.channel is not channel:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(link.channel.close(), 5)
        finally:
            await cancel_and_wait([collector], HELPER_CLOSE_TIMEOUT_S)
            if collector.done() and not collector.cancelled():
                collector.exception()  # a channel that closed under it is not an error to report
            # Deleting whole job dirs can take a while: off the loop (the next client is waiting).
            await asyncio.to_thread(prune_job_dirs, self.work_dir, self.config.keep_job_dirs)
            # The client's package stays cached (a re-run uploads nothing) until the cap.
            await asyncio.to_thread(prune_transfer_cache, self.cache_dir, max_bytes=self.config.cache_max_bytes)

    async def _deliver_outcome(self, link: JobLink, outcome: JobOutcome) -> bool:
        """Send the outcome to the job's client, again on its new channel if it reconnects
        while (or before) the results go out; False when it is gone."""
        for _ in range(MAX_OUTCOME_TRIES):
            channel = link.channel
            if channel.closed and (link.gone or not await link.wait_for_new(channel, self.config.reattach_grace)):
                return False
            try:
                await self._send_outcome(link.channel, link.job_id, outcome)
                return True
            except TransportError as exc:
                log.warning("job %s: sending the results failed (%s)", link.job_id, exc)
                if not link.channel.closed:
                    raise
        return False

    async def _collect_files(self, channel: Any, files: dict[str, Any], arrived: asyncio.Event) -> None:
        while True:
            received = await channel.receive_file()
            files[received.sha256] = received
            arrived.set()

    async def _wait_submit(self, channel: Any, reservation: Reservation) -> dict[str, Any] | None:
        """The client's ``job_submit`` (others are ignored); None if it did not come in time.

        ``PeerClosedError`` once the channel closes (the client left)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.submit_timeout
        idle = self.config.submit_idle_timeout
        last_message = opened = time.monotonic()
        while True:
            remaining = deadline - loop.time()
            # File bytes count as activity: a large package may take a while to arrive.
            if channel.transfers.last_activity > opened:
                self.guard.note_activity(reservation)  # file bytes: the client is uploading
            quiet = time.monotonic() - max(last_message, channel.transfers.last_activity)
            try:
                if remaining <= 0:
                    raise TimeoutError
                if quiet >= idle:
                    log.warning("%s sent nothing for %.0f s before job_submit", channel.remote_peer_id, quiet)
                    return None
                msg = await channel.receive(min(remaining, idle - quiet))
            except (asyncio.TimeoutError, TimeoutError):
                if deadline - loop.time() > 0:
                    continue  # an idle check, not the deadline
                log.warning("no job_submit from %s within %.0f s", channel.remote_peer_id, self.config.submit_timeout)
                return None
            last_message = time.monotonic()
            self.guard.note_activity(reservation)
            if msg.get("type") == ChannelType.JOB_ATTACH:
                await channel.send(jobs_wire.job_rejected(str(msg.get("job_id")), "That job is not running here."))
                continue
            if msg.get("type") != ChannelType.JOB_SUBMIT:
                continue
            try:
                return jobs_wire.validate_job_message(msg)
            except ProtocolError as exc:
                job_id = msg.get("job_id") if isinstance(msg.get("job_id"), str) else "unknown"
                await channel.send(jobs_wire.job_rejected(job_id, str(exc)))

    async def _find_package(
        self, channel: Any, submit: dict[str, Any], files: dict[str, Any], arrived: asyncio.Event
    ) -> Path:
        kind = submit["options"].get("kind", "train")
        if kind not in set(JobKind):
            raise JobRefused(f"Unsupported job kind {kind!r}; this worker runs {', '.join(JobKind)}.")
        sha = submit["package"]["sha256"]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30.0  # the file normally arrived before job_submit was sent
        while sha not in files:
            arrived.clear()
            try:
                await channel.guard(arrived.wait(), max(0.0, deadline - loop.time()))
            except (asyncio.TimeoutError, TimeoutError):
                raise JobRefused("The package announced in job_submit never arrived; send the file first.") from None
        return Path(files[sha].path)

    async def _run_job(self, link: JobLink, job_id: str, package: Path, files: dict[str, Any]) -> JobOutcome:
        factory = self.config.executor_factory or (lambda jid: JobExecutor(jid, max_seconds=self.config.max_job_seconds))
        executor = factory(job_id)

        async def emit(message: dict[str, Any]) -> None:
            await link.send(message)  # dropped while the client is away

        async def control() -> None:
            # Stop/cancel from the client while the job runs. A channel that dies gets
            # ``reattach_grace`` for its client to come back; then the job is cancelled.
            while True:
                channel = link.channel
                try:
                    while True:
                        msg = await channel.receive()
                        if msg.get("job_id") != job_id:
                            continue
                        if msg.get("type") == ChannelType.JOB_STOP:
                            log.info("job %s: stop requested", job_id)
                            executor.stop()
                        elif msg.get("type") == ChannelType.JOB_CANCEL:
                            log.info("job %s: cancel requested", job_id)
                            executor.cancel()
                except PeerClosedError:
                    log.warning("job %s: lost the client's channel; keeping the job for %.0f s", job_id, self.config.reattach_grace)
                    if not await link.wait_for_new(channel, self.config.reattach_grace):
                        log.warning("job %s: the client did not come back; cancelling", job_id)
                        executor.cancel()
                        return

        async def deliver(result: Path) -> bool:
            # A video's predictions, sent while the next video runs; kept for the end on failure.
            try:
                self._sent[result] = await self._send_result(link.channel, job_id, result)
                return True
            except TransportError as exc:
                log.info("job %s: %s kept for the end (%s)", job_id, result.name, exc)
                return False

        inputs = JobInputs(received={sha: Path(f.path) for sha, f in files.items()}, cache_dir=self.cache_dir,
                           data_roots=dict(self.config.data_roots))
        controller = asyncio.create_task(control())
        try:
            return await executor.run(package, new_job_dir(self.work_dir, job_id), emit, inputs=inputs, deliver=deliver)
        except asyncio.CancelledError:
            executor.cancel()
            raise
        finally:
            await cancel_and_wait([controller], HELPER_CLOSE_TIMEOUT_S)
            with contextlib.suppress(OSError):
                package.unlink()

    async def _send_outcome(self, channel: Any, job_id: str, outcome: JobOutcome) -> None:
        if outcome.status != COMPLETED:
            self._sent.clear()
            await channel.send(jobs_wire.job_failed(job_id, outcome.reason or outcome.status))
            return
        entries = []
        for path in outcome.results:
            if path in outcome.delivered:
                entries.append(self._sent.pop(path))
                continue
            entries.append(await self._send_result(channel, job_id, path))
        await channel.send(jobs_wire.job_complete(job_id, entries, outcome.duration_s))

    async def _send_result(self, channel: Any, job_id: str, path: Path) -> dict[str, Any]:
        """Announce and send one result file; a model's zip is also kept in the transfer
        cache under its sha256 (its id: a later inference with it sends no model bytes)."""
        kind = ResultKind.PREDICTIONS if path.suffix == ".slp" else ResultKind.MODEL
        size, hasher = await asyncio.to_thread(sha256_file, path)
        sha = hasher.hexdigest()
        if kind == ResultKind.MODEL:
            await asyncio.to_thread(_hold, path, self.cache_dir / "files" / sha)
        entry = {"kind": kind, "name": path.name, "sha256": sha, "size": size}
        await channel.send(jobs_wire.job_result(job_id, **entry))
        await channel.send_file(path, name=path.name, sha256=sha)
        return entry


def _hold(src: Path, held: Path) -> None:
    """Copy ``src`` into the cache as ``held`` (written under a temporary name, then renamed)."""
    if held.is_file():
        return
    held.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = held.with_name(f".{held.name}.tmp")
    try:
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o600)
        os.replace(tmp, held)
    finally:
        tmp.unlink(missing_ok=True)
