"""Helpers for worker tests: the checked-in tiny SLEAP project, zip builders, sleap-nn lookup."""

from __future__ import annotations

import shutil
import stat
import sys
import zipfile
from pathlib import Path

RESOURCES = Path(__file__).resolve().parents[2] / "resources"
TINY_PACKAGE = RESOURCES / "tiny" / "tiny.training_job.zip"


def sleap_nn_executable() -> str | None:
    """The ``sleap-nn`` console script next to this Python, or on PATH."""
    local = Path(sys.executable).with_name("sleap-nn")
    return str(local) if local.exists() else shutil.which("sleap-nn")


def write_zip(path: Path, entries: dict[str, bytes], *, symlinks: tuple[str, ...] = (), compress: bool = True) -> Path:
    """A zip with ``entries`` (name -> bytes); names in ``symlinks`` get symlink attributes."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as zf:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
            mode = (stat.S_IFLNK | 0o777) if name in symlinks else (stat.S_IFREG | 0o644)
            info.external_attr = mode << 16
            zf.writestr(info, data)
    return path


def package_entries(tiny: Path) -> dict[str, bytes]:
    """The entries of the tiny package, to build variants of it."""
    with zipfile.ZipFile(tiny) as zf:
        return {name: zf.read(name) for name in zf.namelist()}
