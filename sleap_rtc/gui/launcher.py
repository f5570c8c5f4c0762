"""Start the GUI: SLEAP with sleap-rtc attached when SLEAP is installed, else the standalone window.

* ``main_label()`` is the ``sleap-rtc-label`` script: SLEAP's own ``sleap-label`` arguments
  (parsed by ``sleap.gui.app.create_sleap_label_parser()``), plus ``--server``,
  ``--room-id`` and ``--token``.
* ``launch(server_url, room_id, token, labels_path)`` is what ``sleap-rtc gui`` and
  ``make demo`` call. Both run ONE qasync loop over the ``QApplication`` (``bridge.run_app``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

log = logging.getLogger(__name__)


def sleap_available() -> bool:
    """Whether the SLEAP GUI can be imported here (without importing it yet)."""
    import importlib.util

    return importlib.util.find_spec("sleap") is not None


def _prepare_sleap_env() -> None:
    # SLEAP's app module otherwise re-executes the process to fix Qt library paths, which
    # would drop our arguments and loop; our own launcher sets up Qt itself.
    os.environ.setdefault("SLEAP_SKIP_QT_FIX", "1")


def build_window(server_url: str | None, labels_path: str | None = None, *, force_standalone: bool = False, **sleap_kwargs):
    """Create (not show) the main window: SLEAP's with sleap-rtc, or the standalone one."""
    if not force_standalone and sleap_available():
        _prepare_sleap_env()
        from sleap_rtc.gui import sleap_attach

        return sleap_attach.create_window(labels_path, server_url=server_url, **sleap_kwargs)
    from sleap_rtc.gui.standalone import StandaloneWindow

    if labels_path:
        log.warning("SLEAP is not installed: ignoring %s (open it in SLEAP to train from it)", labels_path)
    return StandaloneWindow(server_url)


def launch(
    server_url: str | None = None,
    room_id: str | None = None,
    token: str | None = None,
    labels_path: str | None = None,
    *,
    standalone: bool = False,
    exit_after: float | None = None,
    screenshot: str | None = None,
    **sleap_kwargs,
) -> int:
    """Open the GUI joined to ``room_id`` (when given) and run until the window closes.

    ``exit_after`` (seconds) closes the window by itself, after saving ``screenshot`` (a
    PNG path) if given: how ``make demo`` is checked on a machine without a screen.
    """
    from sleap_rtc.gui import bridge

    if sleap_available() and not standalone:
        _prepare_sleap_env()
        from sleap_rtc.gui import sleap_attach

        app = sleap_attach.create_app()
    else:
        app = bridge.ensure_app(sys.argv[:1])
    window = build_window(server_url, labels_path, force_standalone=standalone, **sleap_kwargs)
    window.showMaximized() if hasattr(window, "labels") else window.show()

    async def start():
        if room_id and token:
            # join() shows its own error over the window; nothing more to do here.
            window.remote.join(room_id, token)
        if exit_after is not None:
            await asyncio.sleep(exit_after)
            if screenshot:
                window.grab().save(str(screenshot))
            window.close()

    return bridge.run_app(start, app, window)


def label_parser() -> argparse.ArgumentParser:
    """SLEAP's ``sleap-label`` parser plus our room options."""
    _prepare_sleap_env()
    from sleap_rtc.gui import sleap_attach

    parser = sleap_attach.label_parser()
    parser.add_argument("--server", default=None, help="Signaling server URL (ws:// or wss://).")
    parser.add_argument("--room-id", default=None, help="Room to join at start.")
    parser.add_argument("--token", default=None, help="The room's token.")
    return parser


def main_label(argv: list[str] | None = None) -> int:
    """``sleap-rtc-label``: SLEAP's labeling GUI with the Remote Training dock."""
    if not sleap_available():
        print("sleap-rtc-label needs SLEAP: pip install 'sleap-rtc[sleap]' (or run 'sleap-rtc gui').", file=sys.stderr)
        return 2
    args = label_parser().parse_args(argv)
    if args.nonnative:
        os.environ["USE_NON_NATIVE_FILE"] = "1"
    from sleap_rtc.core.config import resolve_server

    return launch(resolve_server(args.server), args.room_id, args.token, args.labels_path, reset=args.reset)
