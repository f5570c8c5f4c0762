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
