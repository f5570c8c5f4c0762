"""Per-job directories under the worker's work dir, and their clean-up policy.

Policy: every job runs in ``<work_dir>/jobs/<time>-<job_id>/`` (``work/`` = the extracted
package and sleap-nn's outputs, ``results/`` = the files sent back). The received package
is deleted as soon as the job ends. After each job's results were sent, only the newest
``keep`` job directories are kept (default 3, for debugging a recent failure); older ones
are deleted. Nothing outside ``<work_dir>/jobs`` is ever touched.

Modes: the work dir and every job dir are ``DIR_MODE`` (0700) and job files 0600
(``core.package.FILE_MODE``), so other accounts on the worker cannot read users' data.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

DEFAULT_KEEP = 3
"""Job directories kept after results were sent."""
DIR_MODE = 0o700
"""Mode of the work dir, ``jobs/`` and every job directory."""

_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def jobs_root(work_dir: Path) -> Path:
    """``<work_dir>/jobs``: the only place job directories live."""
    return Path(work_dir) / "jobs"


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) if needed and make it ``DIR_MODE``: owner only."""
    path = Path(path)
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    path.chmod(DIR_MODE)
    return path


def new_job_dir(work_dir: Path, job_id: str) -> Path:
    """A fresh (not yet created) directory for ``job_id``; the id is sanitised.

    ``<work_dir>/jobs`` is created (``DIR_MODE``) if needed; the job dir itself is not."""
    private_dir(jobs_root(work_dir))
    name = f"{time.strftime('%Y%m%d-%H%M%S')}-{_SAFE.sub('_', job_id)[:64]}"
    path = jobs_root(work_dir) / name
    n = 1
    while path.exists():  # the same id twice in one second
        n += 1
        path = jobs_root(work_dir) / f"{name}-{n}"
    return path


def prune_job_dirs(work_dir: Path, keep: int = DEFAULT_KEEP) -> list[Path]:
    """Delete all but the newest ``keep`` job directories; returns the deleted ones."""
    root = jobs_root(work_dir)
    if not root.is_dir():
        return []
    dirs = sorted((p for p in root.iterdir() if p.is_dir() and not p.is_symlink()), key=lambda p: p.stat().st_mtime)
    doomed = dirs[: max(0, len(dirs) - max(0, keep))]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed
