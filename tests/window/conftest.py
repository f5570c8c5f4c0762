"""Fixtures of the real-window tests: a private Xvfb + openbox display, Qt on ``xcb``,
the real SLEAP 1.6.6 window, and ``xdotool`` input (see ``xdisplay.py``).

These tests need Qt's ``xcb`` platform, which a process chooses once: they run in their own
pytest process (``make test-window``, marker ``realwindow``), never next to the offscreen
GUI tests. The display starts with the first test's event loop (before the
``QApplication`` exists); when the tools are missing and cannot be installed, or Qt is
already running on another platform, every test here is skipped with the reason.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "gui"))  # the GUI tests' in-process fake workers
sys.path.insert(0, str(HERE))

from xdisplay import XDisplay, ensure_tools  # noqa: E402

_STATE: dict[str, object] = {}


def _display() -> tuple[XDisplay | None, str]:
    """The session's display (started once), or why there is none."""
    if "display" in _STATE or "reason" in _STATE:
        return _STATE.get("display"), str(_STATE.get("reason", ""))  # type: ignore[return-value]
    from qtpy import QtWidgets

    app = QtWidgets.QApplication.instance()
    reason = ""
    if app is not None and app.platformName() != "xcb":
        reason = f"Qt already runs on '{app.platformName()}' in this process: run these tests with make test-window"
    reason = reason or ensure_tools()
    if reason:
        _STATE["reason"] = reason
        return None, reason
    display = XDisplay()
    try:
        display.start()
    except (RuntimeError, OSError) as exc:
        _STATE["reason"] = f"could not start Xvfb + openbox: {exc}"
        return None, str(_STATE["reason"])
    atexit.register(display.stop)
    os.environ["QT_QPA_PLATFORM"] = "xcb"
    os.environ.setdefault("SLEAP_SKIP_QT_FIX", "1")
    _STATE["display"] = display
    return display, ""


def _qasync_loop() -> asyncio.AbstractEventLoop:
    import qasync

    display, _reason = _display()
    if display is None:
        os.environ["QT_QPA_PLATFORM"] = "offscreen"  # the tests skip; Qt must not abort first
    from sleap_rtc.gui.bridge import ensure_app
    from sleap_rtc.gui.sleap_attach import use_pyside_platform_plugins

    use_pyside_platform_plugins()

    app = ensure_app()
    app.setQuitOnLastWindowClosed(False)
    return qasync.QEventLoop(app)


def pytest_asyncio_loop_factories(config, item):
    """Real-window tests run on a qasync loop over an ``xcb`` QApplication on our display."""
    return {"qasync": _qasync_loop}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.realwindow)


@pytest.fixture
def xdisplay() -> XDisplay:
    """The private X display (skips the test with the reason when there is none)."""
    display, reason = _display()
    if display is None:
        pytest.skip(reason)
    return display


@pytest.fixture(scope="session")
def sleap_home(tmp_path_factory):
    """HOME in a temp dir before SLEAP is first imported (``sleap.prefs`` writes there)."""
    _display()  # DISPLAY first: matplotlib picks its Qt backend only where there is a screen
    home = tmp_path_factory.mktemp("home")
    old = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    # SLEAP's LossViewer needs matplotlib's Qt backend; chosen before pyplot is imported.
    os.environ.setdefault("MPLBACKEND", "QtAgg")
    try:
        pytest.importorskip("sleap.gui.app")
        yield home
    finally:
        if old is not None:
            os.environ["HOME"] = old
