"""``sleap-rtc track`` on bare video files, end to end with real parts: ``LocalRoom`` (a real
server and a real ``sleap-rtc worker`` process with a data root), the real CLI as a
subprocess, real mp4 videos (``tests/videos.py``) and real sleap-nn on the CPU.

* a remote training, then inference on a 200-frame mp4 with the model folder it returned:
  predictions for every frame, 0 model bytes sent (the worker kept the model it trained);
  a second run sends 0 video bytes (the worker's cache answered), and the client did not
  read the video again to hash it;
* a video on the worker's data root: read there, 0 bytes sent;
* a link in the data root that points outside it: refused with the reason, nothing run;
* an upload killed mid-way (SIGKILL of the client) resumes from what the worker kept.

Marked ``infer`` (``make test-infer``): each inference starts sleap-nn (~15 s of imports).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from sleap_rtc.local_room import LocalRoom, sleap_rtc_argv
from videos import TINY_PACKAGE, RUN_NAME, make_video

pytestmark = [pytest.mark.infer]
FRAMES = 200


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A data-root folder on 'lab storage' and a file outside it."""
    root = tmp_path_factory.mktemp("lab-storage")
    make_video(root / "session-a.mp4", 60)
    outside = make_video(tmp_path_factory.mktemp("elsewhere") / "private.mp4", 30)
    (root / "escape.mp4").symlink_to(outside)
    return root


@pytest.fixture(scope="module")
def room(tmp_path_factory, lab):
    """A real server and one real worker that declares ``lab`` as data root ``lab``."""
    home = tmp_path_factory.mktemp("client-home")
    # The CLI's own dirs (transfer cache, hash memo, known workers) stay inside the test.
    r = LocalRoom(tmp_path_factory.mktemp("room"), env={
        "XDG_DATA_HOME": str(home / "data"), "XDG_CONFIG_HOME": str(home / "config"),
        "SLEAP_RTC_CONFIG": str(home / "no-config.toml")})
    try:
        r.start_server()
        r.create_room()
        r.start_worker("w-infer", "--data-root", f"lab={lab}")
        yield r
    finally:
        r.stop()


@pytest.fixture(scope="module")
def remote_model(room, tmp_path_factory) -> Path:
    """The tiny project trained on the room's worker: the model folder that came back."""
    out = tmp_path_factory.mktemp("trained")
    done = track(room, "client-train", str(TINY_PACKAGE), "--output", str(out), timeout=400)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return out / RUN_NAME


def track(room: LocalRoom, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``sleap-rtc ARGS --server .. --room-id .. --token .. --auto-select`` to the end."""
    creds = ["--server", room.url, "--room-id", room.room_id, "--token", room.token, "--auto-select", "--wait", "90"]
    return subprocess.run(sleap_rtc_argv(*args, *creds), env=room.env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def sent(out: str) -> tuple[int, int]:
    """(video bytes, model bytes) from the summary line."""
    m = re.search(r"sent\s+([\d,]+) video bytes, ([\d,]+) model bytes", out)
    assert m, out[-3000:]
    return int(m.group(1).replace(",", "")), int(m.group(2).replace(",", ""))


@pytest.mark.timeout(900)
def test_whole_video_every_frame_then_a_second_run_sends_nothing(room, remote_model, tmp_path_factory):
    import sleap_io as sio

    video = make_video(tmp_path_factory.mktemp("videos") / "moving-square.mp4", FRAMES)
    first = track(room, "track", str(video), "-m", str(remote_model), "--peak-threshold", "0")
    out = first.stdout + first.stderr
    assert first.returncode == 0, out[-4000:]
    predictions = video.with_name("moving-square.predictions.slp")
    labels = sio.load_slp(str(predictions))
    assert sorted(lf.frame_idx for lf in labels.labeled_frames) == list(range(FRAMES))
    assert all(len(lf.predicted_instances) == 1 for lf in labels.labeled_frames)
    assert Path(labels.videos[0].filename).resolve() == video.resolve()  # points at the local video
    videos_sent, models_sent = sent(out)
    assert videos_sent == video.stat().st_size
    assert models_sent == 0, "the worker kept the model it trained: no model bytes"
    assert re.search(rf"moving-square.mp4: {FRAMES}/{FRAMES} frames, [\d.]+ FPS", out), out[-3000:]

    memo = Path(room.env["XDG_DATA_HOME"]) / "sleap-rtc" / "transfer-cache" / "video-hashes.json"
    remembered = json.loads(memo.read_text())
    assert [v[0] for k, v in remembered.items() if k == str(video.resolve())] == [video.stat().st_size]
    memo_written = memo.stat().st_mtime_ns
    second = track(room, "track", str(video), "-m", str(remote_model), "--peak-threshold", "0")
    out2 = second.stdout + second.stderr
    assert second.returncode == 0, out2[-4000:]
    assert sent(out2) == (0, 0), out2[-3000:]
    assert "moving-square.mp4: already on the worker (0 bytes sent)" in out2
    again = video.with_name("moving-square-2.predictions.slp")  # never over the first one
    assert len(sio.load_slp(str(again)).labeled_frames) == FRAMES
    assert memo.stat().st_mtime_ns == memo_written, "the video was not hashed again (the memo answered)"


@pytest.mark.timeout(600)
def test_a_video_on_the_data_root_is_read_there_and_a_link_out_of_it_is_refused(room, remote_model, lab, tmp_path):
    import sleap_io as sio

    out_dir = tmp_path / "out"
    done = track(room, "track", str(lab / "session-a.mp4"), "-m", str(remote_model), "--peak-threshold", "0",
                 "--data-root", f"lab={lab}", "--output", str(out_dir))
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert "session-a.mp4: on the worker's data root lab (not uploaded)" in out
    assert sent(out) == (0, 0)
    assert len(sio.load_slp(str(out_dir / "session-a.predictions.slp")).labeled_frames) == 60

    refused = track(room, "track", str(lab / "escape.mp4"), "-m", str(remote_model), "--data-root", f"lab={lab}",
                    "--output", str(out_dir))
    out = refused.stdout + refused.stderr
    assert refused.returncode == 1, out[-3000:]
    assert "resolves outside the data root lab" in out, out[-3000:]
    assert not (out_dir / "escape.predictions.slp").exists()


@pytest.mark.timeout(600)
def test_an_upload_killed_midway_resumes_from_what_the_worker_kept(room, remote_model, tmp_path):
    video = make_video(tmp_path / "noisy.mp4", 2400, noise=True)
    size = video.stat().st_size
    partials = room.work_dir / "w-infer" / "transfer-cache" / "partial"
    argv = sleap_rtc_argv("track", str(video), "-m", str(remote_model), "--frames", "0-4", "--server", room.url,
                          "--room-id", room.room_id, "--token", room.token, "--auto-select")
    client = subprocess.Popen(argv, env=room.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        kept = 0
        while time.monotonic() < deadline and client.poll() is None:
            kept = max((p.stat().st_size for p in partials.glob("*.part")), default=0) if partials.is_dir() else 0
            if kept > size // 8:
                break
            time.sleep(0.02)
        assert client.poll() is None, "the upload finished before it could be interrupted"
        os.killpg(client.pid, signal.SIGKILL)  # no goodbye: the worker sees the channel fall silent
    finally:
        client.wait(10)
    assert kept > 0

    done = track(room, "track", str(video), "-m", str(remote_model), "--frames", "0-4", "--peak-threshold", "0",
                 "--output", str(tmp_path / "out"))
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    m = re.search(r"Upload resumed at ([\d.]+) of ([\d.]+) MiB", out)
    assert m, out[-3000:]
    videos_sent, _ = sent(out)
    assert 0 < videos_sent < size, (videos_sent, size)


@pytest.mark.timeout(600)
def test_a_projects_suggested_frames_are_predicted_and_merged_keeping_user_labels(room, remote_model, tmp_path):
    import numpy as np
    import sleap_io as sio

    video_path = make_video(tmp_path / "cam.mp4", 40)
    video = sio.Video.from_filename(str(video_path))
    skeleton = sio.Skeleton(["head", "tail"])
    user = sio.Instance.from_numpy(np.array([[30.0, 60.0], [40.0, 64.0]]), skeleton=skeleton)
    labels = sio.Labels(videos=[video], skeletons=[skeleton],
                        labeled_frames=[sio.LabeledFrame(video=video, frame_idx=5, instances=[user])])
    labels.suggestions = [sio.SuggestionFrame(video=video, frame_idx=i) for i in (5, 10, 11, 30)]
    project = tmp_path / "project.slp"
    labels.save(str(project))

    done = track(room, "track", str(project), "-m", str(remote_model), "--only-suggested", "--peak-threshold", "0")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    merged = sio.load_slp(str(tmp_path / "project.predictions.slp"))
    by_frame = {lf.frame_idx: lf for lf in merged.labeled_frames}
    # Suggested frames without user labels got predictions; the user's frame kept its instance.
    assert sorted(f for f, lf in by_frame.items() if lf.predicted_instances) == [10, 11, 30]
    assert len(by_frame[5].user_instances) == 1 and not by_frame[5].predicted_instances
    assert Path(merged.videos[0].filename).resolve() == video_path.resolve()
    assert "merged 3 predicted frame(s) into project.predictions.slp (user labels kept)" in out
    assert sio.load_slp(str(project)).labeled_frames[0].frame_idx == 5  # the project itself is untouched
