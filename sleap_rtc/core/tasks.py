"""Fire-and-forget asyncio tasks that are neither garbage-collected nor silently failing.

The event loop keeps only a weak reference to a task, so a task nobody holds can vanish
mid-flight; and an exception in a task nobody awaits is reported only at interpreter exit.
``spawn`` holds each task until it is done and logs its failure at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
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
