"""A client machine vanishes (SIGKILL) while it holds a worker's reservation.

Two ways to vanish: ``kill`` (SIGKILL: sockets close, the server sends ``peer_left``, UDP
answers with ICMP) and ``freeze`` (SIGSTOP: a hung machine or a cut network; nothing closes,
nothing answers, so only timeouts can help).

Before the data channel opened, the reservation is a lease: the worker must be available
again within the lease (3 s here, set with the worker's hidden ``--lease-timeout``); a frozen
client can only be released by the lease itself. Once the channel is open, the worker notices
the client's absence (room ``peer_left`` or the channel heartbeat) and is available again
within the heartbeat window (15 s). Either way the worker keeps running and serves the next
client.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

import pytest
from fault_helpers import Observer

from sleap_rtc.core import transport

pytestmark = pytest.mark.faults

LEASE = 3.0
HEARTBEAT_WINDOW = 15.0
HELPER = Path(__file__).with_name("_vanishing_client.py")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["kill", "freeze"])
@pytest.mark.parametrize("mode", ["offer", "channel"])
async def test_vanished_client_releases_the_worker(local_room, mode: str, how: str):
    room = local_room
    await asyncio.to_thread(room.start_workers, "w1", extra=("--lease-timeout", str(LEASE)))
    async with Observer(room.url, room.room_id, room.token) as obs:
        await obs.wait_status("w1", "available", 10)
        worker_id = obs.peer_id("w1")
        client = room.spawn(f"client-{mode}", [sys.executable, str(HELPER), room.url, room.room_id, room.token, worker_id, mode])
        marker = "OFFER_SENT" if mode == "offer" else "CHANNEL_OPEN"
        await asyncio.to_thread(client.wait_for_line, lambda l: marker in l, 60)
        reserved_at = await obs.wait_status("w1", "reserved", 10)

        client.signal_group(signal.SIGKILL if how == "kill" else signal.SIGSTOP)
        killed_at = time.monotonic()
        bound = (LEASE + 3.0) if mode == "offer" else HEARTBEAT_WINDOW
        available_at = await obs.wait_status("w1", "available", bound + 5)
        if mode == "offer":
            # The lease runs from the offer: measured from when the room saw "reserved".
            assert available_at - reserved_at <= LEASE + 3.0, (
                f"reservation held {available_at - reserved_at:.1f} s after the offer (lease {LEASE:g} s)"
            )
        else:
            assert available_at - killed_at <= HEARTBEAT_WINDOW, (
                f"worker available only {available_at - killed_at:.1f} s after its client vanished ({how})"
            )
        print(f"{mode}/{how}: reserved {available_at - reserved_at:.1f} s, available {available_at - killed_at:.1f} s after the client vanished")
        assert room.workers["w1"].alive, "the worker died with its client"

        # It serves the next client: a fresh connection opens and closes cleanly.
        channel = await transport.connect(obs.signaling, worker_id, timeout=30)
        try:
            assert not channel.closed
        finally:
            await channel.close()
        await obs.wait_status("w1", "available", HEARTBEAT_WINDOW)
        client.kill()  # a frozen client is still there (stopped): end it now
