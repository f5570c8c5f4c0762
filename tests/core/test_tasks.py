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


async def test_cancel_and_wait_ends_a_task_that_lost_its_first_cancellation():
    # What Python 3.11's wait_for does when the awaited result lands in the same step as
    # the cancel: the CancelledError is swallowed and the task goes back to waiting.
    forever = asyncio.Event()

    async def swallows_one_cancel():
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            pass
        await forever.wait()

    task = asyncio.get_running_loop().create_task(swallows_one_cancel())
    await asyncio.sleep(0)
    left = await asyncio.wait_for(tasks.cancel_and_wait([task], 2), 5)
    assert left == set() and task.cancelled()


async def test_cancel_and_wait_returns_a_task_that_refuses_to_stop(caplog):
    stop = False

    async def refuses():
        while not stop:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                pass

    task = asyncio.get_running_loop().create_task(refuses(), name="stubborn")
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="sleap_rtc.core.tasks"):
        left = await asyncio.wait_for(tasks.cancel_and_wait([task], 0.2), 5)
    assert left == {task} and "stubborn" in caplog.text
    stop = True  # the test's own clean-up: the next cancel ends it
    task.cancel()
    await asyncio.wait_for(task, 5)
