"""Frame validation and error shapes of core.protocol."""

from __future__ import annotations

import json

import pytest

from sleap_rtc.core.protocol import (
    CHUNK_HEADER, ErrorCode, ProtocolError, busy_error_frame, dumps, error_frame, pack_chunk, parse_frame, unpack_chunk,
)


def test_parse_valid_register():
    frame = parse_frame(json.dumps({"type": "register", "peer_id": "p", "room_id": "r", "token": "t", "role": "worker", "extra": 1}))
    assert frame["extra"] == 1


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("{", ErrorCode.INVALID_JSON),
        (b"\xff", ErrorCode.INVALID_JSON),
        ("[]", ErrorCode.INVALID_MESSAGE),
        ('{"type": null}', ErrorCode.INVALID_MESSAGE),
        ('{"type": "x"}', ErrorCode.UNKNOWN_MESSAGE_TYPE),
        ('{"type": "register", "peer_id": "p"}', ErrorCode.INVALID_MESSAGE),
        ('{"type": "offer", "target": 3}', ErrorCode.INVALID_MESSAGE),
        ('{"type": "discover_peers", "filters": []}', ErrorCode.INVALID_MESSAGE),
    ],
)
def test_parse_errors_carry_a_code(text, code):
    with pytest.raises(ProtocolError) as info:
        parse_frame(text)
    assert info.value.code == code and info.value.message


def test_frame_size_cap():
    with pytest.raises(ProtocolError) as info:
        parse_frame('{"type": "ping", "x": "' + "a" * 100 + '"}', max_bytes=50)
    assert info.value.code == ErrorCode.FRAME_TOO_LARGE


def test_error_shapes():
    assert error_frame(ErrorCode.PEER_NOT_FOUND, "gone", id=3) == {"type": "error", "code": "PEER_NOT_FOUND", "reason": "gone", "message": "gone", "id": 3}
    busy = busy_error_frame("c", "busy")
    assert busy["reason"] == "worker_busy" and busy["target"] == "c" and busy["suggest_room_discovery"] is True
    assert dumps({"a": 1}) == '{"a":1}'


def test_chunks_round_trip():
    frame = pack_chunk(7, 2**40, b"abc")
    tid, offset, payload = unpack_chunk(frame)
    assert (tid, offset, bytes(payload)) == (7, 2**40, b"abc")
    with pytest.raises(ProtocolError):
        unpack_chunk(b"\x00" * (CHUNK_HEADER.size - 1))


def test_frame_size_counts_bytes_not_characters():
    """A frame of multi-byte characters is measured in UTF-8 bytes, like the limit says."""
    from sleap_rtc.core.protocol import ErrorCode, ProtocolError, parse_frame

    text = '{"type":"ping","pad":"' + "é" * 600 + '"}'  # ~630 characters, ~1,230 bytes
    assert len(text) < 1000 < len(text.encode())
    with pytest.raises(ProtocolError) as info:
        parse_frame(text, max_bytes=1000)
    assert info.value.code == ErrorCode.FRAME_TOO_LARGE
    assert parse_frame(text, max_bytes=2000)["type"] == "ping"
