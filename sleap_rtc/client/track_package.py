"""The package ``client-track`` uploads: the data, the models and a ``jobs.yaml`` asking for
inference (the worker reads the same format as SLEAP's training packages).

Layout: ``<data>.slp``, ``models/<model name>/...`` (a model folder as is, or a model
``.zip`` unpacked), and ``jobs.yaml`` with one ``inference`` entry whose output is
``<data stem>.predictions.slp``. Written by ``core.package.write_package``; a model zip is
unpacked with ``core.package.safe_extract`` (it may come from a worker).
"""

from __future__ import annotations

import re
import tempfile
import zipfile
from pathlib import Path

from sleap_rtc.core.package import MODELS_DIR, PREDICTIONS_SUFFIX, PackageError, jobs_document, safe_extract, write_package


class TrackPackageError(ValueError):
    """The inputs cannot be packed; the message says which one and why."""


def _model_name(path: Path, taken: set[str]) -> str:
    # The worker only accepts run names of letters, digits and _.=+- (they go into overrides).
    base = re.sub(r"[^A-Za-z0-9_.=+\-]", "_", path.name.removesuffix(".zip")) or "model"
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    taken.add(name)
    return name


def predictions_name(data: Path) -> str:
    """The predictions file the package asks for: ``<data stem>.predictions.slp``."""
    return f"{Path(data).stem}{PREDICTIONS_SUFFIX}"


def build_track_package(data: Path, models: list[Path], work_dir: Path, *, options: dict | None = None) -> Path:
    """Write the inference package into ``work_dir`` and return its path."""
    data = Path(data)
    if data.suffix != ".slp":
        raise TrackPackageError(f"{data} is not a SLEAP labels file (.slp).")
    if not models:
        raise TrackPackageError("Give at least one trained model with --model.")
    work_dir.mkdir(parents=True, exist_ok=True)
    out = work_dir / f"{data.stem}.track.zip"
    taken: set[str] = set()
    names: list[str] = []
    entries: dict[str, Path] = {data.name: data}
    unpacked = Path(tempfile.mkdtemp(prefix="models-", dir=work_dir))
    for model in models:
        model = Path(model)
        name = _model_name(model, taken)
        names.append(f"{MODELS_DIR}/{name}")
        if model.is_dir():
            folder = model
        elif zipfile.is_zipfile(model):
            try:
                folder = safe_extract(model, unpacked / name)
            except PackageError as exc:
                raise TrackPackageError(f"Model zip {model}: {exc}") from None
        else:
            raise TrackPackageError(f"Model {model} is neither a folder nor a .zip file.")
        files = [f for f in sorted(folder.rglob("*")) if f.is_file() and not f.is_symlink()]
        if not files:
            raise TrackPackageError(f"Model {model} is empty.")
        for f in files:
            entries[f"{MODELS_DIR}/{name}/{f.relative_to(folder).as_posix()}"] = f
    jobs = jobs_document(inference=[{"data_path": data.name, "models": names, "output_path": predictions_name(data),
                                     "options": dict(options or {})}])
    write_package(out, entries, jobs)
    return out
