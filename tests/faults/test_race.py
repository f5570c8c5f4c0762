"""20 clients race for one real worker process.

All 20 register, then offer at the same moment (real WebRTC offers through the real
server). Exactly one gets a data channel and runs a real training job; every other one gets
``WorkerBusyError`` (the worker's ``worker_busy`` refusal, relayed to that client), and none
hangs: every attempt ends within a bound.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from fault_helpers import Observer, checkpoints, tiny_package

from sleap_rtc.core.phases import JobPhases, Phase
from sleap_rtc.core.remote_job import JobSession
from sleap_rtc.core.signaling import SignalingClient
from sleap_rtc.core.transport_errors import WorkerBusyError

pytestmark = pytest.mark.faults

CLIENTS = 20
ALL_ANSWERED_WITHIN = 60.0


@pytest.mark.timeout(150)
async def test_twenty_clients_race_for_one_worker(local_room, tmp_path: Path):
    from sleap_rtc.core import transport

    room = local_room
    await asyncio.to_thread(room.start_workers, "w1")
    async with Observer(room.url, room.room_id, room.token) as obs:
        await obs.wait_status("w1", "available", 10)
        worker_id = obs.peer_id("w1")
        clients = [
            SignalingClient(room.url, room_id=room.room_id, token=room.token, role="client", peer_id=f"client-race-{i:02d}")
            for i in range(CLIENTS)
        ]
        try:
            await asyncio.gather(*(c.connect() for c in clients))
            start = asyncio.Event()

            async def attempt(c: SignalingClient):
                await start.wait()
                t0 = time.monotonic()
                try:
                    return await transport.connect(c, worker_id, timeout=45, receive_dir=tmp_path / c.peer_id), time.monotonic() - t0
                except Exception as exc:  # recorded and checked below
                    return exc, time.monotonic() - t0

            tasks = [asyncio.create_task(attempt(c)) for c in clients]
            start.set()
            done, pending = await asyncio.wait(tasks, timeout=ALL_ANSWERED_WITHIN)
            for t in pending:
                t.cancel()
            assert not pending, f"{len(pending)} of {CLIENTS} clients got no answer within {ALL_ANSWERED_WITHIN:g} s"

            results = [t.result() for t in tasks]
            winners = [(c, r) for c, (r, _) in zip(clients, results) if not isinstance(r, BaseException)]
            busy = [(c, r) for c, (r, _) in zip(clients, results) if isinstance(r, WorkerBusyError)]
            other = [(c.peer_id, repr(r)) for c, (r, _) in zip(clients, results)
                     if isinstance(r, BaseException) and not isinstance(r, WorkerBusyError)]
            assert not other, f"clients failed with something other than worker_busy: {other}"
            assert len(winners) == 1, f"{len(winners)} clients got a channel (expected exactly 1)"
            assert len(busy) == CLIENTS - 1, f"{len(busy)} worker_busy refusals (expected {CLIENTS - 1})"
            for c, exc in busy:
                assert exc.status in ("reserved", "busy"), f"{c.peer_id}: refusal with status {exc.status!r}"
                assert "--room-id" in exc.message, f"{c.peer_id}: refusal without the discovery hint: {exc.message!r}"
                # Each refusal was addressed to the client that offered, not to another one.
                assert exc.frame.get("target") in (None, c.peer_id), f"{c.peer_id} got {exc.frame}"

            # The winner runs a real job; the worker runs exactly one sleap-nn meanwhile.
            client, channel = winners[0]
            output = tmp_path / "out"
            phases = JobPhases()
            phases.advance(Phase.CONNECTING)  # JobSession starts from a connected channel
            session = JobSession(channel, tiny_package(tmp_path / "pkg"), output_dir=output, phases=phases)
            job = asyncio.create_task(session.run())
            max_jobs = 0
            while not job.done():
                max_jobs = max(max_jobs, len(room.workers["w1"].descendants()))
                await asyncio.wait({job}, timeout=0.5)
            summary = job.result()
            await channel.close()
            assert max_jobs <= 1, f"the worker ran {max_jobs} processes at once during the single job"
            assert checkpoints(output), f"the winner {client.peer_id} got no best.ckpt: {summary.files}"
            # ...and it is free again for the next client.
            await obs.wait_status("w1", "available", 20)
        finally:
            await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
