"""The job package: its format (writer and reader) and THE one safe-extract for zips from
another machine.

Format: a flat zip (SLEAP's ``export_package`` layout, see ``docs/architecture.md``):
``<name>.pkg.slp`` (labels, frames embedded), one ``<head>.yaml`` sleap-nn config per model,
``train-script.sh`` (SLEAP's own, kept for humans and as a fallback) and ``jobs.yaml``, the
plan workers read::

    training:  [{cfg: <head>.yaml, run_path: models/<run>, train_labels: <name>.pkg.slp}]
    inference: [{data_path: ..., models: [models/<run>, ...], output_path: ..., ...}]

An inference entry may instead name a video that travels on its own (``video: {sha256,
suffix}``, the worker places it at ``videos/<sha256><suffix>``) or lies on a worker's data
root (``video: {root, path, size, sample}``, ``core.data_roots``), with ``frames`` (inclusive
``[first, last]`` ranges, at most ``MAX_FRAME_RANGES``; absent: every frame), ``model_ids``
(sha256 of deterministic model zips, ``write_model_zip``, sent on their own or held by the
worker) and ``options`` (``core.track_options``). At most ``MAX_VIDEOS`` entries per plan.

``write_package`` writes one, ``read_plan``/``parse_jobs`` read ``jobs.yaml`` into a
``JobPlan`` (every path checked by ``safe_relpath``), and ``expected_results`` says which
result files a worker may send back for it (the client refuses any other).

``safe_extract`` is used for every zip that comes from another machine: packages on the
worker, model zips on the client. Before anything is written it refuses: more than
``MAX_ENTRIES`` entries, more than ``MAX_TOTAL_BYTES`` declared, an entry compressed more
than ``MAX_ENTRY_RATIO`` times (above ``ENTRY_RATIO_FLOOR`` bytes), a whole archive
compressed more than ``MAX_TOTAL_RATIO`` times (above ``TOTAL_RATIO_FLOOR`` bytes: many
small entries each under the per-entry floor cannot add up to a bomb), absolute paths,
``..``, drive letters, links and device files, duplicate names (case-insensitive) and
encrypted entries. While extracting, an entry that inflates past its declared size stops
the extraction. On any refusal or error nothing is left behind: the destination directory
is created by ``safe_extract`` and removed again.

Pure Python and no Qt: the worker, the CLI and the GUI all use this module.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from sleap_rtc.core.data_roots import ROOT_NAME, DataRootError, check_root_path
from sleap_rtc.core.track_options import check_options

JOBS_FILE = "jobs.yaml"
"""The plan inside a package (what workers read)."""
TRAIN_SCRIPT = "train-script.sh"
"""SLEAP's training script inside a package (a fallback plan for packages without jobs.yaml)."""
MODELS_DIR = "models"
"""``trainer_config.ckpt_dir`` inside the package, as SLEAP writes it."""
PREDICTIONS_SUFFIX = ".predictions.slp"
"""Suffix of a predictions file (``<data>.predictions.slp``)."""

MAX_ENTRIES = 1000
"""Most entries an archive may hold (real packages have a handful; a model zip a few dozen)."""
MAX_TOTAL_BYTES = 64 * 1024**3
"""Most bytes an archive may unpack to, declared in its headers (and enforced while writing)."""
MAX_ENTRY_RATIO = 200.0
"""Most an entry larger than ``ENTRY_RATIO_FLOOR`` may be compressed (uncompressed/compressed)."""
ENTRY_RATIO_FLOOR = 1024 * 1024
"""Entries up to this size are not ratio-checked one by one (tiny text files compress a lot)."""
MAX_TOTAL_RATIO = 200.0
"""Most the whole archive may be compressed once it unpacks to more than ``TOTAL_RATIO_FLOOR``."""
TOTAL_RATIO_FLOOR = 16 * 1024 * 1024
"""Archives unpacking to at most this many bytes are not ratio-checked as a whole."""
EXTRACT_CHUNK_BYTES = 1024 * 1024
"""Bytes read per step while extracting."""
FILE_MODE = 0o600
"""Mode of every extracted file: only the owner reads job data."""
DIR_MODE = 0o700
"""Mode of every directory ``safe_extract`` creates."""

MAX_VIDEOS = 256
"""Most inference entries (videos) one plan may hold."""
MAX_FRAME_RANGES = 100_000
"""Most separate frame ranges one inference entry may name."""
MAX_FRAME_INDEX = 2**31 - 1
"""Largest frame index a plan may name."""
MODEL_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
"""Timestamp of every entry of a model zip: the same folder gives the same bytes (and id)."""
_SHA = re.compile(r"^[0-9a-f]{64}$")
_SUFFIX = re.compile(r"^\.[a-z0-9]{1,8}$")

RUN_NAME_OK = re.compile(r"^[A-Za-z0-9_.=+\-]+$")
"""The alphabet of a run name part (they go into Hydra overrides inside double quotes)."""


class PackageError(ValueError):
    """The package (or archive) is refused; the message says why, in words a user can act on."""


class UnsafeArchiveError(PackageError):
    """An archive from another machine was refused by ``safe_extract``; nothing was written."""


@dataclass(frozen=True)
class ExtractLimits:
    """Bounds on what an archive may unpack to (the defaults fit real SLEAP projects)."""

    max_files: int = MAX_ENTRIES
    max_total_bytes: int = MAX_TOTAL_BYTES
    max_ratio: float = MAX_ENTRY_RATIO
    ratio_min_bytes: int = ENTRY_RATIO_FLOOR
    max_total_ratio: float = MAX_TOTAL_RATIO
    total_ratio_min_bytes: int = TOTAL_RATIO_FLOOR
    chunk_bytes: int = EXTRACT_CHUNK_BYTES


# ---------------------------------------------------------------------------- paths


_DRIVE = re.compile(r"^[A-Za-z]:")


def safe_relpath(value: Any, what: str) -> str:
    """``value`` as a normalised relative POSIX path inside the job dir, or ``PackageError``."""
    if not isinstance(value, str) or not value.strip():
        raise PackageError(f"{what} must be a non-empty relative path, got {value!r}.")
    if "\x00" in value:
        raise PackageError(f"{what} contains a NUL character.")
    text = value.replace("\\", "/")
    if text.startswith("/") or _DRIVE.match(text):
        raise PackageError(f"{what} is an absolute path ({value!r}); packages may only use relative paths.")
    parts = [p for p in PurePosixPath(text).parts if p not in ("", ".")]
    if not parts:
        raise PackageError(f"{what} names no file ({value!r}).")
    if ".." in parts:
        raise PackageError(f"{what} climbs out of the job directory with '..' ({value!r}).")
    return "/".join(parts)


def inside(root: Path, rel: str) -> Path:
    """``root / rel`` resolved, or ``PackageError`` if that leaves ``root`` (links included)."""
    target = (Path(root) / rel).resolve()
    if not target.is_relative_to(Path(root).resolve()):
        raise PackageError(f"{rel!r} resolves outside the job directory.")
    return target


# ---------------------------------------------------------------------------- safe extract


def check_entries(infos: list[zipfile.ZipInfo], limits: ExtractLimits = ExtractLimits()) -> int:
    """Refuse (``UnsafeArchiveError``) an archive listing that breaks a limit; returns its declared size."""
    if len(infos) > limits.max_files:
        raise UnsafeArchiveError(f"The archive has {len(infos)} entries; at most {limits.max_files} are allowed.")
    seen: set[str] = set()
    total = compressed = 0
    for info in infos:
        try:
            rel = safe_relpath(info.filename, f"Zip entry {info.filename!r}")
        except PackageError as exc:
            raise UnsafeArchiveError(str(exc)) from None
        key = rel.lower()  # case-insensitive file systems would merge these
        if key in seen:
            raise UnsafeArchiveError(f"The archive holds {info.filename!r} twice.")
        seen.add(key)
        mode = info.external_attr >> 16
        if mode and stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
            kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"
            raise UnsafeArchiveError(f"Zip entry {info.filename!r} is {kind}; only plain files are allowed.")
        if info.flag_bits & 0x1:
            raise UnsafeArchiveError(f"Zip entry {info.filename!r} is encrypted.")
        total += info.file_size
        compressed += info.compress_size
        if total > limits.max_total_bytes:
            raise UnsafeArchiveError(f"The archive unpacks to more than {limits.max_total_bytes} bytes.")
        if info.file_size > limits.ratio_min_bytes and info.file_size > limits.max_ratio * max(info.compress_size, 1):
            raise UnsafeArchiveError(
                f"Zip entry {info.filename!r} is compressed {info.file_size // max(info.compress_size, 1)}x "
                f"(limit {limits.max_ratio:g}x): refused as a possible zip bomb."
            )
    if total > limits.total_ratio_min_bytes and total > limits.max_total_ratio * max(compressed, 1):
        raise UnsafeArchiveError(
            f"The archive unpacks {total // max(compressed, 1)}x its compressed size "
            f"(limit {limits.max_total_ratio:g}x over {limits.total_ratio_min_bytes} bytes): "
            "refused as a possible zip bomb."
        )
    return total


def safe_extract(
    zip_path: str | os.PathLike,
    dest: str | os.PathLike,
    limits: ExtractLimits = ExtractLimits(),
    *,
    strip_top: str | None = None,
) -> Path:
    """Check every entry of ``zip_path``, then extract it into the NEW directory ``dest``.

    ``strip_top``: when every entry lies under that one top folder, it is not repeated
    (a model zip ``<run>/best.ckpt`` lands as ``dest/best.ckpt``). Files are written with
    ``FILE_MODE``, never through a link, never over another entry. Raises
    ``UnsafeArchiveError`` (or ``PackageError`` for an unreadable zip) and leaves no
    ``dest`` behind.
    """
    dest = Path(dest)
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise PackageError(f"The archive is not a readable zip file ({exc}).") from None
    dest.mkdir(mode=DIR_MODE, parents=True, exist_ok=False)
    try:
        with zf:
            infos = zf.infolist()
            check_entries(infos, limits)
            rels = [safe_relpath(i.filename, "Zip entry") for i in infos]
            strip = strip_top is not None and bool(rels) and all(
                r.split("/")[0] == strip_top and (i.is_dir() or "/" in r) for r, i in zip(rels, infos)
            )
            budget = [limits.max_total_bytes]
            for info in infos:
                rel = safe_relpath(info.filename, "Zip entry")
                if strip:
                    rel = rel.split("/", 1)[1] if "/" in rel else ""
                    if not rel:
                        continue
                target = inside(dest, rel)
                if info.is_dir():
                    target.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
                _extract_one(zf, info, target, limits, budget)
    except PackageError as exc:
        shutil.rmtree(dest, ignore_errors=True)
        if isinstance(exc, UnsafeArchiveError):
            raise
        raise UnsafeArchiveError(str(exc)) from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, NotImplementedError, ValueError) as exc:
        shutil.rmtree(dest, ignore_errors=True)
        raise PackageError(f"The archive could not be extracted ({exc.__class__.__name__}: {exc}).") from None
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return dest


def _extract_one(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, limits: ExtractLimits, budget: list[int]) -> None:
    # O_EXCL + O_NOFOLLOW: never write through a link or over a file already placed.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    written = 0
    with zf.open(info) as src, os.fdopen(os.open(target, flags, FILE_MODE), "wb") as out:
        while chunk := src.read(limits.chunk_bytes):
            written += len(chunk)
            budget[0] -= len(chunk)
            # The header's size may lie; stop at what it declared, and at the total.
            if written > info.file_size or budget[0] < 0:
                raise UnsafeArchiveError(f"Zip entry {info.filename!r} inflates past its declared size.")
            out.write(chunk)


# ---------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class TrainJob:
    """One model to train: its config file and where the trained model lands."""

    cfg: str  # relative path of the sleap-nn config in the job dir
    run_path: str  # relative model folder, e.g. models/single_instance.n=10
    train_labels: str | None = None

    @property
    def ckpt_dir(self) -> str:
        """Parent of ``run_path`` (``trainer_config.ckpt_dir``)."""
        parent = PurePosixPath(self.run_path).parent.as_posix()
        return parent if parent != "." else "."

    @property
    def run_name(self) -> str:
        """Last part of ``run_path`` (``trainer_config.run_name``)."""
        return PurePosixPath(self.run_path).name


@dataclass(frozen=True)
class InferenceJob:
    """One inference request from ``jobs.yaml``."""

    data_path: str
    models: tuple[str, ...]
    output_path: str
    only_suggested_frames: bool = False
    only_labeled_frames: bool = False
    tracking: bool = False
    type: str = "labels"
    video: dict[str, Any] | None = None
    """A video sent on its own (``sha256``, ``suffix``) or on a data root (``root``, ``path``,
    ``size``, ``sample``); ``None``: ``data_path`` is a file of the package."""
    frames: tuple[tuple[int, int], ...] | None = None
    """Inclusive frame ranges; ``None``: every frame."""
    model_ids: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    """Checked ``core.track_options`` for sleap-nn track."""


@dataclass(frozen=True)
class JobPlan:
    """What a package asks the worker to do."""

    training: tuple[TrainJob, ...] = ()
    inference: tuple[InferenceJob, ...] = field(default_factory=tuple)
    source: str = JOBS_FILE


def check_run_path(value: Any, what: str) -> str:
    """A relative run path whose every part is in ``RUN_NAME_OK`` (and is not ``.``/``..``)."""
    rel = safe_relpath(value, what)
    for part in rel.split("/"):
        if not RUN_NAME_OK.match(part) or part in (".", ".."):
            raise PackageError(f"{what} {value!r} has characters other than letters, digits and _.=+-.")
    return rel


def load_yaml(text: str | bytes, what: str) -> Any:
    """``yaml.safe_load`` with hostile nesting turned into a ``PackageError``."""
    try:
        return yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError) as exc:  # RecursionError: hostile "[[[[..." nesting
        raise PackageError(f"{what} is not valid YAML ({exc.__class__.__name__}).") from None


def parse_jobs(data: Any) -> JobPlan:
    """The ``JobPlan`` of a parsed ``jobs.yaml``; every path is checked, nothing is read."""
    if not isinstance(data, dict):
        raise PackageError(f"{JOBS_FILE} must be a mapping with 'training' and/or 'inference'.")
    training, inference = data.get("training") or [], data.get("inference") or []
    if not isinstance(training, list) or not isinstance(inference, list):
        raise PackageError(f"'training' and 'inference' in {JOBS_FILE} must be lists.")
    train_jobs = []
    for i, item in enumerate(training):
        if not isinstance(item, dict):
            raise PackageError(f"training[{i}] in {JOBS_FILE} must be a mapping.")
        labels = item.get("train_labels")
        if isinstance(labels, str) and any(c in labels for c in "\"'\\$"):
            raise PackageError(f"training[{i}].train_labels {labels!r} contains quotes, '\\' or '$'.")
        train_jobs.append(
            TrainJob(
                cfg=safe_relpath(item.get("cfg"), f"training[{i}].cfg"),
                run_path=check_run_path(item.get("run_path"), f"training[{i}].run_path"),
                train_labels=safe_relpath(labels, f"training[{i}].train_labels") if labels else None,
            )
        )
    if len(inference) > MAX_VIDEOS:
        raise PackageError(f"{JOBS_FILE} asks for {len(inference)} inferences; at most {MAX_VIDEOS} are allowed.")
    inf_jobs = []
    for i, item in enumerate(inference):
        if not isinstance(item, dict):
            raise PackageError(f"inference[{i}] in {JOBS_FILE} must be a mapping.")
        models = item.get("models") or []
        if not isinstance(models, list):
            raise PackageError(f"inference[{i}].models must be a list.")
        tracking = item.get("tracking") or {}
        tracker = tracking.get("tracking.tracker") if isinstance(tracking, dict) else None
        video = _parse_video(item.get("video"), f"inference[{i}].video")
        model_ids = item.get("model_ids") or []
        if not isinstance(model_ids, list) or len(model_ids) > 8 or not all(isinstance(m, str) and _SHA.match(m) for m in model_ids):
            raise PackageError(f"inference[{i}].model_ids must be a list of at most 8 sha256 ids.")
        if not models and not model_ids:
            raise PackageError(f"inference[{i}] names no model.")
        if video is None:
            data_path = safe_relpath(item.get("data_path"), f"inference[{i}].data_path")
        elif "sha256" in video:
            data_path = f"videos/{video['sha256']}{video['suffix']}"
        else:
            data_path = f"videos/root-{i}"
        try:
            options = check_options(item.get("options") or {})
        except ValueError as exc:
            raise PackageError(f"inference[{i}].options: {exc}") from None
        inf_jobs.append(
            InferenceJob(
                data_path=data_path,
                video=video,
                frames=_parse_frames(item.get("frames"), f"inference[{i}].frames"),
                model_ids=tuple(model_ids),
                options=options,
                models=tuple(check_run_path(m, f"inference[{i}].models") for m in models),
                output_path=safe_relpath(item.get("output_path") or f"{data_path}{PREDICTIONS_SUFFIX}",
                                         f"inference[{i}].output_path"),
                only_suggested_frames=bool(item.get("only_suggested_frames")),
                only_labeled_frames=bool(item.get("only_labeled_frames")),
                tracking=bool(tracker) and str(tracker).lower() not in ("none", "null", "false"),
                type=str(item.get("type") or "labels"),
            )
        )
    return JobPlan(tuple(train_jobs), tuple(inf_jobs), JOBS_FILE)


def _parse_video(value: Any, what: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise PackageError(f"{what} must be a mapping.")
    if "sha256" in value:
        sha, suffix = value.get("sha256"), value.get("suffix")
        if not isinstance(sha, str) or not _SHA.match(sha):
            raise PackageError(f"{what}.sha256 must be 64 lowercase hex digits.")
        if not isinstance(suffix, str) or not _SUFFIX.match(suffix):
            raise PackageError(f"{what}.suffix must be a short file extension such as '.mp4'.")
        return {"sha256": sha, "suffix": suffix}
    root, size, sample = value.get("root"), value.get("size"), value.get("sample")
    if not isinstance(root, str) or not ROOT_NAME.match(root):
        raise PackageError(f"{what} names neither an uploaded video (sha256) nor a data root.")
    try:
        path = check_root_path(value.get("path"))
    except DataRootError as exc:
        raise PackageError(f"{what}.path: {exc}") from None
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise PackageError(f"{what}.size must be a non-negative integer.")
    if not isinstance(sample, str) or not _SHA.match(sample):
        raise PackageError(f"{what}.sample must be 64 lowercase hex digits.")
    return {"root": root, "path": path, "size": size, "sample": sample}


def _parse_frames(value: Any, what: str) -> tuple[tuple[int, int], ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value or len(value) > MAX_FRAME_RANGES:
        raise PackageError(f"{what} must be a list of 1 to {MAX_FRAME_RANGES} [first, last] ranges.")
    out = []
    for pair in value:
        ok = isinstance(pair, list) and len(pair) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_FRAME_INDEX for v in pair)
        if not ok or pair[0] > pair[1]:
            raise PackageError(f"{what} holds {str(pair)[:40]!r}, not a [first, last] pair of frame indexes.")
        out.append((pair[0], pair[1]))
    return tuple(out)


def frame_ranges(frames: Iterable[int]) -> list[tuple[int, int]]:
    """Frame indexes as sorted inclusive ``(first, last)`` ranges (duplicates merged)."""
    out: list[tuple[int, int]] = []
    for f in sorted(set(int(f) for f in frames)):
        if out and f == out[-1][1] + 1:
            out[-1] = (out[-1][0], f)
        else:
            out.append((f, f))
    return out


def write_model_zip(folder: str | os.PathLike, dest: str | os.PathLike) -> tuple[Path, str]:
    """Zip a model folder so that the same files always give the same bytes: entries at the
    top level (no folder name), sorted, stored (no compression), fixed time and mode.

    Returns ``(dest, sha256)``: the sha256 is the model's id on workers (``model_ids``).
    Links and empty folders are left out; an empty model is a ``PackageError``.
    """
    import hashlib

    folder, dest = Path(folder), Path(dest)
    files = sorted((p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()),
                   key=lambda p: p.relative_to(folder).as_posix())
    if not files:
        raise PackageError(f"Model folder {folder} holds no files.")
    if len(files) > MAX_ENTRIES:
        raise PackageError(f"Model folder {folder} holds more than {MAX_ENTRIES} files.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as zf:
        for path in files:
            info = zipfile.ZipInfo(path.relative_to(folder).as_posix(), date_time=MODEL_ZIP_DATE)
            info.create_system = 3  # the same on every OS
            info.external_attr = (stat.S_IFREG | FILE_MODE) << 16
            with open(path, "rb") as src, zf.open(info, "w", force_zip64=True) as out:
                shutil.copyfileobj(src, out, EXTRACT_CHUNK_BYTES)
    os.chmod(dest, FILE_MODE)
    hasher = hashlib.sha256()
    with open(dest, "rb") as fh:
        while chunk := fh.read(EXTRACT_CHUNK_BYTES):
            hasher.update(chunk)
    return dest, hasher.hexdigest()


def read_plan(package_zip: str | os.PathLike) -> JobPlan | None:
    """The ``JobPlan`` of a package zip's ``jobs.yaml`` (``None`` when it has none)."""
    try:
        with zipfile.ZipFile(package_zip) as zf:
            try:
                info = zf.getinfo(JOBS_FILE)
            except KeyError:
                return None
            if info.file_size > 1024 * 1024:
                raise PackageError(f"{JOBS_FILE} is larger than 1 MiB.")
            text = zf.read(info)
    except (zipfile.BadZipFile, OSError) as exc:
        raise PackageError(f"The package is not a readable zip file ({exc}).") from None
    return parse_jobs(load_yaml(text, JOBS_FILE))


@dataclass(frozen=True)
class ExpectedResults:
    """The result files a worker may send back for a plan: model zips and predictions."""

    models: frozenset[str]
    """Run names (``<run>.zip`` comes back for each)."""
    predictions: frozenset[str]
    """File names of the predictions (last part of each ``output_path``)."""


def expected_results(plan: JobPlan) -> ExpectedResults:
    """What the client accepts back for ``plan`` (any other result name is refused)."""
    return ExpectedResults(
        models=frozenset(job.run_name for job in plan.training),
        predictions=frozenset(PurePosixPath(inf.output_path).name for inf in plan.inference),
    )


# ---------------------------------------------------------------------------- writing


def jobs_document(training: Iterable[Mapping[str, Any]] = (), inference: Iterable[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """A ``jobs.yaml`` document, checked by ``parse_jobs`` before it is written."""
    doc = {"training": [dict(t) for t in training], "inference": [dict(i) for i in inference]}
    parse_jobs(doc)
    return doc


def write_package(out_path: str | os.PathLike, entries: Mapping[str, str | os.PathLike | bytes], jobs: Mapping[str, Any]) -> Path:
    """Write a package zip: ``entries`` (name -> file path or bytes) plus ``jobs.yaml``.

    Names are checked with ``safe_relpath``; ``.slp`` files (HDF5, frames already
    compressed) are stored, everything else deflated. Written to a temporary name and
    renamed, so a half-written package never exists under ``out_path``.
    """
    out_path = Path(out_path)
    parse_jobs(dict(jobs))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.part")
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, src in entries.items():
                rel = safe_relpath(name, f"Package entry {name!r}")
                if rel == JOBS_FILE:
                    raise PackageError(f"{JOBS_FILE} is written from the plan, not as an entry.")
                method = zipfile.ZIP_STORED if rel.endswith(".slp") else zipfile.ZIP_DEFLATED
                if isinstance(src, bytes):
                    zf.writestr(zipfile.ZipInfo(rel, date_time=(2024, 1, 1, 0, 0, 0)), src, compress_type=method)
                else:
                    zf.write(src, rel, compress_type=method)
            zf.writestr(JOBS_FILE, yaml.safe_dump(dict(jobs), sort_keys=False))
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return out_path


def read_entry(package_zip: str | os.PathLike, name: str, max_bytes: int = 16 * 1024 * 1024) -> bytes:
    """One small entry of a package (a config, ``jobs.yaml``), refused above ``max_bytes``."""
    with zipfile.ZipFile(package_zip) as zf:
        info = zf.getinfo(name)
        if info.file_size > max_bytes:
            raise PackageError(f"{name} is larger than {max_bytes} bytes.")
        with zf.open(info) as fh:
            data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise PackageError(f"{name} inflates past {max_bytes} bytes.")
    return data


__all__ = [
    "MAX_FRAME_INDEX", "MAX_FRAME_RANGES", "MAX_VIDEOS", "MODEL_ZIP_DATE", "frame_ranges", "write_model_zip",
    "DIR_MODE", "ENTRY_RATIO_FLOOR", "EXTRACT_CHUNK_BYTES", "ExpectedResults", "ExtractLimits", "FILE_MODE",
    "InferenceJob", "JOBS_FILE", "JobPlan", "MAX_ENTRIES", "MAX_ENTRY_RATIO", "MAX_TOTAL_BYTES", "MAX_TOTAL_RATIO",
    "MODELS_DIR", "PREDICTIONS_SUFFIX", "PackageError", "RUN_NAME_OK", "TOTAL_RATIO_FLOOR", "TRAIN_SCRIPT", "TrainJob",
    "UnsafeArchiveError", "check_entries", "check_run_path", "expected_results", "inside", "jobs_document",
    "load_yaml", "parse_jobs", "read_entry", "read_plan", "safe_extract", "safe_relpath", "write_package",
]
