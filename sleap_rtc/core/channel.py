"""The data-channel protocol: ``PeerChannel`` runs it over one backend ``Connection``
(aiortc, libdatachannel or the in-memory test pair: see ``core.backends``).

Obtain one from ``transport.connect`` (client) or ``transport.accept`` (worker). API:

* ``await ch.send(msg)``: send a JSON control message, a row of ``protocol.CHANNEL_FIELDS``
  (``ValueError`` for one the peer would refuse).
* ``await ch.receive(timeout=None) -> dict``: the next valid control message that is not
  channel plumbing (hello, heartbeat, bye, error, identity_proof, file_*, stripe_*). ``ch.on_message(cb)`` instead calls ``cb(msg)``
  for each one (once a callback is set, messages no longer queue for ``receive``).
* ``await ch.send_file(path, *, name=None, meta=None, progress=None) -> FileReceipt``:
  streamed, verified, resumable, content-addressed (see ``files``). Cancel it by
  cancelling the task: the receiver drops the partial file.
* ``await ch.receive_file(timeout=None) -> ReceivedFile`` (or ``ch.on_file(cb)``): each
  verified incoming file, already in ``receive_dir``.
* ``await ch.close()``, ``ch.closed``, ``await ch.wait_closed()``, ``ch.close_reason``,
  ``ch.remote_peer_id``, ``ch.local_peer_id``.

Every wait raises ``PeerClosedError`` once the channel is closed, whoever closed it.

The protocol itself (hello/version, identity-proof state, heartbeat and silence deadlines,
validation of every frame against ``protocol.CHANNEL_FIELDS``, which part gets which
message) is ``core.channel_protocol.ChannelProtocol``, which does no I/O; this module is its
driver: it feeds it the backend's frames and one timer, writes what it returns, and turns
its events into futures, queues and callbacks. Worker identity (see ``core.identity``):
once the hellos are exchanged the worker sends ``identity_proof {public_key, signature}``
(``prove_identity``), a signature over both DTLS certificate fingerprints of this
connection, both peer ids and the client's nonce; the client checks it with ``await
verify_identity(timeout)`` before it sends anything of value, and gets
``WorkerIdentityError`` for a missing, malformed or non-verifying proof. A version
mismatch raises ``ChannelVersionError`` on both sides. A peer silent for ``DEAD_AFTER`` s
is declared dead (aiortc itself would need ~32 s, and a sender blocked on a full buffer
would wait forever), so a peer's event loop must never block for that long. ``bye`` is an
orderly hang-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any


from sleap_rtc.core import channel_protocol as cp
from sleap_rtc.core.config import user_data_dir
from sleap_rtc.core.files import LOW_WATER, FileReceipt, FileTransfers, Progress, ReceivedFile
from sleap_rtc.core.identity import IdentityError, WorkerKey, make_proof, new_nonce, normalize_dtls_fingerprint, verify_proof
from sleap_rtc.core.protocol import CHANNEL_VERSION, ChannelType, dumps
from sleap_rtc.core.stripes import Stripes
from sleap_rtc.core.tasks import spawn
from sleap_rtc.core.transport_errors import ChannelVersionError, PeerClosedError, TransportError, WorkerIdentityError

if TYPE_CHECKING:
    from sleap_rtc.core.backends import Connection

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = 2.0
"""Seconds between our heartbeats."""
DEAD_AFTER = 10.0
"""Seconds of silence after which the peer is declared dead (at that moment, not a beat later)."""
IDENTITY_TIMEOUT = 10.0
"""Seconds the client waits for the worker's ``identity_proof`` after the hellos."""

def default_receive_dir() -> Path:
    """Where received files go when no ``receive_dir`` is given."""
    return user_data_dir() / "received"


def default_cache_dir() -> Path:
    """The content-addressed transfer cache when no ``cache_dir`` is given."""
    return user_data_dir() / "transfer-cache"


class PeerChannel:
    """One peer-to-peer session: control messages, files, heartbeat (see module docstring).

    Built by ``transport.connect``/``transport.accept``; call ``await start(timeout)`` when
    building one by hand. ``chunk_filter`` is a documented test seam: when set, each
    outgoing file payload passes through ``chunk_filter(offset, payload) -> payload``
    before it is framed (tests use it to corrupt bytes in flight).
    """

    def __init__(
        self,
        conn: Connection,
        *,
        local_peer_id: str,
        remote_peer_id: str,
        role: str,
        receive_dir: str | Path | None = None,
        cache_dir: str | Path | None = None,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        dead_after: float = DEAD_AFTER,
        version: int = CHANNEL_VERSION,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.conn = conn
        self.local_peer_id = local_peer_id
        self.remote_peer_id = remote_peer_id
        self.role = role
        self.version = version
        self.nonce: str | None = new_nonce() if role == "client" else None
        self.protocol = cp.ChannelProtocol(
            role=role, local_peer_id=local_peer_id, remote_peer_id=remote_peer_id, version=version,
            heartbeat_interval=heartbeat_interval, dead_after=dead_after, nonce=self.nonce, clock=clock,
        )
        """The protocol state (``core.channel_protocol``) this channel drives."""
        self.chunk_filter: Callable[[int, bytes], bytes] | None = None
        self.close_reason: str | None = None
        self.went_silent = False
        """True when the channel closed because the peer fell silent (an outage, maybe), not a hang-up."""
        loop = asyncio.get_running_loop()
        self._closed = loop.create_future()
        self._hello = loop.create_future()
        self._proof = loop.create_future()
        self.remote_fingerprint: str | None = None  # set by verify_identity once it passed
        self._messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._files: asyncio.Queue[ReceivedFile] = asyncio.Queue()
        self._message_cb: Callable[[dict[str, Any]], Any] | None = None
        self._file_cb: Callable[[ReceivedFile], Any] | None = None
        self._low = asyncio.Event()
        self._opened = loop.create_future()
        self._timer: asyncio.TimerHandle | None = None
        self._pc_close: asyncio.Task | None = None
        self.stripes = Stripes(self)
        """Extra connections to the same peer for file payload (``core.stripes``)."""
        self.transfers = FileTransfers(
            self,
            receive_dir=Path(receive_dir) if receive_dir else default_receive_dir(),
            cache_dir=Path(cache_dir) if cache_dir else default_cache_dir(),
            odd_ids=role == "client",
            deliver=self._deliver_file,
        )
        conn.low_threshold = LOW_WATER
        conn.set_handlers(self)

    # ------------------------------------------------------------------ public API

    async def start(self, timeout: float) -> None:
        """Wait for the channel to open, exchange ``hello``; raises on mismatch/timeout."""
        try:
            if not self.conn.is_open:
                await self.guard(asyncio.shield(self._opened), timeout)
            self._send_raw(self.protocol.send_hello())
            self._arm_timer()
            await self.guard(self._hello, timeout)
        except ChannelVersionError as exc:
            with contextlib.suppress(TransportError):
                self._flush()  # the refusal, if the mismatch was found here
                await asyncio.sleep(0.05)  # let it leave before we tear down
            await self.abort(str(exc))
            raise
        except BaseException:
            await self.abort()
            raise
        # Which stack carries a job is a fact an operator (and the interop tests) must see.
        log.info("channel to %s open over %s", self.remote_peer_id, self.conn.backend)

    @property
    def remote_hello(self) -> dict[str, Any] | None:
        """The peer's hello once it arrived (with its ``nonce`` on the worker side)."""
        return self.protocol.remote_hello

    @property
    def heartbeat_interval(self) -> float:
        """Seconds between our heartbeats."""
        return self.protocol.heartbeat_interval

    @property
    def dead_after(self) -> float:
        """Seconds of silence after which the peer is declared dead."""
        return self.protocol.dead_after

    # ------------------------------------------------------------------ identity

    def dtls_fingerprints(self) -> tuple[str, str]:
        """``(local, remote)`` SHA-256 DTLS certificate fingerprints of this connection.

        The remote one is computed from the certificate the peer presented in the DTLS
        handshake (not from the SDP the signaling server relayed; see the backend). Raises
        ``WorkerIdentityError`` when the connection has no DTLS transport (yet).
        """
        try:
            (local_alg, local_value), (remote_alg, remote_value) = self.conn.dtls_fingerprints()
            return normalize_dtls_fingerprint(local_alg, local_value), normalize_dtls_fingerprint(remote_alg, remote_value)
        except (AttributeError, StopIteration, TypeError, ValueError, NotImplementedError) as exc:
            raise WorkerIdentityError(
                f"Cannot read the DTLS certificates of the connection to {self.remote_peer_id} ({exc.__class__.__name__})."
            ) from None

    def prove_identity(self, key: WorkerKey) -> bool:
        """Worker side, after ``start``: send ``identity_proof`` for this connection.

        Returns False (and sends nothing) when the client's hello carried no nonce (an
        older client that does not check identities).
        """
        nonce = (self.remote_hello or {}).get("nonce")
        if not isinstance(nonce, str):
            return False
        local, remote = self.dtls_fingerprints()
        try:
            proof = make_proof(key, local_dtls=local, remote_dtls=remote, nonce=nonce,
                               local_peer_id=self.local_peer_id, remote_peer_id=self.remote_peer_id)
        except IdentityError as exc:
            log.warning("not proving our identity to %s: %s", self.remote_peer_id, exc)
            return False
        self.send_control({"type": ChannelType.IDENTITY_PROOF.value, **proof})
        return True

    async def verify_identity(self, timeout: float | None = None) -> str:
        """Client side, after ``start``: wait for the worker's proof and check it.

        ``timeout`` defaults to ``IDENTITY_TIMEOUT`` (read at call time). Returns the worker's key fingerprint (also kept in ``remote_fingerprint``). Raises
        ``WorkerIdentityError`` when no proof comes within ``timeout`` or it does not
        verify for this connection, ``PeerClosedError`` when the channel closes first.
        """
        if self.nonce is None:
            raise WorkerIdentityError("Only the side that sent a nonce (the client) can verify the peer.")
        timeout = IDENTITY_TIMEOUT if timeout is None else timeout
        try:
            proof = await self.guard(asyncio.shield(self._proof), timeout)
        except TimeoutError:
            raise WorkerIdentityError(
                f"Worker {self.remote_peer_id} sent no identity proof within {timeout:.0f} s; "
                "it is too old or not a sleap-rtc worker, so it is not trusted with the job."
            ) from None
        local, remote = self.dtls_fingerprints()
        try:
            fingerprint = verify_proof(proof, local_dtls=local, remote_dtls=remote, nonce=self.nonce,
                                       local_peer_id=self.local_peer_id, remote_peer_id=self.remote_peer_id)
        except IdentityError as exc:
            raise WorkerIdentityError(f"Worker {self.remote_peer_id} failed the identity check: {exc}") from None
        self.remote_fingerprint = fingerprint
        return fingerprint

    @property
    def closed(self) -> bool:
        """True once the channel is closed (by either side or by the heartbeat deadline)."""
        return self._closed.done()

    def suspect(self, grace: float = 2 * HEARTBEAT_INTERVAL) -> None:
        """Take a hint from outside that the peer may be gone (e.g. the room says it left):
        declare it dead unless it shows a sign of life within ``grace`` seconds.

        Heartbeats alone take ``dead_after`` seconds to notice a killed peer; the room's
        ``peer_left`` arrives at once. It is only a hint because the signaling server going
        away (a restart) says the same while the peer-to-peer channel is healthy.
        """
        self.protocol.suspect(grace)
        self._arm_timer()

    async def wait_closed(self, timeout: float | None = None) -> str:
        """Wait until the channel closes; returns ``close_reason``."""
        await asyncio.wait_for(asyncio.shield(self._closed), timeout)
        return self.close_reason or ""

    async def send(self, msg: dict[str, Any]) -> None:
        """Send one JSON control message: ``PeerClosedError`` once closed, ``ValueError``
        for one that is not a row of ``CHANNEL_FIELDS`` (the peer would refuse it)."""
        self._check_open()  # a closed channel says so before it judges the message
        self._send_raw(self.protocol.send_message(msg))

    async def receive(self, timeout: float | None = None) -> dict[str, Any]:
        """The next control message; ``TimeoutError`` after ``timeout``, ``PeerClosedError`` once closed."""
        if not self._messages.empty():
            return self._messages.get_nowait()
        return await self.guard(self._messages.get(), timeout)

    def on_message(self, callback: Callable[[dict[str, Any]], Any] | None) -> None:
        """Call ``callback(msg)`` for each control message (coroutines are scheduled)."""
        self._message_cb = callback
        while callback is not None and not self._messages.empty():
            self._call(callback, self._messages.get_nowait())

    async def send_file(
        self,
        path: str | Path,
        *,
        name: str | None = None,
        meta: dict[str, Any] | None = None,
        progress: Progress | None = None,
        sha256: str | None = None,
    ) -> FileReceipt:
        """Send a file; returns once the peer verified its SHA-256.

        ``name`` defaults to the file's name and is sanitised (names are data, not paths);
        ``meta`` is any JSON object handed to the receiver; ``progress(done, size)``;
        ``sha256``, when the caller already has the file's digest, saves hashing it again.
        Raises ``IntegrityError``, ``TransferCancelledError``, ``FileTransferError``,
        ``PeerClosedError``.
        """
        self._check_open()
        return await self.transfers.send_file(path, name=name, meta=meta, progress=progress, sha256=sha256)

    async def receive_file(self, timeout: float | None = None) -> ReceivedFile:
        """The next verified incoming file (already stored in ``receive_dir``)."""
        if not self._files.empty():
            return self._files.get_nowait()
        return await self.guard(self._files.get(), timeout)

    def on_file(self, callback: Callable[[ReceivedFile], Any] | None) -> None:
        """Call ``callback(received_file)`` for each incoming file instead of queueing it."""
        self._file_cb = callback
        while callback is not None and not self._files.empty():
            self._call(callback, self._files.get_nowait())

    async def close(self) -> None:
        """Hang up in order: say ``bye`` to the peer, then close the connection."""
        if not self.closed:
            with contextlib.suppress(TransportError):
                self._send_raw(self.protocol.send_bye())
                # Give the bye a moment to leave; a bounded wait, the peer may be gone.
                deadline = time.monotonic() + 0.5
                while self.conn.buffered_amount > 0 and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
        await self.abort("closed locally")

    async def abort(self, reason: str = "closed locally") -> None:
        """Close at once without ``bye`` (the peer notices by the data channel closing)."""
        self._shutdown(reason)
        if self._pc_close is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._pc_close), 5.0)

    # ------------------------------------------------------------------ Link (files.py)

    @property
    def buffered_amount(self) -> int:
        """Bytes queued in the data channel and not yet sent."""
        return self.conn.buffered_amount

    def send_control(self, msg: dict[str, Any]) -> None:
        """Send a control message now (sync); raises ``PeerClosedError`` when closed."""
        self._send_raw(dumps(msg))

    def send_binary(self, data: bytes) -> None:
        """Send one binary (file) frame now; raises ``PeerClosedError`` when closed."""
        self._send_raw(data)

    @property
    def drained(self) -> bool:
        """True while no more than the buffered-low threshold is queued (``drain`` would not wait)."""
        return self.conn.buffered_amount <= self.conn.low_threshold

    async def drain(self, timeout: float) -> None:
        """Wait for ``bufferedamountlow``; ``PeerClosedError`` if the channel closes meanwhile."""
        self._low.clear()
        if self.drained:
            return
        try:
            await self.guard(self._low.wait(), timeout)
        except TimeoutError:
            raise PeerClosedError(f"The peer accepted no data for {timeout:.0f} s.") from None

    async def guard(self, aw: Any, timeout: float | None) -> Any:
        """Await ``aw`` unless the channel closes first (``PeerClosedError``) or ``timeout`` passes."""
        task = asyncio.ensure_future(aw)
        if self.closed:
            task.cancel()
            raise self._closed_error()
        try:
            done, _ = await asyncio.wait({task, self._closed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            task.cancel()
            raise
        if task in done:
            return task.result()
        task.cancel()
        if self.closed:
            raise self._closed_error()
        raise TimeoutError(f"No answer from peer {self.remote_peer_id} within {timeout:.1f} s.")

    # ------------------------------------------------------------------ internals

    def _closed_error(self) -> PeerClosedError:
        return PeerClosedError(f"Connection to {self.remote_peer_id} closed: {self.close_reason}.")

    def _check_open(self) -> None:
        if self.closed:
            raise self._closed_error()

    def _send_raw(self, data: str | bytes) -> None:
        self._check_open()
        try:
            self.conn.send(data)
        except Exception as exc:  # the backend raises once the channel closed
            self._shutdown(f"send failed ({exc.__class__.__name__})")
            raise self._closed_error() from None

    # ------------------------------------------------------------------ backend events

    def channel_open(self) -> None:
        """Backend event: the data channel opened."""
        if not self._opened.done():
            self._opened.set_result(None)

    def channel_low(self) -> None:
        """Backend event: the send buffer drained to ``LOW_WATER``."""
        self._low.set()
        self.stripes.lane_low()

    def channel_closed(self, reason: str) -> None:
        """Backend event: the data channel or its connection closed."""
        self._shutdown(reason)

    def channel_message(self, data: str | bytes) -> None:
        """Backend event: one message arrived; the protocol says what it is."""
        self._handle(self.protocol.receive(data))

    def _handle(self, events: list[cp.Event]) -> None:
        """Write what the protocol wants written, then act on its events, in order."""
        with contextlib.suppress(TransportError):
            self._flush()
        for event in events:
            if isinstance(event, cp.MessageReceived):
                if self._message_cb is not None:
                    self._call(self._message_cb, event.message)
                else:
                    self._messages.put_nowait(event.message)
            elif isinstance(event, cp.ChunkReceived):
                self.transfers.on_chunk(event.data)
            elif isinstance(event, cp.FileControl):
                self.transfers.on_control(event.message)
            elif isinstance(event, cp.StripeControl):
                self.stripes.on_control(event.message)
            elif isinstance(event, cp.HelloReceived):
                if not self._hello.done():
                    self._hello.set_result(event.hello)
            elif isinstance(event, cp.ProofReceived):
                if not self._proof.done():
                    self._proof.set_result(event.proof)
            elif isinstance(event, cp.HelloRefused):
                if not self._hello.done():  # start() lets the refusal leave, then closes
                    self._hello.set_exception(event.error)
            elif isinstance(event, cp.FrameRejected):
                log.warning("refused a frame from %s: %s", self.remote_peer_id, event.reason)
            elif isinstance(event, cp.PeerError):
                log.warning("%s refused a frame of ours (%s): %s", self.remote_peer_id, event.reason, event.message[:300])
                # Whoever waits for the answer to the refused message learns it now, not at a timeout.
                self._handle([cp.MessageReceived({"type": ChannelType.ERROR.value, "reason": event.reason,
                                                  "message": event.message, "refused": event.refused})])
            elif isinstance(event, cp.Closed):
                self.went_silent = event.silent
                if event.error is not None and not self._hello.done():
                    self._hello.set_exception(event.error)
                self._shutdown(event.reason)

    def _flush(self) -> None:
        for frame in self.protocol.data_to_send():
            self._send_raw(frame)

    def _arm_timer(self) -> None:
        """(Re)schedule the one timer for the protocol's next deadline."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        due = self.protocol.next_deadline()
        if due is not None and not self.closed:
            delay = max(0.0, due - self.protocol.clock())
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._handle(self.protocol.on_timer())
        self._arm_timer()

    def _deliver_file(self, received: ReceivedFile) -> None:
        if self._file_cb is not None:
            self._call(self._file_cb, received)
        else:
            self._files.put_nowait(received)

    def _call(self, callback: Callable[[Any], Any], arg: Any) -> None:
        try:
            result = callback(arg)
            if asyncio.iscoroutine(result):
                spawn(result, name="channel-callback")
        except Exception:  # a broken callback must not take the channel down
            log.exception("channel callback failed")

    async def _close_connections(self) -> None:
        await asyncio.gather(self.stripes.close(), self.conn.close(), return_exceptions=True)

    def _shutdown(self, reason: str) -> None:
        """Mark closed (first reason wins), wake every waiter, tear the connection down."""
        if self._closed.done():
            return
        self.close_reason = reason
        self._closed.set_result(None)
        log.info("channel to %s closed: %s", self.remote_peer_id, reason)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.transfers.on_closed()
        if not self._hello.done():
            self._hello.set_exception(self._closed_error())
        self._hello.exception() if self._hello.done() and not self._hello.cancelled() else None
        self._pc_close = asyncio.get_running_loop().create_task(self._close_connections())
