"""The SCTP settings native_sctp passes reach usrsctp inside aiolibdatachannel: read back
through usrsctp's own sysctl getters after the backend made a connection."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.native, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]

READ_BACK = """
import asyncio, json
import aiolibdatachannel as ldc
from sleap_rtc.core.backends import native_sctp
from sleap_rtc.core.backends.libdatachannel import LibdatachannelConnection

async def main():
    conn = LibdatachannelConnection([])
    await conn.offer("probe")
    lib = native_sctp.loaded(ldc._native)
    got = {name: getattr(lib, "usrsctp_sysctl_get_sctp_" + name)()
           for name in ("default_cc_module", "recvspace", "sendspace", "initial_cwnd", "rto_min_default")}
    await conn.close()
    print(json.dumps({"applied": native_sctp.apply(ldc._native), "usrsctp": got}))

asyncio.run(main())
"""


def read_back(fast_python: str, env_value: str | None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("SLEAP_RTC_NATIVE_SCTP", None)
    if env_value is not None:
        env["SLEAP_RTC_NATIVE_SCTP"] = env_value
    proc = subprocess.run([fast_python, "-c", READ_BACK], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


LIBRARY_DEFAULTS = {"default_cc_module": 0, "recvspace": 1 << 20, "sendspace": 1 << 20, "initial_cwnd": 10,
                    "rto_min_default": 200}
"""What libdatachannel itself sets (Reno, 1 MiB buffers, 10 MTUs, a 200 ms RTO floor), where we set nothing."""


def test_the_project_settings_reach_usrsctp(fast_python):
    from sleap_rtc.core.backends import native_sctp

    out = read_back(fast_python, None)
    assert out["applied"] == native_sctp.settings()
    # HighSpeed TCP and RFC 4960's 1 s RTO floor, the rest untouched
    assert out["usrsctp"] == LIBRARY_DEFAULTS | {"default_cc_module": 1, "rto_min_default": 1000}


def test_an_override_reaches_usrsctp(fast_python):
    out = read_back(fast_python, "congestionControlModule=0,recvBufferSize=3145728,initialCongestionWindow=12")
    assert out["usrsctp"] == LIBRARY_DEFAULTS | {"default_cc_module": 0, "recvspace": 3145728, "initial_cwnd": 12,
                                                 "rto_min_default": 1000}


def test_a_bad_override_is_logged_and_our_settings_still_apply(fast_python):
    out = read_back(fast_python, "congestionControlModule=reno")
    assert out["usrsctp"] == LIBRARY_DEFAULTS | {"default_cc_module": 1, "rto_min_default": 1000}
