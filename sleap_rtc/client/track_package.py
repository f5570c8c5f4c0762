"""The package ``client-track`` uploads: the data, the models and a ``jobs.yaml`` asking for
inference (the worker reads the same format as SLEAP's training packages).

Layout: ``<data>.slp``, ``models/<model name>/...`` (a model folder as is, or a model
``.zip`` unpacked), and ``jobs.yaml`` with one ``inference`` entry whose output is
``<data stem>.predictions.slp``.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import yaml


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


def build_track_package(data: Path, models: list[Path], work_dir: Path) -> Path:
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
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(data, data.name)
        for model in models:
            model = Path(model)
            name = _model_name(model, taken)
            names.append(f"models/{name}")
            if model.is_dir():
                files = [f for f in sorted(model.rglob("*")) if f.is_file()]
                if not files:
                    raise TrackPackageError(f"Model folder {model} is empty.")
                for f in files:
                    zf.write(f, f"models/{name}/{f.relative_to(model).as_posix()}")
            elif zipfile.is_zipfile(model):
                with zipfile.ZipFile(model) as src:
                    for info in src.infolist():
                        if info.is_dir():
                            continue
                        rel = info.filename.lstrip("/")
                        if ".." in Path(rel).parts:
                            raise TrackPackageError(f"Model zip {model} has an entry outside its folder: {info.filename}.")
                        zf.writestr(f"models/{name}/{rel}", src.read(info))
            else:
                raise TrackPackageError(f"Model {model} is neither a folder nor a .zip file.")
        jobs = {"inference": [{"data_path": data.name, "models": names, "output_path": f"{data.stem}.predictions.slp"}]}
        zf.writestr("jobs.yaml", yaml.safe_dump(jobs, sort_keys=False))
    return out
