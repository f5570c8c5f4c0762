"""``core.data_roots``: the worker's read-only roots, the client's prefix map, and refusals."""

from __future__ import annotations

import pytest

from sleap_rtc.core.data_roots import (
    DataRootError,
    DataRootMap,
    parse_root_spec,
    resolve_in_root,
    worker_roots,
)
from sleap_rtc.core.file_hashes import sampled_digest


@pytest.fixture
def lab(tmp_path):
    root = tmp_path / "lab"
    (root / "day1").mkdir(parents=True)
    video = root / "day1" / "cam.mp4"
    video.write_bytes(b"frames" * 1000)
    secret = tmp_path / "secret.mp4"
    secret.write_bytes(b"private")
    (root / "link.mp4").symlink_to(secret)
    return root, video


def ref(path: str, video=None, **kw):
    out = {"root": "lab", "path": path, "size": video.stat().st_size if video else 0,
           "sample": sampled_digest(video) if video else "0" * 64}
    return {**out, **kw}


def test_a_mapped_video_resolves_on_the_worker(lab):
    root, video = lab
    roots = worker_roots([f"lab={root}"])
    found = DataRootMap.from_specs([f"lab={root}"]).match(video, offered=["lab"])
    assert found is not None and found.path == "day1/cam.mp4"
    assert resolve_in_root(roots, found.as_plan()) == video.resolve()
    assert DataRootMap.from_specs([f"lab={root}"]).match(video, offered=["other"]) is None


@pytest.mark.parametrize("path, words", [
    ("/etc/passwd", "absolute path"),
    ("../secret.mp4", "climbs out"),
    ("day1/../../secret.mp4", "climbs out"),
    ("C:/x.mp4", "absolute path"),
    ("link.mp4", "resolves outside the data root lab"),
    ("day1/none.mp4", "not a file"),
    ("day1", "not a file"),
    ("a\x00b", "NUL"),
])
def test_paths_outside_the_root_are_refused(lab, path, words):
    root, _ = lab
    with pytest.raises(DataRootError, match=words):
        resolve_in_root(worker_roots([f"lab={root}"]), ref(path))


def test_another_file_at_the_path_is_refused(lab):
    root, video = lab
    roots = worker_roots([f"lab={root}"])
    good = ref("day1/cam.mp4", video)
    with pytest.raises(DataRootError, match="not the 1 bytes"):
        resolve_in_root(roots, {**good, "size": 1})
    with pytest.raises(DataRootError, match="sampled blocks differ"):
        resolve_in_root(roots, {**good, "sample": "f" * 64})
    with pytest.raises(DataRootError, match="no data root 'nas'"):
        resolve_in_root(roots, {**good, "root": "nas"})


def test_specs_are_checked_and_the_map_is_remembered(lab, tmp_path):
    root, video = lab
    with pytest.raises(DataRootError, match="NAME=PATH"):
        parse_root_spec("lab")
    with pytest.raises(DataRootError, match="letters, digits"):
        parse_root_spec("la b=/x")
    with pytest.raises(DataRootError, match="not a folder"):
        worker_roots([f"lab={video}"])
    with pytest.raises(DataRootError, match="twice"):
        worker_roots([f"lab={root}", f"lab={root}"])
    saved = DataRootMap.from_specs([f"lab={root}"]).save(tmp_path / "roots.json")
    assert DataRootMap.load(saved).prefixes == {"lab": str(root.resolve())}
    (tmp_path / "bad.json").write_text("[1, 2]")
    assert DataRootMap.load(tmp_path / "bad.json").prefixes == {}
