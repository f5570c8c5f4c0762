"""SLEAP training-job packages, read as hostile input, and the sleap-nn commands they ask for.

A package is a flat zip written by SLEAP's ``export_package`` (see
``shared/reference/sleap-integration.md``): ``<name>.pkg.slp``, one ``<head>.yaml`` per
model, ``train-script.sh``, ``inference-script.sh`` and ``jobs.yaml``. It comes from
another machine, so ``extract_package`` refuses, before writing anything, entries that
could escape the job directory (absolute paths, ``..``, drive letters, symlinks, device
files), duplicate names, encrypted entries, too many files, too many bytes and zip bombs;
while extracting it also stops any entry that inflates past its declared size.

Commands are never taken from the package as shell: ``load_plan`` reads ``jobs.yaml``
(or, without it, parses ``train-script.sh`` line by line, accepting only
``sleap train``/``sleap-nn train``), and ``train_argv``/``track_argv`` build ``sleap-nn``
argument lists. Output locations (``trainer_config.ckpt_dir``/``run_name``) are always set
by the worker, and every path the package names must stay inside the job directory.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

JOBS_FILE = "jobs.yaml"
TRAIN_SCRIPT = "train-script.sh"


class PackageError(ValueError):
    """The package is refused; the message says why, in words a user can act on."""


@dataclass(frozen=True)
class PackageLimits:
    """Bounds on what a package may unpack to (defaults fit real SLEAP projects)."""

    max_files: int = 1000
    max_total_bytes: int = 64 * 1024**3
    max_ratio: float = 200.0  # uncompressed/compressed, for entries above ratio_min_bytes
    ratio_min_bytes: int = 1024 * 1024
    chunk_bytes: int = 1024 * 1024


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


def _inside(root: Path, rel: str) -> Path:
    target = (root / rel).resolve()
    if not target.is_relative_to(root.resolve()):
        raise PackageError(f"{rel!r} resolves outside the job directory.")
    return target


# ---------------------------------------------------------------------------- extraction


def _check_entries(infos: list[zipfile.ZipInfo], limits: PackageLimits) -> None:
    if len(infos) > limits.max_files:
        raise PackageError(f"The package has {len(infos)} entries; at most {limits.max_files} are allowed.")
    seen: set[str] = set()
    total = 0
    for info in infos:
        rel = safe_relpath(info.filename, f"Zip entry {info.filename!r}")
        key = rel.lower()  # case-insensitive file systems would merge these
        if key in seen:
            raise PackageError(f"The package holds {info.filename!r} twice.")
        seen.add(key)
        mode = info.external_attr >> 16
        if mode and stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
            kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"
            raise PackageError(f"Zip entry {info.filename!r} is {kind}; only plain files are allowed.")
        if info.flag_bits & 0x1:
            raise PackageError(f"Zip entry {info.filename!r} is encrypted.")
        total += info.file_size
        if total > limits.max_total_bytes:
            raise PackageError(f"The package unpacks to more than {limits.max_total_bytes} bytes.")
        if info.file_size > limits.ratio_min_bytes and info.file_size > limits.max_ratio * max(info.compress_size, 1):
            raise PackageError(
                f"Zip entry {info.filename!r} is compressed {info.file_size // max(info.compress_size, 1)}x "
                f"(limit {limits.max_ratio:g}x): refused as a possible zip bomb."
            )


def extract_package(zip_path: Path, dest: Path, limits: PackageLimits = PackageLimits()) -> Path:
    """Check every entry of ``zip_path``, then extract it into the new directory ``dest``.

    Raises ``PackageError`` (and leaves no ``dest`` behind) for a refused package.
    """
    dest = Path(dest)
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise PackageError(f"The package is not a readable zip file ({exc}).") from None
    dest.mkdir(parents=True, exist_ok=False)
    try:
        with zf:
            infos = zf.infolist()
            _check_entries(infos, limits)
            for info in infos:
                rel = safe_relpath(info.filename, "Zip entry")
                target = _inside(dest, rel)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                _extract_one(zf, info, target, limits)
    except PackageError:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, NotImplementedError) as exc:
        shutil.rmtree(dest, ignore_errors=True)
        raise PackageError(f"The package could not be extracted ({exc.__class__.__name__}: {exc}).") from None
    return dest


def _extract_one(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, limits: PackageLimits) -> None:
    # O_EXCL + O_NOFOLLOW: never write through a link or over a file already placed.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    written = 0
    with zf.open(info) as src, os.fdopen(os.open(target, flags, 0o644), "wb") as out:
        while chunk := src.read(limits.chunk_bytes):
            written += len(chunk)
            # The header's size may lie; stop at what it declared.
            if written > info.file_size:
                raise PackageError(f"Zip entry {info.filename!r} inflates past its declared size.")
            out.write(chunk)


# ---------------------------------------------------------------------------- plans


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


@dataclass(frozen=True)
class JobPlan:
    """What a package asks the worker to do."""

    training: tuple[TrainJob, ...] = ()
    inference: tuple[InferenceJob, ...] = field(default_factory=tuple)
    source: str = JOBS_FILE


_RUN_NAME_OK = re.compile(r"^[A-Za-z0-9_.=+\-]+$")
# Config fields that name files to read: they must stay inside the job directory.
_CONFIG_PATH_FIELDS = (
    ("data_config", "train_labels_path"),
    ("data_config", "val_labels_path"),
    ("data_config", "test_file_path"),
    ("model_config", "pretrained_backbone_weights"),
    ("model_config", "pretrained_head_weights"),
    ("trainer_config", "resume_ckpt_path"),
)


def _check_run_path(value: Any, what: str) -> str:
    rel = safe_relpath(value, what)
    for part in rel.split("/"):
        # Parts go into Hydra overrides inside double quotes: keep them to a plain alphabet.
        if not _RUN_NAME_OK.match(part):
            raise PackageError(f"{what} {value!r} has characters other than letters, digits and _.=+-.")
    return rel


def _require_file(job_dir: Path, rel: str, what: str) -> None:
    path = _inside(job_dir, rel)
    if not path.is_file():
        raise PackageError(f"{what} {rel!r} is not in the package.")


def check_config(job_dir: Path, cfg_rel: str) -> dict[str, Any]:
    """Load a sleap-nn config from the package and refuse paths that leave the job dir."""
    _require_file(job_dir, cfg_rel, "Training config")
    text = _inside(job_dir, cfg_rel).read_text(errors="replace")
    if "${" in text:
        # OmegaConf interpolations such as ${oc.env:...} would read the worker's environment.
        raise PackageError(f"Training config {cfg_rel!r} uses '${{...}}' interpolation, which workers refuse.")
    try:
        cfg = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError) as exc:  # RecursionError: hostile "[[[[..." nesting
        raise PackageError(f"Training config {cfg_rel!r} is not valid YAML ({exc.__class__.__name__}).") from None
    if not isinstance(cfg, dict):
        raise PackageError(f"Training config {cfg_rel!r} is not a mapping.")
    for section, key in _CONFIG_PATH_FIELDS:
        sec = cfg.get(section)
        value = sec.get(key) if isinstance(sec, dict) else None
        for item in value if isinstance(value, list) else [value]:
            if item not in (None, ""):
                safe_relpath(item, f"{section}.{key} in {cfg_rel}")
    return cfg


def load_plan(job_dir: Path) -> JobPlan:
    """Read ``jobs.yaml`` (or, failing that, ``train-script.sh``) of an extracted package."""
    job_dir = Path(job_dir)
    if (job_dir / JOBS_FILE).is_file():
        plan = _plan_from_jobs_yaml(job_dir)
    elif (job_dir / TRAIN_SCRIPT).is_file():
        plan = _plan_from_train_script(job_dir)
    else:
        raise PackageError(f"The package has neither {JOBS_FILE} nor {TRAIN_SCRIPT}: is it a SLEAP training package?")
    if not plan.training and not plan.inference:
        raise PackageError("The package asks for no training and no inference.")
    for job in plan.training:
        check_config(job_dir, job.cfg)
        if job.train_labels:
            _require_file(job_dir, job.train_labels, "Training labels")
    trained = {job.run_path for job in plan.training}
    for inf in plan.inference:
        _require_file(job_dir, inf.data_path, "Inference data")
        for model in inf.models:
            if model not in trained and not _inside(job_dir, model).is_dir():
                raise PackageError(f"Inference model {model!r} is neither trained by this package nor included in it.")
    return plan


def _plan_from_jobs_yaml(job_dir: Path) -> JobPlan:
    try:
        data = yaml.safe_load((job_dir / JOBS_FILE).read_text(errors="replace"))
    except (yaml.YAMLError, RecursionError) as exc:
        raise PackageError(f"{JOBS_FILE} is not valid YAML ({exc.__class__.__name__}).") from None
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
                run_path=_check_run_path(item.get("run_path"), f"training[{i}].run_path"),
                train_labels=safe_relpath(labels, f"training[{i}].train_labels") if labels else None,
            )
        )
    inf_jobs = []
    for i, item in enumerate(inference):
        if not isinstance(item, dict):
            raise PackageError(f"inference[{i}] in {JOBS_FILE} must be a mapping.")
        models = item.get("models") or []
        if not isinstance(models, list) or not models:
            raise PackageError(f"inference[{i}].models must be a non-empty list.")
        tracking = item.get("tracking") or {}
        tracker = tracking.get("tracking.tracker") if isinstance(tracking, dict) else None
        data_path = safe_relpath(item.get("data_path"), f"inference[{i}].data_path")
        inf_jobs.append(
            InferenceJob(
                data_path=data_path,
                models=tuple(_check_run_path(m, f"inference[{i}].models") for m in models),
                output_path=safe_relpath(item.get("output_path") or f"{data_path}.predictions.slp", f"inference[{i}].output_path"),
                only_suggested_frames=bool(item.get("only_suggested_frames")),
                only_labeled_frames=bool(item.get("only_labeled_frames")),
                tracking=bool(tracker) and str(tracker).lower() not in ("none", "null", "false"),
                type=str(item.get("type") or "labels"),
            )
        )
    return JobPlan(tuple(train_jobs), tuple(inf_jobs), JOBS_FILE)


_OVERRIDE_KEY = re.compile(r"^([A-Za-z_][A-Za-z0-9_.]*)=(.*)$")


def _unquote_hydra(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def _plan_from_train_script(job_dir: Path) -> JobPlan:
    jobs = []
    for lineno, line in enumerate((job_dir / TRAIN_SCRIPT).read_text(errors="replace").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{TRAIN_SCRIPT} line {lineno}"
        try:
            tokens = shlex.split(line)
        except ValueError as exc:
            raise PackageError(f"{where} cannot be parsed ({exc}).") from None
        if tokens[:2] in (["sleap", "train"], ["sleap-nn", "train"]):
            args = tokens[2:]
        elif tokens[:1] == ["sleap-train"]:
            args = tokens[1:]
        else:
            raise PackageError(f"{where} is not a 'sleap train' command; workers run nothing else.")
        cfg, config_dir, ckpt_dir, run_name = None, ".", None, None
        it = iter(args)
        for tok in it:
            if tok in ("--config-name", "--config-dir", "--config", "-c"):
                value = next(it, None)
                if value is None:
                    raise PackageError(f"{where}: {tok} needs a value.")
                if tok == "--config-dir":
                    config_dir = value
                else:
                    cfg = value
            elif tok.startswith("-"):
                raise PackageError(f"{where}: option {tok!r} is not supported.")
            elif m := _OVERRIDE_KEY.match(tok):
                key, value = m.group(1), _unquote_hydra(m.group(2))
                if key == "trainer_config.ckpt_dir":
                    ckpt_dir = value
                elif key == "trainer_config.run_name":
                    run_name = value
                # Other overrides are dropped: the config file carries the settings.
            elif cfg is None and tok.endswith((".yaml", ".yml")):
                cfg = tok
            else:
                raise PackageError(f"{where}: unexpected argument {tok!r}.")
        if cfg is None:
            raise PackageError(f"{where} names no training config.")
        cfg_rel = safe_relpath(str(PurePosixPath(config_dir.replace("\\", "/")) / cfg), f"{where} config")
        if not cfg_rel.endswith((".yaml", ".yml")) and (job_dir / (cfg_rel + ".yaml")).is_file():
            cfg_rel += ".yaml"  # Hydra's --config-name may omit the extension
        if run_name is None or ckpt_dir is None:
            tc = check_config(job_dir, cfg_rel).get("trainer_config")
            tc = tc if isinstance(tc, dict) else {}
            ckpt_dir = ckpt_dir or tc.get("ckpt_dir") or "models"
            run_name = run_name or tc.get("run_name") or PurePosixPath(cfg_rel).stem
        run_path = _check_run_path(f"{ckpt_dir}/{run_name}", f"{where} run path")
        jobs.append(TrainJob(cfg=cfg_rel, run_path=run_path))
    return JobPlan(tuple(jobs), (), TRAIN_SCRIPT)


# ---------------------------------------------------------------------------- commands


def train_argv(
    job: TrainJob,
    *,
    sleap_nn: str = "sleap-nn",
    publish_port: int | None = None,
    controller_port: int | None = None,
    accelerator: str | None = None,
) -> list[str]:
    """``sleap-nn train CFG overrides``: the worker places the output and wires progress."""
    argv = [
        sleap_nn,
        "train",
        job.cfg,
        f'trainer_config.ckpt_dir="{job.ckpt_dir}"',
        f'trainer_config.run_name="{job.run_name}"',
    ]
    if job.train_labels:
        argv.append(f'data_config.train_labels_path=["{job.train_labels}"]')
    if publish_port is not None:
        argv.append(f"trainer_config.zmq.publish_port={int(publish_port)}")
    if controller_port is not None:
        argv.append(f"trainer_config.zmq.controller_port={int(controller_port)}")
    if accelerator:
        argv.append(f"trainer_config.trainer_accelerator={accelerator}")
    return argv


def track_argv(job: InferenceJob, *, sleap_nn: str = "sleap-nn", device: str | None = None) -> list[str]:
    """``sleap-nn track -i DATA -m MODEL... -o OUT`` for one inference request."""
    argv = [sleap_nn, "track", "-i", job.data_path]
    for model in job.models:
        argv += ["-m", model]
    argv += ["-o", job.output_path]
    if device:
        argv += ["-d", device]
    if job.only_suggested_frames:
        argv.append("--only_suggested_frames")
    if job.only_labeled_frames:
        argv.append("--only_labeled_frames")
    if job.tracking:
        argv.append("--tracking")
    return argv
