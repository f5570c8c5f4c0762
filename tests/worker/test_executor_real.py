"""End-to-end executor test with the REAL sleap-nn on the checked-in tiny project."""

from __future__ import annotations

import asyncio
import time
import zipfile

import pytest

from sleap_rtc.core.protocol import ChannelType
from sleap_rtc.worker.executor import COMPLETED, JobExecutor
from worker_helpers import sleap_nn_executable

SLEAP_NN = sleap_nn_executable()


@pytest.mark.skipif(SLEAP_NN is None, reason="sleap-nn is not installed")
@pytest.mark.timeout(240)
async def test_real_sleap_nn_trains_streams_progress_and_predicts(tmp_path, tiny_package):
    messages: list[dict] = []

    async def emit(msg: dict) -> None:
        messages.append(msg)

    started = time.monotonic()
    ex = JobExecutor("real", command=[SLEAP_NN], accelerator="cpu", device="cpu")
    outcome = await asyncio.wait_for(ex.run(tiny_package, tmp_path / "job", emit), 200)
    elapsed = time.monotonic() - started
    print(f"real sleap-nn train + track: {elapsed:.1f} s")
    assert outcome.status == COMPLETED, outcome.reason

    events = [m["event"] for m in messages if m["type"] == ChannelType.JOB_PROGRESS]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "train_begin" and "train_end" in kinds
    epoch_ends = [e for e in events if e["event"] == "epoch_end"]
    assert [e["epoch"] for e in epoch_ends] == [0, 1]
    assert isinstance(epoch_ends[-1]["logs"]["train/loss"], float)
    assert any(m["type"] == ChannelType.JOB_LOG for m in messages)

    model_zip, predictions = outcome.results
    with zipfile.ZipFile(model_zip) as zf:
        names = zf.namelist()
    # A deterministic model zip: the files at the top (its sha256 is the model's id).
    assert "best.ckpt" in names and "training_config.yaml" in names

    import sleap_io as sio

    labels = sio.load_slp(str(predictions))
    assert predictions.name == "tiny.pkg.slp.predictions.slp" and len(labels.videos) == 1
