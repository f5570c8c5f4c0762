"""``core.json_store``: state files read forgivingly and replaced atomically."""

from __future__ import annotations

import os
import stat

import pytest

from sleap_rtc.core import json_store
from sleap_rtc.core.json_store import read_json, write_json


def test_a_written_file_reads_back_private_in_a_new_private_directory(tmp_path):
    path = tmp_path / "state" / "paths.json"
    write_json(path, {"version": 1, "paths": {"w": [4, True, 1.5]}}, indent=1)
    assert read_json(path) == {"version": 1, "paths": {"w": [4, True, 1.5]}}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert os.listdir(path.parent) == ["paths.json"]  # no temporary file left beside it


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "known.json"
    write_json(path, {"keep": 1})

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(json_store.os, "replace", broken_replace)
    with pytest.raises(OSError):
        write_json(path, {"keep": 2})
    assert read_json(path) == {"keep": 1}
    assert os.listdir(tmp_path) == ["known.json"]


@pytest.mark.parametrize("content, max_bytes", [
    (None, 1000), (b"{not json", 1000), (b"\xff\xfe", 1000), (b"[" * 100_000, 200_000), (b"{}" + b" " * 200, 100),
])
def test_missing_malformed_deep_or_oversized_files_read_as_none(tmp_path, content, max_bytes):
    path = tmp_path / "state.json"
    if content is not None:
        path.write_bytes(content)
    assert read_json(path, max_bytes) is None
    if content is not None:
        path.write_bytes(b"{}")
        assert read_json(path, max_bytes) == {}  # the same file, once sound, reads
