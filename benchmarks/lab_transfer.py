"""Transfer throughput across the network lab: every backend pairing, one and several
connections, on a 100 Mbit/s link at 20 and 80 ms RTT with 0, 0.1 and 1 % random loss,
against TCP CUBIC and TCP BBR on the same link in the same run.

Builds the lab of ``tests/netlab/lab.py`` under its own namespace prefix (``lxg<pid>``) and
its own addresses, so a ``make test-lab`` running at the same time is untouched: the
client behind the home NAT, the worker behind the lab NAT, the real ``sleap-rtc server``
and a STUN-only coturn in the public segment (cone NATs: the direct path). Each router
limits its WAN egress to ``--mbit`` (``tbf``) and delays / drops what comes from its LAN
(``nfqdelay``, NFQUEUE), so RTT, loss and bottleneck are the same on every path.

Every mode moves a file through the product's own path (``PeerChannel.send_file`` between
a client and a worker-role peer, ``tests/netlab/_transfer_peer.py``), with the product's
stripe growth (``core.stripes``) in the striped modes. Each transfer is bounded: up to
``--max-mib`` or ``--max-s``, whichever comes first, measured at the receiver on bytes
verified (whole file: SHA-256 checked; cut at the time bound: the hashed contiguous prefix).
The TCP baselines send the same amount under the same bound (``TCP_CONGESTION``).

Root only. Usage: ``python benchmarks/lab_transfer.py [--quick] [--repeats 1] [--write]``
(``--write`` updates ``docs/bench/lab_transfer.md``, linked from docs/benchmarks.md).
Ctrl-C or SIGTERM tears the lab down.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "netlab"))

from sleap_rtc.core.backends import native_sctp  # noqa: E402

from lab import SIGNALING_PORT, TURN_PORT, Addresses, Lab, build_nfqdelay, remove_stale_labs, unavailable  # noqa: E402

SECTION = ROOT / "docs" / "bench" / "lab_transfer.md"
PEER = ROOT / "tests" / "netlab" / "_transfer_peer.py"
PREFIX = "lxg"
"""Namespaces are ``lxg<pid>-<role>`` (not the netlab tests' ``srtc``): a dead run's are removed."""
ADDRESSES = Addresses(pub="198.51.100.1", rlab_wan="198.51.100.2", rhome_wan="198.51.100.3",
                      lab="10.71.0.2", lab_gw="10.71.0.1", home="10.72.0.2", home_gw="10.72.0.1")
"""This benchmark's own addresses (TEST-NET-2 as the public segment)."""
TCP_PORT = 5301
START_TIMEOUT = 60.0
"""Seconds for coturn, the server or a worker to come up."""
RUN_SLACK = 90.0
"""Seconds a run may take beyond its time bound (process start, set-up, closing)."""
STRIPES_SETUP = 4
"""Connections opened at once for the set-up measurement (vs one)."""

# mode -> (label, client backend, worker backend, striped, direction of the file); striped is
# the client peer's STRIPED: "0" one connection, "1" the product's growth, "known" the second
# job to the same worker from the same client process (growth's finding reused).
MODES = {
    "aiortc": ("aiortc <-> aiortc, 1 connection", "aiortc", "aiortc", "0", "up"),
    "aiortc-striped": ("aiortc <-> aiortc, striped", "aiortc", "aiortc", "1", "up"),
    "native": ("native <-> native, 1 connection", "libdatachannel", "libdatachannel", "0", "up"),
    "native-striped": ("native <-> native, striped", "libdatachannel", "libdatachannel", "1", "up"),
    "mixed": ("aiortc client -> native worker, 1 connection", "aiortc", "libdatachannel", "0", "up"),
    "mixed-striped": ("aiortc client -> native worker, striped", "aiortc", "libdatachannel", "1", "up"),
    "download": ("native worker -> aiortc client, 1 connection", "aiortc", "libdatachannel", "0", "down"),
    "download-striped": ("native worker -> aiortc client, striped", "aiortc", "libdatachannel", "1", "down"),
}
KNOWN_MODES = {
    f"{mode}-known": (f"{label}, 2nd job (path known)", cb, wb, "known", direction)
    for mode, (label, cb, wb, striped, direction) in MODES.items() if striped == "1"
}
"""Not in the default grid (each cell runs two transfers): ``--modes aiortc-striped-known,...``."""
GRID_MODES = list(MODES)
MODES.update(KNOWN_MODES)
TCP_MODES = {"cubic": "TCP CUBIC, 1 flow", "bbr": "TCP BBR, 1 flow"}
LINKS = [(rtt, loss) for rtt in (20, 80) for loss in (0.0, 0.1, 1.0)]
QUICK_MODES = ["aiortc", "aiortc-striped", "native-striped", "mixed-striped"]
QUICK_LINKS = [(20, 0.0), (20, 1.0), (80, 0.1)]


def target(mode: str, rtt: int, loss: float) -> float:
    """The ratio to the link rate a mode should reach on a link (the transport's targets)."""
    if loss == 0:
        return 0.8 if MODES[mode][1] == MODES[mode][2] == "libdatachannel" else 0.45
    if loss <= 0.1:
        return 0.5 if rtt <= 20 else 0.4
    return 0.35 if rtt <= 20 else 0.15


def env_for(home: Path, backend: str = "aiortc") -> dict[str, str]:
    """A clean environment: own HOME, no config file, this checkout first, the backend chosen."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "empty.toml").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLEAP_RTC_", "XDG_"))}
    if native_sctp.ENV in os.environ:
        env[native_sctp.ENV] = os.environ[native_sctp.ENV]
    env.update(PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", HOME=str(home), SLEAP_RTC_CONFIG=str(home / "empty.toml"),
               SLEAP_RTC_BACKEND=backend)
    return env


def fast_python() -> str | None:
    """The Python 3.12 side env with libdatachannel (scripts/ensure-fast-env.sh), or None."""
    proc = subprocess.run([str(ROOT / "scripts" / "ensure-fast-env.sh")], capture_output=True, text=True, timeout=600)
    return proc.stdout.strip().splitlines()[-1] if proc.returncode == 0 and proc.stdout.strip() else None


def results_after(child, start: int, timeout: float, nth: int = 1) -> dict:
    """The ``nth`` ``RESULT`` line ``child`` printed after line ``start`` (waits up to ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [line for line in child.lines[start:] if line.startswith("RESULT ")]
        if len(found) >= nth:
            return json.loads(found[nth - 1][7:])
        if not child.alive:
            break
        time.sleep(0.1)
    raise RuntimeError(f"{child.name}: no result; last lines: {' | '.join(child.lines[-6:])}")


class Grid:
    """The lab, its server and one long-lived worker per mode; runs one cell at a time."""

    def __init__(self, lab: Lab, work: Path, pythons: dict[str, str], payload: Path, max_s: float):
        self.lab, self.work, self.pythons, self.payload, self.max_s = lab, work, pythons, payload, max_s
        self.workers: dict[str, tuple] = {}
        self.runs = 0

    def start(self, modes: list[str]) -> None:
        """Start coturn (STUN only), the server and the workers the modes need."""
        lab, a = self.lab, self.lab.addr
        lab.spawn(lab.pub, "stun", ["turnserver", "-n", "--stun-only", "-L", a.pub, "-p", str(TURN_PORT), "--no-cli",
                                    "--no-tls", "--no-dtls", "--log-file", "stdout", "--simple-log"],
                  env_for(self.work / "stun"), self.work)
        secret = secrets.token_urlsafe(24)
        server = lab.spawn(lab.pub, "server", [sys.executable, "-m", "sleap_rtc", "server", "--host", "0.0.0.0", "--port",
                                               str(SIGNALING_PORT), "--state", str(self.work / "s.db"),
                                               "--create-room-secret", secret, "--stun", a.stun],
                           env_for(self.work / "server"), self.work)
        server.echo = None
        server.wait_for_line(lambda line: "listening on" in line, START_TIMEOUT)
        for mode in modes:
            _label, _cb, wb, _striped, direction = MODES[mode]
            d = self.work / f"worker-{mode}"
            child = lab.spawn(lab.lab, f"worker-{mode}", [self.pythons[wb], str(PEER), "worker", a.server_url, secret, str(d),
                                                          "recv" if direction == "up" else "send", str(self.payload),
                                                          str(self.max_s)], env_for(d, wb), self.work)
            ready = child.wait_for_line(lambda line: line.startswith("READY"), START_TIMEOUT).split()
            self.workers[mode] = (child, ready[1], ready[2], ready[3])

    def client(self, mode: str, role: str, striped: str, path: Path) -> tuple:
        """Start one client run of ``mode`` in the home namespace; returns (child, its dir)."""
        worker, room, token, peer = self.workers[mode]
        self.runs += 1
        d = self.work / f"client-{self.runs}"
        backend = MODES[mode][1]
        child = self.lab.spawn(self.lab.home, f"client-{mode}", [
            self.pythons[backend], str(PEER), "client", self.lab.addr.server_url, room, token, peer, str(d), role,
            str(path), striped, str(self.max_s)], env_for(d, backend), self.work)
        return child, d

    def finish(self, child, d: Path, jobs: int = 1) -> None:
        """Wait for a client run of ``jobs`` transfers to end (killed past its bound) and remove
        what it wrote."""
        try:
            child.popen.wait(jobs * self.max_s + RUN_SLACK)
        except subprocess.TimeoutExpired:
            pass
        child.kill(timeout=5)
        self.lab.children.remove(child)
        shutil.rmtree(d, ignore_errors=True)

    def transfer(self, mode: str) -> dict:
        """One bounded transfer of ``mode``: the receiver's figures."""
        _label, _cb, _wb, striped, direction = MODES[mode]
        worker = self.workers[mode][0]
        start = len(worker.lines)
        jobs = 2 if striped == "known" else 1  # the last transfer is the one measured
        # A name of its own per run: the worker's result names the file it measured.
        path = self.work / f"payload-{self.runs + 1}.bin"
        os.link(self.payload, path)
        child, d = self.client(mode, "send" if direction == "up" else "recv", striped, path)
        try:
            bound = jobs * self.max_s + RUN_SLACK
            if direction == "up":
                row = results_after(worker, start, bound, nth=jobs)
                if row.get("name") != path.name:
                    raise RuntimeError(f"the worker measured {row.get('name')!r}, not {path.name!r}")
            else:
                row = results_after(child, 0, bound, nth=jobs)
            return row
        finally:
            self.finish(child, d, jobs)
            path.unlink(missing_ok=True)

    def setup(self, mode: str) -> dict:
        """Set-up time of one connection, then of ``STRIPES_SETUP`` at once
        (``connect(stripes=N)``: the extra ones open as the answer grants them)."""
        times = {}
        for key, role, n in (("one", "setup", 1), ("all", "setup-parallel", STRIPES_SETUP)):
            child, d = self.client(mode, role, str(n), self.payload)
            try:
                row = results_after(child, 0, RUN_SLACK)
            finally:
                self.finish(child, d)
            if row.get("connections") != n:
                return {"error": f"{row.get('connections')} of {n} connections opened"}
            times[key] = row["one"] + row["extra"]
        return {**times, "connections": STRIPES_SETUP}

    def tcp(self, cc: str, max_bytes: int) -> dict:
        """One TCP flow with congestion control ``cc``, home -> lab through both routers."""
        lab, env = self.lab, env_for(self.work / "tcp")
        recv = lab.spawn(lab.lab, f"tcp-{cc}-recv", [sys.executable, str(PEER), "tcp-recv", str(TCP_PORT), str(self.max_s)],
                         env, self.work)
        send = None
        try:
            recv.wait_for_line(lambda line: line.startswith("READY"), START_TIMEOUT)
            send = lab.spawn(lab.home, f"tcp-{cc}-send", [sys.executable, str(PEER), "tcp-send", lab.addr.rlab_wan,
                                                          str(TCP_PORT), cc, str(max_bytes), str(self.max_s)], env, self.work)
            return results_after(recv, 0, self.max_s + RUN_SLACK)
        finally:
            for child in (send, recv):
                if child is not None:
                    child.kill(timeout=5)
                    lab.children.remove(child)


def mbs(row: dict) -> float:
    """MB/s of one run."""
    return row["bytes"] / max(row["s"], 1e-9) / 1e6


def render(cells: dict, setups: dict, opts, modes: list[str], links: list, notes: list[str], meta: dict) -> str:
    """The markdown section."""
    link_mbs = opts.mbit / 8
    lines = [
        "## Network lab: transfer throughput across the grid (link x loss x backend pairing)",
        "",
        "`PeerChannel.send_file` through the lab: client behind the home NAT, worker behind the lab NAT, the real",
        f"`sleap-rtc server` and STUN in between (direct path). Both routers limit their WAN egress to {opts.mbit:g} Mbit/s",
        f"(`tbf`, {link_mbs:.1f} MB/s) and delay / drop packets from their LAN (`nfqdelay`, NFQUEUE): RTT and loss as given,",
        "loss in each direction. Each transfer: up to "
        f"{opts.max_mib} MiB or {opts.max_s:g} s, whichever first, measured at the receiver on bytes verified",
        "(SHA-256 of the whole file, or of the contiguous prefix at the time bound). TCP baselines: one flow of the same",
        f"size under the same bound, same routers, same run. Median of {opts.repeats} run(s) per cell (all runs listed).",
        "\"striped\" is the product's growth (`core.stripes`); \"conns\" is the most connections a run used.",
        "",
        "Targets: 0 % loss >= 0.8x link native at both ends, >= 0.45x with aiortc at one or both ends; 0.1 % loss",
        ">= 0.5x (20 ms) / 0.4x (80 ms) and ahead of CUBIC; 1 % loss >= 0.35x (20 ms) / 0.15x (80 ms) and ahead of CUBIC.",
        "",
    ]
    for rtt, loss in links:
        lines += [f"### {rtt} ms RTT, {loss:g} % loss", "",
                  "| mode | MB/s (median) | runs | x link | x CUBIC | conns | target | verdict |",
                  "|---|---:|---|---:|---:|---:|---|---|"]
        cubic = cells.get((rtt, loss, "cubic"), [])
        cubic_mbs = statistics.median(mbs(r) for r in cubic) if cubic else None
        for mode in [*TCP_MODES, *modes]:
            rows = cells.get((rtt, loss, mode), [])
            label = TCP_MODES.get(mode) or MODES[mode][0]
            failed = [r for r in rows if "error" in r]
            ok = [r for r in rows if "error" not in r]
            if not ok:
                why = failed[0]["error"][:120] if failed else "not run"
                lines.append(f"| {label} | - | {why} | | | | | {'MISS' if mode in MODES else ''} |")
                continue
            med = statistics.median(mbs(r) for r in ok)
            runs = ", ".join(f"{mbs(r):.2f}" + ("" if r.get("complete", True) else "*") +
                             (f" [{r['received'] / r['s'] / 1e6:.2f}]" if "received" in r else "") for r in ok)
            runs += f" ({len(failed)} failed)" if failed else ""
            vs_cubic = f"{med / cubic_mbs:.2f}" if cubic_mbs else "-"
            if mode in TCP_MODES:
                lines.append(f"| {label} | {med:.2f} | {runs} | {med / link_mbs:.2f} | {vs_cubic} | 1 | | |")
                continue
            want = target(mode, rtt, loss)
            ahead = loss == 0 or (cubic_mbs is not None and med > cubic_mbs)
            verdict = "PASS" if med / link_mbs >= want and ahead and not failed else "MISS"
            conns = max(r.get("connections", 1) for r in ok)
            goal = f">= {want:g}x" + (" and > CUBIC" if loss else "")
            lines.append(f"| {label} | {med:.2f} | {runs} | {med / link_mbs:.2f} | {vs_cubic} | {conns} | {goal} | {verdict} |")
        lines.append("")
    lines += ["`*`: cut at the time bound (the verified prefix counts); in brackets: MB/s of all bytes that arrived,",
              "including those ahead of the prefix (striped lanes deliver out of order).", ""]
    if setups:
        lines += [f"### Connection set-up: {STRIPES_SETUP} connections vs one (target < 1.5x)", "",
                  f"`transport.connect` alone, vs `transport.connect(stripes={STRIPES_SETUP})` until `stripes.ensure` returns "
                  "with all open (the extra ones start when the answer grants them). Median s.", "",
                  "| link | pairing | one connection s | all {0} s | ratio | verdict |".format(STRIPES_SETUP), "|---|---|---:|---:|---:|---|"]
        for (rtt, loss, mode), rows in setups.items():
            ok = [r for r in rows if "error" not in r and r.get("connections") == STRIPES_SETUP]
            if not ok:
                lines.append(f"| {rtt} ms, {loss:g} % | {MODES[mode][0].split(',')[0]} | - | - | - | MISS |")
                continue
            one = statistics.median(r["one"] for r in ok)
            total = statistics.median(r["all"] for r in ok)
            lines.append(f"| {rtt} ms, {loss:g} % | {MODES[mode][0].split(',')[0]} | {one:.2f} | {total:.2f} | "
                         f"{total / one:.2f} | {'PASS' if total / one < 1.5 else 'MISS'} |")
        lines.append("")
    lines += notes
    lines += [
        f"Measured {meta['date']} on {os.cpu_count()} cores ({platform.machine()}, {platform.node()}), "
        f"{meta['python']}; `uptime` before: {meta['up_before']}; after: {meta['up_after']}; whole grid {meta['total']:.0f} s.",
        "A shared machine: an aiortc peer is CPU-bound (one core per peer, pure-Python SCTP/DTLS), so its figures",
        "move with the machine's CPU and load; the TCP and native figures of the same run are the reference.",
        f"Command: `sudo $(scripts/ensure-env.sh) benchmarks/lab_transfer.py {meta['args']}`.",
    ]
    return "\n".join(lines) + "\n"


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"modes {', '.join(QUICK_MODES)} on {QUICK_LINKS} only")
    parser.add_argument("--modes", help="comma-separated modes (default: all)")
    parser.add_argument("--links", help="comma-separated RTT_MS:LOSS_PCT (default: the whole grid)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--max-mib", type=int, default=64)
    parser.add_argument("--max-s", type=float, default=60.0, help="time bound of one transfer (s)")
    parser.add_argument("--mbit", type=float, default=100.0)
    parser.add_argument("--no-setup", action="store_true", help="skip the set-up time measurement")
    parser.add_argument("--setup-only", action="store_true", help="only the set-up time measurement (no transfers)")
    parser.add_argument("--write", action="store_true", help="update docs/bench/lab_transfer.md")
    parser.add_argument("--native-sctp", help=f"libdatachannel SCTP settings for every peer, name=value,... "
                        f"(sets {native_sctp.ENV}; names: sleap_rtc.core.backends.native_sctp.FIELDS)")
    opts = parser.parse_args()
    if opts.native_sctp is not None:
        os.environ[native_sctp.ENV] = opts.native_sctp
    reason = unavailable()
    if reason:
        print(reason, file=sys.stderr)
        return 2
    modes = opts.modes.split(",") if opts.modes else (QUICK_MODES if opts.quick else GRID_MODES)
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown modes {', '.join(unknown)}; known: {', '.join(MODES)}")
    links = QUICK_LINKS if opts.quick else LINKS
    if opts.links:
        links = [(int(rtt), float(loss)) for rtt, loss in (item.split(":") for item in opts.links.split(","))]
    notes: list[str] = []
    fast = fast_python()
    pythons = {"aiortc": sys.executable, "libdatachannel": fast}
    if fast is None:
        left = [m for m in modes if "libdatachannel" in MODES[m][1:3]]
        modes = [m for m in modes if m not in left]
        notes.append(f"Left out (no Python 3.12 side env for libdatachannel): {', '.join(left)}.\n")
    available = Path("/proc/sys/net/ipv4/tcp_available_congestion_control").read_text().split()
    tcp_modes = [cc for cc in TCP_MODES if cc in available]
    if "bbr" not in tcp_modes:
        notes.append("TCP BBR is not available in this kernel (`modprobe tcp_bbr` failed or no module): no BBR row.\n")
    remove_stale_labs(PREFIX)
    work = Path(tempfile.mkdtemp(prefix="lab-transfer-"))
    lab = Lab(f"{PREFIX}{os.getpid()}", ADDRESSES)
    cells: dict = {}
    setups: dict = {}
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "python": f"Python {platform.python_version()}",
            "up_before": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
            "args": " ".join(sys.argv[1:])}
    t_all = time.monotonic()
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        nfqdelay = build_nfqdelay(work)
        payload = work / "payload.bin"
        with open(payload, "wb") as fh:
            for _ in range(opts.max_mib):
                fh.write(os.urandom(1 << 20))
        lab.up()
        lab.forward_tcp(TCP_PORT)
        lab.shape(opts.mbit)
        grid = Grid(lab, work, pythons, payload, opts.max_s)
        grid.start(modes)
        for rtt, loss in links:
            lab.impair(nfqdelay, rtt, loss)
            for i in range(opts.repeats):
                # Interleaved: a slow spell of the shared machine hits every mode alike.
                for mode in [] if opts.setup_only else [*tcp_modes, *modes]:
                    try:
                        row = grid.tcp(mode, opts.max_mib << 20) if mode in TCP_MODES else grid.transfer(mode)
                    except (RuntimeError, TimeoutError, OSError) as exc:
                        row = {"error": str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)}
                    cells.setdefault((rtt, loss, mode), []).append(row)
                    shown = f"{mbs(row):.2f} MB/s, {row.get('connections', 1)} conns" if "error" not in row else row["error"]
                    print(f"[grid] {rtt} ms {loss:g} % {mode} run {i + 1}: {shown}", flush=True)
                if not opts.no_setup:
                    for mode in ("aiortc-striped", "native-striped"):
                        if mode in grid.workers:
                            try:
                                row = grid.setup(mode)
                            except (RuntimeError, TimeoutError, OSError) as exc:
                                row = {"error": str(exc).strip().splitlines()[0]}
                            setups.setdefault((rtt, loss, mode), []).append(row)
                            print(f"[grid] {rtt} ms {loss:g} % set-up {mode}: {row}", flush=True)
    finally:
        lab.down()
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(work, ignore_errors=True)
    meta["up_after"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    meta["total"] = time.monotonic() - t_all
    text = render(cells, setups, opts, modes, links, notes, meta)
    print(text)
    if opts.write:
        SECTION.write_text(text)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: main's finally already removed the lab
        print("interrupted: the lab's namespaces and processes are gone", file=sys.stderr)
        sys.exit(130)
