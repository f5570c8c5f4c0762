"""Exceptions of the peer-to-peer transport (``transport``, ``channel``, ``files``).

Every one subclasses ``TransportError`` so a caller can catch the whole family; the
subclasses say what went wrong precisely enough to act on it (retry another worker on
``WorkerBusyError``, tell the user the peer left on ``PeerClosedError``, ...).
"""

from __future__ import annotations

from typing import Any


class TransportError(Exception):
    """Base of every error raised while connecting to a peer or talking to it."""


class PeerNotFoundError(TransportError):
    """The target peer id is not in our room (the server answered ``PEER_NOT_FOUND``)."""


class WorkerBusyError(TransportError):
    """The worker refused the offer with ``reason: worker_busy``; try another worker.

    ``status`` is the worker's status at refusal time (``busy``, ``reserved``, ...) and
    ``frame`` the relayed error frame as received.
    """

    def __init__(self, message: str, status: str | None = None, frame: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.frame = frame or {}


class AnswerTimeoutError(TransportError):
    """The target never answered our offer within the timeout."""


class ConnectionFailedError(TransportError):
    """ICE/DTLS/SCTP never came up (or failed), so no data channel opened."""


class LoopbackOnlyError(ConnectionFailedError):
    """This host has no network interface besides loopback, which aioice never uses."""


class ChannelVersionError(TransportError):
    """The peers speak different data-channel protocol versions."""


class PeerClosedError(TransportError):
    """The peer hung up, went silent past the heartbeat deadline, or we closed the channel."""


class FileTransferError(TransportError):
    """A file transfer failed (bad offer, I/O error, peer refused it, ...)."""


class IntegrityError(FileTransferError):
    """The received bytes do not hash to the SHA-256 the sender announced."""


class TransferCancelledError(FileTransferError):
    """The other side cancelled the transfer (``file_cancel``)."""


class IceFailedError(ConnectionFailedError):
    """No working network path between the peers; ``report`` (a ``core.ice_report.IceReport``)
    holds the ICE/DTLS states at the time, the candidates each side gathered and a hint."""

    def __init__(self, message: str, report: Any = None):
        super().__init__(message)
        self.report = report


class WorkerIdentityError(TransportError):
    """The worker could not prove it holds the key it advertises, or its key is not the one
    the user expects (session string, or the key remembered from earlier jobs).

    Nothing was uploaded. ``fingerprint`` is the key the worker proved (None when it proved
    none) and ``expected`` the one it should have had (None when there was no expectation).
    """

    def __init__(self, message: str, *, fingerprint: str | None = None, expected: str | None = None):
        super().__init__(message)
        self.fingerprint = fingerprint
        self.expected = expected
