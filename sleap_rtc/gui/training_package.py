"""Build a SLEAP training-job package (flat zip) without sleap-nn on the GUI machine.

SLEAP's own ``export_package`` needs sleap-nn importable to write the configs; this module
writes the same layout from plain config dicts (the dialog's per-head configs, converted
by ``sleap_attach``) and a callback that saves the labels with embedded frames:

``<name>.pkg.slp`` (labels, embedded frames), ``<head>.yaml`` per model (paths relative:
``data_config.train_labels_path: [<name>.pkg.slp]``, ``trainer_config.ckpt_dir: models``,
``run_name``, zmq ports null), ``train-script.sh`` and ``jobs.yaml`` (what workers read).
No ``inference-script.sh``: SLEAP writes one with absolute GUI-machine paths that are
useless remotely; workers build commands from ``jobs.yaml``.
"""

from __future__ import annotations

import copy
import shlex
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sleap_rtc.core.package import MODELS_DIR, PREDICTIONS_SUFFIX, TRAIN_SCRIPT, jobs_document, write_package

__all__ = ["HeadConfig", "InferenceRequest", "MODELS_DIR", "PackageInfo", "build_training_package",
           "prepare_config", "run_name_for", "timestamp"]


@dataclass
class HeadConfig:
    """One model to train: its head name (``single_instance``, ``centroid`` …) and sleap-nn config."""

    head: str
    config: dict[str, Any]


@dataclass
class InferenceRequest:
    """Predictions the dialog asked for, run on the packaged labels after training."""

    only_suggested_frames: bool = False
    only_labeled_frames: bool = False
    tracking: dict[str, Any] = field(default_factory=dict)


@dataclass
class PackageInfo:
    """What was written: the zip, the labels entry and each head's run path (``models/<run>``)."""

    path: Path
    labels_name: str
    run_paths: dict[str, str]
    predictions_name: str | None = None


def timestamp() -> str:
    """SLEAP's run-name timestamp (``YYMMDD_HHMMSS``)."""
    return time.strftime("%y%m%d_%H%M%S")


def run_name_for(head: str, n_labeled: int | None, stamp: str | None = None) -> str:
    """``<timestamp>.<head>.n=<N>`` as SLEAP names runs (only ``[A-Za-z0-9_.=+-]``)."""
    name = f"{stamp or timestamp()}.{head}"
    return f"{name}.n={n_labeled}" if n_labeled is not None else name


def _set(cfg: dict[str, Any], dotted: str, value: Any) -> None:
    node = cfg
    *parents, leaf = dotted.split(".")
    for key in parents:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[leaf] = value


def prepare_config(cfg: dict[str, Any], labels_name: str, run_name: str) -> dict[str, Any]:
    """A copy of ``cfg`` with the package's relative paths and no GUI-machine ports."""
    cfg = copy.deepcopy(cfg)
    _set(cfg, "data_config.train_labels_path", [labels_name])
    _set(cfg, "trainer_config.ckpt_dir", MODELS_DIR)
    _set(cfg, "trainer_config.run_name", run_name)
    # The worker picks its own progress ports; the GUI machine's mean nothing there.
    _set(cfg, "trainer_config.zmq.publish_port", None)
    _set(cfg, "trainer_config.zmq.controller_port", None)
    return cfg


def build_training_package(
    out_path: str | Path,
    *,
    labels_stem: str,
    save_labels: Callable[[Path], Any],
    heads: list[HeadConfig],
    n_labeled: int | None = None,
    inference: InferenceRequest | None = None,
) -> PackageInfo:
    """Write the package zip to ``out_path``; ``save_labels(path)`` writes the embedded labels.

    ``labels_stem`` is the project's file stem (``fly`` for ``fly.slp``): the labels entry is
    ``<stem>.pkg.slp`` like SLEAP's export.
    """
    if not heads:
        raise ValueError("The training dialog produced no model configuration to train.")
    out_path = Path(out_path)
    labels_name = f"{labels_stem}.pkg.slp"
    stamp = timestamp()
    run_paths: dict[str, str] = {}
    training_jobs: list[dict[str, Any]] = []
    script = ["#!/bin/bash"]
    with tempfile.TemporaryDirectory(prefix="sleap-rtc-pkg-") as tmp:
        tmp_dir = Path(tmp)
        save_labels(tmp_dir / labels_name)
        if not (tmp_dir / labels_name).is_file():
            raise RuntimeError(f"Saving the labels did not write {labels_name}.")
        for head in heads:
            run_name = run_name_for(head.head, n_labeled, stamp)
            cfg = prepare_config(head.config, labels_name, run_name)
            cfg_name = f"{head.head}.yaml"
            (tmp_dir / cfg_name).write_text(yaml.safe_dump(cfg, sort_keys=False))
            run_path = f"{MODELS_DIR}/{run_name}"
            run_paths[head.head] = run_path
            training_jobs.append({"cfg": cfg_name, "run_path": run_path, "train_labels": labels_name})
            overrides = [
                shlex.quote(f'trainer_config.ckpt_dir="{MODELS_DIR}"'),
                shlex.quote(f'trainer_config.run_name="{run_name}"'),
            ]
            script.append(f"sleap train --config-name {cfg_name} --config-dir . {' '.join(overrides)} ")
        (tmp_dir / TRAIN_SCRIPT).write_text("\n".join(script) + "\n")
        inference_jobs = []
        predictions_name = None
        if inference is not None:
            predictions_name = f"{labels_name}{PREDICTIONS_SUFFIX}"
            inference_jobs.append(
                {
                    "data_path": labels_name,
                    "models": list(run_paths.values()),
                    "output_path": predictions_name,
                    "only_suggested_frames": inference.only_suggested_frames,
                    "only_labeled_frames": inference.only_labeled_frames,
                    "tracking": dict(inference.tracking),
                    "type": "labels",
                }
            )
        # The one package writer (core.package): .slp stored, the rest deflated, jobs.yaml checked.
        write_package(out_path, {entry.name: entry for entry in sorted(tmp_dir.iterdir())},
                      jobs_document(training_jobs, inference_jobs))
    return PackageInfo(out_path, labels_name, run_paths, predictions_name)
