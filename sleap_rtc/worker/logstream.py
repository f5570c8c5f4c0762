"""Splitting a child process's output into log lines, keeping progress-bar redraws apart.

Progress bars (tqdm, Lightning) redraw one terminal line by writing ``\\r`` + new text.
``LineSplitter`` turns raw bytes into ``(line, redraw)`` pairs: ``redraw`` is True when the
line replaces the previous one on a terminal (the previous line ended in ``\\r``), so the
client can overwrite instead of appending thousands of bar states.
"""

from __future__ import annotations

import codecs
import re

MAX_LINE_CHARS = 4000
"""Longer lines are cut (a hostile or broken child must not make one huge message)."""

_SPLIT = re.compile(r"(\r\n|\r|\n)")


class LineSplitter:
    """Incremental splitter: ``feed(bytes)`` and ``flush()`` return ``[(line, redraw)]``."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buf = ""
        self._after_cr = False  # the last emitted line ended in a bare \r

    def feed(self, data: bytes) -> list[tuple[str, bool]]:
        """Add output bytes; returns the lines they completed."""
        self._buf += self._decoder.decode(data)
        out: list[tuple[str, bool]] = []
        parts = _SPLIT.split(self._buf)
        # parts = [text, sep, text, sep, ..., rest]
        for i in range(0, len(parts) - 1, 2):
            self._emit(parts[i], parts[i + 1], out)
        self._buf = parts[-1]
        if len(self._buf) > MAX_LINE_CHARS:  # no terminator in sight: emit what we have
            self._emit(self._buf, "\n", out)
            self._buf = ""
        return out

    def flush(self) -> list[tuple[str, bool]]:
        """The unterminated rest, at end of stream."""
        out: list[tuple[str, bool]] = []
        self._buf += self._decoder.decode(b"", final=True)
        if self._buf:
            self._emit(self._buf, "\n", out)
        self._buf = ""
        return out

    def _emit(self, text: str, sep: str, out: list[tuple[str, bool]]) -> None:
        if text.strip():
            out.append((text[:MAX_LINE_CHARS], self._after_cr))
            self._after_cr = sep == "\r"
        elif sep != "\r":
            # "...\r\n" or a blank line ends a redraw sequence.
            self._after_cr = False
