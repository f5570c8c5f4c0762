"""LineSplitter: child output bytes to (line, redraw) pairs, hostile output bounded."""

from __future__ import annotations

from sleap_rtc.worker.logstream import MAX_LINE_CHARS, LineSplitter


def test_lines_and_progress_bar_redraws():
    s = LineSplitter()
    out = s.feed(b"start\n 10%\r 50%\r100%\r\ndone\n")
    assert out == [("start", False), (" 10%", False), (" 50%", True), ("100%", True), ("done", False)]


def test_pieces_split_anywhere_even_inside_a_utf8_character():
    data = "épоch 1\r\nloss 0.5\n".encode()
    s = LineSplitter()
    out = []
    for i in range(len(data)):
        out += s.feed(data[i : i + 1])
    assert out + s.flush() == [("épоch 1", False), ("loss 0.5", False)]


def test_blank_lines_are_dropped_and_end_a_redraw_sequence():
    s = LineSplitter()
    # " " then "\n" is a blank line: the next line is new; a bare "\r\r" keeps redrawing.
    assert s.feed(b"a\r \nb\rc\r\rd\n\n") == [("a", False), ("b", False), ("c", True), ("d", True)]


def test_flush_returns_the_unterminated_rest_once():
    s = LineSplitter()
    assert s.feed(b"no newline yet") == []
    assert s.flush() == [("no newline yet", False)]
    assert s.flush() == []


def test_invalid_utf8_is_replaced_not_raised():
    s = LineSplitter()
    assert s.feed(b"bad \xff\xfe bytes\n") == [("bad \ufffd\ufffd bytes", False)]


def test_a_huge_line_is_cut_and_never_buffered_without_bound():
    s = LineSplitter()
    out = s.feed(b"x" * (3 * MAX_LINE_CHARS))
    assert out == [("x" * MAX_LINE_CHARS, False)]
    assert s.flush() == []
