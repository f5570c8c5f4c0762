"""Builders and a validator for the job control messages (``JOB_*`` of ``ChannelType``).

They travel as ordinary control messages on a ``PeerChannel`` (``await ch.send(job_log(...))``;
``validate_job_message(await ch.receive())``). Result files travel with ``ch.send_file``,
announced by ``job_result`` carrying the same ``sha256``.
"""

from __future__ import annotations

from typing import Any

from sleap_rtc.core.channel_protocol import message_problem
from sleap_rtc.core.protocol import CHANNEL_FIELDS, ChannelType, ErrorCode, ProtocolError


def validate_job_message(msg: Any) -> dict[str, Any]:
    """Check a received job message; raises ``ProtocolError`` naming the bad field."""
    kind = msg.get("type") if isinstance(msg, dict) else None
    if not isinstance(kind, str) or not kind.startswith("job_") or kind not in CHANNEL_FIELDS:
        raise ProtocolError(ErrorCode.UNKNOWN_MESSAGE_TYPE, f"Not a job message: {str(kind if isinstance(msg, dict) else msg)[:64]!r}.")
    problem = message_problem(msg)  # the job rows of the one data-channel table
    if problem is not None:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"{problem[0].upper()}{problem[1:]}.")
    if msg["type"] == ChannelType.JOB_SUBMIT:
        pkg = msg["package"]
        if not isinstance(pkg.get("sha256"), str) or not isinstance(pkg.get("name"), str):
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, "'job_submit' package needs 'sha256' and 'name'.")
    return msg


def _msg(msg_type: ChannelType, /, **fields: Any) -> dict[str, Any]:
    # Builders validate too: a message we could not accept ourselves is never sent.
    return validate_job_message({"type": msg_type.value, **fields})


def job_submit(job_id: str, package: dict[str, Any], options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Ask the worker to run a job on an already-sent package ``{sha256, name}``."""
    return _msg(ChannelType.JOB_SUBMIT, job_id=job_id, package=package, options=dict(options or {}))


def job_accepted(job_id: str) -> dict[str, Any]:
    """The worker took the job."""
    return _msg(ChannelType.JOB_ACCEPTED, job_id=job_id)


def job_rejected(job_id: str, reason: str) -> dict[str, Any]:
    """The worker refused the job; ``reason`` is shown to the user."""
    return _msg(ChannelType.JOB_REJECTED, job_id=job_id, reason=reason)


def job_log(job_id: str, line: str, redraw: bool = False, stream: str | None = None) -> dict[str, Any]:
    """One log line; ``redraw=True`` replaces the previous line (it ended with ``\\r``);
    ``stream`` says where it came from (``stdout``, ``stderr``, ``worker``)."""
    fields = {} if stream is None else {"stream": stream}
    return _msg(ChannelType.JOB_LOG, job_id=job_id, line=line, redraw=redraw, **fields)


def job_progress(job_id: str, event: dict[str, Any]) -> dict[str, Any]:
    """A sleap-nn training event, passed through unchanged (SLEAP's LossViewer reads it)."""
    return _msg(ChannelType.JOB_PROGRESS, job_id=job_id, event=event)


def job_result(job_id: str, kind: str, name: str, sha256: str, size: int) -> dict[str, Any]:
    """Announces a result file that follows with ``send_file`` (same ``sha256``)."""
    return _msg(ChannelType.JOB_RESULT, job_id=job_id, kind=kind, name=name, sha256=sha256, size=size)


def job_complete(job_id: str, results: list[dict[str, Any]], duration_s: float) -> dict[str, Any]:
    """The job finished; ``results`` lists the ``job_result`` entries."""
    return _msg(ChannelType.JOB_COMPLETE, job_id=job_id, results=list(results), duration_s=float(duration_s))


def job_failed(job_id: str, reason: str) -> dict[str, Any]:
    """The job failed; ``reason`` must make sense to a user."""
    return _msg(ChannelType.JOB_FAILED, job_id=job_id, reason=reason)


def job_stop(job_id: str) -> dict[str, Any]:
    """Finish the current epoch, save, and send the results."""
    return _msg(ChannelType.JOB_STOP, job_id=job_id)


def job_cancel(job_id: str) -> dict[str, Any]:
    """Kill the job now."""
    return _msg(ChannelType.JOB_CANCEL, job_id=job_id)


def job_attach(job_id: str) -> dict[str, Any]:
    """Client -> worker on a new channel after an outage: follow the still-running job again."""
    return _msg(ChannelType.JOB_ATTACH, job_id=job_id)
