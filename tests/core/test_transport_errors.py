"""The transport's exception family: one base to catch, subclasses precise enough to act on."""

from __future__ import annotations

import inspect

from sleap_rtc.core import transport_errors
from sleap_rtc.core.transport_errors import (
    ConnectionFailedError,
    FileTransferError,
    IntegrityError,
    LoopbackOnlyError,
    TransferCancelledError,
    TransportError,
    WorkerBusyError,
)


def test_every_error_is_a_transport_error_with_a_docstring():
    classes = [c for _, c in inspect.getmembers(transport_errors, inspect.isclass) if c.__module__ == transport_errors.__name__]
    assert len(classes) == 13  # 11 + IceFailedError (netlab) + WorkerIdentityError (identity)
    for cls in classes:
        assert issubclass(cls, TransportError) and cls.__doc__


def test_specific_families():
    assert issubclass(LoopbackOnlyError, ConnectionFailedError)
    assert issubclass(IntegrityError, FileTransferError) and issubclass(TransferCancelledError, FileTransferError)


def test_worker_busy_carries_status_and_frame():
    exc = WorkerBusyError("busy now", status="busy", frame={"reason": "worker_busy"})
    assert (str(exc), exc.message, exc.status, exc.frame) == ("busy now", "busy now", "busy", {"reason": "worker_busy"})
    bare = WorkerBusyError("x")
    assert bare.status is None and bare.frame == {}


def test_worker_identity_error_carries_both_fingerprints():
    from sleap_rtc.core.transport_errors import WorkerIdentityError

    exc = WorkerIdentityError("posing", fingerprint="SHA256:a", expected="SHA256:b")
    assert (str(exc), exc.fingerprint, exc.expected) == ("posing", "SHA256:a", "SHA256:b")
    assert isinstance(exc, TransportError)
