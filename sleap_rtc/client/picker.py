"""Interactive worker selection in the terminal: a live table that redraws itself.

The table (rich ``Live``) is redrawn whenever the ``RoomView`` changes (workers joining,
leaving, turning busy), so the user decides on current facts. Keys are read from the
terminal in cbreak mode through ``loop.add_reader``: the event loop never blocks, so the
signaling connection's heartbeats and room events keep flowing while the user thinks.
Because echo is off, what the user types is drawn by us under the table, and a redraw never
garbles it.

Numbers are stable: a worker keeps the number it got when it first appeared, so a redraw
never makes "2" mean another worker between reading and pressing Enter.

The "Key" column shows each worker's short identity fingerprint and how it compares with
the key this computer remembers for that name (``key_label``): a changed key is marked in
red. A worker whose advertised numbers are not believable is listed as ``invalid`` and
cannot be chosen.
"""

from __future__ import annotations

import asyncio
import os
import sys
import termios
import tty
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from sleap_rtc.client.options import NO_TTY_MESSAGE
from sleap_rtc.core.known_workers import Trust
from sleap_rtc.core.room import RoomView, WorkerInfo
from sleap_rtc.core.selection import SelectionError, SelectionTimeout, rank_key, room_trust

WARN_BEFORE_S = 30.0
"""The user is warned this long before the selection times out."""



class SelectionCancelled(SelectionError):
    """The user quit the selection (``q``)."""


def key_label(worker: WorkerInfo, trust: Trust) -> tuple[str, str | None]:
    """``(text, rich style)`` of a worker's "Key" cell: short fingerprint plus its trust."""
    short = worker.short_fingerprint
    if trust == Trust.NONE or not short:
        return "none", "yellow"
    if trust == Trust.CHANGED:
        return f"{short} CHANGED", "bold red"
    if trust == Trust.KNOWN:
        return f"{short} known", None
    return f"{short} new", None


class KeyReader:
    """Keys typed on a terminal, without echo, delivered to an ``asyncio.Queue``.

    Use as a context manager: it switches the terminal to cbreak mode (keys arrive at once,
    Ctrl-C still interrupts) and always restores the previous mode on exit.
    """

    def __init__(self, fd: int):
        self.fd = fd
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self._saved: list[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __enter__(self) -> KeyReader:
        self._saved = termios.tcgetattr(self.fd)
        tty.setcbreak(self.fd)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.fd, self._on_readable)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.fd)
        if self._saved is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)

    def _on_readable(self) -> None:
        try:
            data = os.read(self.fd, 1024)
        except OSError:
            data = b""
        if not data:  # terminal closed: behave like 'q' so the picker ends
            self._loop.remove_reader(self.fd)  # type: ignore[union-attr]
            self.queue.put_nowait("\x04")
            return
        for char in data.decode("utf-8", errors="ignore"):
            self.queue.put_nowait(char)


class WorkerPicker:
    """State and rendering of the interactive table; ``run`` drives it from keys and events."""

    def __init__(self, room: RoomView, *, show_busy: bool = False, notice: str = ""):
        self.room = room
        self.show_busy = show_busy
        self.message = notice
        self.warning = ""
        self.typed = ""
        self._numbers: dict[str, int] = {}

    # ------------------------------------------------------------------ model

    def rows(self) -> list[tuple[int, WorkerInfo]]:
        """``(number, worker)`` for every shown worker, by number (busy ones only if asked)."""
        trust = room_trust(self.room)
        for worker in sorted(self.room.workers, key=lambda w: rank_key(w, trust)):
            self._numbers.setdefault(worker.peer_id, len(self._numbers) + 1)
        shown = [w for w in self.room.workers if w.available or self.show_busy]
        return sorted(((self._numbers[w.peer_id], w) for w in shown), key=lambda row: row[0])

    def choose(self, text: str) -> WorkerInfo | None:
        """The worker for a typed number, or ``None`` with ``message`` saying why not."""
        text = text.strip()
        if not text.isdigit():
            self.message = f"'{text}' is not a worker number."
            return None
        number = int(text)
        for n, worker in self.rows():
            if n == number:
                if not worker.valid:
                    self.message = f"Worker {number} ({worker.name}) is invalid: {'; '.join(worker.problems)}."
                    return None
                if worker.available:
                    return worker
                self.message = f"Worker {number} ({worker.name}) is {worker.status}; choose an available one."
                return None
        self.message = f"There is no worker {number} in the list."
        return None

    # ------------------------------------------------------------------ view

    def render(self) -> Group:
        """The table plus the status lines and the prompt with what has been typed."""
        rows = self.rows()
        available = sum(1 for _, w in rows if w.available and w.valid)
        trust = room_trust(self.room)
        table = Table(title=f"Workers in room {self.room.signaling.room_id} ({available} available)")
        for column in ("#", "Name", "Peer ID", "GPU", "GPU memory", "CUDA", "Host", "Status", "Key"):
            table.add_column(column, justify="right" if column in ("#", "GPU memory") else "left")
        changed = []
        for number, w in rows:
            memory = f"{w.gpu_memory_mb:,} MB" if w.gpu_memory_mb else "-"
            choosable = w.available and w.valid
            style = None if choosable else "dim"
            label = str(number) if choosable else "-"
            key_text, key_style = key_label(w, trust(w) if trust else Trust.NEW)
            status = w.status if w.valid else "invalid"
            if trust and trust(w) == Trust.CHANGED:
                changed.append(w.name)
            table.add_row(label, Text(w.name), Text(w.peer_id), Text(w.gpu_model), memory, Text(w.cuda_version or "-"),
                          Text(w.hostname or "-"), Text(status), Text(key_text, style=key_style or ""), style=style)
        lines: list[Any] = [table]
        if changed:
            lines.append(Text(
                f"Identity key CHANGED for {', '.join(changed)}: reinstalled, or someone posing as it. "
                "Choose it only if you know why.", style="bold red",
            ))
        if not available:
            lines.append(Text("No available workers yet; waiting for one to join or become free...", style="yellow"))
        if self.message:
            lines.append(Text(self.message, style="bold"))
        if self.warning:
            lines.append(Text(self.warning, style="bold red"))
        lines.append(Text(f"Select a worker by number and press Enter (r = refresh, q = quit): {self.typed}"))
        return Group(*lines)

    # ------------------------------------------------------------------ loop

    async def run(
        self,
        keys: asyncio.Queue[str],
        live: Live,
        *,
        timeout: float,
        warn_before: float = WARN_BEFORE_S,
    ) -> WorkerInfo:
        """Redraw on room changes and keys until a worker is chosen; raises on timeout/quit."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        changed = asyncio.Event()
        unsubscribe = self.room.subscribe(lambda _change: changed.set())
        key_task: asyncio.Task | None = None
        change_task: asyncio.Task | None = None
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise SelectionTimeout(
                        f"No worker was chosen within {timeout:g} s. Run the command again, "
                        "or use --auto-select to let sleap-rtc pick."
                    )
                if remaining <= warn_before:
                    self.warning = f"Selection times out in {max(1, round(remaining))} s."
                live.update(self.render(), refresh=True)
                # Wake for a key, a room change, or the next countdown tick.
                tick = 1.0 if remaining <= warn_before else remaining - warn_before
                key_task = key_task or asyncio.ensure_future(keys.get())
                change_task = change_task or asyncio.ensure_future(changed.wait())
                done, _ = await asyncio.wait(
                    {key_task, change_task}, timeout=min(tick, remaining), return_when=asyncio.FIRST_COMPLETED
                )
                if change_task in done:
                    changed.clear()
                    change_task = None
                if key_task in done:
                    key = key_task.result()
                    key_task = None
                    chosen = await self._on_key(key)
                    if chosen is not None:
                        live.update(self.render(), refresh=True)
                        return chosen
        finally:
            unsubscribe()
            for task in (key_task, change_task):
                if task is not None:
                    task.cancel()

    async def _on_key(self, key: str) -> WorkerInfo | None:
        if key in ("\n", "\r"):
            typed, self.typed = self.typed, ""
            return self.choose(typed) if typed else None
        if key in ("\x7f", "\b"):
            self.typed = self.typed[:-1]
        elif key.isdigit():
            self.typed += key
            self.message = ""
        elif key.lower() == "r":
            self.typed = ""
            self.message = "Refreshed the worker list."
            await self.room.refresh()
        elif key.lower() == "q" or key == "\x04":
            raise SelectionCancelled("Worker selection cancelled.")
        return None


async def pick_worker(
    room: RoomView,
    *,
    show_busy: bool = False,
    timeout: float = 300.0,
    warn_before: float = WARN_BEFORE_S,
    notice: str = "",
    console: Console | None = None,
    stdin: Any = None,
) -> WorkerInfo:
    """Show the live worker table and return the worker the user picks.

    ``notice`` is shown above the prompt (e.g. "gpu-1 turned busy; choose another").
    Raises ``SelectionError`` at once when stdin is not a terminal, ``SelectionTimeout``
    after ``timeout`` seconds (warning ``warn_before`` seconds earlier), and
    ``SelectionCancelled`` when the user quits.
    """
    stdin = stdin or sys.stdin
    if not (hasattr(stdin, "isatty") and stdin.isatty()):
        raise SelectionError(NO_TTY_MESSAGE)
    console = console or Console()
    picker = WorkerPicker(room, show_busy=show_busy, notice=notice)
    with KeyReader(stdin.fileno()) as reader:
        with Live(picker.render(), console=console, auto_refresh=False, transient=False) as live:
            return await picker.run(reader.queue, live, timeout=timeout, warn_before=warn_before)
