"""Polling on the running loop, for tests that wait on Qt or network state."""

from __future__ import annotations

import asyncio


async def wait_until(predicate, timeout: float = 5.0, interval: float = 0.01):
    """Poll ``predicate`` on the running loop until truthy; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)
