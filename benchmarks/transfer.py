"""Transfer benchmark on loopback: our file transfer against aiortc's ceiling, the old scheme and TCP.

One run measures, with sender and receiver in separate processes (fresh pair per repeat):

  raw   aiortc data channel, 64 KiB chunks, event-driven flow control (4 MiB/1 MiB), no
        protocol, receiver only counts bytes: the ceiling of the library here
  ours  PeerChannel.send_file: framed chunks, SHA-256 (sender pre-hash + receiver), disk
        writes, cache copy, everything a real transfer does
  old   the old scheme re-created: 64 KiB chunks, pause while > 16 MiB is buffered, polled
        every 100 ms; the receiver writes to disk
  tcp   a plain TCP socket (1 MiB sendall blocks), the machine's physical reference
  striped         send_file over --stripes aiortc connections in all (core.stripes)
  native          send_file, libdatachannel at both ends (the Python 3.12 side env)
  native-striped  the same over --stripes connections
  mixed           aiortc sender -> libdatachannel receiver, one connection
  mixed-striped   the same over --stripes connections

"ours" (one aiortc association, what a transfer used before striping) is the baseline the
new modes are compared with, in the same run. Native modes need scripts/ensure-fast-env.sh
(Python 3.12); without it they are left out, saying so.

Reports MB/s (median of --repeats), set-up time (connect + extra connections) and each
side's RSS before the transfer and at peak.
Usage: python benchmarks/transfer.py [--size-mib 256] [--repeats 3] [--modes raw,ours,old,tcp] [--stripes 4] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CHUNK = 64 * 1024
MiB = 1 << 20

# mode -> (sender backend, receiver backend, connections); modes not listed are aiortc, 1.
PROTOCOL_MODES = {
    "ours": ("aiortc", "aiortc", 1),
    "striped": ("aiortc", "aiortc", None),
    "native": ("libdatachannel", "libdatachannel", 1),
    "native-striped": ("libdatachannel", "libdatachannel", None),
    "mixed": ("aiortc", "libdatachannel", 1),
    "mixed-striped": ("aiortc", "libdatachannel", None),
}


def rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def report(**fields) -> None:
    print("RESULT " + json.dumps(fields), flush=True)


# ------------------------------------------------------------------ child processes


async def child(args) -> None:
    from sleap_rtc.core.protocol import MessageType
    from sleap_rtc.core.signaling import SignalingClient
    from sleap_rtc.core.transport import accept, accept_stripe, connect

    work = Path(args.dir)
    if args.mode == "tcp":
        return await tcp_child(args, work)
    sig = SignalingClient(args.url, room_id=args.room, token=args.token, role="worker" if args.child == "recv" else "client", events=False)
    await sig.connect()
    if args.child == "recv":
        offers: asyncio.Queue = asyncio.Queue()
        sig.add_listener(lambda f: offers.put_nowait(f) if f.get("type") == MessageType.OFFER else None)
        print("PEER", sig.peer_id, flush=True)
        ch = await accept(sig, await asyncio.wait_for(offers.get(), 60), receive_dir=work / "recv", cache_dir=work / "cache")
        ch.stripes.allow()

        async def stripe_offers() -> None:
            while True:
                frame = await offers.get()
                if ch.stripes.admits(frame.get("stripe"), frame.get("sender")):
                    try:
                        ch.stripes.attach(await accept_stripe(sig, frame))
                    except Exception:
                        ch.stripes.release()

        extra = asyncio.ensure_future(stripe_offers())
        base = rss()
        if args.mode in PROTOCOL_MODES:
            await ch.receive_file(600)
            extra.cancel()
        else:
            await receive_raw(ch, args.mode, work, args.size)
        report(side="recv", base=base, peak=peak_rss())
        await ch.wait_closed(30)
    else:
        t_setup = time.perf_counter()
        ch = await connect(sig, args.target, receive_dir=work / "crecv", cache_dir=work / "ccache")
        ch.stripes.opener, opener = None, ch.stripes.opener  # a fixed number of connections per mode
        if int(args.stripes or 1) > 1:
            ch.stripes.opener = opener
            await ch.stripes.ensure(int(args.stripes))
            ch.stripes.opener = None
        setup = time.perf_counter() - t_setup
        base = rss()
        t0 = time.perf_counter()
        if args.mode in PROTOCOL_MODES:
            receipt = await ch.send_file(args.file)
            assert receipt.bytes_sent >= args.size
        else:
            await send_raw(ch, args.mode, args.file, args.size)
        seconds = time.perf_counter() - t0
        report(side="send", seconds=seconds, base=base, peak=peak_rss(), setup=setup,
               connections=ch.stripes.count, backend=ch.conn.backend)
        await ch.close()
    await sig.close()


async def send_raw(ch, mode: str, path: str, size: int) -> None:
    from sleap_rtc.core.jobs_wire import job_log

    dc = ch.conn.dc  # raw modes: the aiortc backend's RTCDataChannel itself
    low = asyncio.Event()
    dc.bufferedAmountLowThreshold = 1 * MiB
    dc.on("bufferedamountlow", low.set)
    with open(path, "rb") as fh:
        while True:
            if mode == "raw":
                if dc.bufferedAmount > 4 * MiB:
                    low.clear()
                    await asyncio.wait_for(low.wait(), 30)
            else:  # the old scheme: poll every 100 ms while more than 16 MiB is buffered
                while dc.bufferedAmount > 16 * MiB:
                    await asyncio.sleep(0.1)
            chunk = fh.read(CHUNK)
            if not chunk:
                break
            dc.send(chunk)
    await ch.send(job_log("bench", "end"))
    assert (await ch.receive(120))["line"] == "ok"


async def receive_raw(ch, mode: str, work: Path, size: int) -> None:
    from sleap_rtc.core.jobs_wire import job_log

    got = 0
    out = open(work / "old.bin", "wb") if mode == "old" else None

    def on_message(data):
        nonlocal got
        if isinstance(data, bytes):
            got += len(data)
            if out is not None:
                out.write(data)

    ch.conn.dc.on("message", on_message)  # next to PeerChannel's own handler (which drops these)
    msg = await ch.receive(600)
    assert msg["line"] == "end" and got == size, (msg, got, size)
    if out is not None:
        out.close()
    await ch.send(job_log("bench", "ok"))


async def tcp_child(args, work: Path) -> None:
    if args.child == "recv":
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        print("PEER", srv.getsockname()[1], flush=True)
        conn, _ = srv.accept()
        base = rss()
        got = 0
        buf = bytearray(MiB)
        with open(work / "tcp.bin", "wb") as out:
            while got < args.size:
                n = conn.recv_into(buf)
                if not n:
                    break
                out.write(memoryview(buf)[:n])
                got += n
        conn.sendall(b"k")
        report(side="recv", base=base, peak=peak_rss())
    else:
        conn = socket.create_connection(("127.0.0.1", int(args.target)))
        base = rss()
        t0 = time.perf_counter()
        with open(args.file, "rb") as fh:
            while block := fh.read(MiB):
                conn.sendall(block)
        conn.recv(1)
        report(side="send", seconds=time.perf_counter() - t0, base=base, peak=peak_rss())


# ------------------------------------------------------------------ orchestration


def fast_python() -> str | None:
    """The Python 3.12 side env with libdatachannel (scripts/ensure-fast-env.sh), or None."""
    proc = subprocess.run([str(ROOT / "scripts" / "ensure-fast-env.sh")], capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"  native modes left out: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
        return None
    return proc.stdout.strip().splitlines()[-1]


def spawn(*argv: str, profile: Path | None = None, python: str | None = None, backend: str = "aiortc") -> subprocess.Popen:
    # Under --profile py-spy launches the child itself (attaching to a running one stalled it).
    pyspy = Path(sys.executable).parent / "py-spy"
    prefix = [str(pyspy) if pyspy.exists() else "py-spy", "record", "--rate", "100", "--format", "raw", "--nonblocking", "-o", str(profile), "--"] if profile else []
    env = {**os.environ, "SLEAP_RTC_BACKEND": backend, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([*prefix, python or sys.executable, __file__, *argv], stdout=subprocess.PIPE, text=True,
                            cwd=ROOT, env=env)


def result_of(proc: subprocess.Popen, timeout: float) -> dict:
    out, _ = proc.communicate(timeout=timeout)
    for line in out.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"child failed (rc={proc.returncode}): {out[-2000:]}")


async def one_run(mode: str, url: str, room: tuple[str, str], src: Path, size: int, profile: Path | None,
                  *, stripes: int = 4, fast: str | None = None) -> tuple[dict, dict]:
    work = Path(tempfile.mkdtemp(prefix=f"bench-{mode}-"))
    send_backend, recv_backend, n = PROTOCOL_MODES.get(mode, ("aiortc", "aiortc", 1))
    n = stripes if n is None else n
    python = {"aiortc": sys.executable, "libdatachannel": fast}
    try:
        common = ["--mode", mode, "--url", url or "-", "--room", room[0], "--token", room[1], "--dir", str(work),
                  "--size", str(size), "--stripes", str(n)]
        recv = spawn("--child", "recv", *common, python=python[recv_backend], backend=recv_backend)
        line = await asyncio.wait_for(asyncio.to_thread(recv.stdout.readline), 60)
        target = line.split()[1]
        send = spawn("--child", "send", "--target", target, "--file", str(src), *common, profile=profile,
                     python=python[send_backend], backend=send_backend)
        s = await asyncio.to_thread(result_of, send, 600)
        r = await asyncio.to_thread(result_of, recv, 60)
        return s, r
    finally:
        shutil.rmtree(work, ignore_errors=True)


def summarize_profile(path: Path, top: int = 12) -> list[tuple[str, float]]:
    """Self-time share per function (leaf frame) from a py-spy raw (collapsed) profile."""
    totals: dict[str, int] = {}
    n = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        leaf = stack.split(";")[-1]
        leaf = leaf.split(" (")[0] + " (" + leaf.split("(")[-1].split("/")[-1] if "(" in leaf else leaf
        totals[leaf] = totals.get(leaf, 0) + int(count)
        n += int(count)
    return [(k, v / n) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])[:top]]


async def main(opts) -> None:
    from sleap_rtc.server.app import start_server

    size = int(opts.size_mib * MiB)
    tmp = Path(tempfile.mkdtemp(prefix="bench-src-"))
    src = tmp / "payload.bin"
    with open(src, "wb") as fh:
        for _ in range(size // MiB):
            fh.write(os.urandom(MiB))
        fh.write(os.urandom(size % MiB))
    server = await start_server("127.0.0.1", 0)
    room = await server.create_room()
    rows = {}
    t_all = time.perf_counter()
    try:
        # Interleaved (a b c d, a b c d, ...): a slow spell of this shared machine then
        # hits every mode alike instead of one mode's whole series.
        modes = opts.modes.split(",")
        fast = fast_python() if any("native" in m or "mixed" in m for m in modes) else None
        if fast is None:
            modes = [m for m in modes if "native" not in m and "mixed" not in m]
        rows = {mode: [] for mode in modes}
        failures: dict[str, list[str]] = {}
        for i in range(opts.repeats):
            for mode in modes:
                try:
                    s, r = await one_run(mode, server.url, room, src, size, None, stripes=opts.stripes, fast=fast)
                except (RuntimeError, asyncio.TimeoutError, subprocess.TimeoutExpired) as exc:
                    failures.setdefault(mode, []).append(str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else repr(exc))
                    print(f"  {mode} run {i + 1}: FAILED ({failures[mode][-1]})", flush=True)
                    continue
                rows[mode].append((size / s["seconds"] / 1e6, s, r))
                print(f"  {mode} run {i + 1}: {rows[mode][-1][0]:.1f} MB/s", flush=True)
        profile = None
        if opts.profile:
            profile = tmp / "ours.prof"
            await one_run("ours", server.url, room, src, size, profile)
    finally:
        await server.stop()
    total = time.perf_counter() - t_all
    rows = {m: runs for m, runs in rows.items() if runs}
    table = render(rows, opts, size, total, summarize_profile(profile) if profile and profile.exists() else None)
    for mode, why in failures.items():
        table += f"- {mode}: {len(why)} run(s) failed: {why[0]}\n"
    print(table)
    if opts.write:
        (ROOT / "docs" / "bench").mkdir(parents=True, exist_ok=True)
        (ROOT / "docs" / "bench" / "transfer.md").write_text(table)
    shutil.rmtree(tmp, ignore_errors=True)


def render(rows, opts, size, total, prof) -> str:
    med = {m: statistics.median(r[0] for r in runs) for m, runs in rows.items()}
    names = {"raw": "(a) raw aiortc loop, no protocol", "ours": "(b) sleap-rtc send_file, one aiortc association",
             "old": "(c) old scheme (16 MiB / 100 ms poll)", "tcp": "(d) plain TCP socket",
             "striped": f"striped, aiortc, {opts.stripes} connections", "native": "native (libdatachannel both ends)",
             "native-striped": f"native, {opts.stripes} connections",
             "mixed": "aiortc -> libdatachannel", "mixed-striped": f"aiortc -> libdatachannel, {opts.stripes} connections"}
    lines = [
        "# File transfer benchmark (loopback)", "",
        f"Command: `python benchmarks/transfer.py --size-mib {opts.size_mib:g} --repeats {opts.repeats} --modes {opts.modes}"
        + (" --profile" if opts.profile else "") + (" --write" if opts.write else "") + "`", "",
        f"Machine: {platform.node()}, {platform.platform()}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end; total run {total:.0f} s.", "",
        f"Payload {size / MiB:g} MiB of random bytes; sender and receiver in separate processes; "
        f"median of {opts.repeats}.", "",
        "| mode | MB/s (median) | vs (b) | runs MB/s | set-up s (median) | sender RSS base -> peak (MiB) | receiver RSS base -> peak (MiB) |",
        "|---|---:|---:|---|---:|---|---|",
    ]
    for m, runs in rows.items():
        s = max(runs, key=lambda r: r[1]["peak"] - r[1]["base"])[1]
        r = max(runs, key=lambda r: r[2]["peak"] - r[2]["base"])[2]
        ratio = f"{med[m] / med['ours']:.2f}x" if "ours" in med else ""
        setups = [x[1].get("setup") for x in runs if x[1].get("setup") is not None]
        setup = f"{statistics.median(setups):.2f}" if setups else ""
        lines.append(
            f"| {names.get(m, m)} | {med[m]:.1f} | {ratio} | {', '.join(f'{x[0]:.1f}' for x in runs)} | {setup} | "
            f"{s['base'] / MiB:.0f} -> {s['peak'] / MiB:.0f} | {r['base'] / MiB:.0f} -> {r['peak'] / MiB:.0f} |"
        )
    lines.append("")
    if "ours" in med and "raw" in med:
        lines.append(f"- (b)/(a) = **{med['ours'] / med['raw']:.2f}x** (target >= 0.9x)")
    if "ours" in med and "old" in med:
        lines.append(f"- (b)/(c) = **{med['ours'] / med['old']:.2f}x** (target >= 1.5x)")
    if "ours" in med and "tcp" in med:
        lines.append(f"- (d)/(b) = {med['tcp'] / med['ours']:.0f}x: aiortc, not the machine, is the limit")
    lines.append("- RSS peak is the process's lifetime maximum (getrusage), base is RSS after the connection opened.")
    if prof:
        lines += ["", "py-spy profile of the (b) sender (self time, share of samples):", ""]
        lines += [f"- {share * 100:.1f}% `{name}`" for name, share in prof]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mib", type=float, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--modes", default="raw,ours,old,tcp")
    p.add_argument("--stripes", type=int, default=4, help="connections in all for the *-striped modes")
    p.add_argument("--write", action="store_true", help="write docs/bench/transfer.md")
    p.add_argument("--profile", action="store_true", help="one extra (b) run under py-spy; summarise it")
    p.add_argument("--child", choices=["send", "recv"], help=argparse.SUPPRESS)
    for name in ("mode", "url", "room", "token", "dir", "target", "file"):
        p.add_argument(f"--{name}", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    opts = p.parse_args()
    asyncio.run(child(opts) if opts.child else main(opts))
