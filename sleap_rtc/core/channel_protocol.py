"""The data-channel protocol without I/O: frames in, events and frames out, clock injected.

``ChannelProtocol`` holds what one side of a data channel knows and decides, in the manner
of python-websockets' protocol core: it never touches a socket, a task or a timer.
``PeerChannel`` (``core.channel``) is its I/O driver over a backend connection; tests drive
it with a fake clock and no sockets at all.

* ``receive(frame) -> list[event]``: one frame from the peer (``str`` control message or
  ``bytes`` file chunk).
* ``send_hello()``, ``send_message(msg)``, ``send_bye()`` -> the frame to write.
* ``data_to_send() -> list[frame]``: frames the protocol itself wants written after a
  ``receive`` or ``on_timer`` (heartbeats, a refusal).
* ``next_deadline()`` and ``on_timer(now) -> list[event]``: the next moment something is
  due (a heartbeat, the silence deadline, a ``suspect`` grace) and what happened by then.

The rules, all of them here:

* Each side's first message is ``hello {version, role, peer_id}`` (the client's adds a
  ``nonce``). A peer speaking another ``CHANNEL_VERSION`` is answered with ``error
  {reason: version_mismatch}`` (``HelloRefused``); that refusal from the peer closes the
  channel with a ``ChannelVersionError``. A malformed hello closes it as well. Anything
  else before the peer's hello breaks the protocol and is rejected.
* Every control message must be a JSON object of at most ``MAX_CONTROL_BYTES`` whose
  ``type`` is a row of ``protocol.CHANNEL_FIELDS`` with the required fields of the listed
  types (an ``int`` field takes no ``bool``). A frame that is not is dropped with a
  ``FrameRejected`` event naming why, and the peer is told (``error {reason:
  invalid_message, refused: <its type>}``, never in reply to an ``error``, so two peers
  cannot ping-pong); the channel stays up: a stray message must not end a job. The side
  told so gets a ``PeerError`` naming the refused type, and ``PeerChannel`` hands it on as
  an ``error`` message, so a wait for the answer to that message ends at once.
* ``heartbeat`` every ``heartbeat_interval`` s; any frame counts as a sign of life; a peer
  silent for ``dead_after`` s (exactly: at ``last_seen + dead_after``) is declared dead
  (``Closed(silent=True)``). ``suspect(grace)`` shortens that to ``grace`` when a hint
  from outside (the room says the peer left) is not followed by a sign of life.
* The worker's ``identity_proof`` is kept (the first one; later ones are noise), for the
  client to check (``core.identity``). ``bye`` is an orderly hang-up.
* After ``Closed`` nothing more comes out.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sleap_rtc.core.protocol import (
    CHANNEL_FIELDS,
    CHANNEL_VERSION,
    INVALID_CHANNEL_MESSAGE,
    VERSION_MISMATCH,
    ChannelType,
    dumps,
)
from sleap_rtc.core.transport_errors import ChannelVersionError

MAX_CONTROL_BYTES = 256 * 1024
"""Largest control message (encoded) either side sends or accepts: libdatachannel's
advertised ``max-message-size``, so nothing larger could cross the native stack anyway;
job messages stay far below it (log lines are cut at 4,000 characters)."""

FILE_TYPES = frozenset(
    {ChannelType.FILE_OFFER, ChannelType.FILE_ACCEPT, ChannelType.FILE_END, ChannelType.FILE_DONE,
     ChannelType.FILE_ERROR, ChannelType.FILE_CANCEL, ChannelType.FILE_MISSING, ChannelType.FILE_PROGRESS}
)
"""Control messages that belong to the file transfers (``core.files``)."""
STRIPE_TYPES = frozenset({ChannelType.STRIPE_REQUEST, ChannelType.STRIPE_GRANT})
"""Control messages that belong to striping (``core.stripes``)."""
_BEFORE_HELLO = frozenset({ChannelType.HELLO, ChannelType.ERROR, ChannelType.BYE, ChannelType.HEARTBEAT})


# ------------------------------------------------------------------ events


@dataclass(frozen=True)
class HelloReceived:
    """The peer's hello, of our version: the channel is open."""

    hello: dict[str, Any]


@dataclass(frozen=True)
class HelloRefused:
    """The peer's hello states another version; our refusal is in ``data_to_send``.

    The driver lets it leave, then closes (``ChannelVersionError``)."""

    error: ChannelVersionError


@dataclass(frozen=True)
class ProofReceived:
    """The worker's ``identity_proof`` (the first one)."""

    proof: dict[str, Any]


@dataclass(frozen=True)
class _Routed:
    """A valid control message for the part of the channel named by the subclass."""

    message: dict[str, Any]


class MessageReceived(_Routed):
    """A valid control message for the application (jobs)."""


class FileControl(_Routed):
    """A valid ``file_*`` message for the transfers."""


class StripeControl(_Routed):
    """A valid ``stripe_*`` message for striping."""


@dataclass(frozen=True)
class ChunkReceived:
    """A binary frame: a file chunk (``protocol.unpack_chunk`` splits it)."""

    data: bytes


@dataclass(frozen=True)
class FrameRejected:
    """A frame that breaks the protocol, dropped; ``reason`` says why."""

    reason: str


@dataclass(frozen=True)
class PeerError:
    """The peer refused a frame of ours (an ``error`` that does not end the channel)."""

    reason: str
    message: str
    refused: str = ""
    """The ``type`` of our message the peer refused, when it said (``error.refused``)."""


@dataclass(frozen=True)
class Closed:
    """The channel is over: ``reason`` for humans, ``silent`` when the peer fell silent (an
    outage, maybe, not a hang-up), ``error`` when it ended on a protocol error."""

    reason: str
    silent: bool = False
    error: Exception | None = None


Event = (HelloReceived | HelloRefused | ProofReceived | MessageReceived | FileControl | StripeControl
         | ChunkReceived | FrameRejected | PeerError | Closed)
"""Everything ``receive`` and ``on_timer`` report."""


def message_problem(msg: Any) -> str | None:
    """Why ``msg`` (a decoded control message) breaks ``CHANNEL_FIELDS``, or None when it is fine."""
    if not isinstance(msg, dict):
        return "a control message must be a JSON object"
    kind = msg.get("type")
    if not isinstance(kind, str):  # checked first: an unhashable type must not reach the lookup
        return "a control message needs a string 'type'"
    fields = CHANNEL_FIELDS.get(kind)
    if fields is None:
        return f"unknown message type {kind[:64]!r}"
    for name, types in fields.items():
        value = msg.get(name)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
            return f"'{kind}' needs field '{name}' of type {_type_names(types)}"
    return None


def refused_by_peer(msg: dict[str, Any], kind: str) -> bool:
    """Whether ``msg`` (from ``PeerChannel.receive``) is the peer's ``invalid_message``
    refusal of our message of type ``kind``: its answer will never come."""
    return (msg.get("type") == ChannelType.ERROR and msg.get("reason") == INVALID_CHANNEL_MESSAGE
            and msg.get("refused") == kind)


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def _type_names(types: type | tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in _as_tuple(types))


class ChannelProtocol:
    """One side of the data-channel protocol (see module docstring); no I/O.

    ``clock()`` is the time source (``time.monotonic`` by default; tests pass a fake one).
    ``nonce`` is the client's identity challenge, sent in its hello.
    """

    def __init__(
        self,
        *,
        role: str,
        local_peer_id: str,
        remote_peer_id: str,
        version: int = CHANNEL_VERSION,
        heartbeat_interval: float,
        dead_after: float,
        nonce: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.role = role
        self.local_peer_id = local_peer_id
        self.remote_peer_id = remote_peer_id
        self.version = version
        self.heartbeat_interval = heartbeat_interval
        self.dead_after = dead_after
        self.nonce = nonce
        self.clock = clock
        self.remote_hello: dict[str, Any] | None = None
        self.proof: dict[str, Any] | None = None
        self.closed: Closed | None = None
        self.hello_sent = False
        self.last_seen = clock()
        self._next_beat: float | None = None  # armed by send_hello
        self._suspect: tuple[float, float] | None = None  # (hinted at, deadline)
        self._outgoing: list[str] = []

    # ------------------------------------------------------------------ sending

    def send_hello(self) -> str:
        """Our hello (once); arms the heartbeat and the silence deadline."""
        hello: dict[str, Any] = {"type": ChannelType.HELLO.value, "version": self.version, "role": self.role,
                                 "peer_id": self.local_peer_id}
        if self.nonce is not None:
            hello["nonce"] = self.nonce
        self.hello_sent = True
        now = self.clock()
        self.last_seen = max(self.last_seen, now)  # the peer gets dead_after from now
        self._next_beat = now + self.heartbeat_interval
        return dumps(hello)

    def send_message(self, msg: dict[str, Any]) -> str:
        """Encode one control message; ``ValueError`` for one the peer would refuse (not a
        row of ``CHANNEL_FIELDS``, or larger than ``MAX_CONTROL_BYTES``)."""
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            raise ValueError("A control message is a dict with a string 'type'.")
        problem = message_problem(msg)
        if problem is not None:
            raise ValueError(f"Not sent: {problem}.")
        frame = dumps(msg)
        if len(frame) > MAX_CONTROL_BYTES // 4 and len(frame.encode("utf-8", "surrogatepass")) > MAX_CONTROL_BYTES:
            raise ValueError(f"A '{msg['type'][:64]}' control message over {MAX_CONTROL_BYTES} bytes cannot be sent.")
        return frame

    def send_bye(self) -> str:
        """The orderly hang-up."""
        return dumps({"type": ChannelType.BYE.value})

    def data_to_send(self) -> list[str]:
        """Frames the protocol wants written now (heartbeats, refusals); emptied by the call."""
        out, self._outgoing = self._outgoing, []
        return out

    # ------------------------------------------------------------------ receiving

    def receive(self, frame: str | bytes) -> list[Event]:
        """Take one frame from the peer; returns what it means."""
        if self.closed is not None:
            return []
        self.last_seen = max(self.last_seen, self.clock())
        if isinstance(frame, (bytes, bytearray, memoryview)):
            if self.remote_hello is None:
                return [FrameRejected("a binary frame before the peer's hello")]
            return [ChunkReceived(bytes(frame))]
        if len(frame) > MAX_CONTROL_BYTES // 4 and len(frame.encode("utf-8", "surrogatepass")) > MAX_CONTROL_BYTES:
            return self._reject(f"a text frame over {MAX_CONTROL_BYTES} bytes")
        try:
            msg = json.loads(frame)
        except (ValueError, RecursionError):  # RecursionError: hostile "[[[[..." nesting
            return self._reject("a text frame that is not JSON")
        kind = msg.get("type") if isinstance(msg, dict) else None
        if kind == ChannelType.HELLO:
            return self._on_hello(msg)
        problem = message_problem(msg)
        if problem is not None:
            return self._reject(problem, reply=kind != ChannelType.ERROR, refused=kind)
        if self.remote_hello is None and kind not in _BEFORE_HELLO:
            return self._reject(f"'{kind}' before the peer's hello", refused=kind)
        return self._dispatch(msg)

    def _on_hello(self, msg: dict[str, Any]) -> list[Event]:
        if self.remote_hello is not None:
            return [FrameRejected("a second hello")]
        if msg.get("version") != self.version or isinstance(msg.get("version"), bool):
            text = (f"Data-channel protocol version mismatch: we speak {self.version}, "
                    f"peer {self.remote_peer_id} speaks {msg.get('version')!r}. Update the older side.")
            self._outgoing.append(dumps({"type": ChannelType.ERROR.value, "reason": VERSION_MISMATCH, "message": text}))
            self.closed = Closed(text, error=ChannelVersionError(text))
            return [HelloRefused(ChannelVersionError(text))]
        problem = message_problem(msg)
        if problem is not None:
            return [self._close(f"the peer's hello is malformed ({problem})")]
        self.remote_hello = msg
        return [HelloReceived(msg)]

    def _dispatch(self, msg: dict[str, Any]) -> list[Event]:
        kind = msg["type"]
        if kind == ChannelType.HEARTBEAT:
            return []
        if kind == ChannelType.BYE:
            return [self._close("the peer hung up")]
        if kind == ChannelType.ERROR:
            if msg["reason"] == VERSION_MISMATCH:
                text = msg["message"] or "The peer refused our data-channel protocol version."
                return [self._close(text, error=ChannelVersionError(text))]
            refused = msg.get("refused")
            return [PeerError(msg["reason"], msg["message"], refused if isinstance(refused, str) else "")]
        if kind == ChannelType.IDENTITY_PROOF:
            if self.role != "client":
                return self._reject("an identity_proof sent to a worker")
            if self.proof is not None:
                return []  # the first proof counts; a second one is noise
            self.proof = msg
            return [ProofReceived(msg)]
        if kind in FILE_TYPES:
            return [FileControl(msg)]
        if kind in STRIPE_TYPES:
            return [StripeControl(msg)]
        return [MessageReceived(msg)]

    def _reject(self, reason: str, *, reply: bool = True, refused: Any = None) -> list[Event]:
        if reply:
            error = {"type": ChannelType.ERROR.value, "reason": INVALID_CHANNEL_MESSAGE, "message": f"Refused {reason}."}
            if isinstance(refused, str):  # the sender's waits for an answer to it can end now
                error["refused"] = refused[:64]
            self._outgoing.append(dumps(error))
        return [FrameRejected(reason)]

    def _close(self, reason: str, *, silent: bool = False, error: Exception | None = None) -> Closed:
        self.closed = Closed(reason, silent=silent, error=error)
        return self.closed

    # ------------------------------------------------------------------ time

    def suspect(self, grace: float) -> None:
        """A hint from outside that the peer may be gone: unless a frame arrives within
        ``grace`` seconds from now, ``on_timer`` closes the channel."""
        if self.closed is None:
            now = self.clock()
            self._suspect = (now, now + grace)

    def next_deadline(self) -> float | None:
        """When ``on_timer`` next has something to do; None once closed or before ``send_hello``."""
        if self.closed is not None or self._next_beat is None:
            return None
        due = [self._next_beat, self.last_seen + self.dead_after]
        if self._suspect is not None:
            due.append(self._suspect[1])
        return min(due)

    def on_timer(self, now: float | None = None) -> list[Event]:
        """What is due by ``now`` (default ``clock()``): a heartbeat into ``data_to_send``,
        or the end of a silent peer."""
        if self.closed is not None or self._next_beat is None:
            return []
        now = self.clock() if now is None else now
        silent = now - self.last_seen
        if silent >= self.dead_after:
            return [self._close(f"no sign of life for {silent:.0f} s", silent=True)]
        if self._suspect is not None and now >= self._suspect[1]:
            hinted, deadline = self._suspect
            self._suspect = None
            if self.last_seen < hinted:
                return [self._close(f"the peer left the room and sent nothing for {deadline - hinted:.0f} s")]
        if now >= self._next_beat:
            self._outgoing.append(dumps({"type": ChannelType.HEARTBEAT.value}))
            self._next_beat = now + self.heartbeat_interval
        return []
