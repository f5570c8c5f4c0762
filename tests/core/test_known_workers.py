"""The trust-on-first-use store: states, persistence, hostile or broken files."""

from __future__ import annotations

import json
import os
import stat

from sleap_rtc.core.identity import generate_key
from sleap_rtc.core.known_workers import KnownWorkers, Trust, default_store_path


def test_new_known_changed_none_and_persistence(tmp_path):
    path = tmp_path / "data" / "known_workers.json"
    a, b = generate_key().fingerprint, generate_key().fingerprint
    store = KnownWorkers(path)
    assert store.check("r", "w", a) == Trust.NEW and store.check("r", "w", None) == Trust.NONE
    store.remember("r", "w", a)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = KnownWorkers(path)  # another process, or the GUI's table next to a job's check
    assert again.check("r", "w", a) == Trust.KNOWN and again.check("r", "w", b) == Trust.CHANGED
    assert again.check("other-room", "w", b) == Trust.NEW  # keyed by room and name
    again.remember("r", "w", b)
    assert store.check("r", "w", b) == Trust.KNOWN  # the first instance sees the new file
    assert json.loads(path.read_text())["workers"]["r/w"]["fingerprint"] == b


def test_broken_or_hostile_files_read_as_empty(tmp_path):
    path = tmp_path / "known_workers.json"
    for text in ("{not json", "[1, 2]", '{"workers": {"r/w": {"fingerprint": "md5:x"}}}', "[" * 100_000):
        path.write_text(text)
        assert KnownWorkers(path).check("r", "w", generate_key().fingerprint) == Trust.NEW
    with open(path, "wb") as fh:
        fh.truncate(5 * 1024 * 1024)
    assert KnownWorkers(path).fingerprint("r", "w") is None


def test_default_store_is_in_the_user_data_dir_never_the_developers(tmp_path_factory):
    # tests/conftest.py points XDG_DATA_HOME at a temporary folder for every test.
    assert str(default_store_path()).startswith(os.environ["XDG_DATA_HOME"])
