"""A two-NAT network lab in Linux network namespaces, for the ``netlab`` tests.

Topology (every address exists only inside the namespaces built here; nothing routes out)::

    <p>-lab  (worker) 10.10.0.2 --lan0-- <p>-rlab  203.0.113.2 --+
                                                                  |  br0 in <p>-pub: 203.0.113.1
    <p>-home (client) 10.20.0.2 --lan0-- <p>-rhome 203.0.113.3 --+  (sleap-rtc server, coturn)

* NAT on a router: ``cone`` is ``MASQUERADE`` (Linux keeps the source port, so the mapping
  does not depend on the destination); ``symmetric`` is ``MASQUERADE --random-fully`` (a
  random port per flow).
* Firewall on a router: ``open``; ``udp-turn-only`` (UDP only to the TURN port of
  203.0.113.1); ``no-udp``. ``blackhole`` drops everything forwarded (an outage).
* The routers and the public segment route "the rest of the internet" into a veth sink with
  ARP off, so packets to addresses that exist nowhere vanish as on a real uplink (coturn
  closes a TURN/TCP allocation on ENETUNREACH otherwise).

* WAN emulation (``Lab.shape``, ``Lab.impair``): a ``tbf`` rate limit on each router's WAN
  egress, and delay plus random loss from ``nfqdelay.c`` (this folder; the kernel here has
  no ``sch_netem``): every packet a router receives from its LAN waits in NFQUEUE 0 for
  half the RTT, or is dropped with the loss probability. Each path crosses each router once
  per direction, so every path (direct, relayed, TCP) sees the same RTT and bottleneck.

``Lab.up()`` / ``Lab.down()`` (always called, even on failure); ``Lab.spawn(ns, argv)``
starts a process inside a namespace. A lab may use its own ``Addresses`` (they exist only in
its namespaces). Needs root, iproute2 and iptables; ``impair`` also gcc and libnetfilter-queue.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from sleap_rtc.local_room import ChildProcess
from sleap_rtc.children import die_with_parent

PUB_IP = "203.0.113.1"
RLAB_WAN, RHOME_WAN = "203.0.113.2", "203.0.113.3"
LAB_IP, LAB_GW = "10.10.0.2", "10.10.0.1"
HOME_IP, HOME_GW = "10.20.0.2", "10.20.0.1"
TURN_PORT, TURNS_PORT = 3478, 5349
SIGNALING_PORT = 8765
SERVER_URL = f"ws://{PUB_IP}:{SIGNALING_PORT}/ws"
STUN = f"stun:{PUB_IP}:{TURN_PORT}"
TURN_UDP = f"turn:{PUB_IP}:{TURN_PORT}?transport=udp"
TURN_TCP = f"turn:{PUB_IP}:{TURN_PORT}?transport=tcp"
TURNS = f"turns:{PUB_IP}:{TURNS_PORT}?transport=tcp"
CMD_TIMEOUT = 20
"""Seconds any one ip/iptables command may take."""
PACKAGES = {"ip": "iproute2", "iptables": "iptables", "conntrack": "conntrack", "turnserver": "coturn", "openssl": "openssl"}
"""Commands the lab needs -> the Debian package that provides each."""


NFQDELAY_SOURCE = Path(__file__).with_name("nfqdelay.c")
NFQDELAY_PACKAGES = ("gcc", "libnetfilter-queue-dev")
"""Debian packages ``build_nfqdelay`` needs."""
TBF_BURST, TBF_LIMIT = "32kb", "512kb"
"""The rate limiter's burst and queue: 512 KB is ~40 ms at 100 Mbit/s (half the BDP at 80 ms)."""


@dataclass(frozen=True)
class Addresses:
    """The addresses of one lab (defaults: the ``netlab`` tests'); each exists only inside its namespaces."""

    pub: str = PUB_IP
    rlab_wan: str = RLAB_WAN
    rhome_wan: str = RHOME_WAN
    lab: str = LAB_IP
    lab_gw: str = LAB_GW
    home: str = HOME_IP
    home_gw: str = HOME_GW

    @property
    def server_url(self) -> str:
        """The signaling server's URL (it runs in the public segment)."""
        return f"ws://{self.pub}:{SIGNALING_PORT}/ws"

    @property
    def stun(self) -> str:
        """The STUN URL of the public segment's coturn."""
        return f"stun:{self.pub}:{TURN_PORT}"


def build_nfqdelay(out_dir: Path, timeout: float = 300) -> Path:
    """Compile ``nfqdelay.c`` into ``out_dir`` (installing gcc / libnetfilter-queue with apt
    when missing); returns the binary. ``RuntimeError`` with the reason when it cannot."""
    header = Path("/usr/include/libnetfilter_queue/libnetfilter_queue.h")
    if (shutil.which("gcc") is None or not header.exists()) and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "-q", *NFQDELAY_PACKAGES], env=env, capture_output=True, timeout=timeout)
    binary = Path(out_dir) / "nfqdelay"
    proc = subprocess.run(["gcc", "-O2", "-o", str(binary), str(NFQDELAY_SOURCE), "-lnetfilter_queue", "-lnfnetlink"],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"cannot build nfqdelay (needs {', '.join(NFQDELAY_PACKAGES)}): {proc.stderr.strip()[-300:]}")
    return binary


def unavailable() -> str | None:
    """Why the lab cannot run here (not Linux, not root, tools missing and not installable), or None."""
    if not sys.platform.startswith("linux"):
        return "the network lab needs Linux network namespaces"
    if os.geteuid() != 0:
        return "the network lab needs root (network namespaces, iptables); CI runs it as root"
    return install_tools()


def remove_stale_labs(prefix: str) -> None:
    """Delete namespaces ``<prefix><pid>-<role>`` whose run (``pid``) is gone."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=CMD_TIMEOUT).stdout
    for name in (line.split()[0] for line in listing.splitlines() if line.strip()):
        m = re.fullmatch(rf"{re.escape(prefix)}(\d+)-(pub|rlab|rhome|lab|home)", name)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=CMD_TIMEOUT)


def missing_tools() -> list[str]:
    """Debian packages to install for the commands this lab needs that are not on PATH."""
    return sorted({pkg for cmd, pkg in PACKAGES.items() if shutil.which(cmd) is None})


def install_tools(timeout: float = 300) -> str | None:
    """Install what is missing with apt (as root); returns why not, or None when done."""
    missing = missing_tools()
    if not missing:
        return None
    if shutil.which("apt-get") is None:
        return f"missing {', '.join(missing)} and no apt-get to install them"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", *missing]):
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            return f"{' '.join(argv)} failed: {proc.stderr.strip()[-300:]}"
    # coturn's Debian package starts a system turnserver: the lab runs its own.
    subprocess.run(["systemctl", "stop", "coturn"], capture_output=True, timeout=30)
    return None if not missing_tools() else f"still missing {', '.join(missing_tools())}"


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run one command (bounded); raise with its stderr when it fails and ``check``."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=CMD_TIMEOUT)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc


class Lab:
    """The five namespaces of one lab, named ``<prefix>-pub`` ... ``<prefix>-home``."""

    def __init__(self, prefix: str, addresses: Addresses = Addresses()):
        self.prefix = prefix
        self.addr = addresses
        self.delay_lines: list[ChildProcess] = []
        self.pub, self.rlab, self.rhome = f"{prefix}-pub", f"{prefix}-rlab", f"{prefix}-rhome"
        self.lab, self.home = f"{prefix}-lab", f"{prefix}-home"
        self.children: list[ChildProcess] = []

    @property
    def namespaces(self) -> list[str]:
        """Every namespace of this lab."""
        return [self.pub, self.rlab, self.rhome, self.lab, self.home]

    def router(self, side: str) -> str:
        """The router namespace of ``lab`` or ``home``."""
        return self.rlab if side == "lab" else self.rhome

    def ns(self, ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a command inside namespace ``ns``."""
        return sh("ip", "netns", "exec", ns, *argv, check=check)

    # ------------------------------------------------------------------ build / tear down

    def up(self) -> None:
        """Build the topology (removing any leftover of a lab with the same prefix first)."""
        self.down()
        for ns in self.namespaces:
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            self.ns(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
        sh("ip", "-n", self.pub, "link", "add", "br0", "type", "bridge")
        a = self.addr
        sh("ip", "-n", self.pub, "addr", "add", f"{a.pub}/24", "dev", "br0")
        sh("ip", "-n", self.pub, "link", "set", "br0", "up")
        for router, wan_ip in ((self.rlab, a.rlab_wan), (self.rhome, a.rhome_wan)):
            port = "p-" + router.rsplit("-", 1)[1]
            sh("ip", "link", "add", port, "netns", self.pub, "type", "veth", "peer", "name", "wan0", "netns", router)
            sh("ip", "-n", self.pub, "link", "set", port, "master", "br0")
            sh("ip", "-n", self.pub, "link", "set", port, "up")
            sh("ip", "-n", router, "addr", "add", f"{wan_ip}/24", "dev", "wan0")
            sh("ip", "-n", router, "link", "set", "wan0", "up")
        for router, host, gw, ip in ((self.rlab, self.lab, a.lab_gw, a.lab), (self.rhome, self.home, a.home_gw, a.home)):
            sh("ip", "link", "add", "lan0", "netns", router, "type", "veth", "peer", "name", "eth0", "netns", host)
            sh("ip", "-n", router, "addr", "add", f"{gw}/24", "dev", "lan0")
            sh("ip", "-n", router, "link", "set", "lan0", "up")
            sh("ip", "-n", host, "addr", "add", f"{ip}/24", "dev", "eth0")
            sh("ip", "-n", host, "link", "set", "eth0", "up")
            sh("ip", "-n", host, "route", "add", "default", "via", gw)
        for ns in (self.pub, self.rlab, self.rhome):
            sh("ip", "-n", ns, "link", "add", "sink0", "type", "veth", "peer", "name", "sink1")
            sh("ip", "-n", ns, "link", "set", "sink0", "arp", "off")
            sh("ip", "-n", ns, "link", "set", "sink0", "up")
            sh("ip", "-n", ns, "link", "set", "sink1", "up")
            sh("ip", "-n", ns, "route", "add", "default", "dev", "sink0")
        for router in (self.rlab, self.rhome):
            self.ns(router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            # A stealthy home router: unsolicited packets to the router itself are dropped.
            self.ns(router, "iptables", "-A", "INPUT", "-i", "wan0", "-j", "DROP")
        self.configure("cone", "cone", "open", "open")

    def down(self) -> None:
        """Stop every process started here and delete the namespaces (never raises)."""
        for child in reversed(self.children):
            try:
                child.kill(timeout=5)
            except Exception:
                pass
        self.children.clear()
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=CMD_TIMEOUT)

    # ------------------------------------------------------------------ network conditions

    def nat(self, side: str, mode: str) -> None:
        """``cone`` or ``symmetric`` NAT on the router of ``side``; old mappings flushed."""
        router = self.router(side)
        self.ns(router, "iptables", "-t", "nat", "-F", "POSTROUTING")
        extra = ["--random-fully"] if mode == "symmetric" else []
        self.ns(router, "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "wan0", "-j", "MASQUERADE", *extra)
        if shutil.which("conntrack"):
            self.ns(router, "conntrack", "-F", check=False)

    def firewall(self, side: str, mode: str) -> None:
        """``open``, ``udp-turn-only`` or ``no-udp`` on the router of ``side``."""
        router = self.router(side)
        self.ns(router, "iptables", "-F", "FORWARD")
        if mode == "udp-turn-only":
            self.ns(router, "iptables", "-A", "FORWARD", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")
            self.ns(router, "iptables", "-A", "FORWARD", "-i", "lan0", "-o", "wan0", "-p", "udp", "-d", self.addr.pub,
                    "--dport", str(TURN_PORT), "-j", "ACCEPT")
            self.ns(router, "iptables", "-A", "FORWARD", "-p", "udp", "-j", "DROP")
        elif mode == "no-udp":
            self.ns(router, "iptables", "-A", "FORWARD", "-p", "udp", "-j", "DROP")
        elif mode != "open":
            raise ValueError(mode)
        if shutil.which("conntrack"):
            self.ns(router, "conntrack", "-F", check=False)

    def configure(self, lab_nat: str, home_nat: str, lab_fw: str, home_fw: str) -> None:
        """NAT and firewall of both routers at once."""
        self.nat("lab", lab_nat)
        self.nat("home", home_nat)
        self.firewall("lab", lab_fw)
        self.firewall("home", home_fw)

    def blackhole(self, side: str, on: bool) -> None:
        """Drop (or stop dropping) everything the router of ``side`` forwards."""
        router = self.router(side)
        if on:
            self.ns(router, "iptables", "-I", "FORWARD", "1", "-j", "DROP")
        else:
            self.ns(router, "iptables", "-D", "FORWARD", "-j", "DROP", check=False)

    def shape(self, rate_mbit: float) -> None:
        """Limit both routers' WAN egress to ``rate_mbit`` (``tbf``); 0 removes the limit."""
        for router in (self.rlab, self.rhome):
            self.ns(router, "tc", "qdisc", "del", "dev", "wan0", "root", check=False)
            if rate_mbit:
                self.ns(router, "tc", "qdisc", "add", "dev", "wan0", "root", "tbf", "rate", f"{rate_mbit}mbit",
                        "burst", TBF_BURST, "limit", TBF_LIMIT)

    def impair(self, nfqdelay: Path | None, rtt_ms: float = 0, loss_pct: float = 0) -> None:
        """Delay every path by ``rtt_ms`` and drop ``loss_pct`` % of packets each way: one
        ``nfqdelay`` per router holds what comes from its LAN for half the RTT.
        ``impair(None)`` stops the delay lines (the link is then unimpaired)."""
        for child in self.delay_lines:
            child.popen.terminate()  # nfqdelay releases what it holds on SIGTERM
            child.popen.wait(5)
            self.children.remove(child)
        self.delay_lines.clear()
        for router in (self.rlab, self.rhome):
            self.ns(router, "iptables", "-t", "raw", "-F", "PREROUTING")
        if nfqdelay is None or (not rtt_ms and not loss_pct):
            return
        for seed, router in enumerate((self.rlab, self.rhome), start=1):
            child = self.spawn(router, f"nfqdelay-{router}", [str(nfqdelay), "0", f"{rtt_ms / 2:g}", f"{loss_pct:g}", str(seed)],
                               dict(os.environ), Path(nfqdelay).parent)
            child.wait_for_line(lambda line: line.startswith("nfqdelay: queue"), CMD_TIMEOUT)
            self.delay_lines.append(child)
            # Queued in the raw table (before conntrack and NAT); --queue-bypass: no delay line, no delay.
            self.ns(router, "iptables", "-t", "raw", "-A", "PREROUTING", "-i", "lan0", "-j", "NFQUEUE",
                    "--queue-num", "0", "--queue-bypass")

    def forward_tcp(self, port: int) -> None:
        """Forward TCP ``port`` of the lab router's WAN address to the lab host (the TCP baseline's path)."""
        self.ns(self.rlab, "iptables", "-t", "nat", "-A", "PREROUTING", "-i", "wan0", "-p", "tcp", "--dport", str(port),
                "-j", "DNAT", "--to-destination", f"{self.addr.lab}:{port}")

    # ------------------------------------------------------------------ processes

    def spawn(self, ns: str, name: str, argv: list[str], env: dict[str, str], cwd: Path) -> ChildProcess:
        """Start ``argv`` inside ``ns`` in its own process group, output recorded."""
        popen = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, text=True, bufsize=1, env=env, cwd=str(cwd),
            start_new_session=True, preexec_fn=die_with_parent,
        )
        child = ChildProcess(name, popen, echo=lambda text: print(text, flush=True))
        child.start_reader()
        self.children.append(child)
        return child


def relay_allocations(lab: Lab) -> int:
    """Successful TURN allocations the lab's coturn logged so far (credentials it accepted)."""
    try:
        return lab.coturn_log.read_text(errors="replace").count("ALLOCATE processed, success")
    except (OSError, AttributeError):
        return 0
