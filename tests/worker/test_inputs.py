"""``worker.inputs``: videos sent on their own, data-root videos and models by id."""

from __future__ import annotations

import hashlib

import pytest

from sleap_rtc.core.file_hashes import sampled_digest
from sleap_rtc.core.package import parse_jobs, write_model_zip
from sleap_rtc.worker.inputs import InputError, JobInputs


def entry(video: dict, **extra) -> object:
    item = {"video": video, "model_ids": ["a" * 64], "output_path": "0.predictions.slp", **extra}
    return parse_jobs({"inference": [item]}).inference[0]


def test_a_sent_video_moves_into_the_job_and_an_unsent_one_is_refused(tmp_path):
    data = b"not really a video"
    sha = hashlib.sha256(data).hexdigest()
    received = tmp_path / "incoming" / "v.mp4"
    received.parent.mkdir()
    received.write_bytes(data)
    work = tmp_path / "work"
    work.mkdir()
    inputs = JobInputs(received={sha: received})
    inf = entry({"sha256": sha, "suffix": ".mp4"})
    assert inputs.video(inf, work) == f"videos/{sha}.mp4"
    assert (work / "videos" / f"{sha}.mp4").read_bytes() == data
    assert inputs.video(inf, work) == f"videos/{sha}.mp4"  # a second entry on the same video
    with pytest.raises(InputError, match="never sent"):
        inputs.video(entry({"sha256": "b" * 64, "suffix": ".mp4"}), work)


def test_a_data_root_video_is_read_in_place_and_checked(tmp_path):
    root = tmp_path / "lab"
    root.mkdir()
    video = root / "a.mp4"
    video.write_bytes(b"x" * 5000)
    ref = {"root": "lab", "path": "a.mp4", "size": 5000, "sample": sampled_digest(video)}
    inputs = JobInputs(data_roots={"lab": root.resolve()})
    assert inputs.video(entry(ref), tmp_path) == str(video.resolve())
    with pytest.raises(InputError, match="no data root 'other'"):
        inputs.video(entry({**ref, "root": "other"}), tmp_path)
    with pytest.raises(InputError, match="not the 4999 bytes"):
        inputs.video(entry({**ref, "size": 4999}), tmp_path)


def test_a_model_id_comes_from_this_client_or_from_what_the_worker_holds(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "training_config.yaml").write_text("model_config: {}\n")
    (folder / "best.ckpt").write_bytes(b"weights")
    zipped, sha = write_model_zip(folder, tmp_path / "m.zip")
    cache = tmp_path / "cache"
    (cache / "files").mkdir(parents=True)
    (cache / "files" / sha).write_bytes(zipped.read_bytes())
    work = tmp_path / "work"
    work.mkdir()
    inputs = JobInputs(cache_dir=cache)
    rel = inputs.model(sha, work)
    assert (work / rel / "best.ckpt").read_bytes() == b"weights"
    assert inputs.model(sha, work) == rel  # unpacked once per job
    with pytest.raises(InputError, match="does not hold the model"):
        inputs.model("c" * 64, work)
    not_a_model = tmp_path / "junk"
    not_a_model.mkdir()
    (not_a_model / "notes.txt").write_text("hi")
    junk_zip, junk_sha = write_model_zip(not_a_model, tmp_path / "junk.zip")
    with pytest.raises(InputError, match="no training config"):
        JobInputs(received={junk_sha: junk_zip}).model(junk_sha, work)
