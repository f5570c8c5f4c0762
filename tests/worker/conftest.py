"""Fixtures for worker tests (helpers live in ``worker_helpers``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from worker_helpers import TINY_PACKAGE


@pytest.fixture
def tiny_package(tmp_path: Path) -> Path:
    """A copy of the checked-in tiny training-job package."""
    assert TINY_PACKAGE.is_file(), "resources/tiny is missing: run python resources/make_tiny_project.py"
    dest = tmp_path / "tiny.training_job.zip"
    shutil.copy(TINY_PACKAGE, dest)
    return dest
