"""A tiny pexpect-like driver: run a command on a pseudo-terminal from an asyncio test."""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
import struct
import subprocess
import sys
import termios

ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-B]|\r")


class PtyProcess:
    """A child process whose stdin/stdout/stderr are a pseudo-terminal we read and write."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, cols: int = 200, rows: int = 50):
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        full_env = {**os.environ, "COLUMNS": str(cols), "LINES": str(rows), "TERM": "xterm", **(env or {})}
        full_env.pop("NO_COLOR", None)
        self.proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=full_env, close_fds=True, start_new_session=True)
        os.close(slave)
        self.raw = b""
        self._data = asyncio.Event()
        self._eof = False
        asyncio.get_running_loop().add_reader(self.master, self._on_readable)

    @classmethod
    def python(cls, *args: str, **kw) -> "PtyProcess":
        """Run ``python args...`` with this interpreter."""
        return cls([sys.executable, *args], **kw)

    def _on_readable(self) -> None:
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: the child closed the terminal
            data = b""
        if not data:
            self._eof = True
            asyncio.get_running_loop().remove_reader(self.master)
        self.raw += data
        self._data.set()

    @property
    def text(self) -> str:
        """Everything printed so far, without terminal control sequences."""
        return ANSI.sub("", self.raw.decode("utf-8", errors="replace"))

    async def expect(self, pattern: str, timeout: float = 10.0, start: int = 0) -> re.Match:
        """Wait until ``pattern`` (a regex) appears in ``text[start:]``; returns the match."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            match = re.search(pattern, self.text[start:])
            if match:
                return match
            if self._eof or loop.time() > deadline:
                raise AssertionError(f"{pattern!r} not seen; output was:\n{self.text[-3000:]}")
            self._data.clear()
            try:
                await asyncio.wait_for(self._data.wait(), max(0.01, deadline - loop.time()))
            except asyncio.TimeoutError:
                pass

    def send(self, text: str) -> None:
        """Type ``text`` on the terminal."""
        os.write(self.master, text.encode())

    async def wait(self, timeout: float = 10.0) -> int:
        """Wait for the child to exit; returns its exit code (kills it on timeout)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.proc.poll() is None:
            if loop.time() > deadline:
                self.close()
                raise AssertionError(f"process did not exit; output was:\n{self.text[-3000:]}")
            await asyncio.sleep(0.05)
        # Drain what is left on the terminal.
        await asyncio.sleep(0.05)
        return self.proc.returncode

    def close(self) -> None:
        """Kill the child if still running and close the terminal."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        if not self._eof:
            asyncio.get_running_loop().remove_reader(self.master)
            self._eof = True
        os.close(self.master)
