"""Failure explanations from SDPs and states (core/ice_report.py)."""

from __future__ import annotations

from sleap_rtc.core.ice_report import IceReport, StateLog, candidate_types

SDP = (
    "v=0\r\n"
    "a=candidate:1 1 UDP 2130706431 10.10.0.2 40000 typ host\r\n"
    "a=candidate:2 1 UDP 1694498815 203.0.113.2 40000 typ srflx raddr 10.10.0.2 rport 40000\r\n"
    "a=candidate:3 1 UDP 16777215 203.0.113.1 50000 typ relay raddr 203.0.113.2 rport 40001\r\n"
)


def report(**kw):
    base = dict(peer="worker-a", role="client", elapsed=8.2, ice_state="checking", connection_state="connecting",
                dtls_state="new", ice_connected=False, local_types=["host"], remote_types=["host"], timed_out=True)
    return IceReport(**{**base, **kw})


def test_candidate_types_from_sdp():
    assert candidate_types(SDP) == ["host", "srflx", "relay"]
    assert candidate_types("v=0\r\n") == [] and candidate_types(None) == []


def test_no_turn_configured_is_named():
    r = report(configured=["stun:203.0.113.1:3478"], answered=["stun:203.0.113.1:3478"], local_types=["host", "srflx"])
    text = r.message()
    assert "ICE checking" in text and "this side host, srflx; the worker host" in text
    assert "no relay candidate was offered" in text
    assert r.hint().startswith("No TURN server configured: peers behind different NATs need one; see docs/deploy.md")


def test_unreachable_and_refusing_turn_are_told_apart():
    turn = "turn:203.0.113.1:3478?transport=udp"
    assert "did not answer from here" in report(configured=[turn], answered=[]).hint()
    assert "gave no relay address" in report(configured=[turn], answered=[turn]).hint()
    relayed = report(configured=[turn], answered=[turn], local_types=["host", "relay"], remote_types=["relay"])
    assert relayed.relay_offered and "relay ports" in relayed.hint()


def test_dtls_failure_after_ice_worked():
    r = report(ice_connected=True, ice_state="completed", dtls_state="failed", timed_out=False)
    assert "ICE failed" in r.message() and "encrypted channel did not" in r.hint()


def test_state_log_never_records_closed():
    class PC:
        iceConnectionState, connectionState, sctp = "checking", "connecting", None

        def on(self, *_):
            pass

    pc = PC()
    log = StateLog()
    log.attach(pc)
    pc.iceConnectionState = pc.connectionState = "closed"
    log.record()
    assert (log.ice, log.connection) == ("checking", "connecting")
