"""Every wire name of sleap-rtc, and the validation of frames that carry them.

Two protocols live here:

* the **signaling protocol** (JSON text frames over one WebSocket per peer), which keeps
  the field and type names of the public "v2.0" server so that old peers still work, plus
  our opt-in room events;
* the **data-channel protocol** spoken peer-to-peer once WebRTC is up: JSON control
  messages with a ``type`` and binary file frames (see ``pack_chunk``).

Nothing in this module does I/O. The server and every peer use the same names and the same
``parse_frame`` so that a field renamed here is renamed everywhere.
"""

from __future__ import annotations

import json
import struct
from enum import StrEnum
from typing import Any

SIGNALING_VERSION = "2.0"
"""Version of the signaling protocol (the public v2.0 wire names plus room events)."""

CHANNEL_VERSION = 1
"""Version of the data-channel protocol; both peers state it in ``hello``."""

MAX_FRAME_BYTES = 1024 * 1024
"""Default cap on one signaling frame, enforced by the server."""

DEFAULT_PING_INTERVAL = 30.0
"""Seconds between application pings sent by the server."""

MAX_RECEIVE_BYTES = 16 * 1024 * 1024
"""Largest signaling frame a peer accepts from the server (its WebSocket ``max_msg_size``);
the server's limits are sized so that every frame it sends fits (see ``server/limits.py``)."""

MAX_METADATA_BYTES = 16 * 1024
"""Cap on one peer's metadata, encoded as compact JSON, at register and after each update."""


class MessageType(StrEnum):
    """Signaling frame types, peer to server and server to peer."""

    REGISTER = "register"
    REGISTERED_AUTH = "registered_auth"
    DISCOVER_PEERS = "discover_peers"
    PEER_LIST = "peer_list"
    UPDATE_METADATA = "update_metadata"
    METADATA_UPDATED = "metadata_updated"
    PEER_MESSAGE = "peer_message"
    OFFER = "offer"
    ANSWER = "answer"
    CANDIDATE = "candidate"
    ERROR = "error"
    PING = "ping"
    PONG = "pong"
    # Room events: pushed only to peers that registered with ``"events": true``.
    PEER_JOINED = "peer_joined"
    PEER_LEFT = "peer_left"
    PEER_UPDATED = "peer_updated"
    # Several room events in one frame ``{events: [...]}``, only for peers that registered
    # with ``"batch_events": true`` (v2.0 peers never get it).
    ROOM_EVENTS = "room_events"
    # ICE servers again (fresh TURN credentials) for a long-lived peer; reply: ICE_SERVERS.
    GET_ICE_SERVERS = "get_ice_servers"
    ICE_SERVERS = "ice_servers"


RELAYED_TYPES = frozenset({MessageType.OFFER, MessageType.ANSWER, MessageType.CANDIDATE})
"""Frames forwarded unchanged (sender stamped) from ``sender`` to ``target``."""

EVENT_TYPES = frozenset({MessageType.PEER_JOINED, MessageType.PEER_LEFT, MessageType.PEER_UPDATED})
"""Room events a peer can opt into."""


class Role(StrEnum):
    """Which side of a job a registered peer is on."""

    WORKER = "worker"
    CLIENT = "client"


class WorkerStatus(StrEnum):
    """The ``status`` property a worker publishes in its metadata."""

    AVAILABLE = "available"
    RESERVED = "reserved"
    BUSY = "busy"
    MAINTENANCE = "maintenance"


class Prop(StrEnum):
    """Names of worker metadata properties (one name each: ``gpu_model``, never ``gpu_name``)."""

    GPU_MEMORY_MB = "gpu_memory_mb"
    GPU_MODEL = "gpu_model"
    CUDA_VERSION = "cuda_version"
    SLEAP_VERSION = "sleap_version"
    SLEAP_NN_VERSION = "sleap_nn_version"
    HOSTNAME = "hostname"
    WORKER_NAME = "worker_name"
    STATUS = "status"
    MAX_CONCURRENT_JOBS = "max_concurrent_jobs"
    SUPPORTED_JOB_TYPES = "supported_job_types"
    PUBLIC_KEY = "public_key"  # the worker's Ed25519 identity key, base64 (core.identity)
    FINGERPRINT = "fingerprint"  # SHA256:... of that key
    DATA_ROOTS = "data_roots"  # names of the worker's read-only video folders (core.data_roots)
    INFERENCE_INPUTS = "inference_inputs"  # what inference entries may name: video, data_root, model_id


class Tag(StrEnum):
    """Tags a worker advertises."""

    SLEAP_RTC = "sleap-rtc"
    TRAINING_WORKER = "training-worker"
    INFERENCE_WORKER = "inference-worker"


class ErrorCode(StrEnum):
    """``code`` of a server ``error`` frame (the old codes plus ours)."""

    INVALID_JSON = "INVALID_JSON"
    INVALID_MESSAGE = "INVALID_MESSAGE"
    UNKNOWN_MESSAGE_TYPE = "UNKNOWN_MESSAGE_TYPE"
    NOT_IN_ROOM = "NOT_IN_ROOM"
    ROOM_NOT_FOUND = "ROOM_NOT_FOUND"
    INVALID_TOKEN = "INVALID_TOKEN"
    ROOM_EXPIRED = "ROOM_EXPIRED"
    ROOM_FULL = "ROOM_FULL"
    PEER_NOT_IN_ROOM = "PEER_NOT_IN_ROOM"
    PEER_NOT_FOUND = "PEER_NOT_FOUND"
    PEER_ID_TAKEN = "PEER_ID_TAKEN"
    ALREADY_REGISTERED = "ALREADY_REGISTERED"
    DELIVERY_FAILED = "DELIVERY_FAILED"
    FRAME_TOO_LARGE = "FRAME_TOO_LARGE"
    RATE_LIMITED = "RATE_LIMITED"
    FORBIDDEN = "FORBIDDEN"
    WORKER_TOKEN_REQUIRED = "WORKER_TOKEN_REQUIRED"
    INVALID_METADATA = "INVALID_METADATA"
    METADATA_TOO_LARGE = "METADATA_TOO_LARGE"
    CREATE_ROOM_FORBIDDEN = "CREATE_ROOM_FORBIDDEN"
    TOO_MANY_ROOMS = "TOO_MANY_ROOMS"
    TOO_MANY_CONNECTIONS = "TOO_MANY_CONNECTIONS"
    TOO_MANY_WATCHERS = "TOO_MANY_WATCHERS"
    SERVER_UNAVAILABLE = "SERVER_UNAVAILABLE"


WORKER_BUSY = "worker_busy"
"""``reason`` of a worker's refusal of an offer, relayed to the client by the server."""

OFFER_REF = "offer_ref"
"""Field of an ``offer`` that its ``answer`` (or a peer's refusal) echoes, so that several
offers to one peer in flight at once (the extra connections of a striped transfer) each
get their own answer; the server strips ``id`` from relayed frames, so ``id`` cannot."""

STRIPE_TOKEN = "stripe"
"""Field of an ``offer`` for an extra connection of a striped transfer: the token of the
channel it joins (``core.stripes``); an offer without it asks for a new channel."""

STRIPE_GRANT = "stripe_grant"
"""Field of a worker's ``answer``: ``{max, token}``, the stripe grant of the channel being set
up, so the client's extra connections can open while the first one still handshakes (the
same grant as the data channel's ``stripe_grant`` message; absent: ask on the channel)."""

STRIPE_REFUSED = "stripe_refused"
"""``reason`` of a worker's refusal of an extra-connection (stripe) offer it cannot admit."""

VERSION_MISMATCH = "version_mismatch"
"""``reason`` of a data-channel ``error`` when the peers' ``CHANNEL_VERSION`` differ."""
INVALID_CHANNEL_MESSAGE = "invalid_message"
"""``reason`` of a data-channel ``error`` refusing one frame that breaks ``CHANNEL_FIELDS``
(the channel stays open; see ``core.channel_protocol``)."""

SHA256_MISMATCH = "sha256_mismatch"
"""``reason`` of a ``file_error`` when the received bytes do not hash to the offered SHA-256."""

FILE_TOO_LARGE = "file_too_large"
"""``reason`` of a ``file_error``: the offered size is over the receiver's cap for one file."""
NO_SPACE = "no_space"
"""``reason`` of a ``file_error``: the receiver's disk cannot hold the offered file (plus its reserve)."""
TOO_MANY_TRANSFERS = "too_many_transfers"
"""``reason`` of a ``file_error``: the receiver already takes its most concurrent files on this channel."""
NOT_EXPECTED = "not_expected"
"""``reason`` of a ``file_error``: the receiver was not told to expect this file (name, size or hash)."""
BAD_OFFER = "bad_offer"
"""``reason`` of a ``file_error``: the offer itself is malformed (size, sha256 or meta) or names a
transfer id or file this channel is already receiving."""
BAD_OFFSET = "bad_offset"
"""``reason`` of a ``file_error``: a chunk does not fit the transfer (before the verified prefix,
beyond the size, overlapping a held chunk, out of order from a sender without ``repair``, or too
many held ahead)."""
INCOMPLETE = "incomplete"
"""``reason`` of a ``file_error``: ``file_end`` came with bytes still missing, and no repair round
(``file_missing``) is left to ask for them."""
WRITE_FAILED = "write_failed"
"""``reason`` of a ``file_error``: the receiver could not write the file to its disk."""

FINAL_REGISTRATION_ERRORS = frozenset(
    {ErrorCode.INVALID_TOKEN, ErrorCode.ROOM_NOT_FOUND, ErrorCode.ROOM_EXPIRED, ErrorCode.WORKER_TOKEN_REQUIRED}
)
"""Registration refusals that retrying cannot fix (a rate limit, say, can be waited out)."""


class JobKind(StrEnum):
    """``options.kind`` of a ``job_submit``: what the worker should do with the package."""

    TRAIN = "train"
    TRACK = "track"


class ResultKind(StrEnum):
    """``kind`` of a ``job_result``: what the announced file is."""

    MODEL = "model"  # a zip of one trained model folder
    PREDICTIONS = "predictions"  # a .slp of predictions


class ProtocolError(ValueError):
    """A frame that breaks the protocol; ``code`` is an ``ErrorCode`` for the error reply."""

    def __init__(self, code: ErrorCode | str, message: str):
        super().__init__(message)
        self.code = str(code)
        self.message = message


# Required fields (name -> accepted Python types) of frames a peer sends to the server.
# Optional fields are checked where they are used; extra fields are allowed (old peers
# send some) and, for relayed frames, forwarded unchanged.
_OBJ = dict
_STR = str
PEER_FRAME_FIELDS: dict[str, dict[str, type | tuple[type, ...]]] = {
    MessageType.REGISTER: {"peer_id": _STR, "room_id": _STR, "token": _STR, "role": _STR},
    MessageType.DISCOVER_PEERS: {},
    MessageType.UPDATE_METADATA: {"metadata": _OBJ},
    MessageType.PEER_MESSAGE: {"to_peer_id": _STR, "payload": _OBJ},
    MessageType.OFFER: {"target": _STR},
    MessageType.ANSWER: {"target": _STR},
    MessageType.CANDIDATE: {"target": _STR},
    MessageType.ERROR: {"target": _STR},
    MessageType.PING: {},
    MessageType.PONG: {},
    MessageType.GET_ICE_SERVERS: {},
}

# Optional fields with a fixed type: a wrong type is an INVALID_MESSAGE, never a crash.
_OPTIONAL_FIELDS: dict[str, dict[str, type | tuple[type, ...]]] = {
    MessageType.REGISTER: {"metadata": _OBJ, "events": bool, "resume": _STR, "batch_events": bool},
    MessageType.DISCOVER_PEERS: {"filters": _OBJ},
    MessageType.OFFER: {"sdp": _STR},
    MessageType.ANSWER: {"sdp": _STR},
    MessageType.ERROR: {"reason": _STR, "message": _STR},
}


def parse_frame(text: str | bytes, *, max_bytes: int = MAX_FRAME_BYTES) -> dict[str, Any]:
    """Decode one signaling frame and check its type and field types.

    Returns the frame as a dict; raises ``ProtocolError`` with the code to answer with.
    """
    # len() of a str counts characters; a character is up to 4 bytes in UTF-8, so encode
    # only when the character count alone cannot settle it.
    size = len(text) if isinstance(text, bytes) or len(text) * 4 <= max_bytes else len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise ProtocolError(ErrorCode.FRAME_TOO_LARGE, f"Frame larger than {max_bytes} bytes.")
    try:
        frame = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: "[[[[..." nesting
        raise ProtocolError(ErrorCode.INVALID_JSON, f"Frame is not valid JSON: {exc.__class__.__name__}.") from None
    return validate_frame(frame)


def _refuse_constant(name: str) -> Any:
    # NaN and Infinity are not JSON; Python's decoder accepts them unless told otherwise.
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):  # "1e400" decodes to inf
        raise ValueError("number out of range")
    return value


def validate_frame(frame: Any) -> dict[str, Any]:
    """Check that a decoded frame is a peer->server message with well-typed fields."""
    if not isinstance(frame, dict):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "Frame must be a JSON object.")
    msg_type = frame.get("type")
    if not isinstance(msg_type, str):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "Frame has no string 'type'.")
    if msg_type not in PEER_FRAME_FIELDS:
        raise ProtocolError(ErrorCode.UNKNOWN_MESSAGE_TYPE, f"Unknown message type {msg_type[:64]!r}.")
    for name, types in PEER_FRAME_FIELDS[msg_type].items():
        if name not in frame:
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"'{msg_type}' needs field '{name}'.")
        if not isinstance(frame[name], types):
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"Field '{name}' of '{msg_type}' has the wrong type.")
    for name, types in _OPTIONAL_FIELDS.get(msg_type, {}).items():
        if name in frame and frame[name] is not None and not isinstance(frame[name], types):
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"Field '{name}' of '{msg_type}' has the wrong type.")
    return frame


def dumps(frame: dict[str, Any]) -> str:
    """Encode a frame compactly (the wire format of both protocols' text frames)."""
    return json.dumps(frame, separators=(",", ":"))


def error_frame(code: ErrorCode | str, message: str, **extra: Any) -> dict[str, Any]:
    """One error shape for every server error: ``code`` for new peers, ``reason`` for old ones."""
    return {"type": MessageType.ERROR.value, "code": str(code), "reason": message, "message": message, **extra}


def busy_error_frame(target: str, status: str, message: str | None = None) -> dict[str, Any]:
    """A worker's refusal of an offer (the v2.0 ``worker_busy`` error), relayed by the server to ``target``."""
    text = message or (
        f"Worker is currently {status}. Use --room-id and --token for worker discovery "
        "to pick an available worker."
    )
    return {
        "type": MessageType.ERROR.value,
        "target": target,
        "reason": WORKER_BUSY,
        "message": text,
        "status": status,
        "suggest_room_discovery": True,
    }


def peer_info(peer_id: str, role: str, metadata: dict[str, Any], connected_at: float) -> dict[str, Any]:
    """How a peer is described in ``peer_list`` and in room events."""
    return {"peer_id": peer_id, "role": role, "metadata": metadata, "connected_at": connected_at}


# --------------------------------------------------------------------------------------
# Data-channel protocol (peer to peer, after WebRTC is up)
# --------------------------------------------------------------------------------------


class ChannelType(StrEnum):
    """``type`` of JSON control messages on the data channel; their fields: ``CHANNEL_FIELDS``."""

    HELLO = "hello"  # first message each way; a version mismatch closes the channel
    IDENTITY_PROOF = "identity_proof"  # worker -> client: the hello nonce signed (core.identity)
    HEARTBEAT = "heartbeat"  # either side, every few seconds; any frame counts as a sign of life
    ERROR = "error"  # reason VERSION_MISMATCH: the channel is refused; INVALID_CHANNEL_MESSAGE: one frame is
    BYE = "bye"  # orderly hang-up
    # File transfer: sender offers, receiver answers with where to start.
    FILE_OFFER = "file_offer"
    FILE_ACCEPT = "file_accept"  # offset == size and cached: the receiver has it, send nothing
    FILE_END = "file_end"  # the sender has handed over every byte
    FILE_MISSING = "file_missing"  # receiver: these ranges never came (a stripe died); resend them
    FILE_PROGRESS = "file_progress"  # receiver, when the offer asked: bytes written so far
    FILE_DONE = "file_done"  # verified on the receiver
    FILE_ERROR = "file_error"
    FILE_CANCEL = "file_cancel"  # either side, any time
    # Striping: extra peer connections to the same peer for file payload (core.stripes).
    STRIPE_REQUEST = "stripe_request"  # client: may I open extra connections?
    STRIPE_GRANT = "stripe_grant"  # worker: the token their offers carry (max 0: no)
    # Jobs.
    JOB_SUBMIT = "job_submit"
    JOB_ACCEPTED = "job_accepted"
    JOB_REJECTED = "job_rejected"
    JOB_LOG = "job_log"  # redraw=True replaces the previous line (\r)
    JOB_PROGRESS = "job_progress"  # event: a sleap-nn training event, unchanged
    JOB_RESULT = "job_result"  # a result file follows, with this sha256
    JOB_COMPLETE = "job_complete"
    JOB_FAILED = "job_failed"
    JOB_STOP = "job_stop"  # finish the current epoch, save, send results
    JOB_CANCEL = "job_cancel"  # kill now
    JOB_ATTACH = "job_attach"  # on a new channel after an outage, follow the running job again


_INT = int
_LIST = list
_BOOL = bool
CHANNEL_FIELDS: dict[str, dict[str, type | tuple[type, ...]]] = {
    ChannelType.HELLO: {"version": _INT, "role": _STR, "peer_id": _STR},
    ChannelType.IDENTITY_PROOF: {"public_key": _STR, "signature": _STR},
    ChannelType.HEARTBEAT: {},
    ChannelType.ERROR: {"reason": _STR, "message": _STR},
    ChannelType.BYE: {},
    ChannelType.FILE_OFFER: {"transfer_id": _INT, "name": _STR, "size": _INT, "sha256": _STR, "meta": _OBJ},
    ChannelType.FILE_ACCEPT: {"transfer_id": _INT, "offset": _INT, "cached": _BOOL},
    ChannelType.FILE_END: {"transfer_id": _INT, "size": _INT},
    ChannelType.FILE_MISSING: {"transfer_id": _INT, "ranges": _LIST},
    ChannelType.FILE_PROGRESS: {"transfer_id": _INT, "received": _INT},
    ChannelType.FILE_DONE: {"transfer_id": _INT, "sha256": _STR, "name": _STR},
    ChannelType.FILE_ERROR: {"transfer_id": _INT, "reason": _STR, "message": _STR},
    ChannelType.FILE_CANCEL: {"transfer_id": _INT},
    ChannelType.STRIPE_REQUEST: {},
    ChannelType.STRIPE_GRANT: {"max": _INT},
    ChannelType.JOB_SUBMIT: {"job_id": _STR, "package": _OBJ, "options": _OBJ},
    ChannelType.JOB_ACCEPTED: {"job_id": _STR},
    ChannelType.JOB_REJECTED: {"job_id": _STR, "reason": _STR},
    ChannelType.JOB_LOG: {"job_id": _STR, "line": _STR, "redraw": _BOOL},
    ChannelType.JOB_PROGRESS: {"job_id": _STR, "event": _OBJ},
    ChannelType.JOB_RESULT: {"job_id": _STR, "kind": _STR, "name": _STR, "sha256": _STR, "size": _INT},
    ChannelType.JOB_COMPLETE: {"job_id": _STR, "results": _LIST, "duration_s": (int, float)},
    ChannelType.JOB_FAILED: {"job_id": _STR, "reason": _STR},
    ChannelType.JOB_STOP: {"job_id": _STR},
    ChannelType.JOB_CANCEL: {"job_id": _STR},
    ChannelType.JOB_ATTACH: {"job_id": _STR},
}
"""The one table of data-channel control messages: type -> required field -> accepted types,
exactly what the senders in ``channel_protocol``, ``channel``, ``files``, ``stripes`` and
``jobs_wire`` send, and what ``channel_protocol`` lets through to them.
Optional fields: ``hello.nonce`` (str: the client's challenge for ``identity_proof``),
``file_offer.repair`` (bool: the sender answers ``file_missing``),
``file_offer.progress`` (bool: the sender counts ``file_progress``),
``job_log.stream`` (``stdout``/``stderr``), ``stripe_grant.token`` (str, when ``max`` > 0),
``error.refused`` (str: the type of the message an ``invalid_message`` error refuses),
``file_missing.ranges`` items are ``[offset, length]`` pairs."""


CHUNK_HEADER = struct.Struct("!IQ")
"""Binary file frame header: transfer id (u32) and byte offset (u64), then the payload."""


def pack_chunk(transfer_id: int, offset: int, payload: bytes | memoryview) -> bytes:
    """Build one binary file frame."""
    return CHUNK_HEADER.pack(transfer_id, offset) + bytes(payload)


def unpack_chunk(frame: bytes) -> tuple[int, int, memoryview]:
    """Split a binary file frame into (transfer_id, offset, payload)."""
    if len(frame) < CHUNK_HEADER.size:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "Binary frame shorter than its header.")
    transfer_id, offset = CHUNK_HEADER.unpack_from(frame)
    return transfer_id, offset, memoryview(frame)[CHUNK_HEADER.size :]
