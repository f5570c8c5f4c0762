"""A private X display for real-window tests and screenshots: Xvfb + openbox + xdotool.

``XDisplay.start()`` runs ``Xvfb`` on a free display number (``-displayfd``) and the
``openbox`` window manager on it (focus, stacking and ``_NET_ACTIVE_WINDOW`` behave as on
a desktop), and points ``DISPLAY`` at it. ``ensure_tools()`` installs the Debian packages
when they are missing and we are root with apt (CI), or says why it cannot.
Input goes through ``xdotool`` (XTEST: real X events, as from a mouse and keyboard).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

TOOLS = {"Xvfb": "xvfb", "openbox": "openbox", "xdotool": "xdotool", "xprop": "x11-utils", "import": "imagemagick"}
"""Command -> the Debian package that provides it."""

QT_XCB_LIBS = {
    "libxcb-icccm.so.4": "libxcb-icccm4", "libxcb-keysyms.so.1": "libxcb-keysyms1",
    "libxcb-image.so.0": "libxcb-image0", "libxcb-render-util.so.0": "libxcb-render-util0",
    "libxcb-cursor.so.0": "libxcb-cursor0", "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
    "libxcb-xkb.so.1": "libxcb-xkb1", "libxcb-shape.so.0": "libxcb-shape0", "libxcb-randr.so.0": "libxcb-randr0",
    "libxcb-xinerama.so.0": "libxcb-xinerama0",
}
"""Libraries PySide6's ``xcb`` platform plugin loads -> their Debian packages."""

SCREEN = "1600x1000x24"
"""The virtual screen (the size the GUI walkthrough used)."""

START_TIMEOUT_S = 15.0
"""Most seconds Xvfb and openbox may take to come up."""

APT_TIMEOUT_S = 600.0
"""Most seconds installing the packages may take."""


def missing_tools() -> list[str]:
    """The commands of ``TOOLS`` not on PATH."""
    return [cmd for cmd in TOOLS if shutil.which(cmd) is None]


def missing_qt_libs() -> list[str]:
    """Libraries of ``QT_XCB_LIBS`` the dynamic linker cannot find (``ldconfig -p``)."""
    try:
        known = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [lib for lib in QT_XCB_LIBS if lib not in known]


def ensure_tools() -> str:
    """Install missing tools and Qt libraries as root with apt-get; ``""`` when all are
    there, else why not."""
    missing = missing_tools() + missing_qt_libs()
    if not missing:
        return ""
    packages = sorted({TOOLS.get(c) or QT_XCB_LIBS[c] for c in missing})
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"needs {', '.join(missing)} (Debian packages {' '.join(packages)}); not root with apt-get to install them"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update", "-q"], env=env, check=True, capture_output=True, timeout=APT_TIMEOUT_S)
        subprocess.run(["apt-get", "install", "-y", "-q", *packages], env=env, check=True, capture_output=True,
                       timeout=APT_TIMEOUT_S)
    except (subprocess.SubprocessError, OSError) as exc:
        return f"installing {' '.join(packages)} failed: {exc}"
    still = missing_tools() + missing_qt_libs()
    return f"still missing after apt-get: {', '.join(still)}" if still else ""


class XDisplay:
    """Xvfb + openbox on a free display; ``stop()`` ends both (also on interpreter exit)."""

    def __init__(self) -> None:
        self.display = ""
        self.xvfb: subprocess.Popen | None = None
        self.wm: subprocess.Popen | None = None

    def start(self) -> str:
        """Start the display and the window manager; sets and returns ``DISPLAY``."""
        read, write = os.pipe()
        self.xvfb = subprocess.Popen(
            ["Xvfb", "-displayfd", str(write), "-screen", "0", SCREEN, "-nolisten", "tcp", "-noreset"],
            pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.close(write)
        deadline = time.monotonic() + START_TIMEOUT_S
        number = b""
        with os.fdopen(read, "rb") as pipe:
            while time.monotonic() < deadline and not number.endswith(b"\n"):
                chunk = pipe.read(1)
                if not chunk:
                    break
                number += chunk
        if not number.strip():
            self.stop()
            raise RuntimeError("Xvfb did not report a display number")
        self.display = f":{number.decode().strip()}"
        os.environ["DISPLAY"] = self.display
        self.wm = subprocess.Popen(["openbox", "--sm-disable"], env={**os.environ, "DISPLAY": self.display},
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while time.monotonic() < deadline:
            if self.root_property("_NET_SUPPORTING_WM_CHECK"):
                return self.display
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("openbox did not start on the display")

    def stop(self) -> None:
        """End the window manager and the X server."""
        for proc in (self.wm, self.xvfb):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()

    # ------------------------------------------------------------------ reading the X server

    def run(self, *argv: str, timeout: float = 10.0) -> str:
        """Run an X tool on this display; its stdout."""
        out = subprocess.run(list(argv), env={**os.environ, "DISPLAY": self.display}, capture_output=True,
                             text=True, timeout=timeout)
        return out.stdout.strip()

    def root_property(self, name: str) -> str:
        """A root-window property as ``xprop`` prints it (``""`` if unset)."""
        text = self.run("xprop", "-root", name)
        return "" if "not found" in text or "no such atom" in text else text

    def active_window(self) -> int:
        """The window openbox considers active (``_NET_ACTIVE_WINDOW``), 0 if none."""
        text = self.root_property("_NET_ACTIVE_WINDOW")
        try:
            return int(text.split("#")[-1].strip().split(",")[0], 16)
        except ValueError:
            return 0

    def stacking(self) -> list[int]:
        """Client windows bottom to top (``_NET_CLIENT_LIST_STACKING``)."""
        text = self.root_property("_NET_CLIENT_LIST_STACKING")
        if "#" not in text:
            return []
        return [int(part.strip(), 16) for part in text.split("#", 1)[1].split(",") if part.strip()]

    def window_state(self, wid: int) -> str:
        """``_NET_WM_STATE`` of a window (``_NET_WM_STATE_MODAL`` for a modal dialog)."""
        return self.run("xprop", "-id", str(wid), "_NET_WM_STATE")

    def capture(self, wid: int | str, path: Path) -> Path:
        """A PNG of a window as the X server shows it (ImageMagick ``import``)."""
        self.run("import", "-window", str(wid), str(path), timeout=30)
        return Path(path)

    # ------------------------------------------------------------------ input

    def click(self, x: int, y: int) -> None:
        """Move the pointer to screen ``(x, y)`` and click (real X events through XTEST)."""
        self.run("xdotool", "mousemove", "--sync", str(x), str(y), "click", "1")

    def key(self, *keys: str) -> None:
        """Press keys (``ctrl+s``) in the focused window."""
        self.run("xdotool", "key", "--clearmodifiers", *keys)
