"""Session strings (byte-compatible with v2.0) and credentials in pasted text."""

from __future__ import annotations

import base64
import json

import pytest

from sleap_rtc.core.credentials import CredentialsError, decode_session_string, encode_session_string, parse_room_credentials


def test_session_string_is_byte_compatible_with_v2():
    expected = "sleap-session:" + base64.urlsafe_b64encode(json.dumps({"r": "abc12345", "t": "f00baa", "p": "worker-x"}).encode()).decode()
    assert encode_session_string("abc12345", "f00baa", "worker-x") == expected
    target = decode_session_string(expected)
    assert (target.room_id, target.token, target.peer_id) == ("abc12345", "f00baa", "worker-x")
    assert decode_session_string("  " + expected.rstrip("=") + "\n") == target  # unpadded, whitespace


@pytest.mark.parametrize("text", ["", "hello", "sleap-session:", "sleap-session:!!!", "sleap-session:abc", "sleap-session:" + base64.urlsafe_b64encode(b"[1]").decode(), "sleap-session:" + base64.urlsafe_b64encode(b'{"r": "a"}').decode(), 5])
def test_bad_session_strings_give_one_error_type(text):
    with pytest.raises(CredentialsError):
        decode_session_string(text)


def test_room_credentials_from_pasted_text():
    banner = "[INFO] Room credentials for other workers/clients to join:\n[INFO]   Room ID: room-abc123\n[INFO]   Token: Xy_9-z\n"
    creds = parse_room_credentials(banner)
    assert (creds.room_id, creds.token) == ("room-abc123", "Xy_9-z")
    assert parse_room_credentials("--room-id=r1 --token=t1").room_id == "r1"
    assert parse_room_credentials("use " + encode_session_string("r2", "t2", "w")).token == "t2"
    with pytest.raises(CredentialsError, match="no token"):
        parse_room_credentials("Room ID: r")
    with pytest.raises(CredentialsError):
        parse_room_credentials("nothing here")


def test_session_string_may_carry_the_worker_fingerprint_and_old_ones_still_decode():
    from sleap_rtc.core.identity import generate_key

    fp = generate_key().fingerprint
    old = encode_session_string("abc12345", "f00baa", "worker-x")
    assert encode_session_string("abc12345", "f00baa", "worker-x", None) == old  # unchanged bytes without it
    assert decode_session_string(old).fingerprint is None
    new = encode_session_string("abc12345", "f00baa", "worker-x", fp)
    payload = json.loads(base64.urlsafe_b64decode(new[len("sleap-session:"):]))
    assert payload == {"r": "abc12345", "t": "f00baa", "p": "worker-x", "f": fp}  # v2.0 readers ignore "f"
    target = decode_session_string(new)
    assert (target.room_id, target.token, target.peer_id, target.fingerprint) == ("abc12345", "f00baa", "worker-x", fp)
    bad = "sleap-session:" + base64.urlsafe_b64encode(json.dumps({"r": "a", "t": "b", "p": "c", "f": "md5:x"}).encode()).decode()
    with pytest.raises(CredentialsError, match="fingerprint"):
        decode_session_string(bad)


def test_banner_with_fingerprint_line_still_parses():
    banner = ("[INFO] Worker fingerprint: SHA256:" + "A" * 43 + "\n[INFO]   Room ID: room-abc123\n[INFO]   Token: Xy_9-z\n")
    assert parse_room_credentials(banner).token == "Xy_9-z"
