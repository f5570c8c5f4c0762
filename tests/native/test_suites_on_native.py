"""The data-channel and file-transfer suites again, on the native stack: tests/core's
test_channel.py, test_channel_protocol.py and test_files.py run in the Python 3.12 side
environment with ``SLEAP_RTC_BACKEND=libdatachannel``, so every channel they open (both
ends, the peer subprocesses included) is libdatachannel: ``choose_backend`` refuses to fall
back to aiortc when that backend is forced. The same files run on aiortc in ``make test``."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from sleap_rtc.core.backends import BACKEND_ENV

pytestmark = [pytest.mark.native, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
SUITES = ["tests/core/test_channel.py", "tests/core/test_channel_protocol.py", "tests/core/test_files.py"]


def test_channel_and_transfer_suites_pass_on_libdatachannel(fast_python, tmp_path):
    env = {**os.environ, BACKEND_ENV: "libdatachannel", "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([fast_python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "t"), *SUITES],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=580)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    passed = re.search(r"(\d+) passed", out)
    assert passed and int(passed.group(1)) >= 50, out[-2000:]
    assert "skipped" not in out.splitlines()[-1], out[-2000:]
