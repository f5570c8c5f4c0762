"""Room credentials and legacy session strings, and reading them out of pasted text.

A session string is ``sleap-session:`` + URL-safe base64 (with ``=`` padding) of
``{"r": room_id, "t": token, "p": worker_peer_id}`` encoded with ``json.dumps``' default
separators, byte-compatible with the public sleap-rtc v2.0 peers.

A room has two secrets bound to roles. The **worker token** admits workers and clients;
the **client token** (``token``) admits clients only. The client token is derived from
the worker token (``client_token_for``), so a worker that joins with the worker token can
print the client token for users, while nobody can get from the client token back to the
worker token. Session strings and the banner's ``Token:`` line carry the client token.
Tokens can also come from an environment variable or a file (``resolve_token``), so that
they need not appear on a command line (``ps``).

A worker that has an identity key adds ``"f": "SHA256:..."`` (its key fingerprint,
``core.identity``) after ``p``; old strings without it keep working, and old peers ignore
the extra field.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from sleap_rtc.core.identity import is_fingerprint

SESSION_PREFIX = "sleap-session:"

ENV_TOKEN = "SLEAP_RTC_TOKEN"
"""Environment variable a client reads its room token from when ``--token`` is not given."""

ENV_WORKER_TOKEN = "SLEAP_RTC_WORKER_TOKEN"
"""Environment variable a worker reads its room's worker token from."""

MAX_TOKEN_FILE_BYTES = 4096
"""A token file larger than this is refused (it is not a token file)."""

_CLIENT_TOKEN_LABEL = b"sleap-rtc client token v1"


def client_token_for(worker_token: str) -> str:
    """The client token of the room whose worker token is ``worker_token`` (128 bits)."""
    digest = hmac.new(worker_token.encode("utf-8", "surrogatepass"), _CLIENT_TOKEN_LABEL, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:16]).decode().rstrip("=")


class NewRoom(NamedTuple):
    """A freshly created room: ``(room_id, worker_token)``; ``token`` is its client token.

    Unpacks as a pair whose second item admits every role, so code that only needs "a
    token that works" keeps working.
    """

    room_id: str
    worker_token: str

    @property
    def token(self) -> str:
        """The client token (what users get: banner ``Token:`` line, session strings)."""
        return client_token_for(self.worker_token)


def resolve_token(token: str | None, token_file: str | Path | None, env_name: str) -> str | None:
    """The token from ``--token``, else from ``--token-file``, else from ``$env_name``.

    A file holds the token on its first non-empty line. Raises ``CredentialsError`` for an
    unreadable, empty or oversized file; returns ``None`` when none of the three is set.
    """
    if token:
        return token.strip()
    if token_file:
        path = Path(token_file).expanduser()
        try:
            with path.open("rb") as fh:
                raw = fh.read(MAX_TOKEN_FILE_BYTES + 1)
        except OSError as exc:
            raise CredentialsError(f"Cannot read the token file {path}: {exc.strerror or exc}") from None
        if len(raw) > MAX_TOKEN_FILE_BYTES:
            raise CredentialsError(f"The token file {path} is larger than {MAX_TOKEN_FILE_BYTES} bytes.")
        lines = [line.strip() for line in raw.decode("utf-8", "replace").splitlines() if line.strip()]
        if not lines:
            raise CredentialsError(f"The token file {path} is empty.")
        return lines[0]
    value = os.environ.get(env_name, "").strip()
    return value or None


class CredentialsError(ValueError):
    """Malformed session string or room credentials; the message says what is wrong."""


@dataclass(frozen=True)
class RoomCredentials:
    """What a peer needs to join a room: its id and its secret token."""

    room_id: str
    token: str


@dataclass(frozen=True)
class SessionTarget:
    """A decoded session string: room credentials plus the one worker it points at."""

    room_id: str
    token: str
    peer_id: str
    fingerprint: str | None = None  # the worker's identity key, when the string carries it

    @property
    def room(self) -> RoomCredentials:
        """The room part, without the worker."""
        return RoomCredentials(self.room_id, self.token)


def encode_session_string(room_id: str, token: str, peer_id: str, fingerprint: str | None = None) -> str:
    """Encode a session string exactly as the v2.0 worker printed it (plus ``f`` when given)."""
    data = {"r": room_id, "t": token, "p": peer_id}
    if fingerprint is not None:
        data["f"] = fingerprint
    payload = json.dumps(data).encode()
    return SESSION_PREFIX + base64.urlsafe_b64encode(payload).decode()


def decode_session_string(text: str) -> SessionTarget:
    """Decode a session string (padded or not, surrounding whitespace ignored).

    Raises ``CredentialsError`` with one clear message for any malformed input.
    """
    if not isinstance(text, str):
        raise CredentialsError("A session string must be text.")
    text = text.strip()
    if not text.startswith(SESSION_PREFIX):
        raise CredentialsError(f"Invalid session string: it must start with '{SESSION_PREFIX}'.")
    body = text[len(SESSION_PREFIX) :].strip()
    if not body:
        raise CredentialsError("Invalid session string: nothing after 'sleap-session:'.")
    if not re.fullmatch(r"[A-Za-z0-9_\-]+=*", body):
        raise CredentialsError("Invalid session string: it contains characters that are not URL-safe base64.")
    body = body.rstrip("=")
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        data = json.loads(raw.decode("utf-8"))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise CredentialsError("Invalid session string: it is not base64-encoded JSON (was it cut short?).") from None
    if not isinstance(data, dict):
        raise CredentialsError("Invalid session string: the decoded value is not an object.")
    missing = [k for k in ("r", "t", "p") if not isinstance(data.get(k), str) or not data.get(k)]
    if missing:
        raise CredentialsError(f"Invalid session string: missing or empty field(s) {', '.join(missing)}.")
    fingerprint = data.get("f")
    if fingerprint is not None and not is_fingerprint(fingerprint):
        raise CredentialsError("Invalid session string: its worker fingerprint (f) is not a 'SHA256:...' fingerprint.")
    return SessionTarget(room_id=data["r"], token=data["t"], peer_id=data["p"], fingerprint=fingerprint)


_ROOM_RE = re.compile(r"room[\s_-]*id\s*[:=]\s*[\"']?([A-Za-z0-9_\-]+)", re.IGNORECASE)
# "Token:" but never "Worker token ...:" (a pasted banner must give a client the client token).
_TOKEN_RE = re.compile(r"(?<![A-Za-z0-9_])(?<!worker[\s_-])token\s*[:=]\s*[\"']?([A-Za-z0-9_\-]+)", re.IGNORECASE)
_SESSION_RE = re.compile(r"sleap-session:[A-Za-z0-9_\-]+=*")


def parse_room_credentials(text: str) -> RoomCredentials:
    """Find room credentials in pasted text: a worker banner, ``Room ID: x`` / ``Token: y``
    lines, ``room-id=x token=y``, or a session string (its room part).

    Raises ``CredentialsError`` saying what is missing.
    """
    text = text or ""
    room = _ROOM_RE.search(text)
    token = _TOKEN_RE.search(text)
    if room and token:
        return RoomCredentials(room.group(1), token.group(1))
    session = _SESSION_RE.search(text)
    if session:
        return decode_session_string(session.group(0)).room
    if room and not token:
        raise CredentialsError("Found a room ID but no token: paste both lines of the worker's banner.")
    if token and not room:
        raise CredentialsError("Found a token but no room ID: paste both lines of the worker's banner.")
    raise CredentialsError("No room credentials found: paste the 'Room ID:' and 'Token:' lines a worker prints.")
