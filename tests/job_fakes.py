"""In-memory workers for orchestration tests: core's connect attempt and data channel, faked.

``FakeWorkers.connect`` has the signature of ``RemoteJob``'s injected connect attempt. For
each peer id it consults ``behaviour[peer_id]``:

* ``"busy"`` / ``"gone"`` / ``"timeout"``: raise the transport error a real worker causes
  (``WorkerBusyError``, ``PeerNotFoundError``, ``AnswerTimeoutError``);
* a callable ``script(channel)``: an async worker run once the client submits the job; it
  talks through ``channel.emit(...)`` / ``channel.result(...)`` / ``channel.die()``;
* missing: ``default`` (by default ``default_script``: accept, one epoch, a model zip,
  complete).

``ScriptedChannel`` speaks exactly what ``JobSession`` expects of a ``PeerChannel``; the
messages are core's own builders (``jobs_wire``), so they pass the same validation. The
real WebRTC path runs in ``tests/client/`` and ``tests/faults/``.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import zipfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sleap_rtc.core import jobs_wire
from sleap_rtc.core.files import ReceivedFile
from sleap_rtc.core.identity import fingerprint_of
from sleap_rtc.core.protocol import ChannelType
from sleap_rtc.core.transport_errors import AnswerTimeoutError, PeerClosedError, PeerNotFoundError, WorkerBusyError


@dataclass
class Receipt:
    """What ``send_file`` returns (the parts ``JobSession`` reads)."""

    sha256: str
    name: str
    size: int = 0
    bytes_sent: int = 0
    cached: bool = False


_CLOSED = object()


class ScriptedChannel:
    """One client<->worker channel in memory; the worker side is ``script``."""

    def __init__(self, peer_id: str, script: Callable[[ScriptedChannel], Awaitable[Any]], receive_dir: Path):
        self.remote_peer_id = peer_id
        self.closed = False
        self.close_reason = ""
        self.receive_dir = Path(receive_dir)
        self.script = script
        self.to_client: asyncio.Queue = asyncio.Queue()
        self.files: asyncio.Queue = asyncio.Queue()
        self.sent: list[dict[str, Any]] = []
        self.package: bytes | None = None
        self.uploads: list[dict[str, Any]] = []
        """Every file offered: name, sha256, meta, size (the package last)."""
        self.held: set[str] = set()
        """sha256 of the files this worker has (``FakeWorkers`` shares one set per worker)."""
        self.job_id = ""
        self.attached = False
        self.stopped = asyncio.Event()
        self.cancelled = asyncio.Event()
        self._task: asyncio.Task | None = None

    # ---------------------------------------------------------------- client side (PeerChannel)

    async def send_file(self, path: Path, progress: Callable[[int, int], Any] | None = None, name: str | None = None,
                        sha256: str | None = None, meta: dict | None = None) -> Receipt:
        data = Path(path).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        assert sha256 in (None, digest), "the sender's hash must be the file's"
        self.uploads.append({"name": name or Path(path).name, "sha256": digest, "meta": dict(meta or {}),
                             "size": len(data)})
        if not meta:
            self.package = data
        if digest in self.held:  # content-addressed: the worker has it, nothing moves
            return Receipt(digest, name or Path(path).name, len(data), 0, cached=True)
        if progress:
            progress(len(data) // 2, len(data))
            progress(len(data), len(data))
        self.held.add(digest)
        return Receipt(digest, name or Path(path).name, len(data), len(data))

    async def send(self, msg: dict[str, Any]) -> None:
        if self.closed:
            raise PeerClosedError("channel closed")
        self.sent.append(msg)
        kind = msg.get("type")
        if kind in (ChannelType.JOB_SUBMIT, ChannelType.JOB_ATTACH):
            # An attach after a reconnect runs the script too (it answers job_accepted).
            self.job_id = msg["job_id"]
            self.attached = kind == ChannelType.JOB_ATTACH
            self._task = asyncio.ensure_future(self._run_script())
        elif kind == ChannelType.JOB_STOP:
            self.stopped.set()
        elif kind == ChannelType.JOB_CANCEL:
            self.cancelled.set()

    async def receive(self, timeout: float | None = None) -> dict[str, Any]:
        msg = await self.to_client.get()
        if msg is _CLOSED:
            raise PeerClosedError(self.close_reason or "the worker hung up")
        return msg

    async def receive_file(self, timeout: float | None = None) -> ReceivedFile:
        return await self.files.get()

    async def verify_identity(self, timeout: float | None = None) -> str:
        """The worker's identity proof: a key of its own, the same on every connection."""
        return fingerprint_of(hashlib.sha256(self.remote_peer_id.encode()).digest())

    def suspect(self) -> None:
        """The worker left the room (``_watch_departure``): the channel dies at once."""
        self.die("the peer left the room")

    async def close(self) -> None:
        self.closed = True
        if self._task is not None and not self._task.done():
            self._task.cancel()

    # ---------------------------------------------------------------- worker side (scripts)

    async def _run_script(self) -> None:
        try:
            await self.script(self)
        except asyncio.CancelledError:
            pass

    async def emit(self, msg: dict[str, Any]) -> None:
        """Send a job message to the client."""
        await self.to_client.put(msg)

    async def accept(self) -> None:
        await self.emit(jobs_wire.job_accepted(self.job_id))

    async def epoch(self, what: str, epoch: int, loss: float = 1.0) -> None:
        await self.emit(jobs_wire.job_progress(self.job_id, {"event": "epoch_end", "what": what, "epoch": epoch,
                                                            "logs": {"train/loss": loss, "val/loss": loss * 1.1}}))

    async def event(self, event: dict[str, Any]) -> None:
        await self.emit(jobs_wire.job_progress(self.job_id, event))

    async def result_model(self, run: str, files: dict[str, bytes]) -> None:
        """Announce and send a model zip ``<run>.zip`` holding ``<run>/<name>`` entries."""
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for name, data in files.items():
                zf.writestr(f"{run}/{name}", data)
        await self._result("model", f"{run}.zip", buf.getvalue())

    async def result_file(self, kind: str, name: str, data: bytes) -> None:
        await self._result(kind, name, data)

    async def _result(self, kind: str, name: str, data: bytes) -> None:
        self.receive_dir.mkdir(parents=True, exist_ok=True)
        path = self.receive_dir / f"rx-{len(data)}-{name}"
        path.write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        await self.emit(jobs_wire.job_result(self.job_id, kind, name, digest, len(data)))
        await self.files.put(ReceivedFile(path=path, name=name, size=len(data), sha256=digest))

    async def complete(self) -> None:
        await self.emit(jobs_wire.job_complete(self.job_id, [], 0.1))

    def die(self, reason: str = "the worker process was killed") -> None:
        """The worker dies: the client's next receive raises ``PeerClosedError``."""
        self.close_reason = reason
        self.to_client.put_nowait(_CLOSED)


async def default_script(ch: ScriptedChannel) -> None:
    """Accept, train one epoch of one model, send it back, complete."""
    await ch.accept()
    await ch.event({"event": "train_begin", "what": "single_instance"})
    await ch.epoch("single_instance", 0, 0.5)
    await ch.result_model("run1", {"best.ckpt": f"weights from {ch.remote_peer_id}".encode()})
    await ch.complete()


class FakeWorkers:
    """The connect attempt of a room of fake workers (see the module docstring)."""

    def __init__(self, behaviour: dict[str, Any] | None = None, default: Any = default_script):
        self.behaviour: dict[str, Any] = dict(behaviour or {})
        self.default = default
        self.attempts: list[str] = []
        self.channels: list[ScriptedChannel] = []
        self.held: dict[str, set[str]] = {}
        """Per worker, the sha256 of the files it received (its transfer cache)."""

    async def connect(self, signaling: Any, peer_id: str, receive_dir: Path, timeout: float) -> ScriptedChannel:
        self.attempts.append(peer_id)
        how = self.behaviour.get(peer_id, self.default)
        if isinstance(how, list):  # one behaviour per attempt, the last one repeats
            how = how.pop(0) if len(how) > 1 else how[0]
        if how == "busy":
            raise WorkerBusyError("Worker is currently busy.", status="busy")
        if how == "gone":
            raise PeerNotFoundError(f"Peer {peer_id} is not in this room")
        if how == "timeout":
            raise AnswerTimeoutError(f"{peer_id} did not answer")
        channel = ScriptedChannel(peer_id, how, receive_dir)
        channel.held = self.held.setdefault(peer_id, set())
        self.channels.append(channel)
        return channel
