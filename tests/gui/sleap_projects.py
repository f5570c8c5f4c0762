"""Small saved SLEAP projects on real mp4 videos, and a model folder SLEAP lists as trained."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

N0, N1 = 12, 7


def make_two_video_project(folder):
    """A saved project: two mp4 videos (12 and 7 frames), user labels on 0/3/6 of the first, a
    prediction on frame 9 of the first and frame 2 of the second, suggestions 4 and 6."""
    import sleap_io as sio

    rng = np.random.default_rng(1)
    videos = []
    for name, n in (("a.mp4", N0), ("b.mp4", N1)):
        sio.save_video((rng.random((n, 32, 32, 1)) * 255).astype("uint8"), str(folder / name))
        videos.append(sio.load_video(str(folder / name)))
    skeleton = sio.Skeleton(["head", "tail"])
    pts = np.array([[5.0, 5.0], [20.0, 20.0]])
    lfs = [sio.LabeledFrame(video=videos[0], frame_idx=i, instances=[sio.Instance.from_numpy(pts, skeleton=skeleton)])
           for i in (0, 3, 6)]
    lfs += [sio.LabeledFrame(video=v, frame_idx=i, instances=[sio.PredictedInstance.from_numpy(pts, skeleton=skeleton, score=0.9)])
            for v, i in ((videos[0], 9), (videos[1], 2))]
    suggestions = [sio.SuggestionFrame(video=videos[0], frame_idx=i) for i in (4, 6)]
    path = folder / "two.slp"
    sio.save_slp(sio.Labels(labeled_frames=lfs, videos=videos, skeletons=[skeleton], suggestions=suggestions), str(path))
    return path


def fake_trained_model(project: Path, run: str = "260101_000000.single_instance.n=3") -> Path:
    """``models/<run>/`` with a sleap-nn single-instance config and a ``best.ckpt``: SLEAP's
    Inference dialog lists it as trained. Its weights are not real (stand-in workers only)."""
    import sleap

    folder = Path(project).parent / "models" / run
    folder.mkdir(parents=True)
    # SLEAP's own single-animal profile: a complete sleap-nn config its dialog can load.
    profile = Path(sleap.__file__).parent / "training_profiles" / "baseline_medium_rf.single.yaml"
    cfg = yaml.safe_load(profile.read_text())
    cfg["trainer_config"]["run_name"] = run
    (folder / "training_config.yaml").write_text(yaml.safe_dump(cfg))
    (folder / "best.ckpt").write_bytes(b"not real weights")
    return folder
