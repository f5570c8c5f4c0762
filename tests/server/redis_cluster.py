"""A real Redis and real ``sleap-rtc server --redis`` processes on loopback, for tests.

``redis-server`` is the Debian package: when it is missing and we are root with apt, it is
installed; otherwise the tests that need it skip with the reason. Redis runs with no
persistence on a free loopback port. ``Balancer`` is a tiny loopback TCP load balancer
(round robin over the instances that accept a connection), standing in for the nginx or
Caddy of a deployment so that a peer's one URL survives the loss of an instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sleap_rtc.children import die_with_parent

START_TIMEOUT = 30.0
"""Seconds a Redis or a server instance may take to start on a loaded machine."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def find_redis_server() -> tuple[str | None, str]:
    """``(path, "")`` of ``redis-server``, installing the Debian package if we can; else ``(None, why)``."""
    path = shutil.which("redis-server")
    if path:
        return path, ""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None, "redis-server is not installed, and installing it needs root and apt-get (apt-get install redis-server)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "install", "-y", "--no-install-recommends", "redis-server"], ["apt-get", "update"],
                ["apt-get", "install", "-y", "--no-install-recommends", "redis-server"]):
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=900, check=False)
        path = shutil.which("redis-server")
        if path:
            return path, ""
    return None, "apt-get install redis-server failed"


def _wait_port(port: int, deadline: float, proc: subprocess.Popen) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port} after {START_TIMEOUT:.0f} s")


class RedisServer:
    """``redis-server`` on a free loopback port, no persistence, killed on ``stop``."""

    def __init__(self, path: str):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="sleap-rtc-redis-")
        self.proc = subprocess.Popen(
            [path, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir, "--maxclients", "10000", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent,
        )
        _wait_port(self.port, time.monotonic() + START_TIMEOUT, self.proc)

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        """Kill Redis and remove its directory."""
        self.proc.kill()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


class Instance:
    """One ``python -m sleap_rtc server --redis URL`` process (``redis_url=None``: the
    single-process server, rooms in a temporary SQLite file)."""

    def __init__(self, redis_url: str | None, *extra: str, log_dir: Path | None = None):
        self.port = free_port()
        log_dir = log_dir or Path(tempfile.mkdtemp(prefix="sleap-rtc-instance-"))
        self.log_path = log_dir / f"instance-{self.port}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        shared = ["--redis", redis_url] if redis_url else ["--state", str(log_dir / f"state-{self.port}.sqlite3")]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sleap_rtc", "server", "--port", str(self.port), *shared, *extra],
            stdout=subprocess.PIPE, stderr=self._log, env=env, preexec_fn=die_with_parent,
        )

    def wait_ready(self, deadline: float) -> None:
        """Block until the instance printed its listening line (it has joined Redis by then)."""
        buf = b""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"instance exited with {self.proc.returncode}: {self.log_path.read_text(errors='replace')[-2000:]}")
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                buf += os.read(self.proc.stdout.fileno(), 4096)
                if b"listening on" in buf:
                    return
        raise TimeoutError(f"instance on {self.port} not ready after {START_TIMEOUT:.0f} s")

    @property
    def url(self) -> str:
        """Its WebSocket URL."""
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http_url(self) -> str:
        """Its HTTP base URL."""
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        """SIGKILL: no goodbye to Redis or to its peers."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()
        if self.proc.stdout:
            self.proc.stdout.close()


class Cluster:
    """N instances on one Redis. ``url`` hands out the instances in turn, so that the
    peers of a test land on different instances; ``create_room`` writes to Redis directly
    (as ``RunningServer.create_room`` writes to its store), so tests are not rate-limited."""

    def __init__(self, redis: RedisServer, count: int = 3, *extra: str):
        self.redis = redis
        self.instances = [Instance(redis.url, *extra) for _ in range(count)]
        deadline = time.monotonic() + START_TIMEOUT
        try:
            for instance in self.instances:
                instance.wait_ready(deadline)
        except BaseException:
            self.stop()
            raise
        self._turn = itertools.cycle(range(count))

    @property
    def url(self) -> str:
        """The next instance's WebSocket URL (round robin)."""
        return self.instances[next(self._turn)].url

    @property
    def http_url(self) -> str:
        """The first instance's HTTP base URL."""
        return self.instances[0].http_url

    async def create_room(self) -> tuple[str, str]:
        """A room created in the shared store; returns ``(room_id, token)``."""
        from sleap_rtc.server.backend_redis import RedisBackend

        backend = RedisBackend(self.redis.url)
        try:
            return await backend.create_room()
        finally:
            await backend.redis.aclose()

    def reset_limits(self) -> None:
        """Forget shared rate-limit windows (every test's peers come from 127.0.0.1)."""
        import redis

        client = redis.Redis.from_url(self.redis.url)
        try:
            keys = list(client.scan_iter("sleap-rtc:fail:*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()

    def stop(self) -> None:
        """Stop every instance."""
        for instance in self.instances:
            instance.stop()


class Balancer:
    """A loopback TCP load balancer: each new connection goes to the next instance that
    accepts one. When an instance dies, its connections drop and reconnects land elsewhere."""

    def __init__(self, upstreams: list[int]):
        self.upstreams = upstreams
        self.routes: list[int] = []
        """The upstream port of each connection accepted so far, in order."""
        self._turn = itertools.count()
        self._server: asyncio.base_events.Server | None = None
        self._pipes: set[asyncio.Task] = set()
        self.port = 0

    async def start(self) -> None:
        """Listen on a free loopback port."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        """WebSocket URL through the balancer."""
        return f"ws://127.0.0.1:{self.port}/ws"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        start = next(self._turn)
        for i in range(len(self.upstreams)):
            port = self.upstreams[(start + i) % len(self.upstreams)]
            try:
                up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2.0)
            except (OSError, asyncio.TimeoutError):
                continue
            self.routes.append(port)
            task = asyncio.current_task()
            self._pipes.add(task)
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            except asyncio.CancelledError:  # stop(): the connection just ends
                pass
            finally:
                self._pipes.discard(task)
            return
        writer.close()

    async def stop(self) -> None:
        """Stop accepting and drop every piped connection."""
        if self._server is not None:
            self._server.close()
        for task in list(self._pipes):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2.0)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    # Either side closing (an instance killed: RST) closes the other, as a proxy does.
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()
