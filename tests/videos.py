"""Real test inputs for inference: mp4 videos written by ffmpeg (imageio-ffmpeg, which
sleap-io reads them with) and a model trained once by the real sleap-nn on the checked-in
tiny project.

``make_video(path, frames)``: a 128x128 grayscale-looking mp4 (the tiny model's input) of
a bright square moving across a dark field, ``frames`` frames at 30 FPS. ``noise=True``
fills frames with noise instead, so the file is large (about 45 KiB a frame): what an
upload test needs to interrupt. ``trained_model(cache_root)``: the model folder of
``resources/tiny/tiny.training_job.zip`` trained on the CPU (2 epochs, ~30 s), kept under
``cache_root/<key>`` where the key covers the package and sleap-nn's version, so a test
session trains it at most once (fixtures ``tiny_video`` and ``trained_model`` in
``tests/conftest.py``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

TINY = Path(__file__).resolve().parents[1] / "resources" / "tiny"
TINY_PACKAGE = TINY / "tiny.training_job.zip"
RUN_NAME = "single_instance.n=10"
SIZE = 128
TRAIN_TIMEOUT_S = 300


def make_video(path: Path, frames: int, *, noise: bool = False, seed: int = 0) -> Path:
    """Write a real mp4 of ``frames`` frames (see the module docstring); returns ``path``."""
    import imageio_ffmpeg

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = imageio_ffmpeg.write_frames(str(path), (SIZE, SIZE), fps=30, quality=10 if noise else 5,
                                         macro_block_size=16, ffmpeg_log_level="error")
    writer.send(None)
    for i in range(frames):
        if noise:
            frame = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        else:
            frame = np.full((SIZE, SIZE, 3), 20, np.uint8)
            x = 16 + (i * 3) % (SIZE - 40)
            frame[56:72, x:x + 16] = 235
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    return path


def sleap_nn() -> str | None:
    """The ``sleap-nn`` console script next to this Python, or on PATH."""
    local = Path(sys.executable).with_name("sleap-nn")
    return str(local) if local.exists() else shutil.which("sleap-nn")


def _key() -> str:
    try:
        nn = version("sleap-nn")
    except PackageNotFoundError:
        nn = "none"
    return hashlib.sha256(TINY_PACKAGE.read_bytes() + nn.encode()).hexdigest()[:16]


def trained_model(cache_root: Path) -> Path:
    """The tiny model folder, trained by the real sleap-nn once per ``cache_root`` and key."""
    done = cache_root / _key() / RUN_NAME
    if (done / "best.ckpt").is_file():
        return done
    command = sleap_nn()
    if command is None:
        raise RuntimeError("sleap-nn is not installed")
    work = Path(tempfile.mkdtemp(prefix="tiny-train-", dir=cache_root if cache_root.is_dir() else None))
    with zipfile.ZipFile(TINY_PACKAGE) as zf:
        zf.extractall(work)
    env = {**os.environ, "WANDB_MODE": "disabled", "HOME": str(work)}
    subprocess.run([command, "train", "single_instance.yaml"], cwd=work, env=env, check=True,
                   capture_output=True, timeout=TRAIN_TIMEOUT_S)
    done.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(work / "models" / RUN_NAME, done)
    except OSError:  # another session finished first
        pass
    shutil.rmtree(work, ignore_errors=True)
    return done
