"""native_sctp's settings and its fallback, without the native stack (the settings reaching
usrsctp are checked in tests/native/test_sctp_settings_reach_usrsctp.py)."""

from __future__ import annotations

import types

import pytest

from sleap_rtc.core.backends import native_sctp


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.setattr(native_sctp, "_applied", None)
    monkeypatch.delenv(native_sctp.ENV, raising=False)


def test_settings_are_defaults_then_ours_then_the_environment(monkeypatch):
    monkeypatch.setattr(native_sctp, "SETTINGS", {"recvBufferSize": 1 << 22})
    assert native_sctp.settings()["recvBufferSize"] == 1 << 22
    assert native_sctp.settings()["congestionControlModule"] == -1  # -1: the library's choice, 0 is Reno
    assert set(native_sctp.settings()) == set(native_sctp.FIELDS)

    monkeypatch.setenv(native_sctp.ENV, " congestionControlModule=1 ,recvBufferSize=65536")
    assert native_sctp.settings()["congestionControlModule"] == 1
    assert native_sctp.settings()["recvBufferSize"] == 65536


@pytest.mark.parametrize("value, problem", [("cwnd=10", "unknown SCTP setting 'cwnd'"),
                                            ("maxBurst=lots", "maxBurst needs a whole number, not 'lots'")])
def test_a_bad_override_is_named(monkeypatch, value, problem):
    monkeypatch.setenv(native_sctp.ENV, value)
    with pytest.raises(ValueError, match=problem):
        native_sctp.settings()


def test_a_library_that_is_not_loaded_keeps_its_defaults(tmp_path):
    # RTLD_NOLOAD: a file that is not already loaded is never loaded (nor is a second copy).
    fake = types.SimpleNamespace(__file__=str(tmp_path / "not_loaded.so"))
    assert native_sctp.apply(fake) is None
    assert native_sctp.apply(fake) is None  # once per process: no second try


def test_a_wrapper_without_its_extension_module_keeps_the_defaults():
    assert native_sctp.apply(None) is None
