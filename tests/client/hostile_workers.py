"""Workers written by the tests: a real ``sleap_rtc.worker`` in-process (fake sleap-nn), and
hostile ones that register through the real server and answer with real aiortc.

``raw_worker`` registers with metadata written as raw JSON text, so numbers such as
``1e400``, ``Infinity`` and ``NaN`` reach the server exactly as an attacker types them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import aiohttp

from sleap_rtc.core import transport
from sleap_rtc.core.identity import WorkerKey, generate_key, make_proof
from sleap_rtc.core.protocol import ChannelType, MessageType
from sleap_rtc.core.signaling import SignalingClient
from sleap_rtc.worker.app import Worker, WorkerConfig
from sleap_rtc.worker.capabilities import Capabilities, GpuInfo
from sleap_rtc.worker.executor import JobExecutor

ROOT = Path(__file__).resolve().parents[2]
TINY_PACKAGE = ROOT / "resources" / "tiny" / "tiny.training_job.zip"
FAKE_SLEAP_NN = [sys.executable, str(ROOT / "tests" / "worker" / "fake_sleap_nn.py")]


async def real_worker(url: str, room: tuple[str, str], work_dir: Path, name: str, mem: int = 24000) -> Worker:
    """The project's worker runtime (key in ``work_dir``), with the fake sleap-nn."""
    config = WorkerConfig(server_url=url, room_id=room[0], token=room[1], work_dir=work_dir,
                          executor_factory=lambda jid: JobExecutor(jid, command=FAKE_SLEAP_NN, env={"FAKE_MODE": "ok"}))
    worker = Worker(config, Capabilities(worker_name=name, hostname="lab", gpu=GpuInfo("Test GPU", mem, "12.4", 0)))
    await worker.start()
    return worker


class HostileWorker:
    """Registers as a worker with chosen metadata and accepts every offer with real aiortc.

    ``proof`` says what it sends as its identity proof:

    * ``"own"``: a correct proof with its own key (while it may advertise another key);
    * ``"forged"``: signed with its own key but naming ``claim_key``'s public key;
    * ``"none"``: nothing.

    ``received`` collects every file a client sent it (the tests assert it stays empty).
    """

    def __init__(self, url: str, room: tuple[str, str], name: str, tmp: Path, *, mem: int = 10**6,
                 claim_key: WorkerKey | None = None, proof: str = "own"):
        self.key = generate_key()
        advertised = claim_key or self.key
        self.claim_key, self.proof, self.tmp = claim_key, proof, tmp
        props = {"worker_name": name, "gpu_model": "Fake GPU", "gpu_memory_mb": mem, "status": "available",
                 "public_key": advertised.public_key, "fingerprint": advertised.fingerprint}
        self.sig = SignalingClient(url, room_id=room[0], token=room[1], role="worker", peer_id=f"worker-{name}-{'0' * 12}",
                                   metadata={"tags": ["sleap-rtc"], "properties": props}, reconnect=False)
        self.offers = 0
        self.received: list[Any] = []
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> HostileWorker:
        """Register in the room."""
        await self.sig.connect()
        self.sig.add_listener(self._on_frame)
        return self

    def _on_frame(self, frame: dict[str, Any]) -> None:
        if frame.get("type") == MessageType.OFFER:
            self.offers += 1
            self._tasks.append(asyncio.ensure_future(self._serve(frame)))

    async def _serve(self, frame: dict[str, Any]) -> None:
        channel = await transport.accept(self.sig, frame, receive_dir=self.tmp / "recv", cache_dir=self.tmp / "cache")
        try:
            if self.proof == "own":
                channel.prove_identity(self.key)
            elif self.proof == "forged":
                local, remote = channel.dtls_fingerprints()
                proof = make_proof(self.key, local_dtls=local, remote_dtls=remote, nonce=channel.remote_hello["nonce"],
                                   local_peer_id=channel.local_peer_id, remote_peer_id=channel.remote_peer_id)
                channel.send_control({"type": ChannelType.IDENTITY_PROOF.value, **proof,
                                      "public_key": self.claim_key.public_key})
            with contextlib.suppress(Exception):
                while True:
                    self.received.append(await channel.receive_file(timeout=30))
        finally:
            await channel.close()

    async def close(self) -> None:
        """Leave the room."""
        for task in self._tasks:
            task.cancel()
        await self.sig.close()


@contextlib.asynccontextmanager
async def raw_worker(url: str, room: tuple[str, str], name: str, properties_json: str):
    """A worker registered with ``properties`` given as raw JSON text (e.g. ``1e400``)."""
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url) as ws:
            frame = (
                '{"type":"register","peer_id":"worker-%s-000000000000","room_id":%s,"token":%s,"role":"worker",'
                '"metadata":{"tags":["sleap-rtc"],"properties":%s}}'
                % (name, json.dumps(room[0]), json.dumps(room[1]), properties_json)
            )
            await ws.send_str(frame)
            reply = json.loads((await ws.receive(timeout=10)).data)
            yield reply  # registered_auth, or the server's refusal of the frame
