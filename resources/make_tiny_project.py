"""Generate, deterministically, the tiny SLEAP project the worker tests and the demo use.

Writes into ``resources/tiny/`` (or ``--out DIR``):

* ``labels.pkg.slp``: 20 synthetic 128x128 grayscale frames (two bright blobs, "head" and
  "tail", moving on a circle), a 2-node skeleton and 10 labelled frames, frames embedded;
* ``tiny.training_job.zip``: a SLEAP-style training-job package (flat zip) holding
  ``tiny.pkg.slp``, ``single_instance.yaml`` (a tiny sleap-nn config: 2 epochs on the CPU in
  seconds), ``train-script.sh`` and ``jobs.yaml`` with one training and one inference entry.

``make_video_project(DIR)`` writes the demo's editable project instead: ``tiny.mp4`` (the
same 20 frames, encoded with the ffmpeg that imageio-ffmpeg ships) and ``labels.slp``
pointing at it. A project on a real video file survives SLEAP's saves and merges (an
embedded-only project loses its frames on the first save, its source video being gone).

Run: ``python resources/make_tiny_project.py [--out DIR]``. Needs sleap-io, numpy, PyYAML.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
PACKAGE_NAME = "tiny"
RUN_NAME = "single_instance.n=10"
N_FRAMES, N_LABELED, SIZE = 20, 10, 128
# A fixed timestamp so the zip is byte-identical on every run (zip stores mtimes).
ZIP_DATE = (2024, 1, 1, 0, 0, 0)


def blob_positions(i: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """Head and tail (x, y) of frame ``i``: a pair of points turning on a circle."""
    angle = 2 * np.pi * i / N_FRAMES
    cx, cy = 64 + 20 * np.cos(angle), 64 + 20 * np.sin(angle)
    hx, hy = cx + 14 * np.cos(angle * 2), cy + 14 * np.sin(angle * 2)
    return (float(cx), float(cy)), (float(hx), float(hy))


def make_frames() -> np.ndarray:
    """``(N, 128, 128, 1)`` uint8 frames with two Gaussian blobs (the tail dimmer)."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    rng = np.random.default_rng(0)
    frames = np.empty((N_FRAMES, SIZE, SIZE, 1), dtype=np.uint8)
    for i in range(N_FRAMES):
        (tx, ty), (hx, hy) = blob_positions(i)
        img = 220 * np.exp(-((xx - hx) ** 2 + (yy - hy) ** 2) / (2 * 4.0**2))
        img += 140 * np.exp(-((xx - tx) ** 2 + (yy - ty) ** 2) / (2 * 5.0**2))
        img += rng.normal(0, 3, img.shape)
        frames[i, :, :, 0] = np.clip(img, 0, 255).astype(np.uint8)
    return frames


def make_labels(frame_dir: Path):
    """The tiny ``sleap_io.Labels``: 2-node skeleton, 10 labelled frames.

    The frames are written as PNGs into ``frame_dir`` (an image-sequence video) because
    sleap-io reads videos from files; ``save_slp(embed=True)`` then copies them in.
    """
    import sleap_io as sio
    from PIL import Image

    paths = []
    for i, frame in enumerate(make_frames()):
        path = frame_dir / f"frame_{i:03d}.png"
        Image.fromarray(frame[:, :, 0]).save(path)
        paths.append(str(path))
    skeleton = sio.Skeleton(["head", "tail"], edges=[("head", "tail")])
    video = sio.Video.from_filename(paths)
    frames = []
    for i in range(0, N_FRAMES, N_FRAMES // N_LABELED):
        (tx, ty), (hx, hy) = blob_positions(i)
        inst = sio.Instance.from_numpy(np.array([[hx, hy], [tx, ty]]), skeleton=skeleton)
        frames.append(sio.LabeledFrame(video=video, frame_idx=i, instances=[inst]))
    return sio.Labels(labeled_frames=frames, videos=[video], skeletons=[skeleton])


VIDEO_NAME = "tiny.mp4"
PROJECT_NAME = "labels.slp"
VIDEO_CRF = 12
"""Near-lossless H.264 (the blobs keep their shape); the 20-frame video is ~20 KB."""


def make_video_project(out_dir: Path) -> Path:
    """Write ``tiny.mp4`` and ``labels.slp`` (video by path, nothing embedded) into ``out_dir``.

    Returns the project's path. The labels are the same as the bundled package's.
    """
    import sleap_io as sio

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    video_path = out_dir / VIDEO_NAME
    sio.save_video(list(make_frames()), str(video_path), fps=10, crf=VIDEO_CRF)
    video = sio.load_video(str(video_path))
    skeleton = sio.Skeleton(["head", "tail"], edges=[("head", "tail")])
    frames = []
    for i in range(0, N_FRAMES, N_FRAMES // N_LABELED):
        (tx, ty), (hx, hy) = blob_positions(i)
        inst = sio.Instance.from_numpy(np.array([[hx, hy], [tx, ty]]), skeleton=skeleton)
        frames.append(sio.LabeledFrame(video=video, frame_idx=i, instances=[inst]))
    labels = sio.Labels(labeled_frames=frames, videos=[video], skeletons=[skeleton])
    path = out_dir / PROJECT_NAME
    sio.save_slp(labels, str(path), embed=False)
    return path


def training_config(labels_name: str) -> dict:
    """A sleap-nn config small enough to train 2 epochs on a CPU in seconds."""
    return {
        "data_config": {
            "train_labels_path": [labels_name],
            "val_labels_path": None,
            "validation_fraction": 0.2,
            "provider": "LabelsReader",
            "user_instances_only": True,
            "data_pipeline_fw": "torch_dataset",
            "preprocessing": {"ensure_rgb": False, "ensure_grayscale": False, "scale": 1.0,
                              "max_height": None, "max_width": None, "crop_size": None},
            "use_augmentations_train": False,
        },
        "model_config": {
            "init_weights": "default",
            "pretrained_backbone_weights": None,
            "pretrained_head_weights": None,
            "backbone_config": {
                "unet": {"in_channels": 1, "kernel_size": 3, "filters": 8, "filters_rate": 2.0,
                         "max_stride": 8, "middle_block": True, "up_interpolate": True,
                         "stacks": 1, "convs_per_block": 2, "output_stride": 2},
            },
            "head_configs": {
                "single_instance": {
                    "confmaps": {"part_names": ["head", "tail"], "sigma": 2.5, "output_stride": 2},
                },
            },
        },
        "trainer_config": {
            "train_data_loader": {"batch_size": 4, "shuffle": True, "num_workers": 0},
            "val_data_loader": {"batch_size": 4, "shuffle": False, "num_workers": 0},
            "model_ckpt": {"save_top_k": 1, "save_last": False},
            "trainer_devices": 1,
            "trainer_accelerator": "cpu",
            "min_train_steps_per_epoch": 5,
            "max_epochs": 2,
            "seed": 0,
            "save_ckpt": True,
            "ckpt_dir": "models",
            "run_name": RUN_NAME,
            "use_wandb": False,
            "visualize_preds_during_training": False,
            "optimizer_name": "Adam",
            "optimizer": {"lr": 1e-3},
            "zmq": {"publish_port": None, "controller_port": None},
        },
    }


def jobs(labels_name: str) -> dict:
    """``jobs.yaml`` as SLEAP's ``export_package`` writes it (relative paths)."""
    return {
        "training": [{"cfg": "single_instance.yaml", "run_path": f"models/{RUN_NAME}", "train_labels": labels_name}],
        "inference": [{
            "data_path": labels_name,
            "models": [f"models/{RUN_NAME}"],
            "output_path": f"{labels_name}.predictions.slp",
            "only_suggested_frames": False,
            "tracking": {},
            "type": "labels",
        }],
    }


def train_script() -> str:
    """``train-script.sh`` as SLEAP writes it (used by workers only when jobs.yaml is absent)."""
    return ("#!/bin/bash\n"
            "sleap train --config-name single_instance.yaml --config-dir . "
            "'trainer_config.ckpt_dir=\"models\"' "
            f"'trainer_config.run_name=\"{RUN_NAME}\"' \n")


def write_package(zip_path: Path, labels_path: Path) -> None:
    """Write the flat training-job zip, byte-identical across runs."""
    labels_name = f"{PACKAGE_NAME}.pkg.slp"
    entries = {
        labels_name: labels_path.read_bytes(),
        "single_instance.yaml": yaml.safe_dump(training_config(labels_name), sort_keys=False).encode(),
        "train-script.sh": train_script().encode(),
        "jobs.yaml": yaml.safe_dump(jobs(labels_name), sort_keys=False).encode(),
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    zip_path.write_bytes(buf.getvalue())


def main(argv: list[str] | None = None) -> Path:
    """Generate the project into ``--out`` (default ``resources/tiny``); returns the zip path."""
    import sleap_io as sio

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "tiny")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    labels_path = args.out / "labels.pkg.slp"
    with tempfile.TemporaryDirectory() as tmp:
        sio.save_slp(make_labels(Path(tmp)), str(labels_path), embed=True)
    zip_path = args.out / f"{PACKAGE_NAME}.training_job.zip"
    write_package(zip_path, labels_path)
    return zip_path


if __name__ == "__main__":
    print(main())
