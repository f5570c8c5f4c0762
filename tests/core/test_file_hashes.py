"""``core.file_hashes``: the hash memo and the sampled-block digest."""

from __future__ import annotations

import hashlib
import os
import shutil

from sleap_rtc.core.file_hashes import SAMPLE_BLOCK_BYTES, SAMPLE_BLOCKS, HashMemo, sampled_digest


def test_the_memo_hashes_an_unchanged_file_once_and_a_changed_one_again(tmp_path):
    video = tmp_path / "v.mp4"
    video.write_bytes(os.urandom(300_000))
    memo_file = tmp_path / "memo.json"
    memo = HashMemo(memo_file)
    assert memo.sha256(video) == hashlib.sha256(video.read_bytes()).hexdigest()
    assert memo.hashed_bytes == 300_000
    again = HashMemo(memo_file)  # a later run reads the remembered hash
    assert again.sha256(video) == memo.sha256(video) and again.hashed_bytes == 0
    video.write_bytes(os.urandom(300_000))  # same size, new content, new mtime
    assert again.sha256(video) == hashlib.sha256(video.read_bytes()).hexdigest()
    assert again.hashed_bytes == 300_000


def test_a_broken_memo_is_ignored(tmp_path):
    memo_file = tmp_path / "memo.json"
    memo_file.write_text("{not json")
    video = tmp_path / "v.mp4"
    video.write_bytes(b"abc")
    assert HashMemo(memo_file).sha256(video) == hashlib.sha256(b"abc").hexdigest()


def test_the_sampled_digest_tells_a_copy_from_a_changed_block(tmp_path):
    size = SAMPLE_BLOCKS * SAMPLE_BLOCK_BYTES * 4
    a = tmp_path / "a.bin"
    a.write_bytes(os.urandom(size))
    b = tmp_path / "b.bin"
    shutil.copy(a, b)
    assert sampled_digest(a) == sampled_digest(b)
    with open(b, "r+b") as fh:  # the last block is always sampled
        fh.seek(size - 10)
        fh.write(b"0123456789")
    assert sampled_digest(a) != sampled_digest(b)
    small = tmp_path / "small.bin"
    small.write_bytes(b"tiny")
    assert sampled_digest(small) != sampled_digest(a)
