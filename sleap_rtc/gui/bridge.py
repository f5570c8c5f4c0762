"""One event loop for Qt and asyncio (qasync), and helpers to call coroutines from slots.

Every GUI entry point makes exactly one ``qasync.QEventLoop`` over the ``QApplication``
(``make_loop``), so core objects (signaling, transport, remote jobs) run unchanged on the
same thread as the widgets. Slots stay plain functions: they start coroutines with
``run_coro`` and never wait on them, so a slow network call can never freeze the GUI.
Errors of such background tasks are logged and shown in a non-modal message box (opened
with ``open()``, never ``exec()``, which would nest a second event loop inside a task).

PySide6 6.12.0 leaks a reference to ``None`` on every loop iteration under qasync on
Python 3.11 and crashes after ~9,300 iterations; keep the ``<6.12`` pin and the soak test
``tests/gui/test_bridge.py::test_soak_loop_iterations``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import qasync
from qtpy import QtCore, QtWidgets

log = logging.getLogger(__name__)

ErrorHandler = Callable[[BaseException], Any]

# Background tasks are referenced here until they finish: asyncio keeps only weak
# references to tasks, so an unreferenced task can be garbage-collected mid-flight.
_TASKS: set[asyncio.Task] = set()


def ensure_app(argv: list[str] | None = None) -> QtWidgets.QApplication:
    """The running ``QApplication``, created if there is none yet."""
    app = QtWidgets.QApplication.instance()
    if app is None:
        app = QtWidgets.QApplication(argv if argv is not None else [])
    return app


def make_loop(app: QtWidgets.QApplication | None = None) -> qasync.QEventLoop:
    """Create the one qasync loop over ``app`` and make it the current asyncio loop."""
    loop = qasync.QEventLoop(app or ensure_app())
    asyncio.set_event_loop(loop)
    return loop


def show_error(parent: QtWidgets.QWidget | None, title: str, error: BaseException | str) -> QtWidgets.QMessageBox:
    """Show an error without blocking: a message box opened with ``open()``.

    Returns the box (kept alive by its parent, or by a reference on the app when there is
    no parent) so tests can read it.
    """
    text = str(error) or error.__class__.__name__
    box = QtWidgets.QMessageBox(parent)
    box.setIcon(QtWidgets.QMessageBox.Warning)
    box.setWindowTitle(title)
    box.setText(text)
    box.setObjectName("sleap_rtc_error_box")
    if parent is None:
        # Without a parent nothing owns the box; keep it alive until it is closed.
        app = ensure_app()
        boxes = app.property("_sleap_rtc_error_boxes") or []
        boxes = [b for b in boxes if _alive(b)] + [box]
        app.setProperty("_sleap_rtc_error_boxes", boxes)
    box.open()
    return box


def _alive(widget: Any) -> bool:
    try:
        widget.objectName()
        return True
    except RuntimeError:  # the C++ object is gone
        return False


def run_coro(
    coro: Coroutine[Any, Any, Any],
    *,
    on_error: ErrorHandler | None = None,
    parent: QtWidgets.QWidget | None = None,
    title: str = "sleap-rtc",
    on_done: Callable[[Any], Any] | None = None,
) -> asyncio.Task:
    """Start ``coro`` on the running qasync loop from a plain slot; return its task.

    A failure goes to ``on_error`` if given, else it is logged and shown in a non-modal
    message box over ``parent``. Cancellation is silent. ``on_done(result)`` runs on success.
    """
    loop = asyncio.get_event_loop()
    task = loop.create_task(coro)
    _TASKS.add(task)

    def finished(t: asyncio.Task) -> None:
        _TASKS.discard(t)
        if t.cancelled():
            return
        exc = t.exception()
        if exc is None:
            if on_done is not None:
                on_done(t.result())
            return
        if on_error is not None:
            on_error(exc)
        else:
            log.error("%s: %s", title, exc, exc_info=exc)
            show_error(parent, title, exc)

    task.add_done_callback(finished)
    return task


def async_slot(
    func: Callable[..., Awaitable[Any]] | None = None, *, title: str = "sleap-rtc"
) -> Callable[..., asyncio.Task]:
    """Decorate a coroutine method so it can be connected to a Qt signal as a plain slot.

    Calling the slot starts the coroutine with ``run_coro`` (errors shown over ``self`` if
    it is a widget) and returns the task; the signal emitter never waits.
    """

    def wrap(fn: Callable[..., Awaitable[Any]]) -> Callable[..., asyncio.Task]:
        @functools.wraps(fn)
        def slot(*args: Any) -> asyncio.Task:
            parent = args[0] if args and isinstance(args[0], QtWidgets.QWidget) else None
            return run_coro(fn(*args), parent=parent, title=title)

        return slot

    return wrap(func) if func is not None else wrap


def pending_tasks() -> list[asyncio.Task]:
    """Background tasks started by ``run_coro`` that have not finished (for shutdown/tests)."""
    return [t for t in _TASKS if not t.done()]


async def cancel_pending(timeout: float = 2.0) -> None:
    """Cancel every background task started by ``run_coro`` and wait for them briefly."""
    tasks = pending_tasks()
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=timeout)


class _CloseWatcher(QtCore.QObject):
    """Calls ``on_close`` when the watched window accepts a close event."""

    def __init__(self, on_close: Callable[[], Any], parent: QtCore.QObject):
        super().__init__(parent)
        self._on_close = on_close

    def eventFilter(self, obj: QtCore.QObject, event: QtCore.QEvent) -> bool:  # noqa: N802
        """Watch for the window's Close event (after the window accepted it)."""
        if event.type() == QtCore.QEvent.Close:
            QtCore.QTimer.singleShot(0, lambda: None if obj.isVisible() else self._on_close())
        return False


def run_app(
    main: Callable[[], Coroutine[Any, Any, Any]] | None = None,
    app: QtWidgets.QApplication | None = None,
    window: QtWidgets.QWidget | None = None,
) -> int:
    """Run the Qt application on a qasync loop until ``window`` closes (or ``quit()``).

    ``main`` (optional) is started as a background task once the loop runs. Returns 0.
    """
    app = app or ensure_app()
    # We end the loop ourselves (after cancelling our tasks) rather than letting Qt stop it
    # under a pending future.
    app.setQuitOnLastWindowClosed(False)
    loop = make_loop(app)
    closed = asyncio.Event()
    app.lastWindowClosed.connect(closed.set)
    app.aboutToQuit.connect(closed.set)
    if window is not None:
        window.installEventFilter(_CloseWatcher(closed.set, window))

    async def runner() -> None:
        if main is not None:
            run_coro(main())
        await closed.wait()
        await cancel_pending()

    with loop:
        loop.run_until_complete(runner())
    return 0
