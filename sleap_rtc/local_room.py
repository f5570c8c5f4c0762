"""A whole room on this machine: a signaling server and workers as real child processes.

Used by ``sleap-rtc demo``, the fault-tolerance tests and the benchmarks. Every child runs
in its own process group so that stopping (or Ctrl-C) takes its children (sleap-nn)
along; ``LocalRoom`` is a context manager and also stops everything at interpreter exit.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sleap_rtc.children import die_with_parent
from sleap_rtc.core.credentials import SESSION_PREFIX


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def sleap_rtc_argv(*args: str, python: str | None = None) -> list[str]:
    """The command line that runs ``sleap-rtc ARGS`` with ``python`` (default: this interpreter)."""
    return [python or sys.executable, "-m", "sleap_rtc", *args]


@dataclass
class ChildProcess:
    """A child process whose output is echoed with a prefix and kept for inspection."""

    name: str
    popen: subprocess.Popen
    lines: list[str] = field(default_factory=list)
    line_times: list[float] = field(default_factory=list)
    """``time.monotonic()`` at which each line of ``lines`` was read (same index)."""
    echo: Callable[[str], None] | None = None
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def start_reader(self) -> None:
        """Read the child's merged stdout/stderr in a thread until it closes."""
        threading.Thread(target=self._read, name=f"read-{self.name}", daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            line = raw.rstrip("\n")
            with self._changed:
                self.line_times.append(time.monotonic())
                self.lines.append(line)
                self._changed.notify_all()
            if self.echo:
                self.echo(f"[{self.name}] {line}")
        with self._changed:
            self._changed.notify_all()

    def wait_for_line(self, predicate: Callable[[str], bool], timeout: float) -> str:
        """Block until an output line satisfies ``predicate``; raises ``TimeoutError``."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    if predicate(line):
                        return line
                seen = len(self.lines)
                if self.popen.poll() is not None and seen == len(self.lines):
                    tail = "\n".join(self.lines[-15:])
                    raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{tail}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    tail = "\n".join(self.lines[-15:])
                    raise TimeoutError(f"{self.name} did not print the expected line in {timeout:.0f} s:\n{tail}")
                self._changed.wait(min(remaining, 0.5))

    @property
    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.popen.poll() is None

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the child's whole process group."""
        try:
            os.killpg(self.popen.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def descendants(self) -> list[int]:
        """Pids of the child's descendants (any process group); empty without psutil."""
        try:
            import psutil
        except ImportError:  # psutil is a test dependency; the demo works without it
            return []
        try:
            return [p.pid for p in psutil.Process(self.popen.pid).children(recursive=True)]
        except psutil.Error:
            return []

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL the process group and every descendant, as a machine crash would.

        Descendants are collected first: a grandchild in its own process group (the
        worker runs sleap-nn in one) would otherwise survive as an orphan.
        """
        stragglers = self.descendants()
        self.signal_group(signal.SIGKILL)
        _sigkill_each(stragglers)
        self._reap(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the process group, then SIGKILL it if it is still there after ``timeout``."""
        stragglers = self.descendants()
        if self.alive:
            self.signal_group(signal.SIGTERM)
            self._reap(timeout)
        # Always sweep the group: a child of the child (sleap-nn) may outlive its parent.
        self.signal_group(signal.SIGKILL)
        _sigkill_each(stragglers)  # e.g. sleap-nn in its own group, if the worker did not stop it
        self._reap(timeout)

    def _reap(self, timeout: float) -> None:
        """Wait up to ``timeout`` for the child to exit (it may not: the caller goes on)."""
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pass


def _sigkill_each(pids: list[int]) -> None:
    """SIGKILL each pid and the process group it may lead; gone ones are skipped."""
    for pid in pids:
        for kill in (os.killpg, os.kill):
            try:
                kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


class LocalRoom:
    """A signaling server and N workers on loopback, each a real ``sleap-rtc`` process."""

    def __init__(self, work_dir: Path, *, echo: Callable[[str], None] | None = None, env: dict | None = None):
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.echo = echo
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.children: list[ChildProcess] = []
        self.server: ChildProcess | None = None
        self.port: int | None = None
        self.room_id: str | None = None
        self.token: str | None = None
        """The room's client token (what users get)."""
        self.worker_token: str | None = None
        """The room's worker token (what this room's workers start with)."""
        self.workers: dict[str, ChildProcess] = {}
        atexit.register(self.stop)

    @property
    def url(self) -> str:
        """The WebSocket URL of the local signaling server."""
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http_url(self) -> str:
        """The HTTP base URL of the local signaling server."""
        return f"http://127.0.0.1:{self.port}"

    def spawn(self, name: str, argv: list[str], cwd: Path | None = None) -> ChildProcess:
        """Start a child in its own process group, output echoed and recorded."""
        popen = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            bufsize=1,
            env=self.env,
            cwd=str(cwd or self.work_dir),
            start_new_session=True,
            preexec_fn=die_with_parent,  # a killed test run or demo leaves nothing behind
        )
        child = ChildProcess(name, popen, echo=self.echo)
        child.start_reader()
        self.children.append(child)
        return child

    def start_server(self, port: int | None = None, timeout: float = 20.0) -> None:
        """Start the signaling server and wait until ``/health`` answers."""
        self.port = port or self.port or free_port()
        state = self.work_dir / "server.sqlite3"
        self.server = self.spawn(
            "server", sleap_rtc_argv("server", "--host", "127.0.0.1", "--port", str(self.port), "--state", str(state))
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.http_url + "/health", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            if not self.server.alive or time.monotonic() > deadline:
                tail = "\n".join(self.server.lines[-15:])
                raise RuntimeError(f"the signaling server did not start:\n{tail}")
            time.sleep(0.1)

    def create_room(self) -> tuple[str, str]:
        """Create the room every worker of this LocalRoom joins; returns ``(room_id, token)``
        with the client token (``worker_token`` is kept for the workers)."""
        req = urllib.request.Request(self.http_url + "/create-room", method="POST", data=b"")
        with urllib.request.urlopen(req, timeout=5) as resp:
            body = json.loads(resp.read())
        self.room_id, self.token, self.worker_token = body["room_id"], body["token"], body["worker_token"]
        return self.room_id, self.token

    def start_worker(self, name: str, *extra: str, timeout: float = 60.0, python: str | None = None,
                     verbose: bool = False) -> ChildProcess:
        """Start ``sleap-rtc worker`` in the room and wait for its session-string banner.

        ``python`` runs it in another environment (the native-stack one of the interop
        tests); ``verbose`` adds ``-v`` (INFO log lines, e.g. which transport backend each
        channel uses)."""
        if self.room_id is None:
            self.create_room()
        work = self.work_dir / name
        argv = sleap_rtc_argv(
            *(["-v"] if verbose else []), "worker", "--server", self.url, "--room-id", self.room_id, "--token", self.worker_token,
            "--name", name, "--work-dir", str(work), *extra, python=python,
        )
        child = self.spawn(name, argv)
        child.wait_for_line(lambda line: SESSION_PREFIX in line, timeout)
        self.workers[name] = child
        return child

    def start_workers(self, *names: str, extra: tuple[str, ...] = (), timeout: float = 90.0) -> list[ChildProcess]:
        """Start several workers at once (their imports overlap) and wait for every banner."""
        if self.room_id is None:
            self.create_room()
        started = []
        for name in names:
            argv = sleap_rtc_argv(
                "worker", "--server", self.url, "--room-id", self.room_id, "--token", self.worker_token,
                "--name", name, "--work-dir", str(self.work_dir / name), *extra,
            )
            started.append((name, self.spawn(name, argv)))
        for name, child in started:
            child.wait_for_line(lambda line: SESSION_PREFIX in line, timeout)
            self.workers[name] = child
        return [child for _, child in started]

    def session_string(self, name: str) -> str:
        """The session string a worker printed in its banner."""
        line = self.workers[name].wait_for_line(lambda l: SESSION_PREFIX in l, 1)
        return line[line.index(SESSION_PREFIX) :].split()[0]

    def restart_server(self, timeout: float = 20.0) -> None:
        """Stop the server and start it again on the same port and state file."""
        if self.server:
            self.server.stop()
        self.start_server(self.port, timeout)

    def stop(self) -> None:
        """Stop every child (workers first, then the server)."""
        for child in reversed(self.children):
            child.stop()
        self.children.clear()

    def __enter__(self) -> LocalRoom:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
