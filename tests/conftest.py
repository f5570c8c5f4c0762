"""Shared fixtures: a real signaling server on an ephemeral loopback port, and a room on it;
the Python 3.12 side environment (scripts/ensure-fast-env.sh) the native-stack tests run a side in."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from sleap_rtc.server.app import RunningServer, start_server


@pytest.fixture(autouse=True)
def isolated_config(tmp_path_factory, monkeypatch):
    """No test reads the developer's own sleap-rtc.toml or SLEAP_RTC_* settings, or writes
    into their data dir (transfer cache, server state, worker jobs)."""
    base = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("SLEAP_RTC_CONFIG", str(base / "no-such-config.toml"))
    monkeypatch.setenv("XDG_DATA_HOME", str(base / "xdg-data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(base / "xdg-config"))
    for name in ("SLEAP_RTC_SERVER", "SLEAP_RTC_DISABLE_ROOMS", "SLEAP_RTC_TOKEN", "SLEAP_RTC_WORKER_TOKEN", "SLEAP_RTC_CREATE_ROOM_SECRET"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def fresh_path_memory(monkeypatch):
    """Each test's channels learn their paths afresh: ``stripes.PATHS`` lives as long as the
    process, and many tests name their worker alike."""
    from sleap_rtc.core import stripes

    monkeypatch.setattr(stripes, "PATHS", stripes.PathMemory())


@pytest.fixture
async def signaling_server() -> RunningServer:
    """A fresh signaling server on 127.0.0.1 (random port, temporary state), stopped after."""
    server = await start_server("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def room(signaling_server: RunningServer) -> tuple[str, str]:
    """A room created on ``signaling_server``: ``(room_id, worker_token)`` (admits every role);
    ``.token`` is its client token."""
    return await signaling_server.create_room()


@pytest.fixture(scope="session")
def trained_model() -> Path:
    """The tiny model trained by the real sleap-nn (``tests/videos.py``), at most once per
    sleap-nn version and package: kept in ``~/.cache/sleap-rtc/test-models``."""
    from videos import sleap_nn, trained_model as train

    if sleap_nn() is None:
        pytest.skip("sleap-nn is not installed")
    root = Path.home() / ".cache" / "sleap-rtc" / "test-models"
    root.mkdir(parents=True, exist_ok=True)
    return train(root)


@pytest.fixture(scope="session")
def tiny_video(tmp_path_factory) -> Path:
    """A real 200-frame 128x128 mp4 (``tests/videos.make_video``), shared by the session."""
    from videos import make_video

    return make_video(tmp_path_factory.mktemp("videos") / "moving-square.mp4", 200)


@pytest.fixture(scope="session")
def fast_python() -> str:
    """The side environment's python, or a skip saying why there is none."""
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([str(root / "scripts" / "ensure-fast-env.sh")], capture_output=True, text=True, timeout=900)
    if proc.returncode == 3:
        pytest.skip(proc.stderr.strip().splitlines()[-1])
    if proc.returncode != 0:
        pytest.fail(f"ensure-fast-env.sh failed: {proc.stderr[-2000:]}")
    python = proc.stdout.strip().splitlines()[-1]
    probe = subprocess.run([python, "-c", "import aiolibdatachannel"], capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        pytest.skip(f"aiolibdatachannel does not import in the side environment: {probe.stderr[-300:]}")
    return python
