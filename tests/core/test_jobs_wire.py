"""Job control messages: the builders produce valid messages, the validator refuses bad ones."""

from __future__ import annotations

import pytest

from sleap_rtc.core import jobs_wire
from sleap_rtc.core.protocol import ChannelType, ErrorCode, ProtocolError

SHA = "a" * 64


def test_builders_make_messages_the_validator_accepts():
    built = [
        jobs_wire.job_submit("j", {"sha256": SHA, "name": "p.zip"}, {"kind": "train"}),
        jobs_wire.job_accepted("j"),
        jobs_wire.job_rejected("j", "bad package"),
        jobs_wire.job_log("j", "epoch 1", redraw=True),
        jobs_wire.job_progress("j", {"event": "epoch_end"}),
        jobs_wire.job_result("j", "model", "m.zip", SHA, 10),
        jobs_wire.job_complete("j", [{"name": "m.zip"}], 3),
        jobs_wire.job_failed("j", "out of memory"),
        jobs_wire.job_stop("j"),
        jobs_wire.job_cancel("j"),
        jobs_wire.job_attach("j"),
    ]
    assert [m["type"] for m in built] == [
        t.value for t in ChannelType if t.value.startswith("job_")
    ]
    for msg in built:
        assert jobs_wire.validate_job_message(msg) is msg
    assert built[0]["options"] == {"kind": "train"}
    assert jobs_wire.job_submit("j", {"sha256": SHA, "name": "p"})["options"] == {}
    assert built[6]["duration_s"] == 3.0 and isinstance(built[6]["duration_s"], float)


@pytest.mark.parametrize("msg", [None, 5, "job_log", [], {}, {"type": 1}, {"type": []}, {"type": {"a": 1}},
                                 {"type": "file_offer"}, {"type": "x" * 1000}])
def test_not_a_job_message(msg):
    with pytest.raises(ProtocolError) as info:
        jobs_wire.validate_job_message(msg)
    assert info.value.code == ErrorCode.UNKNOWN_MESSAGE_TYPE
    assert len(str(info.value)) < 120, "a hostile type is not echoed in full"


@pytest.mark.parametrize(
    ("msg", "field"),
    [
        ({"type": "job_accepted"}, "job_id"),
        ({"type": "job_accepted", "job_id": 7}, "job_id"),
        ({"type": "job_log", "job_id": "j", "line": "x", "redraw": 1}, "redraw"),
        ({"type": "job_result", "job_id": "j", "kind": "m", "name": "n", "sha256": SHA, "size": True}, "size"),
        ({"type": "job_result", "job_id": "j", "kind": "m", "name": "n", "sha256": SHA, "size": 1.5}, "size"),
        ({"type": "job_complete", "job_id": "j", "results": {}, "duration_s": 1}, "results"),
        ({"type": "job_complete", "job_id": "j", "results": [], "duration_s": "1"}, "duration_s"),
        ({"type": "job_submit", "job_id": "j", "package": [], "options": {}}, "package"),
        ({"type": "job_submit", "job_id": "j", "package": {}, "options": None}, "options"),
    ],
)
def test_bad_field_is_named(msg, field):
    with pytest.raises(ProtocolError, match=f"'{field}'") as info:
        jobs_wire.validate_job_message(msg)
    assert info.value.code == ErrorCode.INVALID_MESSAGE


@pytest.mark.parametrize("package", [{}, {"sha256": SHA}, {"name": "p"}, {"sha256": 1, "name": "p"}])
def test_submit_package_needs_sha256_and_name(package):
    with pytest.raises(ProtocolError, match="'sha256' and 'name'"):
        jobs_wire.validate_job_message({"type": "job_submit", "job_id": "j", "package": package, "options": {}})


def test_builders_refuse_what_they_could_not_receive():
    with pytest.raises(ProtocolError):
        jobs_wire.job_result("j", "model", "m.zip", SHA, "10")  # type: ignore[arg-type]
