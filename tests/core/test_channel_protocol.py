"""The sans-I/O data-channel protocol: frames in, events and frames out, a fake clock, no
sockets. (The same rules over real aiortc, libdatachannel and the in-memory pair:
tests/core/test_channel.py, test_backends.py, tests/native/.)"""

from __future__ import annotations

import json

import pytest

from sleap_rtc.core import channel_protocol as cp
from sleap_rtc.core import jobs_wire
from sleap_rtc.core.protocol import CHANNEL_FIELDS, INVALID_CHANNEL_MESSAGE, VERSION_MISMATCH, ChannelType, dumps
from sleap_rtc.core.transport_errors import ChannelVersionError


class Clock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(role: str = "client", clock: Clock | None = None, **kw) -> cp.ChannelProtocol:
    other = "worker-1" if role == "client" else "client-1"
    return cp.ChannelProtocol(role=role, local_peer_id=other.replace("worker", "x").replace("client", "y"),
                              remote_peer_id=other, heartbeat_interval=2.0, dead_after=10.0,
                              nonce="n" * 43 if role == "client" else None, clock=clock or Clock(), **kw)


def opened(clock: Clock | None = None) -> tuple[cp.ChannelProtocol, cp.ChannelProtocol]:
    """A client and a worker protocol that exchanged hellos (frames carried by hand)."""
    client, worker = make("client", clock), make("worker", clock)
    assert [type(e) for e in worker.receive(client.send_hello())] == [cp.HelloReceived]
    assert [type(e) for e in client.receive(worker.send_hello())] == [cp.HelloReceived]
    return client, worker


def frames(proto: cp.ChannelProtocol) -> list[dict]:
    return [json.loads(f) for f in proto.data_to_send()]


def test_hello_exchange_carries_version_role_and_the_clients_nonce():
    client, worker = make("client"), make("worker")
    hello = json.loads(client.send_hello())
    assert hello == {"type": "hello", "version": 1, "role": "client", "peer_id": client.local_peer_id, "nonce": "n" * 43}
    [event] = worker.receive(dumps(hello))
    assert event == cp.HelloReceived(hello) and worker.remote_hello == hello
    assert "nonce" not in json.loads(worker.send_hello())
    assert worker.data_to_send() == []


def test_version_mismatch_is_refused_with_an_error_and_ends_the_channel():
    old, new = make("client"), make("worker", version=2)
    [event] = new.receive(old.send_hello())
    assert isinstance(event, cp.HelloRefused) and isinstance(event.error, ChannelVersionError)
    assert "we speak 2" in str(event.error) and "speaks 1" in str(event.error)
    [refusal] = frames(new)
    assert refusal["type"] == "error" and refusal["reason"] == VERSION_MISMATCH
    assert new.closed is not None and new.receive(dumps({"type": "heartbeat"})) == []  # nothing after the end
    # The other side reads the refusal as the end, with the same error type.
    old.send_hello()
    [closed] = old.receive(dumps(refusal))
    assert isinstance(closed, cp.Closed) and isinstance(closed.error, ChannelVersionError)
    assert "we speak 2" in closed.reason


@pytest.mark.parametrize("version", ["1", True, None, 1.0001])
def test_a_hello_with_a_version_of_another_type_is_a_mismatch(version):
    worker = make("worker")
    [event] = worker.receive(dumps({"type": "hello", "version": version, "role": "client", "peer_id": "c"}))
    assert isinstance(event, cp.HelloRefused)


def test_a_malformed_hello_of_our_version_closes_with_the_reason():
    worker = make("worker")
    [event] = worker.receive(dumps({"type": "hello", "version": 1, "role": 7, "peer_id": "c"}))
    assert isinstance(event, cp.Closed) and "hello is malformed" in event.reason and "'role'" in event.reason


def test_heartbeats_are_due_every_interval_and_silence_ends_exactly_at_the_deadline():
    clock = Clock()
    client, worker = opened(clock)
    t0 = clock.now
    assert client.next_deadline() == t0 + 2.0
    clock.now = t0 + 1.999
    assert client.on_timer() == [] and client.data_to_send() == []  # not yet
    clock.now = t0 + 2.0
    assert client.on_timer() == [] and frames(client) == [{"type": "heartbeat"}]
    assert client.next_deadline() == t0 + 4.0
    # The peer's heartbeat is a sign of life and nothing else (no event).
    clock.now = t0 + 3.0
    assert client.receive(dumps({"type": "heartbeat"})) == []
    assert client.last_seen == t0 + 3.0
    # Silence from t0+3: alive at t0+12.999, dead at t0+13 exactly.
    for beat in (5.0, 7.0, 9.0, 11.0):
        clock.now = t0 + beat
        client.on_timer()
    client.data_to_send()
    assert client.next_deadline() == t0 + 13.0
    assert client.on_timer(t0 + 12.999) == [] and client.closed is None
    [closed] = client.on_timer(t0 + 13.0)
    assert closed == cp.Closed("no sign of life for 10 s", silent=True)
    assert client.next_deadline() is None and client.on_timer(t0 + 20) == []


def test_any_frame_counts_as_a_sign_of_life():
    clock = Clock()
    client, worker = opened(clock)
    clock.now += 9.0
    client.receive(worker.send_message(jobs_wire.job_log("j", "epoch 1")))
    assert client.on_timer(clock.now + 9.9) == []  # 18.9 s after the hello, 9.9 s after the log line
    clock.now += 1.0
    client.receive(b"\0" * 12)  # a binary frame too
    assert client.last_seen == clock.now


def test_suspect_ends_a_silent_peer_after_the_grace_and_keeps_a_live_one():
    clock = Clock()
    client, worker = opened(clock)
    client.suspect(3.0)
    assert client.next_deadline() == clock.now + 2.0  # the heartbeat comes first
    clock.now += 1.0
    client.receive(dumps({"type": "heartbeat"}))  # alive after the hint
    assert client.on_timer(clock.now + 2.0) == [] and client.closed is None
    clock.now += 0.5  # a hint after the last frame
    client.suspect(3.0)
    t = clock.now
    assert client.on_timer(t + 2.999) == []
    [closed] = client.on_timer(t + 3.0)
    assert closed.reason == "the peer left the room and sent nothing for 3 s" and not closed.silent


def test_messages_go_to_the_part_that_owns_them_in_arrival_order():
    client, worker = opened()
    offer = {"type": "file_offer", "transfer_id": 1, "name": "a", "size": 3, "sha256": "0" * 64, "meta": {}}
    sequence = [
        dumps(offer),
        jobs_wire.job_submit("j", {"sha256": "0" * 64, "name": "a"}),
        b"\0\0\0\1" + b"\0" * 8 + b"abc",
        {"type": "stripe_request"},
        jobs_wire.job_log("j", "x"),
    ]
    events = []
    for item in sequence:
        events += worker.receive(item if isinstance(item, (str, bytes)) else dumps(item))
    assert [type(e) for e in events] == [cp.FileControl, cp.MessageReceived, cp.ChunkReceived, cp.StripeControl,
                                         cp.MessageReceived]
    assert events[0].message == offer and events[2].data.endswith(b"abc")
    assert [e.message["type"] for e in events if isinstance(e, cp.MessageReceived)] == ["job_submit", "job_log"]
    assert worker.data_to_send() == []


def test_identity_proof_the_first_counts_and_only_a_client_takes_one():
    client, worker = opened()
    proof = {"type": "identity_proof", "public_key": "k", "signature": "s"}
    assert client.receive(dumps(proof)) == [cp.ProofReceived(proof)]
    assert client.receive(dumps({**proof, "signature": "other"})) == []  # noise
    assert client.proof == proof
    [rejected] = worker.receive(dumps(proof))
    assert isinstance(rejected, cp.FrameRejected) and "to a worker" in rejected.reason


@pytest.mark.parametrize(("frame", "why"), [
    ("not json", "not JSON"),
    ("[" * 5000 + "]" * 5000, "not JSON"),
    ("[1, 2]", "JSON object"),
    ('{"type": 7}', "string 'type'"),
    ('{"type": ["job_log"]}', "string 'type'"),
    ('{"type": "nope"}', "unknown message type 'nope'"),
    ('{"type": "' + "x" * 1000 + '"}', "unknown message type 'xxxx"),
    ('{"type": "job_submit"}', "'job_submit' needs field 'job_id' of type str"),
    ('{"type": "file_offer", "transfer_id": true, "name": "a", "size": 1, "sha256": "s", "meta": {}}',
     "'file_offer' needs field 'transfer_id' of type int"),
    ('{"type": "job_complete", "job_id": "j", "results": [], "duration_s": "3"}', "'duration_s' of type int or float"),
    ('{"type": "stripe_grant", "max": "8"}', "'stripe_grant' needs field 'max'"),
])
def test_malformed_and_unknown_frames_are_refused_with_the_reason_and_the_channel_stays(frame, why):
    client, worker = opened()
    [event] = worker.receive(frame)
    assert isinstance(event, cp.FrameRejected) and why in event.reason, event
    [reply] = frames(worker)
    assert reply["type"] == "error" and reply["reason"] == INVALID_CHANNEL_MESSAGE and why in reply["message"]
    assert worker.closed is None
    # The sender hears why, as a PeerError (not the end of its channel).
    [told] = client.receive(dumps(reply))
    assert isinstance(told, cp.PeerError) and why in told.message and client.closed is None
    # ... and the channel carries on.
    assert worker.receive(client.send_message(jobs_wire.job_log("j", "after")))[0].message["line"] == "after"


def test_the_refusal_names_the_refused_type_so_the_senders_wait_ends():
    client, worker = opened()
    worker.receive(dumps({"type": "job_submit", "job_id": 7}))
    [reply] = frames(worker)
    assert reply["refused"] == "job_submit"
    [told] = client.receive(dumps(reply))
    assert told.refused == "job_submit"
    as_message = {"type": "error", "reason": told.reason, "message": told.message, "refused": told.refused}
    assert cp.refused_by_peer(as_message, ChannelType.JOB_SUBMIT)
    assert not cp.refused_by_peer(as_message, ChannelType.JOB_ATTACH)
    assert not cp.refused_by_peer({"type": "error", "reason": VERSION_MISMATCH, "refused": "job_submit"}, "job_submit")
    # an unknown type is named too, cut short: the refusal is never a payload channel
    worker.receive(dumps({"type": "x" * 500}))
    assert frames(worker)[0]["refused"] == "x" * 64


def test_an_oversized_text_frame_is_refused_before_it_is_parsed():
    client, worker = opened()
    big = dumps(jobs_wire.job_log("j", "x" * cp.MAX_CONTROL_BYTES))
    [event] = worker.receive(big)
    assert isinstance(event, cp.FrameRejected) and f"over {cp.MAX_CONTROL_BYTES} bytes" in event.reason
    multibyte = dumps(jobs_wire.job_log("j", "é" * (cp.MAX_CONTROL_BYTES // 2)))  # few characters, many bytes
    assert isinstance(worker.receive(multibyte)[0], cp.FrameRejected)
    with pytest.raises(ValueError, match="over 262144 bytes"):
        client.send_message(jobs_wire.job_log("j", "x" * cp.MAX_CONTROL_BYTES))
    fits = dumps(jobs_wire.job_log("j", "x" * (cp.MAX_CONTROL_BYTES - 100)))
    assert isinstance(worker.receive(fits)[0], cp.MessageReceived)


def test_an_invalid_error_frame_is_dropped_without_a_reply():
    client, worker = opened()
    [event] = worker.receive(dumps({"type": "error", "reason": 5}))
    assert isinstance(event, cp.FrameRejected) and worker.data_to_send() == []  # no error ping-pong


def test_nothing_but_hello_before_the_peers_hello():
    worker = make("worker")
    worker.send_hello()
    [early] = worker.receive(dumps(jobs_wire.job_log("j", "early")))
    assert isinstance(early, cp.FrameRejected) and "before the peer's hello" in early.reason
    [chunk] = worker.receive(b"\0" * 20)
    assert isinstance(chunk, cp.FrameRejected)
    assert worker.receive(dumps({"type": "heartbeat"})) == []  # a sign of life is fine
    assert isinstance(worker.receive(make("client").send_hello())[0], cp.HelloReceived)
    [second] = worker.receive(make("client").send_hello())
    assert isinstance(second, cp.FrameRejected) and "second hello" in second.reason


def test_bye_is_an_orderly_hang_up():
    client, worker = opened()
    assert worker.receive(client.send_bye()) == [cp.Closed("the peer hung up")]
    assert worker.next_deadline() is None


def test_sending_refuses_what_the_peer_would_refuse():
    client, _ = opened()
    with pytest.raises(ValueError, match="string 'type'"):
        client.send_message({"no": "type"})
    with pytest.raises(ValueError, match="unknown message type 'early'"):
        client.send_message({"type": "early"})
    with pytest.raises(ValueError, match="'job_accepted' needs field 'job_id'"):
        client.send_message({"type": "job_accepted"})


def test_every_row_of_the_table_is_a_type_the_protocol_knows():
    # One table: every ChannelType has its row, and nothing else is one.
    assert set(CHANNEL_FIELDS) == set(ChannelType)
    for kind in cp.FILE_TYPES | cp.STRIPE_TYPES:
        assert kind in CHANNEL_FIELDS
