"""SLEAP training-job packages, read as hostile input, and the sleap-nn commands they ask for.

The package format and the one safe-extract live in ``sleap_rtc.core.package``; this module
is the worker's side: ``extract_package`` (``safe_extract`` with the worker's limits),
``load_plan`` (``jobs.yaml``, or, without it, ``train-script.sh`` parsed line by line,
accepting only ``sleap train``/``sleap-nn train``), the config checker and the labels
checker, and ``train_argv``/``track_argv`` which build ``sleap-nn`` argument lists.
Commands are never taken from the package as shell.

The config checker looks at the PARSED config, never at its text, and then writes back
exactly what it checked (so YAML escapes of ``$`` such as ``"\\x24{...}"`` are gone before sleap-nn
reads the file):

* only the top-level sections sleap-nn's ``TrainingJobConfig`` has (``CONFIG_SECTIONS``):
  no ``hydra`` and no ``defaults`` (Hydra would merge other files of the worker);
* no ``${`` in any key or string, at any depth (OmegaConf interpolation such as
  ``${oc.env:...}`` would read the worker's environment);
* no string that is an absolute path, starts with ``~`` or has a ``..`` part;
* the cache folder (``data_config.cache_img_path``) forced inside the job dir, wandb off,
  and output locations (``trainer_config.ckpt_dir``/``run_name``) set by the worker.

The labels checker opens every ``.slp`` the plan names with ``sleap_io`` (videos not
opened) and refuses any video that is neither embedded in that file nor a file inside the
job dir.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from sleap_rtc.core.package import (
    JOBS_FILE,
    TRAIN_SCRIPT,
    ExtractLimits,
    InferenceJob,
    JobPlan,
    PackageError,
    TrainJob,
    check_run_path,
    inside,
    load_yaml,
    parse_jobs,
    safe_extract,
    safe_relpath,
)
from sleap_rtc.core.track_options import options_argv

PackageLimits = ExtractLimits
"""The worker's bounds on a package (``core.package.ExtractLimits``)."""

CONFIG_SECTIONS = frozenset({"data_config", "model_config", "trainer_config", "name", "description",
                             "sleap_nn_version", "filename"})
"""Top-level keys a training config may have (sleap-nn's ``TrainingJobConfig`` fields)."""
CACHE_DIR = "cache"
"""Folder inside the job's work dir where sleap-nn may cache images (forced)."""
MAX_CONFIG_BYTES = 4 * 1024 * 1024
"""Largest training config the worker parses."""

__all__ = [
    "CACHE_DIR", "CONFIG_SECTIONS", "InferenceJob", "JOBS_FILE", "JobPlan", "PackageError", "PackageLimits",
    "TRAIN_SCRIPT", "TrainJob", "check_config", "check_labels_videos", "extract_package", "load_plan",
    "safe_relpath", "track_argv", "train_argv",
]


def extract_package(zip_path: Path, dest: Path, limits: ExtractLimits = ExtractLimits()) -> Path:
    """``core.package.safe_extract`` of a received package into the new directory ``dest``."""
    return safe_extract(zip_path, dest, limits)


_inside = inside
_check_run_path = check_run_path


def _require_file(job_dir: Path, rel: str, what: str) -> None:
    path = inside(job_dir, rel)
    if not path.is_file():
        raise PackageError(f"{what} {rel!r} is not in the package.")


def _walk(node: Any, where: str, cfg_rel: str) -> None:
    """Refuse interpolation and paths leaving the job dir anywhere in a parsed config."""
    if isinstance(node, dict):
        for key, value in node.items():
            if not isinstance(key, str):
                raise PackageError(f"Training config {cfg_rel!r} has a non-text key {key!r} at {where or 'top level'}.")
            if "${" in key:
                raise PackageError(f"Training config {cfg_rel!r} uses '${{...}}' interpolation in a key, which workers refuse.")
            _walk(value, f"{where}.{key}" if where else key, cfg_rel)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            _walk(item, f"{where}[{i}]", cfg_rel)
    elif isinstance(node, str):
        if "${" in node:
            # OmegaConf interpolations such as ${oc.env:...} would read the worker's environment.
            raise PackageError(f"Training config {cfg_rel!r} uses '${{...}}' interpolation at {where}, which workers refuse.")
        text = node.replace("\\", "/")
        if text.startswith(("/", "~")) or re.match(r"^[A-Za-z]:/", text):
            raise PackageError(f"{where} in {cfg_rel} is an absolute path ({node!r}); packages may only use "
                               "relative paths inside the job directory.")
        if ".." in PurePosixPath(text).parts:
            raise PackageError(f"{where} in {cfg_rel} climbs out of the job directory with '..' ({node!r}).")
    elif not (node is None or isinstance(node, (bool, int, float))):
        raise PackageError(f"Training config {cfg_rel!r} has an unsupported value at {where}.")


def check_config(job_dir: Path, cfg_rel: str, *, rewrite: bool = False) -> dict[str, Any]:
    """Load a sleap-nn config from the package and refuse anything that could leave the job dir.

    With ``rewrite`` the checked config, with the worker's forced settings, replaces the
    file: what sleap-nn reads is exactly what was checked.
    """
    _require_file(job_dir, cfg_rel, "Training config")
    path = inside(job_dir, cfg_rel)
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise PackageError(f"Training config {cfg_rel!r} is larger than {MAX_CONFIG_BYTES} bytes.")
    cfg = load_yaml(path.read_bytes(), f"Training config {cfg_rel!r}")
    if not isinstance(cfg, dict):
        raise PackageError(f"Training config {cfg_rel!r} is not a mapping.")
    extra = sorted(str(k) for k in cfg if k not in CONFIG_SECTIONS)
    if extra:
        raise PackageError(f"Training config {cfg_rel!r} has sections {', '.join(map(repr, extra))}; workers accept only "
                           f"{', '.join(sorted(CONFIG_SECTIONS))} (no 'hydra' or 'defaults').")
    for section in ("data_config", "model_config", "trainer_config"):
        if cfg.get(section) is not None and not isinstance(cfg[section], dict):
            raise PackageError(f"{section} in {cfg_rel} must be a mapping.")
    _walk(cfg, "", cfg_rel)
    for section, key in _CONFIG_PATH_FIELDS:
        sec = cfg.get(section)
        value = sec.get(key) if isinstance(sec, dict) else None
        for item in value if isinstance(value, list) else [value]:
            if item not in (None, ""):
                safe_relpath(item, f"{section}.{key} in {cfg_rel}")
    if rewrite:
        data = cfg.get("data_config") or {}
        cfg["data_config"] = data
        # A cache outside the job dir is written and then deleted (train_imgs/val_imgs).
        data["cache_img_path"] = str((Path(job_dir) / CACHE_DIR).resolve())
        trainer = cfg.get("trainer_config") or {}
        cfg["trainer_config"] = trainer
        trainer["use_wandb"] = False
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return cfg


# Config fields that name files to read: they must stay inside the job directory.
_CONFIG_PATH_FIELDS = (
    ("data_config", "train_labels_path"),
    ("data_config", "val_labels_path"),
    ("data_config", "test_file_path"),
    ("model_config", "pretrained_backbone_weights"),
    ("model_config", "pretrained_head_weights"),
    ("trainer_config", "resume_ckpt_path"),
)


def _labels_paths(cfg: dict[str, Any]) -> list[str]:
    data = cfg.get("data_config") if isinstance(cfg.get("data_config"), dict) else {}
    out = []
    for key in ("train_labels_path", "val_labels_path", "test_file_path"):
        value = data.get(key)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and item:
                out.append(safe_relpath(item, f"data_config.{key}"))
    return out


def check_labels_videos(job_dir: Path, labels_rel: str) -> None:
    """Refuse a labels file whose videos are neither embedded in it nor files in the job dir."""
    import sleap_io as sio  # heavy: only when a package is checked

    path = inside(job_dir, labels_rel)
    if not path.is_file():
        raise PackageError(f"Labels {labels_rel!r} are not in the package.")
    root = Path(job_dir).resolve()
    try:
        labels = sio.load_slp(str(path), open_videos=False)
    except Exception as exc:  # a hostile or broken file: any error is a refusal
        raise PackageError(f"Labels {labels_rel!r} cannot be read ({exc.__class__.__name__}).") from None
    for i, video in enumerate(labels.videos):
        names = video.filename if isinstance(video.filename, list) else [video.filename]
        for name in names:
            if not isinstance(name, str) or not name:
                raise PackageError(f"Video {i} of {labels_rel!r} has no file name.")
            # sleap-nn may open it relative to the working dir (the job dir) or to the labels file.
            candidates = [Path(name)] if Path(name).is_absolute() else [root / name, path.parent / name]
            for cand in candidates:
                resolved = cand.resolve()
                if not resolved.is_relative_to(root):
                    raise PackageError(
                        f"Video {i} of {labels_rel!r} is {name!r}, outside the package: workers only read frames "
                        "embedded in the labels file or videos inside the package."
                    )
            if not any(c.resolve().is_file() for c in candidates):
                raise PackageError(f"Video {i} of {labels_rel!r} ({name!r}) is not in the package.")


def load_plan(job_dir: Path, *, rewrite_configs: bool = False) -> JobPlan:
    """Read ``jobs.yaml`` (or, failing that, ``train-script.sh``) of an extracted package.

    Checks every config (``check_config``; with ``rewrite_configs`` the checked version
    replaces each file) and the videos of every labels file the plan names.
    """
    job_dir = Path(job_dir)
    if (job_dir / JOBS_FILE).is_file():
        plan = _plan_from_jobs_yaml(job_dir)
    elif (job_dir / TRAIN_SCRIPT).is_file():
        plan = _plan_from_train_script(job_dir)
    else:
        raise PackageError(f"The package has neither {JOBS_FILE} nor {TRAIN_SCRIPT}: is it a SLEAP training package?")
    if not plan.training and not plan.inference:
        raise PackageError("The package asks for no training and no inference.")
    labels: list[str] = []
    for job in plan.training:
        cfg = check_config(job_dir, job.cfg, rewrite=rewrite_configs)
        labels += _labels_paths(cfg)
        if job.train_labels:
            _require_file(job_dir, job.train_labels, "Training labels")
            labels.append(job.train_labels)
    trained = {job.run_path for job in plan.training}
    for inf in plan.inference:
        if inf.video is not None:
            continue  # a video placed (or a data-root file checked) by the worker, not a labels file
        _require_file(job_dir, inf.data_path, "Inference data")
        labels.append(inf.data_path)
        for model in inf.models:
            if model not in trained and not inside(job_dir, model).is_dir():
                raise PackageError(f"Inference model {model!r} is neither trained by this package nor included in it.")
    for rel in dict.fromkeys(labels):
        check_labels_videos(job_dir, rel)
    return plan


def _plan_from_jobs_yaml(job_dir: Path) -> JobPlan:
    path = job_dir / JOBS_FILE
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise PackageError(f"{JOBS_FILE} is larger than {MAX_CONFIG_BYTES} bytes.")
    return parse_jobs(load_yaml(path.read_bytes(), JOBS_FILE))


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


def frames_arg(ranges: tuple[tuple[int, int], ...]) -> str:
    """sleap-nn's ``--frames``: ``a-b`` for one range, else a comma list (it takes no mix)."""
    if len(ranges) == 1 and ranges[0][0] != ranges[0][1]:
        return f"{ranges[0][0]}-{ranges[0][1]}"
    return ",".join(str(f) for first, last in ranges for f in range(first, last + 1))


def track_argv(job: InferenceJob, *, sleap_nn: str = "sleap-nn", device: str | None = None,
               data: str | None = None, models: list[str] | None = None, progress_json: bool = False) -> list[str]:
    """``sleap-nn track -i DATA -m MODEL... -o OUT`` for one inference request.

    ``data``/``models``: where the worker placed the video and the model folders (else the
    package's paths); ``progress_json``: sleap-nn's ``--gui`` JSON progress lines on stdout.
    """
    argv = [sleap_nn, "track", "-i", data or job.data_path]
    for model in models if models is not None else job.models:
        argv += ["-m", model]
    argv += ["-o", job.output_path]
    if job.frames is not None:
        argv += ["--frames", frames_arg(job.frames)]
    argv += options_argv(job.options)
    if progress_json:
        argv.append("--gui")
    if device:
        argv += ["-d", device]
    if job.only_suggested_frames:
        argv.append("--only_suggested_frames")
    if job.only_labeled_frames:
        argv.append("--only_labeled_frames")
    if job.tracking and "--tracking" not in argv:
        argv.append("--tracking")
    return argv
