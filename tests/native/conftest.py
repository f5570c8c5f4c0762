"""The Python 3.12 side environment (scripts/ensure-fast-env.sh) the native tests run one
side in."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def fast_python() -> str:
    """The side environment's python, or a skip saying why there is none."""
    proc = subprocess.run([str(ROOT / "scripts" / "ensure-fast-env.sh")], capture_output=True, text=True, timeout=900)
    if proc.returncode == 3:
        pytest.skip(proc.stderr.strip().splitlines()[-1])
    if proc.returncode != 0:
        pytest.fail(f"ensure-fast-env.sh failed: {proc.stderr[-2000:]}")
    python = proc.stdout.strip().splitlines()[-1]
    probe = subprocess.run([python, "-c", "import aiolibdatachannel"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"aiolibdatachannel does not import in the side environment: {probe.stderr[-300:]}")
    return python
