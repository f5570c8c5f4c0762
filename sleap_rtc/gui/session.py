"""The GUI's connection to one room: a Qt-signalling wrapper around core's client objects.

``RoomSession`` owns a ``SignalingClient`` (role ``client``, room events on) and the
``RoomView`` fed by it, and re-announces their life as Qt signals so views (the dock, the
worker table, the Remote menu) only subscribe and never poll. Joining and leaving are
coroutines; slots start them with ``bridge.run_coro``.
"""

from __future__ import annotations

import logging
from enum import StrEnum

from qtpy import QtCore

from sleap_rtc.core.config import resolve_server
from sleap_rtc.core.credentials import RoomCredentials
from sleap_rtc.core.protocol import ErrorCode, Role
from sleap_rtc.core.room import RoomView, worker_filters
from sleap_rtc.core.signaling import ConnectionState, SignalingClient, SignalingError

log = logging.getLogger(__name__)


class SessionState(StrEnum):
    """What the dock shows as the connection state."""

    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    FAILED = "failed"


STATE_TEXT: dict[SessionState, str] = {
    SessionState.DISCONNECTED: "Not connected",
    SessionState.CONNECTING: "Joining room…",
    SessionState.CONNECTED: "Connected",
    SessionState.RECONNECTING: "Connection lost, reconnecting…",
    SessionState.FAILED: "Could not join the room",
}
"""Human text of each state."""

STATE_COLOUR: dict[SessionState, str] = {
    SessionState.DISCONNECTED: "#777777",
    SessionState.CONNECTING: "#b8860b",
    SessionState.CONNECTED: "#2e7d32",
    SessionState.RECONNECTING: "#b8860b",
    SessionState.FAILED: "#c62828",
}
"""Colour of each state (same hue family as worker statuses)."""


class RoomSession(QtCore.QObject):
    """One room joined as a client; emits ``state_changed``, ``room_changed``, ``error``.

    ``room`` is the live ``RoomView`` while connected (``None`` otherwise); ``credentials``
    the room joined (kept after a failure so the dock can still show what was tried).
    ``target_worker`` is the worker a legacy session string pointed at, if any.
    """

    state_changed = QtCore.Signal(str)
    """Emitted with a ``SessionState`` value."""
    room_changed = QtCore.Signal(object)
    """Emitted with the new ``RoomView`` (or ``None`` after leaving)."""
    error = QtCore.Signal(str)
    """Emitted with a human message when joining fails."""

    def __init__(self, server_url: str | None = None, parent: QtCore.QObject | None = None):
        super().__init__(parent)
        self.server_url = resolve_server(server_url)
        self.credentials: RoomCredentials | None = None
        self.target_worker: str | None = None
        self.signaling: SignalingClient | None = None
        self.room: RoomView | None = None
        self.state = SessionState.DISCONNECTED
        self.last_error = ""

    # ------------------------------------------------------------------ life cycle

    async def join(self, room_id: str, token: str, *, target_worker: str | None = None, timeout: float = 10.0) -> RoomView:
        """Join ``room_id`` and discover its workers, then leave the previous room.

        The new room is joined first: when that fails (wrong token, no such room, server
        down) the room we were in is kept as it was, and ``SignalingError`` is raised (the
        caller shows it). Only without a previous room does the state become FAILED.
        """
        previous = self.room is not None
        if not previous:
            self.credentials = RoomCredentials(room_id, token)
            self._set_state(SessionState.CONNECTING)
        client = SignalingClient(
            self.server_url, room_id=room_id, token=token, role=Role.CLIENT.value, request_timeout=timeout
        )
        try:
            await client.connect()
            room = RoomView(client, worker_filters())
            await room.start()
        except BaseException as exc:
            await client.close()
            self.last_error = _join_message(exc, self.server_url)
            if not previous:
                self.signaling = None
                self._set_state(SessionState.FAILED)
            if isinstance(exc, Exception):
                self.error.emit(self.last_error)
                raise SignalingError(self.last_error) from exc
            raise
        await self.leave()
        self.credentials = RoomCredentials(room_id, token)
        self.target_worker = target_worker
        self.signaling = client
        client.add_state_listener(self._on_signaling_state)
        self.room = room
        self.room_changed.emit(room)
        self._set_state(SessionState.CONNECTED)
        return room

    async def leave(self) -> None:
        """Leave the room (no-op when not in one)."""
        room, client = self.room, self.signaling
        self.room, self.signaling = None, None
        if room is not None:
            room.close()
            self.room_changed.emit(None)
        if client is not None:
            await client.close()
        if self.state != SessionState.DISCONNECTED:
            self._set_state(SessionState.DISCONNECTED)

    # ------------------------------------------------------------------ internals

    def _on_signaling_state(self, state: ConnectionState) -> None:
        if self.signaling is None:
            return
        if state == ConnectionState.RECONNECTING:
            self._set_state(SessionState.RECONNECTING)
        elif state == ConnectionState.REGISTERED:
            self._set_state(SessionState.CONNECTED)
        elif state == ConnectionState.CLOSED:
            self._set_state(SessionState.FAILED)

    def _set_state(self, state: SessionState) -> None:
        if state != self.state:
            self.state = state
            self.state_changed.emit(state.value)


def _join_message(exc: BaseException, server_url: str) -> str:
    """What to tell the user when joining failed (the server's own words when it gave some)."""
    code = getattr(exc, "code", None)
    if code == ErrorCode.INVALID_TOKEN:
        return "The server rejected the token for this room. Copy the token again from the worker's banner."
    if code in (ErrorCode.ROOM_NOT_FOUND, ErrorCode.ROOM_EXPIRED):
        return f"This room does not exist on {server_url} (or it expired). Check the room ID and the server."
    return str(exc) or f"Could not reach the signaling server at {server_url}."
