"""Fixtures of the GUI tests: offscreen Qt, async tests on a qasync loop, SLEAP in a temp HOME.

Async tests here run on a ``qasync.QEventLoop`` (through pytest-asyncio's loop-factory hook,
which this conftest implements only for tests under ``tests/gui``), so widgets and core
coroutines share one loop as in the product. Inside those tests wait with
``asyncio.sleep`` (``qtbot.waitUntil`` would nest a Qt loop inside a task).
"""

from __future__ import annotations

import asyncio
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# Importing sleap.gui.app would otherwise re-exec the process (its Qt path fix).
os.environ.setdefault("SLEAP_SKIP_QT_FIX", "1")

import pytest  # noqa: E402
from polling import wait_until as wait_until_polling  # noqa: E402


def _qasync_loop() -> asyncio.AbstractEventLoop:
    import qasync

    from sleap_rtc.gui.bridge import ensure_app

    app = ensure_app()
    # Tests rarely show a main window; closing the last visible one (a LossViewer, a
    # dialog) must not quit the app, which would stop the loop under the running test.
    app.setQuitOnLastWindowClosed(False)
    return qasync.QEventLoop(app)


def pytest_asyncio_loop_factories(config, item):
    """Run every async GUI test on a qasync loop (the product's loop)."""
    return {"qasync": _qasync_loop}


@pytest.fixture
def wait_until():
    """``await wait_until(predicate, timeout)``: poll with asyncio.sleep, fail on timeout."""
    return wait_until_polling


@pytest.fixture(scope="session")
def sleap_home(tmp_path_factory, qapp):
    """HOME pointed at a temp dir before SLEAP is imported (``sleap.prefs`` writes there).

    Skips when SLEAP is not installed. Session-scoped because ``sleap.prefs`` reads HOME
    once, at first import.
    """
    home = tmp_path_factory.mktemp("home")
    old = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    try:
        pytest.importorskip("sleap.gui.app")
        yield home
    finally:
        if old is not None:
            os.environ["HOME"] = old
