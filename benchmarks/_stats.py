"""Figures shared by the benchmarks: percentiles and the latency-vs-baseline table.

Imported as ``_stats`` (each benchmark runs as a script, so ``benchmarks/`` is on its path).
"""

from __future__ import annotations

import os
import platform
import statistics


def pct(samples: list[float], q: float) -> float:
    """The q-th percentile (0-100) of ``samples`` by nearest rank, in the samples' unit."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def latency_table(title: str, command: str, setting: str, rows: list[tuple[str, str, str, str]],
                  seconds: dict[str, list[float]], digits: int = 1) -> list[str]:
    """Markdown lines: a heading, the command and machine, then one row per
    ``(label, key, baseline label, baseline key)`` with p50/p99 in ms and the p50 ratio."""
    ms = {k: [v * 1000 for v in vals] for k, vals in seconds.items()}
    lines = [
        f"# {title}",
        "",
        f"Command: `{command}` ({os.cpu_count()} cores, Python {platform.python_version()}; {setting}).",
        "",
        "| measure | p50 ms | p99 ms | baseline | baseline p50 ms | ratio (p50) |",
        "|---|---|---|---|---|---|",
    ]
    for label, key, base_label, base in rows:
        p50, p99, b50 = statistics.median(ms[key]), pct(ms[key], 99), statistics.median(ms[base])
        lines.append(f"| {label} | {p50:.{digits}f} | {p99:.{digits}f} | {base_label} | {b50:.{digits + 1}f} | {p50 / b50:.2f}x |")
    return lines
