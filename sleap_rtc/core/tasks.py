"""Fire-and-forget asyncio tasks that are neither garbage-collected nor silently failing.

The event loop keeps only a weak reference to a task, so a task nobody holds can vanish
mid-flight; and an exception in a task nobody awaits is reported only at interpreter exit.
``spawn`` holds each task until it is done and logs its failure at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterable
from typing import Any

log = logging.getLogger(__name__)

_running: set[asyncio.Task] = set()


def spawn(coro: Coroutine[Any, Any, Any], *, name: str | None = None) -> asyncio.Task:
    """Run ``coro`` in the background on the running loop; returns its task."""
    task = asyncio.get_running_loop().create_task(coro, name=name)
    _running.add(task)
    task.add_done_callback(_finished)
    return task


def _finished(task: asyncio.Task) -> None:
    _running.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s failed", task.get_name(), exc_info=task.exception())


async def cancel_and_wait(tasks: Iterable[asyncio.Task], timeout: float) -> set[asyncio.Task]:
    """Cancel ``tasks`` and wait at most ``timeout`` s for them to end; returns the stragglers.

    A cancellation can be lost: on Python 3.11 ``asyncio.wait_for`` returns the inner result
    when it completes in the same loop step as the cancel, and the task then carries on.
    So the wait never awaits a task directly (which could hang forever), and a task still
    running halfway through the budget is cancelled once more.
    """
    pending = {t for t in tasks if not t.done()}
    for task in pending:
        task.cancel()
    if not pending:
        return set()
    _, pending = await asyncio.wait(pending, timeout=timeout / 2)
    for task in pending:
        task.cancel()
    if pending:
        _, pending = await asyncio.wait(pending, timeout=timeout / 2)
    for task in pending:
        log.warning("task %s did not stop within %.1f s of being cancelled", task.get_name(), timeout)
    return pending
