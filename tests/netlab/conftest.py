"""Fixtures of the network lab: namespaces, a real coturn (use-auth-secret, TLS), and a
``Case`` that runs the real ``sleap-rtc server`` (public segment), a real worker (behind
the lab's NAT) and the real ``sleap-rtc client-train`` (behind the home NAT).

Root only: elsewhere every test here is skipped with the reason. Missing tools (iproute2,
iptables, conntrack, coturn, openssl) are installed with apt. The namespaces are deleted
and every process killed at the end, also when a test fails.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from lab import PUB_IP, SERVER_URL, SIGNALING_PORT, TURN_PORT, TURNS_PORT, Lab, remove_stale_labs, sh, unavailable  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TINY_PACKAGE = ROOT / "resources" / "tiny" / "tiny.training_job.zip"
START_TIMEOUT = 60.0
"""Seconds for the server, coturn or a worker to come up."""
JOB_TIMEOUT = 240.0
"""Seconds for one client-train run (upload, 2 epochs of sleap-nn on the CPU, download)."""
ROOM_SECRET = secrets.token_urlsafe(24)
"""The lab server's room-creation secret (a server on a public address requires one)."""
RESULTS_ENV = "SLEAP_RTC_LAB_RESULTS"
"""When set: a JSON-lines file each case appends its measured times to (benchmarks/lab_connect.py)."""




@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    """The namespaces with coturn running in the public segment."""
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    remove_stale_labs(PREFIX)
    lab = Lab(f"{PREFIX}{os.getpid()}")
    work = tmp_path_factory.mktemp("netlab")
    # A CI timeout or Ctrl-C sends SIGTERM/SIGINT: turn it into KeyboardInterrupt so that the
    # finally below still deletes the namespaces.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        lab.up()
        lab.work = work
        lab.secret_file = work / "turn-secret"
        lab.secret_file.write_text(secrets.token_urlsafe(32) + "\n")
        lab.secret_file.chmod(0o600)
        lab.cert, key = work / "turn-cert.pem", work / "turn-key.pem"
        sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={PUB_IP}",
           "-addext", f"subjectAltName=IP:{PUB_IP}", "-keyout", str(key), "-out", str(lab.cert))
        lab.coturn_log = work / "turn.log"
        # The recipe's own command writes coturn's config.
        conf = subprocess.run(
            [sys.executable, "-m", "sleap_rtc", "turn-config", "--secret-file", str(lab.secret_file), "--realm", "lab.test",
             "--listening-ip", PUB_IP, "--cert", str(lab.cert), "--pkey", str(key), "--log-file", str(lab.coturn_log)],
            capture_output=True, text=True, timeout=60, env=_env(work / "cfg", None), check=True,
        ).stdout
        (work / "turnserver.conf").write_text(conf + "simple-log\nverbose\n")
        lab.coturn = lab.spawn(lab.pub, "coturn", ["turnserver", "-c", str(work / "turnserver.conf"),
                                                   "--pidfile", str(work / "turn.pid")], _env(work / "turn", None), work)
        _wait(lambda: f":{TURN_PORT}" in lab.ns(lab.pub, "ss", "-lnu", check=False).stdout
              and f":{TURNS_PORT}" in lab.ns(lab.pub, "ss", "-lnt", check=False).stdout, START_TIMEOUT, "coturn to listen")
        yield lab
    finally:
        lab.down()
        signal.signal(signal.SIGTERM, previous)


PREFIX = "srtc"
"""Namespaces of this suite are ``srtc<pid>-<role>``: a leftover of a dead run is recognisable."""


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _env(home: Path, cert: Path | None) -> dict[str, str]:
    """A process environment of its own: HOME/XDG dirs, no config file, this checkout first."""
    home.mkdir(parents=True, exist_ok=True)
    empty = home / "empty.toml"
    empty.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLEAP_RTC_", "XDG_"))}
    env.update(
        PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", PYTHONUNBUFFERED="1", HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"), XDG_DATA_HOME=str(home / ".local/share"),
        XDG_CACHE_HOME=str(home / ".cache"), SLEAP_RTC_CONFIG=str(empty), SLEAP_SKIP_QT_FIX="1", QT_QPA_PLATFORM="offscreen",
    )
    if cert is not None:
        env["SSL_CERT_FILE"] = str(cert)  # the lab's self-signed TURNS certificate
    return env


class Case:
    """One scenario: a fresh server with ``server_args``, a worker, and client runs."""

    def __init__(self, lab: Lab, name: str, server_args: list[str]):
        self.lab, self.name = lab, name
        self.dir = lab.work / name
        self.dir.mkdir(parents=True, exist_ok=True)
        py = sys.executable
        self.server = lab.spawn(lab.pub, f"{name}/server", [
            py, "-m", "sleap_rtc", "server", "--host", "0.0.0.0", "--port", str(SIGNALING_PORT),
            "--state", str(self.dir / "server.sqlite3"), "--create-room-secret", ROOM_SECRET, *server_args,
        ], _env(self.dir / "server", lab.cert), self.dir)
        self.server.wait_for_line(lambda l: "listening on" in l, START_TIMEOUT)
        self.worker = lab.spawn(lab.lab, f"{name}/worker", [
            py, "-m", "sleap_rtc", "-v", "worker", "--server", SERVER_URL, "--name", "gpu-lab", "--work-dir", str(self.dir / "work"),
            "--create-room-secret", ROOM_SECRET,
        ], _env(self.dir / "worker", lab.cert), self.dir)
        self.worker.wait_for_line(lambda l: "Token:" in l, START_TIMEOUT)
        text = "\n".join(self.worker.lines)
        self.room_id = re.search(r"Room ID: (\S+)", text).group(1)
        self.token = re.search(r"Token: (\S+)", text).group(1)
        self.client = None

    def train(self, package: Path = TINY_PACKAGE):
        """Start ``client-train --auto-select`` in the home namespace."""
        self.client = self.lab.spawn(self.lab.home, f"{self.name}/client", [
            sys.executable, "-m", "sleap_rtc", "client-train", str(package), "--server", SERVER_URL,
            "--room-id", self.room_id, "--token", self.token, "--auto-select", "--output", str(self.dir / "out"),
        ], _env(self.dir / "client", self.lab.cert), self.dir)
        return self.client

    def finish(self, timeout: float = JOB_TIMEOUT) -> int:
        """The client's exit code (it is killed past ``timeout``)."""
        try:
            return self.client.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.client.kill()
            raise AssertionError(f"client-train did not finish within {timeout:.0f} s:\n{self.transcript()}") from None

    def transcript(self) -> str:
        """The end of the client's output (for failure messages)."""
        return "\n".join(self.client.lines[-60:]) if self.client else ""

    def text(self) -> str:
        """The client's whole output (for what it said)."""
        return "\n".join(self.client.lines) if self.client else ""

    def line_time(self, pattern: str) -> float | None:
        """When the client first printed a line matching ``pattern`` (monotonic), or None."""
        for t, line in zip(self.client.line_times, self.client.lines):
            if re.search(pattern, line):
                return t
        return None

    def worker_statuses(self) -> dict[str, str]:
        """The room's workers and their published status, seen from the home network."""
        out = subprocess.run(
            ["ip", "netns", "exec", self.lab.home, sys.executable, str(Path(__file__).parent / "_peek.py"),
             SERVER_URL, self.room_id, self.token],
            capture_output=True, text=True, timeout=30, env=_env(self.dir / "peek", None),
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])

    def record(self, **figures) -> None:
        """Print the case's figures and append them to ``$SLEAP_RTC_LAB_RESULTS`` if set."""
        print(f"\n[netlab] {self.name}: {figures}")
        path = os.environ.get(RESULTS_ENV)
        if path:
            with open(path, "a") as fh:
                fh.write(json.dumps({"case": self.name, **figures}) + "\n")

    def close(self) -> None:
        """Stop this case's processes (the lab's coturn keeps running)."""
        for child in (self.client, self.worker, self.server):
            if child is not None and child in self.lab.children:
                child.kill(timeout=5)
                self.lab.children.remove(child)


@pytest.fixture
def case(lab, request):
    """Factory: ``case(server_args)`` -> a started ``Case``; closed after the test."""
    made: list[Case] = []

    def _make(server_args: list[str]) -> Case:
        c = Case(lab, request.node.name.replace("[", "-").replace("]", ""), server_args)
        made.append(c)
        return c

    yield _make
    for c in made:
        c.close()
    shutil.rmtree(lab.work / "dummy", ignore_errors=True)
