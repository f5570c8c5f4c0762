"""Time to predictions for a video of N frames: remote (``sleap-rtc track`` through a real
server and a real worker process on loopback) against local ``sleap-nn track`` on this
machine, the baseline, measured in the same run; and the bytes each remote run moved.

Runs, one after the other (the machine has two cores):

1. local: ``sleap-nn track -i VIDEO -m MODEL -d cpu`` (the baseline; run again after the
   remote runs, and the mean of both taken);
2. remote, first run: the video (and nothing else: the model was trained on that worker)
   is uploaded, then predicted;
3. remote, second run: the same video again, which moves 0 bytes;
4. remote from a data root: the worker reads the video where it lies.

Each figure is wall time from starting the command to the predictions file on disk. The
model is the tiny project's, trained by that worker first (``client-train``), so the
remote runs also show that a model trained remotely is not sent back for inference.

Usage: ``python benchmarks/inference.py [--frames 300] [--write]`` (``--write`` updates
``docs/bench/inference.md``).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the real test inputs: tests/videos.py

from videos import RUN_NAME, TINY_PACKAGE, make_video, sleap_nn  # noqa: E402

from sleap_rtc.local_room import LocalRoom, sleap_rtc_argv  # noqa: E402

SENT = re.compile(r"sent\s+([\d,]+) video bytes, ([\d,]+) model bytes")


def timed(argv: list[str], env: dict[str, str], timeout: float = 1200) -> tuple[float, str]:
    """Run ``argv`` to the end; (seconds, output). Fails loudly on a non-zero exit."""
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    elapsed = time.perf_counter() - start
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:4])} ... failed ({proc.returncode}):\n{out[-3000:]}")
    return elapsed, out


def bytes_sent(out: str) -> tuple[int, int]:
    """(video, model) payload bytes from the CLI's summary."""
    m = SENT.search(out)
    return (int(m.group(1).replace(",", "")), int(m.group(2).replace(",", ""))) if m else (-1, -1)


def bench(frames: int) -> dict:
    """Run the four measurements (module docstring); returns the figures."""
    work = Path(tempfile.mkdtemp(prefix="sleap-rtc-bench-infer-"))
    lab = work / "lab"
    video = make_video(work / "video.mp4", frames)
    on_root = make_video(lab / "video-on-root.mp4", frames, seed=1)
    home = work / "home"
    env = {"XDG_DATA_HOME": str(home / "data"), "XDG_CONFIG_HOME": str(home / "config"),
           "SLEAP_RTC_CONFIG": str(home / "none.toml")}
    room = LocalRoom(work / "room", env=env)
    figures: dict = {"frames": frames, "video_bytes": video.stat().st_size}
    try:
        room.start_server()
        room.create_room()
        room.start_worker("bench", "--data-root", f"lab={lab}")
        creds = ["--server", room.url, "--room-id", room.room_id, "--token", room.token, "--auto-select"]
        figures["train_s"], _ = timed(sleap_rtc_argv("client-train", str(TINY_PACKAGE), "--output", str(work / "m"),
                                                     *creds), room.env)
        model = work / "m" / RUN_NAME
        options = ["--peak_threshold", "0", "--batch_size", "4"]

        def local(n: int) -> float:
            return timed([sleap_nn(), "track", "-i", str(video), "-m", str(model), "-o", str(work / f"local{n}.slp"),
                          "-d", "cpu", *options], room.env)[0]

        before = local(1)
        remote = ["--peak-threshold", "0", "--batch-size", "4", *creds]
        for key, target, extra in (("first", video, ()), ("second", video, ()),
                                   ("root", on_root, ("--data-root", f"lab={lab}"))):
            seconds, out = timed(sleap_rtc_argv("track", str(target), "-m", str(model), "--output",
                                                str(work / f"out-{key}"), *extra, *remote), room.env)
            figures[f"{key}_s"] = seconds
            figures[f"{key}_bytes"] = bytes_sent(out)
        # Local before and after the remote runs: the baseline is their mean (a shared
        # machine's load drifts during the run).
        after = local(2)
        figures["local_runs"] = (before, after)
        figures["local_s"] = (before + after) / 2
    finally:
        room.stop()
    return figures


def report(f: dict, command: str) -> str:
    """The markdown section."""
    def row(name: str, seconds: float, sent: tuple[int, int] | None) -> str:
        moved = "" if sent is None else f"{sent[0]:,} / {sent[1]:,}"
        return f"| {name} | {seconds:.1f} s | {seconds / f['local_s']:.2f}x | {moved} |"

    return "\n".join([
        "## Remote inference on a whole video",
        "",
        f"Produced by `{command}` on {time.strftime('%Y-%m-%d')}.",
        "",
        f"Machine: `nproc` = {os.cpu_count()}, Python {platform.python_version()}, {platform.platform()}; no GPU:",
        "sleap-nn ran on the CPU both locally and on the worker, which is a process on the same",
        "machine (server, worker and client share its cores). The video is a real mp4",
        f"({f['frames']} frames of 128x128, {f['video_bytes']:,} bytes, written by ffmpeg); the model is the",
        f"tiny project's, trained on that worker first (`client-train`, {f['train_s']:.0f} s). Each figure is the",
        "wall time from starting the command to the predictions on disk, sleap-nn's start-up",
        "(imports, model load) included; the baseline is local `sleap-nn track` on the same video,",
        "measured in the same run. Load average (1 min) {:.1f} at the start, {:.1f} at the end: the".format(*f["load"]),
        "machine is shared with other jobs, so each figure carries tens of seconds of noise.",
        "",
        "| run | time to predictions | vs local | bytes sent (video / model) |",
        "|---|---|---|---|",
        row("Baseline: local `sleap-nn track -d cpu` (mean of {:.1f} s before, {:.1f} s after)".format(
            *f["local_runs"]), f["local_s"], None),
        row("Remote, first run (video uploaded)", f["first_s"], f["first_bytes"]),
        row("Remote, second run (same video)", f["second_s"], f["second_bytes"]),
        row("Remote, video on the worker's data root", f["root_s"], f["root_bytes"]),
        "",
        "The model bytes are 0 on every run: the worker kept the model it trained, and the",
        "client's copy zips to the same bytes (the same id). On the second run the video moves 0",
        "bytes (the worker's transfer cache answers its sha256) and the client does not read it",
        "again (its hash memo); from a data root nothing moves either. What a remote run adds",
        "over local is the room (join, select, connect, identity proof: about a second on",
        "loopback, `docs/bench/connect.md`) and the upload; the rest is the same sleap-nn start",
        "and inference on the same CPU. Read the ratios against the spread of the two local runs",
        "of the same command ({:.1f} s vs {:.1f} s here): on a loaded machine that spread can be".format(*f["local_runs"]),
        "larger than any difference between remote and local.",
        "",
    ])


def main() -> int:
    """Parse arguments, run, print, and with ``--write`` update the docs section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--write", action="store_true", help="write docs/bench/inference.md")
    args = parser.parse_args()
    if sleap_nn() is None:
        print("sleap-nn is not installed", file=sys.stderr)
        return 1
    load_before = os.getloadavg()[0]
    figures = bench(args.frames)
    figures["load"] = (load_before, os.getloadavg()[0])
    text = report(figures, f"python benchmarks/inference.py --frames {args.frames} --write")
    print(text)
    if args.write:
        (ROOT / "docs" / "bench" / "inference.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
