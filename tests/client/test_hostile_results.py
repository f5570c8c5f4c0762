"""A hostile worker against the real client: results are hostile input (rows C2-C5, C7).

The worker here is written for the test: a real aiortc peer registered as a worker through
the real signaling server, which takes the package and answers with hostile results (a
model named ``...zip`` whose entries climb out, predictions named like the user's labels,
a zip bomb, a 1 PB file). The client is the real ``RemoteJob`` (and, for ``client-track``,
the real CLI process). Nothing may be written outside a fresh result, nothing replaced, and
nothing partial left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import zipfile
from pathlib import Path

import pytest

from sleap_rtc.core import jobs_wire, transport
from sleap_rtc.core.channel import default_cache_dir
from sleap_rtc.core.package import jobs_document, write_package
from sleap_rtc.core.protocol import MessageType, Prop, pack_chunk
from sleap_rtc.core.credentials import RoomCredentials
from sleap_rtc.core.identity import fingerprint_of, generate_key
from sleap_rtc.core.job_policy import DirectWorker
from sleap_rtc.core.job_runner import RemoteJob
from sleap_rtc.core.remote_job import JobFailedError
from sleap_rtc.core.signaling import SignalingClient
from sleap_rtc.local_room import sleap_rtc_argv

pytestmark = pytest.mark.timeout(120)

RUN = "r1.single_instance"
MiB = 1024 * 1024


def zip_bytes(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


class HostileWorker:
    """A worker peer that runs no job and answers each job with ``results`` (kind, name, bytes).

    ``declare`` overrides the size announced for a result (and offered for its file); with
    ``hang_up`` it sends ``send_bytes`` of that file and then aborts the channel.
    """

    def __init__(self, url, room, tmp, results, *, declare=None, send_bytes=0, hang_up=False):
        # A hostile worker with a real identity key: the identity check passes, the result checks must hold.
        self.key = generate_key()
        props = {"worker_name": "gpu-2", "gpu_memory_mb": 80000, "gpu_model": "H200", "status": "available",
                 Prop.PUBLIC_KEY.value: self.key.public_key, Prop.FINGERPRINT.value: fingerprint_of(self.key.public_key)}
        self.sig = SignalingClient(url, room_id=room[0], token=room[1], role="worker", peer_id="worker-gpu-2-hostile",
                                   metadata={"tags": ["sleap-rtc"], "properties": props})
        self.tmp, self.results = tmp, results
        self.declare, self.send_bytes, self.hang_up = declare, send_bytes, hang_up
        self.task: asyncio.Task | None = None
        self.refusals: list[dict] = []

    async def __aenter__(self):
        await self.sig.connect()
        self.sig.add_listener(self._on_frame)
        return self

    async def __aexit__(self, *exc):
        if self.task:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task
        await self.sig.close()

    def _on_frame(self, frame):
        if frame.get("type") == MessageType.OFFER and self.task is None:
            self.task = asyncio.ensure_future(self._serve(frame))

    async def _serve(self, frame):
        ch = await transport.accept(self.sig, frame, receive_dir=self.tmp / "hostile-in", cache_dir=self.tmp / "hostile-cache")
        ch.prove_identity(self.key)
        original = ch.transfers.on_control
        ch.transfers.on_control = lambda m: (self.refusals.append(m) if m.get("type") == "file_error" else None, original(m))
        try:
            await ch.receive_file(timeout=30)
            submit = await ch.receive(30)
            job = submit["job_id"]
            await ch.send(jobs_wire.job_accepted(job))
            entries = []
            for i, (kind, name, data) in enumerate(self.results):
                path = self.tmp / f"result-{i}.bin"
                path.write_bytes(data)
                sha = hashlib.sha256(data).hexdigest()
                size = self.declare if self.declare is not None else len(data)
                await ch.send(jobs_wire.job_result(job, kind=kind, name=name, sha256=sha, size=size))
                if self.declare is not None:
                    tid = 10_000 + 2 * i
                    ch.send_control({"type": "file_offer", "transfer_id": tid, "name": name, "size": size,
                                     "sha256": sha, "meta": {}})
                    await asyncio.sleep(0.5)
                    chunk = b"\1" * 65536
                    for n in range(self.send_bytes // len(chunk)):
                        ch.send_binary(pack_chunk(tid, n * len(chunk), chunk))
                        if ch.buffered_amount > 4 * MiB:
                            await ch.drain(30)
                    if self.hang_up:
                        await asyncio.sleep(0.5)
                        await ch.abort()
                        return
                else:
                    with contextlib.suppress(Exception):
                        await ch.send_file(path, name=name, sha256=sha)
                entries.append({"kind": kind, "name": name, "sha256": sha, "size": size})
            await ch.send(jobs_wire.job_complete(job, entries, 1.0))
            with contextlib.suppress(Exception):
                await ch.wait_closed(15)
        finally:
            await ch.close()


def training_package(tmp: Path) -> Path:
    jobs = jobs_document(training=[{"cfg": "c.yaml", "run_path": f"models/{RUN}", "train_labels": "l.pkg.slp"}])
    return write_package(tmp / "pkg.zip", {"l.pkg.slp": b"labels", "c.yaml": b"data_config: {}\n"}, jobs)


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


async def run_against(signaling_server, room, tmp_path, worker_kw, *, results_dir, package=None, kind="train"):
    async with HostileWorker(signaling_server.url, room, tmp_path, **worker_kw) as hostile:
        job = RemoteJob(package or training_package(tmp_path), server_url=signaling_server.url,
                        credentials=RoomCredentials(*room), results_dir=results_dir,
                        policy=DirectWorker(hostile.sig.peer_id), kind=kind, models_subdir="")
        try:
            return await asyncio.wait_for(job.run(), 60), hostile
        except JobFailedError as exc:
            return exc, hostile


def project(tmp_path: Path) -> tuple[Path, Path]:
    """``tmp/work/project/out`` (the output) beside ``tmp/work/sibling-project/notes.txt``."""
    work = tmp_path / "work"
    (work / "sibling-project").mkdir(parents=True)
    (work / "sibling-project" / "notes.txt").write_text("mine")
    (work / "project").mkdir()
    (work / "project" / "labels.slp").write_text("my labels")
    return work, work / "project" / "out"


async def test_c2_model_named_dotdotdot_zip_writes_nothing_outside(signaling_server, room, tmp_path):
    work, out = project(tmp_path)
    before = tree(work)
    slip = zip_bytes({"../labels.slp": b"OVERWRITTEN", "../sibling-project/notes.txt": b"OVERWRITTEN", "../x": b"new"})
    got, _ = await run_against(signaling_server, room, tmp_path, {"results": [("model", "...zip", slip)]}, results_dir=out)
    assert isinstance(got, JobFailedError) and "not one of the runs" in str(got)
    assert tree(work) == before, "nothing outside (or inside) the output folder changed"


async def test_c2_model_entries_climbing_out_refuse_the_result(signaling_server, room, tmp_path):
    work, out = project(tmp_path)
    before = tree(work)
    slip = zip_bytes({f"{RUN}/best.ckpt": b"w", "../../sibling-project/notes.txt": b"OVERWRITTEN"})
    got, _ = await run_against(signaling_server, room, tmp_path, {"results": [("model", f"{RUN}.zip", slip)]}, results_dir=out)
    assert isinstance(got, JobFailedError) and "could not be unpacked" in str(got)
    assert tree(work) == before
    assert not [p for p in out.rglob("*") if p.name.startswith(".unpacking")], "no staging folder left"


async def test_c3_predictions_named_like_the_users_labels_are_refused(signaling_server, room, tmp_path):
    work, _ = project(tmp_path)
    data = work / "project" / "labels.slp"
    before = tree(work)
    package = tmp_path / "track.zip"
    jobs = jobs_document(inference=[{"data_path": "labels.slp", "models": ["models/m"], "output_path": "labels.predictions.slp"}])
    write_package(package, {"labels.slp": data, "models/m/best.ckpt": b"w"}, jobs)
    got, _ = await run_against(signaling_server, room, tmp_path, {"results": [("predictions", "labels.slp", b"OVERWRITTEN")]},
                               results_dir=data.parent, package=package, kind="track")
    assert isinstance(got, JobFailedError) and "not a file the package asked for" in str(got)
    assert tree(work) == before and data.read_text() == "my labels"


async def test_c3_client_track_never_writes_over_its_inputs(signaling_server, room, tmp_path):
    """The real CLI: the predictions go next to the labels under a new name, even when taken."""
    work, _ = project(tmp_path)
    data = work / "project" / "labels.slp"
    model = work / "model"
    model.mkdir()
    (model / "best.ckpt").write_text("w")
    taken = data.with_name("labels.predictions.slp")
    taken.write_text("an older predictions file")
    before = tree(work)
    results = [("predictions", "labels.predictions.slp", b"NEW PREDICTIONS")]
    async with HostileWorker(signaling_server.url, room, tmp_path, results) as hostile:
        proc = await asyncio.create_subprocess_exec(
            *sleap_rtc_argv("client-track", str(data), "-m", str(model), "--server", signaling_server.url,
                            "--room-id", room[0], "--token", room[1], "--worker-id", hostile.sig.peer_id),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env={**os.environ, "COLUMNS": "200"})
        output, _ = await asyncio.wait_for(proc.communicate(), 90)
    text = output.decode(errors="replace")
    assert proc.returncode == 0, text
    after = tree(work)
    assert {k: v for k, v in after.items() if k in before} == before, "no existing file changed"
    new = set(after) - set(before)
    assert new == {"project/labels-2.predictions.slp"}, (new, text)
    assert after["project/labels-2.predictions.slp"] == b"NEW PREDICTIONS"


def test_c3_explicit_output_that_exists_is_refused_before_connecting(tmp_path):
    import subprocess

    data = tmp_path / "labels.slp"
    data.write_text("my labels")
    (tmp_path / "m").mkdir()
    proc = subprocess.run(sleap_rtc_argv("client-track", str(data), "-m", str(tmp_path / "m"), "--output", str(data),
                                         "--server", "ws://127.0.0.1:9", "--room-id", "r", "--token", "t", "--auto-select"),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "already exists" in proc.stderr and data.read_text() == "my labels"


async def test_c4_zip_bomb_result_refused_and_nothing_left(signaling_server, room, tmp_path):
    work, out = project(tmp_path)
    # Each entry is under the per-entry floor; together they are a bomb (the whole-archive ratio).
    bomb = zip_bytes({f"{RUN}/zeros-{i}.bin": b"\0" * MiB for i in range(24)})
    assert len(bomb) < MiB
    got, _ = await run_against(signaling_server, room, tmp_path, {"results": [("model", f"{RUN}.zip", bomb)]}, results_dir=out)
    assert isinstance(got, JobFailedError) and "zip bomb" in str(got)
    leftover = sum(p.stat().st_size for p in work.rglob("*") if p.is_file())
    assert leftover < 1000, f"{leftover} bytes left in the project"


async def test_c5_petabyte_result_refused_and_partials_cleaned(signaling_server, room, tmp_path):
    work, out = project(tmp_path)
    worker_kw = {"results": [("model", f"{RUN}.zip", b"never")], "declare": 10**15, "send_bytes": 8 * MiB, "hang_up": True}
    got, hostile = await run_against(signaling_server, room, tmp_path, worker_kw, results_dir=out)
    assert isinstance(got, JobFailedError) and "at most" in str(got), got
    partial = default_cache_dir() / "partial"
    assert not partial.exists() or not list(partial.iterdir()), "no partial result kept"
    assert sum(p.stat().st_size for p in work.rglob("*") if p.is_file()) < 1000
    assert hostile.refusals and hostile.refusals[0]["reason"] in ("file_too_large", "not_expected")


async def test_c7_existing_run_folder_is_never_replaced(signaling_server, room, tmp_path):
    work, out = project(tmp_path)
    mine = out / RUN
    mine.mkdir(parents=True)
    (mine / "best.ckpt").write_text("my model")
    model = zip_bytes({f"{RUN}/best.ckpt": b"worker model"})
    got, _ = await run_against(signaling_server, room, tmp_path, {"results": [("model", f"{RUN}.zip", model)]}, results_dir=out)
    assert not isinstance(got, Exception), got
    assert (mine / "best.ckpt").read_text() == "my model"
    assert (out / f"{RUN}-2" / "best.ckpt").read_text() == "worker model"
    assert got.files == [out / f"{RUN}-2"]


def test_c7_gui_install_never_replaces_a_projects_model(tmp_path):
    from types import SimpleNamespace

    from sleap_rtc.core.remote_job import JobSummary
    from sleap_rtc.gui.sleap_attach import RemoteTraining

    project_dir = tmp_path / "project"
    (project_dir / "models" / RUN).mkdir(parents=True)
    (project_dir / "models" / RUN / "best.ckpt").write_text("my model")
    results = tmp_path / "results" / "models"
    (results / RUN).mkdir(parents=True)
    (results / RUN / "best.ckpt").write_text("remote model")
    installed = RemoteTraining.install_models(SimpleNamespace(project_dir=project_dir), JobSummary(worker="w", peer_id="w", duration_s=0.0, models_dir=results))
    assert installed == [project_dir / "models" / f"{RUN}-2"]
    assert (project_dir / "models" / RUN / "best.ckpt").read_text() == "my model"
    assert (project_dir / "models" / f"{RUN}-2" / "best.ckpt").read_text() == "remote model"
    assert sorted(p.name for p in (project_dir / "models").iterdir()) == [RUN, f"{RUN}-2"]
