"""The package format (writer and reader) and the one safe-extract, as pure unit tests.

The same ``safe_extract`` runs on the worker (``tests/worker/test_package.py``, hostile
packages over the real transport in ``tests/faults/test_hostile.py``) and on the client
(``tests/client/test_hostile_results.py``, hostile workers over the real server).
"""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path

import pytest

from sleap_rtc.core.package import (
    FILE_MODE,
    MAX_TOTAL_RATIO,
    TOTAL_RATIO_FLOOR,
    ExtractLimits,
    PackageError,
    UnsafeArchiveError,
    expected_results,
    jobs_document,
    read_plan,
    safe_extract,
    write_package,
)

MiB = 1024 * 1024


def zip_of(path: Path, entries: dict[str, bytes], method=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", method) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def nothing_new(root: Path, before: set[Path]) -> bool:
    return set(root.rglob("*")) == before


def test_package_round_trip(tmp_path):
    labels = tmp_path / "fly.pkg.slp"
    labels.write_bytes(b"HDF5 stand-in")
    jobs = jobs_document(
        training=[{"cfg": "centroid.yaml", "run_path": "models/r1.centroid", "train_labels": "fly.pkg.slp"}],
        inference=[{"data_path": "fly.pkg.slp", "models": ["models/r1.centroid"], "output_path": "fly.pkg.slp.predictions.slp"}],
    )
    out = write_package(tmp_path / "pkg.zip", {"fly.pkg.slp": labels, "centroid.yaml": b"data_config: {}\n"}, jobs)
    with zipfile.ZipFile(out) as zf:
        assert sorted(zf.namelist()) == ["centroid.yaml", "fly.pkg.slp", "jobs.yaml"]
        assert zf.getinfo("fly.pkg.slp").compress_type == zipfile.ZIP_STORED
    plan = read_plan(out)
    (train,) = plan.training
    assert (train.cfg, train.run_path, train.run_name, train.ckpt_dir) == ("centroid.yaml", "models/r1.centroid", "r1.centroid", "models")
    (inf,) = plan.inference
    assert inf.data_path == "fly.pkg.slp" and inf.models == ("models/r1.centroid",)
    expected = expected_results(plan)
    assert expected.models == {"r1.centroid"} and expected.predictions == {"fly.pkg.slp.predictions.slp"}
    job = safe_extract(out, tmp_path / "job")
    assert (job / "fly.pkg.slp").read_bytes() == b"HDF5 stand-in"
    assert not list(tmp_path.glob(".*.part")), "no temporary file left by the writer"


@pytest.mark.parametrize("jobs", [
    {"training": [{"cfg": "../x.yaml", "run_path": "models/a"}]},
    {"training": [{"cfg": "a.yaml", "run_path": "models/.."}]},
    {"inference": [{"data_path": "/etc/passwd", "models": ["models/a"]}]},
])
def test_writer_refuses_a_plan_it_could_not_read_back(tmp_path, jobs):
    with pytest.raises(PackageError):
        write_package(tmp_path / "pkg.zip", {}, jobs)
    assert not (tmp_path / "pkg.zip").exists()


def test_w2_many_small_entries_bomb_refused(tmp_path):
    """Entries each under the per-entry ratio floor still add up: the whole-archive ratio stops them."""
    n = TOTAL_RATIO_FLOOR // MiB + 8
    z = zip_of(tmp_path / "bomb.zip", {f"z{i:04d}.bin": b"\0" * MiB for i in range(n)})
    total = n * MiB
    assert total / z.stat().st_size > MAX_TOTAL_RATIO, "the archive is a real bomb"
    before = set(tmp_path.rglob("*"))
    with pytest.raises(UnsafeArchiveError, match="possible zip bomb"):
        safe_extract(z, tmp_path / "out")
    assert nothing_new(tmp_path, before)


def test_small_archives_of_text_are_not_ratio_checked(tmp_path):
    # A few KiB of YAML compress 50x and more: only archives above the floor are judged.
    z = zip_of(tmp_path / "ok.zip", {f"c{i}.yaml": b"key: value\n" * 2000 for i in range(20)})
    assert len(list(safe_extract(z, tmp_path / "out").iterdir())) == 20


def test_declared_total_enforced_while_writing(tmp_path):
    z = zip_of(tmp_path / "p.zip", {"a.bin": b"a" * 5000, "b.bin": b"b" * 5000}, zipfile.ZIP_STORED)
    with pytest.raises(UnsafeArchiveError, match="more than"):
        safe_extract(z, tmp_path / "out", ExtractLimits(max_total_bytes=8000))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["../x", "/abs", "a/../../x", "C:/x", "..\\x"])
def test_paths_outside_refused(tmp_path, name):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        z = zip_of(tmp_path / "p.zip", {"ok.txt": b"1", name: b"2"})
    before = set(tmp_path.rglob("*"))
    with pytest.raises(UnsafeArchiveError):
        safe_extract(z, tmp_path / "out")
    assert nothing_new(tmp_path, before)


def test_links_refused(tmp_path):
    z = tmp_path / "p.zip"
    with zipfile.ZipFile(z, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(UnsafeArchiveError, match="symbolic link"):
        safe_extract(z, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_strip_top_folder(tmp_path):
    z = zip_of(tmp_path / "m.zip", {"run1/best.ckpt": b"w", "run1/cfg/a.yaml": b"c"})
    out = safe_extract(z, tmp_path / "run1", strip_top="run1")
    assert (out / "best.ckpt").read_bytes() == b"w" and (out / "cfg" / "a.yaml").is_file()
    other = safe_extract(z, tmp_path / "kept", strip_top="other")
    assert (other / "run1" / "best.ckpt").is_file()


def test_m3_extracted_files_are_private(tmp_path):
    z = zip_of(tmp_path / "p.zip", {"a/b.txt": b"secret", "c.txt": b"x"})
    out = safe_extract(z, tmp_path / "out")
    for path in [out, out / "a"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    for path in [out / "a" / "b.txt", out / "c.txt"]:
        assert stat.S_IMODE(path.stat().st_mode) == FILE_MODE, path


# ---------------------------------------------------------------------------- video entries

SHA = "ab" * 32


def video_plan(**item):
    from sleap_rtc.core.package import parse_jobs

    return parse_jobs({"inference": [{"model_ids": [SHA], "output_path": "0.v.predictions.slp", **item}]})


def test_video_entries_name_their_video_frames_models_and_options():
    from sleap_rtc.core.package import frame_ranges

    sent = video_plan(video={"sha256": SHA, "suffix": ".mp4"}, frames=[list(r) for r in frame_ranges([5, 1, 2, 3, 9])],
                      options={"peak_threshold": 0.5}).inference[0]
    assert sent.data_path == f"videos/{SHA}.mp4" and sent.frames == ((1, 3), (5, 5), (9, 9))
    assert sent.model_ids == (SHA,) and sent.models == () and sent.options == {"peak_threshold": 0.5}
    on_root = video_plan(video={"root": "lab", "path": "a/b.mp4", "size": 10, "sample": SHA}).inference[0]
    assert on_root.video == {"root": "lab", "path": "a/b.mp4", "size": 10, "sample": SHA} and on_root.frames is None
    assert expected_results(video_plan(video={"sha256": SHA, "suffix": ".mp4"})).predictions == {"0.v.predictions.slp"}


@pytest.mark.parametrize("item, words", [
    ({"video": {"sha256": "xyz", "suffix": ".mp4"}}, "64 lowercase hex"),
    ({"video": {"sha256": SHA, "suffix": "/../x"}}, "short file extension"),
    ({"video": {"root": "lab", "path": "../../etc/passwd", "size": 1, "sample": SHA}}, "climbs out"),
    ({"video": {"root": "lab", "path": "/etc/passwd", "size": 1, "sample": SHA}}, "absolute path"),
    ({"video": {"root": "l a b", "path": "x", "size": 1, "sample": SHA}}, "neither an uploaded video"),
    ({"video": {"sha256": SHA, "suffix": ".mp4"}, "frames": [[5, 1]]}, "not a \\[first, last\\] pair"),
    ({"video": {"sha256": SHA, "suffix": ".mp4"}, "frames": [[-1, 3]]}, "not a \\[first, last\\] pair"),
    ({"video": {"sha256": SHA, "suffix": ".mp4"}, "frames": []}, "1 to 100000"),
    ({"video": {"sha256": SHA, "suffix": ".mp4"}, "model_ids": ["../x"]}, "sha256 ids"),
    ({"video": {"sha256": SHA, "suffix": ".mp4"}, "model_ids": []}, "names no model"),
    ({"video": {"sha256": SHA, "suffix": ".mp4"}, "options": {"output_path": "/x"}}, "Unknown inference option"),
])
def test_hostile_video_entries_are_refused(item, words):
    with pytest.raises(PackageError, match=words):
        video_plan(**item)


def test_too_many_videos_are_refused():
    from sleap_rtc.core.package import MAX_VIDEOS, parse_jobs

    item = {"video": {"sha256": SHA, "suffix": ".mp4"}, "model_ids": [SHA], "output_path": "x.predictions.slp"}
    with pytest.raises(PackageError, match=f"at most {MAX_VIDEOS}"):
        parse_jobs({"inference": [item] * (MAX_VIDEOS + 1)})


def test_a_model_zip_is_the_same_bytes_for_the_same_files(tmp_path):
    import os

    from sleap_rtc.core.package import write_model_zip

    a = tmp_path / "single_instance.n=10"
    (a / "viz").mkdir(parents=True)
    (a / "best.ckpt").write_bytes(b"weights" * 1000)
    (a / "viz" / "x.png").write_bytes(b"png")
    b = tmp_path / "elsewhere" / "single_instance.n=10-2"  # a copy under another name, other mtimes
    (b / "viz").mkdir(parents=True)
    (b / "viz" / "x.png").write_bytes(b"png")
    (b / "best.ckpt").write_bytes(b"weights" * 1000)
    os.utime(b / "best.ckpt", (1, 1))
    (zip_a, sha_a), (zip_b, sha_b) = write_model_zip(a, tmp_path / "a.zip"), write_model_zip(b, tmp_path / "b.zip")
    assert sha_a == sha_b and zip_a.read_bytes() == zip_b.read_bytes()
    with zipfile.ZipFile(zip_a) as zf:
        assert zf.namelist() == ["best.ckpt", "viz/x.png"]
    (b / "best.ckpt").write_bytes(b"other weights")
    assert write_model_zip(b, tmp_path / "c.zip")[1] != sha_a
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PackageError, match="holds no files"):
        write_model_zip(empty, tmp_path / "d.zip")
