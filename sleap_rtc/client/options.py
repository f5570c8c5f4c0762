"""Validation of the client commands' connection and selection options, before any network.

``plan_connection`` turns the raw option values into a ``ConnectionPlan`` or raises
``OptionsError`` whose message is shown to the user as is (the CLI exits with code 2).
The checks, in order (the first that applies wins, so each mistake gets one message):

1. ``--worker-id`` together with ``--auto-select``;
2. ``--session-string`` together with ``--room-id`` / ``--token``;
3. ``--session-string`` together with selection options (it already names its worker);
4. only one of ``--room-id`` / ``--token``;
5. selection options without a room;
6. no connection at all (both ways are listed);
7. room mode while the rollback switch ``SLEAP_RTC_DISABLE_ROOMS`` is on;
8. a malformed session string;
9. interactive selection without a terminal on stdin (no implicit auto-select).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from sleap_rtc.core.config import ENV_DISABLE_ROOMS, rooms_disabled
from sleap_rtc.core.credentials import ENV_TOKEN, CredentialsError, SessionTarget, decode_session_string, resolve_token


class OptionsError(ValueError):
    """A usage error; the message says what is wrong and how to fix it."""


class SelectionMode(StrEnum):
    """How the worker is chosen."""

    SESSION = "session"  # the worker encoded in a session string
    INTERACTIVE = "interactive"
    AUTO = "auto"
    DIRECT = "direct"


@dataclass(frozen=True)
class ConnectionPlan:
    """Validated connection settings: where to connect and how to choose the worker."""

    mode: SelectionMode
    room_id: str
    token: str
    worker_id: str | None = None  # DIRECT: from --worker-id; SESSION: from the string
    worker_fingerprint: str | None = None  # SESSION: the worker's key, when the string has one
    min_gpu_memory_mb: int | None = None
    wait: float = 0.0
    show_busy: bool = False
    selection_timeout: float = 300.0

    @property
    def uses_room(self) -> bool:
        """Whether workers are discovered in the room (every mode but SESSION)."""
        return self.mode != SelectionMode.SESSION


NEITHER_MESSAGE = (
    "No connection given. Connect in one of two ways:\n"
    "  --room-id ROOM --token TOKEN   join a room and choose a worker (both are printed by the worker)\n"
    "  --session-string STRING        connect straight to the worker that printed it"
)
BOTH_SELECTIONS_MESSAGE = (
    "--worker-id and --auto-select cannot be used together: "
    "choose a worker yourself with --worker-id, or let sleap-rtc pick one with --auto-select."
)
SESSION_WITH_ROOM_MESSAGE = (
    "--session-string cannot be combined with --room-id or --token: the session string already "
    "contains the room credentials. Use either --session-string, or --room-id and --token."
)
NO_TTY_MESSAGE = (
    "Interactive worker selection needs a terminal, but stdin is not one. "
    "Pass --auto-select to pick the best available worker, or --worker-id ID to choose one."
)


def rooms_disabled_message() -> str:
    """What the user sees when the rollback switch turns room discovery off."""
    return (
        f"Room-based worker discovery is disabled ({ENV_DISABLE_ROOMS} is set). "
        f"Connect with --session-string instead, or unset {ENV_DISABLE_ROOMS}."
    )


def token_from_options(room_id: str | None, token: str | None, token_file: str | None) -> str | None:
    """The room token from ``--token``, ``--token-file`` or ``$SLEAP_RTC_TOKEN`` (in that order).

    The file and the variable are read only with ``--room-id`` (or when ``--token-file`` is
    given), so a token in the environment never clashes with ``--session-string``.
    """
    if token or not (room_id or token_file):
        return token
    try:
        return resolve_token(None, token_file, ENV_TOKEN)
    except CredentialsError as exc:
        raise OptionsError(str(exc)) from None


def plan_connection(
    *,
    session_string: str | None = None,
    room_id: str | None = None,
    token: str | None = None,
    auto_select: bool = False,
    worker_id: str | None = None,
    min_gpu_memory_mb: int | None = None,
    wait: float | None = None,
    show_busy: bool = False,
    selection_timeout: float = 300.0,
    stdin_is_tty: bool = True,
) -> ConnectionPlan:
    """Check the options (see the module docstring) and return the plan."""
    if worker_id and auto_select:
        raise OptionsError(BOTH_SELECTIONS_MESSAGE)
    room_opts = [name for name, value in (("--room-id", room_id), ("--token", token)) if value]
    selection_opts = [
        name
        for name, value in (
            ("--auto-select", auto_select),
            ("--worker-id", worker_id),
            ("--min-gpu-memory", min_gpu_memory_mb),
            ("--wait", wait),
            ("--show-busy", show_busy),
        )
        if value
    ]
    if session_string and room_opts:
        raise OptionsError(SESSION_WITH_ROOM_MESSAGE)
    if session_string and selection_opts:
        raise OptionsError(
            f"{' and '.join(selection_opts)} cannot be used with --session-string: a session string already "
            "names its worker. To choose a worker, use --room-id and --token instead."
        )
    if len(room_opts) == 1:
        missing = "--token" if room_id else "--room-id"
        raise OptionsError(f"{room_opts[0]} needs {missing} as well (the worker prints both).")
    if not session_string and not room_opts:
        if selection_opts:
            raise OptionsError(
                f"{' and '.join(selection_opts)} choose a worker in a room: add --room-id and --token."
            )
        raise OptionsError(NEITHER_MESSAGE)
    if session_string:
        try:
            target: SessionTarget = decode_session_string(session_string)
        except CredentialsError as exc:
            raise OptionsError(str(exc)) from None
        return ConnectionPlan(SelectionMode.SESSION, target.room_id, target.token, worker_id=target.peer_id,
                              worker_fingerprint=target.fingerprint)
    if rooms_disabled():
        raise OptionsError(rooms_disabled_message())
    if min_gpu_memory_mb is not None and min_gpu_memory_mb < 0:
        raise OptionsError("--min-gpu-memory must be zero or more (megabytes).")
    if wait is not None and wait < 0:
        raise OptionsError("--wait must be zero or more seconds.")
    if selection_timeout <= 0:
        raise OptionsError("--selection-timeout must be more than zero seconds.")
    mode = SelectionMode.AUTO if auto_select else SelectionMode.DIRECT if worker_id else SelectionMode.INTERACTIVE
    if mode == SelectionMode.INTERACTIVE and not stdin_is_tty:
        raise OptionsError(NO_TTY_MESSAGE)
    return ConnectionPlan(
        mode,
        str(room_id),
        str(token),
        worker_id=worker_id,
        min_gpu_memory_mb=min_gpu_memory_mb or None,
        wait=float(wait or 0.0),
        show_busy=show_busy,
        selection_timeout=float(selection_timeout),
    )
