"""The job-directory clean-up policy."""

from __future__ import annotations

import os

from sleap_rtc.worker.jobdirs import jobs_root, new_job_dir, prune_job_dirs


def test_prune_keeps_newest_and_touches_nothing_else(tmp_path):
    keep_me = tmp_path / "other.txt"
    keep_me.write_text("not a job")
    dirs = []
    for i in range(5):
        d = new_job_dir(tmp_path, f"job/{i}")  # ids are sanitised: never a path
        d.mkdir(parents=True)
        os.utime(d, (1000 + i, 1000 + i))
        dirs.append(d)
    assert all(d.parent == jobs_root(tmp_path) for d in dirs)
    deleted = prune_job_dirs(tmp_path, keep=2)
    assert sorted(deleted) == sorted(dirs[:3])
    assert sorted(jobs_root(tmp_path).iterdir()) == sorted(dirs[3:])
    assert keep_me.exists()
    assert prune_job_dirs(tmp_path / "missing") == []
