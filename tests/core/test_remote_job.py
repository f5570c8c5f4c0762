"""Result files from the worker are hostile input: unit tests of how the client places them.

The whole client flow runs against real workers in ``tests/client/test_remote_job_e2e.py``.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from sleap_rtc.core.files import ReceivedFile
from sleap_rtc.core.phases import JobPhases, Phase
from sleap_rtc.core.package import UnsafeArchiveError
from sleap_rtc.core.remote_job import JobFailedError, JobSession, JobSummary, ResultRefused, _place_result


def make_zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def test_model_zip_is_unpacked_without_repeating_its_run_folder(tmp_path):
    z = make_zip(tmp_path / "in.zip", {"run1/best.ckpt": b"w", "run1/cfg/training_config.yaml": b"c"})
    target = _place_result(z, tmp_path / "out", "model", "run1.zip")
    assert target == tmp_path / "out" / "models" / "run1"
    assert (target / "best.ckpt").read_bytes() == b"w" and (target / "cfg" / "training_config.yaml").is_file()
    assert not z.exists()


def test_zip_entries_escaping_the_target_refuse_the_whole_result(tmp_path):
    z = make_zip(tmp_path / "in.zip", {"../../evil.txt": b"x", "ok.txt": b"fine"})
    with pytest.raises(UnsafeArchiveError, match=r"'\.\.'"):
        _place_result(z, tmp_path / "out", "model", "run.zip")
    assert sorted(p.name for p in tmp_path.rglob("*.txt")) == []
    assert not (tmp_path / "out" / "models").exists()


@pytest.mark.parametrize("name", ["..", "../x.slp", "/etc/passwd", "a\\..\\..\\b.slp", "", ".hidden.slp"])
def test_result_names_never_leave_the_output_dir(tmp_path, name):
    received = tmp_path / "incoming" / "recv.bin"
    received.parent.mkdir()
    received.write_bytes(b"data")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ResultRefused):
        _place_result(received, out, "predictions", name)
    assert list(out.iterdir()) == []


class _FakeChannel:
    """Just enough of a ``PeerChannel`` for ``JobSession._receive_result``."""

    remote_peer_id = "worker-x"
    closed = False

    def __init__(self, received: ReceivedFile):
        self._received = received

    async def receive_file(self, timeout=None):
        return self._received


async def test_a_corrupt_model_zip_fails_the_job_with_a_clear_error(tmp_path):
    bogus = tmp_path / "incoming" / "run.zip"
    bogus.parent.mkdir()
    bogus.write_bytes(b"this is not a zip file")
    received = ReceivedFile(path=bogus, name="run.zip", size=bogus.stat().st_size, sha256="s" * 64)
    phases = JobPhases()
    for phase in (Phase.CONNECTING, Phase.UPLOADING, Phase.TRAINING):
        phases.advance(phase)
    session = JobSession(_FakeChannel(received), tmp_path / "pkg.zip", output_dir=tmp_path / "out", phases=phases)
    summary = JobSummary(worker="w", peer_id="worker-x", duration_s=0.0)
    msg = {"type": "job_result", "job_id": session.job_id, "kind": "model", "name": "run.zip", "sha256": "s" * 64,
           "size": bogus.stat().st_size}
    with pytest.raises(JobFailedError, match="run.zip could not be unpacked.*not a readable zip"):
        await session._receive_result(msg, summary)
    assert phases.phase == Phase.FAILED


def test_resumed_upload_is_described_in_mib():
    from sleap_rtc.core.remote_job import describe_resume

    assert describe_resume(61 * 2**20, 64 * 2**20).startswith("Upload resumed at 61 of 64 MiB")
    assert describe_resume(3 * 2**19, 4 * 2**20).startswith("Upload resumed at 1.5 of 4.0 MiB")


async def test_a_worker_that_cannot_read_job_submit_fails_the_job_at_once(tmp_path):
    # A worker of another jobs_wire version refuses job_submit as invalid_message: the
    # client must say so now, not wait on a job that will never start.
    import asyncio

    from channel_pairs import memory_channels
    from sleap_rtc.core.phases import JobPhases
    from sleap_rtc.core.protocol import INVALID_CHANNEL_MESSAGE
    from sleap_rtc.core.remote_job import JobRejectedError

    client, worker = await memory_channels(tmp_path)
    package = make_zip(tmp_path / "pkg.zip", {"labels.slp": b"x" * 1000})

    async def old_worker():
        await worker.receive_file(5)
        submit = await worker.receive(5)
        assert submit["type"] == "job_submit"
        worker.send_control({"type": "error", "reason": INVALID_CHANNEL_MESSAGE, "refused": "job_submit",
                             "message": "Refused 'job_submit' needs field 'config' of type dict."})

    serving = asyncio.ensure_future(old_worker())
    phases = JobPhases()
    phases.advance(Phase.CONNECTING)
    session = JobSession(client, package, output_dir=tmp_path / "out", phases=phases)
    with pytest.raises(JobRejectedError, match="could not read the job request: Refused 'job_submit' needs field 'config'"):
        await asyncio.wait_for(session.run(), 10)
    await serving
    assert phases.phase == Phase.FAILED
    await client.close()
    await worker.close()
