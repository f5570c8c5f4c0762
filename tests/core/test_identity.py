"""Worker identity: keys on disk, the connection-bound proof (pure), and the proof over real
aiortc data channels through the real signaling server."""

from __future__ import annotations

import asyncio
import stat
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _peers import pair  # noqa: E402

from sleap_rtc.core.identity import (  # noqa: E402
    KEY_FILE,
    IdentityError,
    binding_message,
    fingerprint_of,
    generate_key,
    is_fingerprint,
    load_or_create_key,
    make_proof,
    new_nonce,
    short_fingerprint,
    verify_proof,
)
from sleap_rtc.core.protocol import ChannelType  # noqa: E402
from sleap_rtc.core.transport_errors import WorkerIdentityError  # noqa: E402

pytestmark = pytest.mark.timeout(60)

W_DTLS = "sha-256 " + ":".join(["AB"] * 32)
C_DTLS = "sha-256 " + ":".join(["CD"] * 32)
OTHER_DTLS = "sha-256 " + ":".join(["EF"] * 32)


def _proof(key, nonce, w_dtls=W_DTLS, c_dtls=C_DTLS):
    return make_proof(key, local_dtls=w_dtls, remote_dtls=c_dtls, nonce=nonce, local_peer_id="worker-a", remote_peer_id="client-1")


def _verify(proof, nonce, w_dtls=W_DTLS, c_dtls=C_DTLS):
    return verify_proof(proof, local_dtls=c_dtls, remote_dtls=w_dtls, nonce=nonce, local_peer_id="client-1", remote_peer_id="worker-a")


# ---------------------------------------------------------------- pure: messages in, out


def test_sign_and_verify_returns_the_workers_fingerprint():
    key, nonce = generate_key(), new_nonce()
    assert _verify(_proof(key, nonce), nonce) == key.fingerprint
    assert is_fingerprint(key.fingerprint) and key.fingerprint == fingerprint_of(key.public_key)
    assert len(short_fingerprint(key.fingerprint)) == 10 and key.fingerprint[7:].startswith(short_fingerprint(key.fingerprint))


def test_c8_a_worker_presenting_another_workers_public_key_fails():
    real, impostor, nonce = generate_key(), generate_key(), new_nonce()
    forged = {**_proof(impostor, nonce), "public_key": real.public_key}  # copied from the room
    with pytest.raises(IdentityError, match="does not verify"):
        _verify(forged, nonce)


def test_c8_a_proof_replayed_from_another_connection_fails():
    key, nonce = generate_key(), new_nonce()
    proof = _proof(key, nonce)
    with pytest.raises(IdentityError):  # the client on the new connection has another certificate
        _verify(proof, nonce, c_dtls=OTHER_DTLS)
    with pytest.raises(IdentityError):  # relayed by a worker in the middle: its own certificate
        _verify(proof, nonce, w_dtls=OTHER_DTLS)
    with pytest.raises(IdentityError):  # another client's nonce
        _verify(proof, new_nonce())


def test_binding_fields_are_length_prefixed():
    a = binding_message(worker_dtls="x", client_dtls="y", nonce="n", worker_peer_id="ab", client_peer_id="c")
    b = binding_message(worker_dtls="x", client_dtls="y", nonce="n", worker_peer_id="a", client_peer_id="bc")
    assert a != b


@pytest.mark.parametrize("proof", [None, {}, {"public_key": "!!", "signature": "AA=="}, {"public_key": "AAAA", "signature": "AAAA"},
                                   {"public_key": "A" * 10_000, "signature": "B"}, "text", 5])
def test_malformed_proofs_are_identity_errors(proof):
    with pytest.raises(IdentityError):
        _verify(proof, new_nonce())


def test_key_file_is_private_persistent_and_never_silently_replaced(tmp_path):
    work = tmp_path / "work"
    key = load_or_create_key(work)
    assert stat.S_IMODE((work / KEY_FILE).stat().st_mode) == 0o600
    assert stat.S_IMODE(work.stat().st_mode) == 0o700
    assert load_or_create_key(work).fingerprint == key.fingerprint  # the same worker after a restart
    (work / KEY_FILE).write_text("not a key")
    with pytest.raises(IdentityError, match="move it away"):
        load_or_create_key(work)


# ---------------------------------------------------------------- real aiortc peers


async def test_proof_over_a_real_data_channel_binds_both_dtls_certificates(signaling_server, room, tmp_path):
    key = generate_key()
    async with pair(signaling_server.url, room, tmp_path) as (client, worker):
        c_local, c_remote = client.dtls_fingerprints()
        w_local, w_remote = worker.dtls_fingerprints()
        assert (c_local, c_remote) == (w_remote, w_local) and c_local != c_remote
        assert worker.prove_identity(key)
        assert await client.verify_identity(5) == key.fingerprint == client.remote_fingerprint


async def test_c8_no_proof_is_a_refusal(signaling_server, room, tmp_path):
    async with pair(signaling_server.url, room, tmp_path) as (client, _worker):
        with pytest.raises(WorkerIdentityError, match="sent no identity proof"):
            await client.verify_identity(0.5)


async def test_c8_proof_replayed_on_a_new_connection_is_refused(signaling_server, room, tmp_path):
    key = generate_key()
    async with pair(signaling_server.url, room, tmp_path / "1") as (client1, worker1):
        recorded: list[dict] = []
        original = worker1.send_control
        worker1.send_control = lambda msg: (recorded.append(msg), original(msg))[1]
        worker1.prove_identity(key)
        await client1.verify_identity(5)
    proof = next(m for m in recorded if m["type"] == ChannelType.IDENTITY_PROOF)
    async with pair(signaling_server.url, room, tmp_path / "2") as (client2, worker2):
        worker2.send_control(proof)  # a peer without the key replays what it saw
        with pytest.raises(WorkerIdentityError, match="does not verify"):
            await client2.verify_identity(5)


async def test_c8_hostile_worker_signing_with_its_own_key_under_a_copied_public_key(signaling_server, room, tmp_path):
    real, impostor = generate_key(), generate_key()
    async with pair(signaling_server.url, room, tmp_path) as (client, worker):
        nonce = worker.remote_hello["nonce"]
        local, remote = worker.dtls_fingerprints()
        proof = make_proof(impostor, local_dtls=local, remote_dtls=remote, nonce=nonce,
                           local_peer_id=worker.local_peer_id, remote_peer_id=worker.remote_peer_id)
        worker.send_control({"type": ChannelType.IDENTITY_PROOF.value, **proof, "public_key": real.public_key})
        with pytest.raises(WorkerIdentityError, match="does not verify"):
            await client.verify_identity(5)
        await asyncio.sleep(0)
