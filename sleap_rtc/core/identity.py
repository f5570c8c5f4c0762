"""A worker's long-lived identity key and the proof that binds it to one connection.

Each worker holds an Ed25519 key pair in its work dir (``load_or_create_key``). Its public
key is advertised in the room metadata, printed in the banner, and may ride in the session
string, always as a *fingerprint*: ``SHA256:`` plus the unpadded base64 of the SHA-256 of
the raw 32-byte public key (the same form as OpenSSH's). ``short_fingerprint`` gives the
first ``SHORT_LENGTH`` characters after the prefix, for tables.

Advertising a key proves nothing: anyone can copy another worker's public key. So when
the data channel opens, the client sends a fresh nonce, and the worker signs a message
that names *this* connection: both DTLS certificate fingerprints (each side's own and the
peer's, as aiortc verified them in the handshake), both peer ids and the nonce
(``binding_message``). The client checks the signature against the public key and against
the DTLS fingerprints it sees itself (``verify_proof``). A proof from any other
connection (another client's, or one relayed through a worker in the middle) names other
DTLS certificates and fails; so does one from a peer that does not hold the private key.

Everything here is pure: bytes and dicts in, bytes and dicts out, no sockets. Errors are
``IdentityError``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

KEY_FILE = "worker-identity.key"
"""Name of the private key file (PEM, PKCS#8, unencrypted, mode 0600) in the work dir."""

FINGERPRINT_PREFIX = "SHA256:"
"""Prefix of a fingerprint (the digest algorithm, as OpenSSH writes it)."""

SHORT_LENGTH = 10
"""Characters of the fingerprint (after the prefix) shown in tables: 60 bits."""

NONCE_BYTES = 32
"""Size of the client's fresh nonce, before base64."""

MAX_FIELD_CHARS = 512
"""Longest nonce, key, signature or DTLS fingerprint text accepted from a peer."""

BINDING_LABEL = b"sleap-rtc worker identity proof v1"
"""First line of every signed message: a signature for anything else never verifies here."""

_PUBLIC_KEY_BYTES = 32
_SIGNATURE_BYTES = 64
_FINGERPRINT_RE = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")
_DTLS_RE = re.compile(r"[a-z0-9-]{1,16} [0-9A-F]{2}(:[0-9A-F]{2}){15,63}")


class IdentityError(ValueError):
    """A key, fingerprint or proof that cannot be trusted; the message says why."""


# ------------------------------------------------------------------ encoding


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any, what: str, size: int | None = None) -> bytes:
    if not isinstance(text, str) or not text or len(text) > MAX_FIELD_CHARS:
        raise IdentityError(f"The {what} is missing or not text.")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise IdentityError(f"The {what} is not base64.") from None
    if size is not None and len(raw) != size:
        raise IdentityError(f"The {what} has {len(raw)} bytes, not {size}.")
    return raw


def fingerprint_of(public_key: str | bytes) -> str:
    """``SHA256:<base64>`` of a raw public key (given as bytes or as its base64 text)."""
    raw = public_key if isinstance(public_key, bytes) else _unb64(public_key, "public key", _PUBLIC_KEY_BYTES)
    return FINGERPRINT_PREFIX + _b64(hashlib.sha256(raw).digest()).rstrip("=")


def is_fingerprint(text: Any) -> bool:
    """Whether ``text`` has the exact shape of a fingerprint (``SHA256:`` + 43 characters)."""
    return isinstance(text, str) and _FINGERPRINT_RE.fullmatch(text) is not None


def short_fingerprint(fingerprint: str | None) -> str:
    """The first ``SHORT_LENGTH`` characters after ``SHA256:``; ``""`` for no/odd input."""
    if not is_fingerprint(fingerprint):
        return ""
    return str(fingerprint)[len(FINGERPRINT_PREFIX) : len(FINGERPRINT_PREFIX) + SHORT_LENGTH]


def normalize_dtls_fingerprint(algorithm: str, value: str) -> str:
    """One DTLS certificate fingerprint as ``"sha-256 AB:CD:..."`` (lower algorithm, upper hex)."""
    text = f"{str(algorithm).strip().lower()} {str(value).strip().upper()}"
    if not _DTLS_RE.fullmatch(text):
        raise IdentityError(f"Not a DTLS certificate fingerprint: {text[:80]!r}.")
    return text


# ------------------------------------------------------------------ the key


@dataclass(frozen=True)
class WorkerKey:
    """A worker's private key, with its public key and fingerprint ready to advertise."""

    private: Ed25519PrivateKey

    @property
    def public_bytes(self) -> bytes:
        """The raw 32-byte public key."""
        return self.private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @property
    def public_key(self) -> str:
        """The public key as base64 text (what metadata and proofs carry)."""
        return _b64(self.public_bytes)

    @property
    def fingerprint(self) -> str:
        """``SHA256:...`` of the public key."""
        return fingerprint_of(self.public_bytes)

    def sign(self, message: bytes) -> str:
        """Ed25519 signature of ``message``, base64."""
        return _b64(self.private.sign(message))


def generate_key() -> WorkerKey:
    """A fresh key pair (for tests and for ``load_or_create_key``)."""
    return WorkerKey(Ed25519PrivateKey.generate())


def load_or_create_key(work_dir: str | Path) -> WorkerKey:
    """The worker's key from ``work_dir/KEY_FILE``, created on first use.

    The directory is made (and kept) 0700 and the file 0600, created with ``O_EXCL`` so
    two workers starting at once never overwrite each other's key. A file that is not a
    readable Ed25519 key raises ``IdentityError`` (never silently replaced: a new key
    would make every client that knows this worker warn).
    """
    folder = Path(work_dir)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(folder, 0o700)
    path = folder / KEY_FILE
    if not path.exists():
        key = generate_key()
        pem = key.private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return load_or_create_key(folder)  # another worker just created it: use that one
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
        return key
    os.chmod(path, 0o600)
    try:
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise IdentityError(f"{path} is not a readable key ({exc}); move it away to make a new one.") from None
    if not isinstance(private, Ed25519PrivateKey):
        raise IdentityError(f"{path} holds a key that is not Ed25519; move it away to make a new one.")
    return WorkerKey(private)


# ------------------------------------------------------------------ the proof


def new_nonce() -> str:
    """A fresh client nonce (``NONCE_BYTES`` random bytes, base64)."""
    return _b64(secrets.token_bytes(NONCE_BYTES))


def binding_message(*, worker_dtls: str, client_dtls: str, nonce: str, worker_peer_id: str, client_peer_id: str) -> bytes:
    """The exact bytes a worker signs for one connection (see the module docstring).

    Each field is length-prefixed, so no choice of peer ids can make two different
    connections produce the same bytes.
    """
    fields = [worker_dtls, client_dtls, nonce, worker_peer_id, client_peer_id]
    out = bytearray(BINDING_LABEL + b"\n")
    for value in fields:
        raw = str(value).encode("utf-8")
        out += len(raw).to_bytes(4, "big") + raw
    return bytes(out)


def make_proof(key: WorkerKey, *, local_dtls: str, remote_dtls: str, nonce: str, local_peer_id: str, remote_peer_id: str) -> dict[str, str]:
    """The worker's proof for this connection (``local`` is the worker's side)."""
    _unb64(nonce, "client nonce", NONCE_BYTES)
    message = binding_message(
        worker_dtls=local_dtls, client_dtls=remote_dtls, nonce=nonce,
        worker_peer_id=local_peer_id, client_peer_id=remote_peer_id,
    )
    return {"public_key": key.public_key, "signature": key.sign(message)}


def verify_proof(proof: Any, *, local_dtls: str, remote_dtls: str, nonce: str, local_peer_id: str, remote_peer_id: str) -> str:
    """Check a worker's proof as the client (``local`` is the client's side).

    ``remote_dtls`` is the worker's certificate fingerprint as this client's DTLS handshake
    verified it, ``local_dtls`` the client's own. Returns the worker's fingerprint;
    raises ``IdentityError`` when the proof is malformed or does not verify.
    """
    if not isinstance(proof, dict):
        raise IdentityError("The worker sent no identity proof.")
    public = _unb64(proof.get("public_key"), "worker's public key", _PUBLIC_KEY_BYTES)
    signature = _unb64(proof.get("signature"), "worker's signature", _SIGNATURE_BYTES)
    message = binding_message(
        worker_dtls=remote_dtls, client_dtls=local_dtls, nonce=nonce,
        worker_peer_id=remote_peer_id, client_peer_id=local_peer_id,
    )
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        raise IdentityError(
            "The worker's identity proof does not verify for this connection: it does not hold the "
            "private key of the public key it presents, or the proof was made for another connection."
        ) from None
    return fingerprint_of(public)
