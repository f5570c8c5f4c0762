"""Background tasks: held until done, failures logged at once."""

from __future__ import annotations

import asyncio
import gc
import logging

from sleap_rtc.core import tasks


async def test_spawned_task_survives_garbage_collection_and_finishes():
    done = asyncio.Event()

    async def work():
        await asyncio.sleep(0.05)
        done.set()

    tasks.spawn(work(), name="t-finish")
    gc.collect()  # a task nobody holds could be collected here
    await asyncio.wait_for(done.wait(), 5)
    await asyncio.sleep(0)
    assert not any(t.get_name() == "t-finish" for t in tasks._running)


async def test_spawned_task_failure_is_logged(caplog):
    async def boom():
        raise ValueError("kaputt")

    with caplog.at_level(logging.ERROR, logger="sleap_rtc.core.tasks"):
        task = tasks.spawn(boom(), name="t-boom")
        await asyncio.wait({task}, timeout=5)
        await asyncio.sleep(0)
    assert "t-boom failed" in caplog.text and "kaputt" in caplog.text
