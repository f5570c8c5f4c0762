"""An in-memory worker that answers inference packages (core's connect attempt, faked)."""

from __future__ import annotations

import asyncio
import io
import zipfile

import numpy as np
import yaml

from job_fakes import FakeWorkers, ScriptedChannel


class InferringWorker(FakeWorkers):
    """Predicts every frame its plan asks for: progress events, then that video's .slp.

    After ``hold_after`` videos the worker reports the next one half done and then says
    nothing more (until cancelled)."""

    def __init__(self, videos: list, hold_after: int | None = None):
        super().__init__()
        self.videos = videos
        self.hold_after = hold_after
        self.plans: list[dict] = []
        self.default = self.infer

    async def infer(self, ch: ScriptedChannel) -> None:
        import sleap_io as sio

        with zipfile.ZipFile(io.BytesIO(ch.package)) as zf:
            plan = yaml.safe_load(zf.read("jobs.yaml"))
        self.plans.append(plan)
        await ch.accept()
        for i, entry in enumerate(plan["inference"]):
            path, n = self.videos[i]
            frames = [f for a, b in entry["frames"] for f in range(a, b + 1)] if entry.get("frames") else list(range(n))
            if self.hold_after is not None and i >= self.hold_after:  # half-way through this video, then silence
                await ch.event({"event": "inference_progress", "video": i, "n_processed": len(frames) // 2,
                                "n_total": len(frames), "rate": 25.0, "eta": len(frames) / 50.0})
                await asyncio.Event().wait()
            for done in range(0, len(frames) + 1, max(1, len(frames) // 3)):
                await ch.event({"event": "inference_progress", "video": i, "n_processed": done, "n_total": len(frames),
                                "rate": 25.0, "eta": (len(frames) - done) / 25.0})
                await asyncio.sleep(0.01)
            video = sio.load_video(str(path))
            skeleton = sio.Skeleton(["head", "tail"])
            lfs = [sio.LabeledFrame(video=video, frame_idx=f, instances=[sio.PredictedInstance.from_numpy(
                np.array([[1.0 + f, 2.0], [3.0, 4.0]]), skeleton=skeleton, score=0.5)]) for f in frames]
            buf = ch.receive_dir / f"pred-{i}.slp"
            ch.receive_dir.mkdir(parents=True, exist_ok=True)
            sio.save_slp(sio.Labels(labeled_frames=lfs, videos=[video], skeletons=[skeleton]), str(buf))
            await ch.result_file("predictions", entry["output_path"], buf.read_bytes())
        await ch.complete()
