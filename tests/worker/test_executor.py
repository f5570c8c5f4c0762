"""Executor tests with a fast stand-in for sleap-nn: progress, logs, stop, cancel, failures."""

from __future__ import annotations

import asyncio
import sys
import zipfile
from pathlib import Path

import pytest

from sleap_rtc.core.protocol import ChannelType
from sleap_rtc.worker.executor import CANCELLED, COMPLETED, FAILED, JobExecutor
from worker_helpers import write_zip

FAKE = [sys.executable, str(Path(__file__).with_name("fake_sleap_nn.py"))]


class Recorder:
    """Collects emitted messages; can wait for one matching a predicate."""

    def __init__(self):
        self.messages: list[dict] = []
        self._event = asyncio.Event()

    async def __call__(self, msg: dict) -> None:
        self.messages.append(msg)
        self._event.set()

    def of(self, kind: ChannelType) -> list[dict]:
        return [m for m in self.messages if m["type"] == kind]

    async def wait_for(self, pred, timeout: float = 20.0) -> dict:
        async def loop():
            while True:
                for m in self.messages:
                    if pred(m):
                        return m
                self._event.clear()
                await self._event.wait()
        return await asyncio.wait_for(loop(), timeout)


async def test_fake_training_streams_progress_and_returns_models(tmp_path, tiny_package):
    rec = Recorder()
    ex = JobExecutor("job1", command=FAKE, env={"FAKE_MODE": "ok"})
    outcome = await asyncio.wait_for(ex.run(tiny_package, tmp_path / "job", rec), 30)
    assert outcome.status == COMPLETED, outcome.reason
    events = [m["event"] for m in rec.of(ChannelType.JOB_PROGRESS)]
    assert [e["event"] for e in events if e["event"] in ("train_begin", "train_end")] == ["train_begin", "train_end"]
    epoch_ends = [e for e in events if e["event"] == "epoch_end"]
    assert len(epoch_ends) == 2 and "train/loss" in epoch_ends[0]["logs"]
    assert all(m["job_id"] == "job1" for m in rec.messages)
    # Results: the model zip (best.ckpt at its top) and the predictions.
    names = [p.name for p in outcome.results]
    assert names == ["single_instance.n=10.zip", "tiny.pkg.slp.predictions.slp"]
    with zipfile.ZipFile(outcome.results[0]) as zf:
        assert "best.ckpt" in zf.namelist()  # a model zip holds the files at its top


async def test_progress_bar_redraws_are_flagged(tmp_path, tiny_package):
    rec = Recorder()
    await asyncio.wait_for(JobExecutor("j", command=FAKE).run(tiny_package, tmp_path / "job", rec), 30)
    bar = [m for m in rec.of(ChannelType.JOB_LOG) if m["line"].startswith("Epoch 0:")]
    assert [m["redraw"] for m in bar] == [False, True, True, True, True]
    assert bar[-1]["line"] == "Epoch 0: 5/5" and bar[0]["stream"] == "stderr"


async def test_failure_reason_has_last_stderr_lines(tmp_path, tiny_package):
    rec = Recorder()
    ex = JobExecutor("j", command=FAKE, env={"FAKE_MODE": "fail"})
    outcome = await asyncio.wait_for(ex.run(tiny_package, tmp_path / "job", rec), 30)
    assert outcome.status == FAILED and outcome.results == []
    assert "exit code 3" in outcome.reason and "CUDA out of memory" in outcome.reason


async def test_missing_sleap_nn_is_an_actionable_failure(tmp_path, tiny_package):
    ex = JobExecutor("j", command=[str(tmp_path / "no-such-sleap-nn")])
    outcome = await asyncio.wait_for(ex.run(tiny_package, tmp_path / "job", Recorder()), 10)
    assert outcome.status == FAILED and "pip install" in outcome.reason


async def test_hostile_package_fails_without_running_anything(tmp_path):
    z = write_zip(tmp_path / "p.zip", {"../escape.txt": b"x", "jobs.yaml": b"{}"})
    rec = Recorder()
    outcome = await JobExecutor("j", command=FAKE).run(z, tmp_path / "job", rec)
    assert outcome.status == FAILED and "refused" in outcome.reason and "'..'" in outcome.reason
    assert not (tmp_path / "escape.txt").exists() and not rec.of(ChannelType.JOB_PROGRESS)


async def test_stop_ends_training_cleanly_and_keeps_model(tmp_path, tiny_package):
    rec = Recorder()
    ex = JobExecutor("j", command=FAKE, env={"FAKE_MODE": "slow"})
    task = asyncio.create_task(ex.run(tiny_package, tmp_path / "job", rec))
    await rec.wait_for(lambda m: m["type"] == ChannelType.JOB_PROGRESS and m["event"]["event"] == "epoch_end")
    ex.stop()
    outcome = await asyncio.wait_for(task, 20)
    assert outcome.status == COMPLETED and outcome.stopped_early
    epochs = [m for m in rec.of(ChannelType.JOB_PROGRESS) if m["event"]["event"] == "epoch_end"]
    assert len(epochs) < 20  # it did not run its 200 epochs
    assert rec.of(ChannelType.JOB_PROGRESS)[-1]["event"]["event"] == "train_end"
    with zipfile.ZipFile(outcome.results[0]) as zf:
        assert "best.ckpt" in zf.namelist()  # a model zip holds the files at its top


async def test_stop_before_training_starts_applies_to_first_model(tmp_path, tiny_package):
    rec = Recorder()
    ex = JobExecutor("j", command=FAKE, env={"FAKE_MODE": "slow"})
    ex.stop()
    outcome = await asyncio.wait_for(ex.run(tiny_package, tmp_path / "job", rec), 30)
    assert outcome.status == COMPLETED and outcome.stopped_early


async def test_cancel_kills_process_group_now(tmp_path, tiny_package):
    rec = Recorder()
    ex = JobExecutor("j", command=FAKE, env={"FAKE_MODE": "slow"})
    task = asyncio.create_task(ex.run(tiny_package, tmp_path / "job", rec))
    await rec.wait_for(lambda m: m["type"] == ChannelType.JOB_PROGRESS and m["event"]["event"] == "epoch_end")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    ex.cancel()
    outcome = await asyncio.wait_for(task, 10)
    assert outcome.status == CANCELLED and outcome.results == []
    assert loop.time() - t0 < 5


async def test_inference_failure_reported(tmp_path, tiny_package):
    ex = JobExecutor("j", command=FAKE, env={"FAKE_MODE": "fail_track"})
    outcome = await asyncio.wait_for(ex.run(tiny_package, tmp_path / "job", Recorder()), 30)
    assert outcome.status == FAILED and "Inference on tiny.pkg.slp" in outcome.reason and "no model found" in outcome.reason


async def test_emit_failures_do_not_break_the_job(tmp_path, tiny_package):
    async def broken(msg):
        raise ConnectionError("channel closed")

    outcome = await asyncio.wait_for(JobExecutor("j", command=FAKE).run(tiny_package, tmp_path / "job", broken), 30)
    assert outcome.status == COMPLETED


def test_training_process_dies_with_a_killed_worker(tmp_path):
    """sleap-nn runs in its own session (so cancel can kill its group); if the worker itself
    is SIGKILLed, the kernel must still take the training process down with it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    pid_file = tmp_path / "child.pid"
    parent_code = (
        "import subprocess, sys, time\n"
        "from sleap_rtc.children import die_with_parent\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],"
        " start_new_session=True, preexec_fn=die_with_parent)\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code])
    try:
        deadline = time.monotonic() + 20
        while not (pid_file.exists() and pid_file.read_text()):
            assert time.monotonic() < deadline, "the stand-in worker did not start its child"
            time.sleep(0.05)
        child = psutil.Process(int(pid_file.read_text()))
        assert child.is_running()
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        gone, alive = psutil.wait_procs([child], timeout=10)
        assert child in gone and not alive, "the training process outlived its killed worker"
    finally:
        parent.kill()


async def test_an_unforeseen_error_is_a_clear_failure_not_a_crash(tmp_path, tiny_package, monkeypatch):
    """Whatever goes wrong inside, the client gets a job_failed with a reason, never a
    dropped connection (which auto-select would read as a dead worker and retry elsewhere)."""
    import sleap_rtc.worker.executor as executor

    def broken(_job_dir, **_kw):
        raise AttributeError("'list' object has no attribute 'get'")

    monkeypatch.setattr(executor, "load_plan", broken)
    outcome = await JobExecutor("j-broken", command=FAKE).run(tiny_package, tmp_path / "job", Recorder())
    assert outcome.status == FAILED
    assert "could not run this job" in outcome.reason and "AttributeError" in outcome.reason


PRINT_ENV = [sys.executable, "-c",
             "import os, sys; print('SECRET=' + os.environ.get('SLEAP_RTC_TEST_SECRET', 'absent')); "
             "print('HOME=' + os.environ.get('HOME', '')); sys.exit(5)"]


async def test_w4_worker_environment_never_reaches_sleap_nn(tmp_path, tiny_package, monkeypatch):
    """A config that makes sleap-nn print a variable gets nothing: the job's environment is an allowlist."""
    monkeypatch.setenv("SLEAP_RTC_TEST_SECRET", "s3cr3t-only-in-the-worker-env")
    rec = Recorder()
    outcome = await asyncio.wait_for(JobExecutor("j-env", command=PRINT_ENV).run(tiny_package, tmp_path / "job", rec), 30)
    lines = [m["line"] for m in rec.of(ChannelType.JOB_LOG)]
    assert outcome.status == FAILED and "SECRET=absent" in lines, lines
    assert not any("s3cr3t" in line for line in lines) and "s3cr3t" not in outcome.reason
    home = next(line for line in lines if line.startswith("HOME="))[len("HOME="):]
    assert Path(home).is_relative_to(tmp_path / "job"), "HOME points into the job dir"


async def test_w8_job_stopped_at_the_wall_clock_limit(tmp_path, tiny_package):
    ex = JobExecutor("j-long", command=FAKE, env={"FAKE_MODE": "slow"}, max_seconds=2.0)
    t0 = asyncio.get_running_loop().time()
    outcome = await asyncio.wait_for(ex.run(tiny_package, tmp_path / "job", Recorder()), 30)
    assert outcome.status == FAILED and "--max-job-seconds" in outcome.reason and not outcome.results
    assert asyncio.get_running_loop().time() - t0 < 15


async def test_m3_job_dir_is_private(tmp_path, tiny_package):
    import stat

    outcome = await asyncio.wait_for(JobExecutor("j-modes", command=FAKE).run(tiny_package, tmp_path / "job", Recorder()), 30)
    assert outcome.status == COMPLETED
    assert stat.S_IMODE((tmp_path / "job").stat().st_mode) == 0o700
    for path in [*(tmp_path / "job" / "work").glob("*.slp"), *outcome.results]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


async def test_video_inference_streams_frame_progress_and_delivers_each_video_at_once(tmp_path):
    import hashlib
    import json

    from sleap_rtc.core.package import jobs_document, write_model_zip, write_package
    from sleap_rtc.worker.inputs import JobInputs

    model = tmp_path / "model"
    model.mkdir()
    (model / "training_config.yaml").write_text("model_config: {}\n")
    (model / "best.ckpt").write_bytes(b"w")
    model_zip, model_id = write_model_zip(model, tmp_path / "model.zip")
    received = {model_id: model_zip}
    entries = []
    for n in range(2):
        video = tmp_path / f"v{n}.mp4"
        video.write_bytes(f"video {n}".encode())
        sha = hashlib.sha256(video.read_bytes()).hexdigest()
        received[sha] = video
        entries.append({"video": {"sha256": sha, "suffix": ".mp4"}, "model_ids": [model_id], "models": [],
                        "output_path": f"{n}.predictions.slp", "frames": [[0, 3], [7, 7]],
                        "options": {"peak_threshold": 0.1, "batch_size": 2, "tracking": True}})
    package = write_package(tmp_path / "p.zip", {}, jobs_document(inference=entries))
    delivered: list[tuple[str, int]] = []
    rec = Recorder()

    async def deliver(path: Path) -> bool:
        progress = [m for m in rec.of(ChannelType.JOB_PROGRESS) if m["event"]["event"] == "inference_progress"]
        delivered.append((path.name, len(progress)))
        return True

    ex = JobExecutor("vid", command=FAKE)
    outcome = await asyncio.wait_for(ex.run(package, tmp_path / "job", rec, inputs=JobInputs(received=received),
                                            deliver=deliver), 30)
    assert outcome.status == COMPLETED, outcome.reason
    # Each video's predictions went out as soon as it was done, before the next one's progress.
    assert delivered == [("0.predictions.slp", 4), ("1.predictions.slp", 8)]
    assert outcome.delivered == outcome.results
    events = [m["event"] for m in rec.of(ChannelType.JOB_PROGRESS)]
    assert events[0] == {"event": "inference_progress", "video": 0, "n_processed": 2, "n_total": 8, "rate": 40.0,
                         "eta": 0.15}
    assert [e["video"] for e in events] == [0] * 4 + [1] * 4
    assert not any('"n_processed"' in m["line"] for m in rec.of(ChannelType.JOB_LOG))  # progress, not log lines
    argv = json.loads(outcome.results[0].read_text())
    assert argv[argv.index("--frames") + 1] == "0,1,2,3,7"
    assert argv[argv.index("--peak_threshold") + 1] == "0.1" and "--tracking" in argv and "--gui" in argv
    assert argv[argv.index("-m") + 1] == f"models/m-{model_id[:16]}"


async def test_video_inference_refuses_a_video_it_was_never_sent(tmp_path):
    from sleap_rtc.core.package import jobs_document, write_package

    package = write_package(tmp_path / "p.zip", {}, jobs_document(inference=[{
        "video": {"sha256": "d" * 64, "suffix": ".mp4"}, "model_ids": ["e" * 64], "output_path": "x.predictions.slp"}]))
    outcome = await JobExecutor("vid", command=FAKE).run(package, tmp_path / "job", Recorder())
    assert outcome.status == FAILED
    assert "Inference 1 was refused" in outcome.reason and "never sent" in outcome.reason
