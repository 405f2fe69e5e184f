"""Measurements for ``scripts/bench``: process trees from /proc, SIPp's statistics and response-time files.

- ``process_tree(pid)``: the process and all its descendants (by the parent PID in /proc/*/stat), so a
  multi-process server (Kamailio's main, timer and receiver processes; a proxy with workers) counts whole.
- ``tree_cpu_seconds``: utime + stime summed over a tree; ``pss_kib`` / ``peak_rss_kib``: proportional set
  size (/proc/PID/smaps_rollup) and the high-water mark of the resident set (VmHWM).
- ``MemorySampler``: a thread that samples the PSS sum of a tree and keeps its peak.
- ``read_rtt_log``: per-call response times logged by the scenario in microseconds (``rtt_us;N`` lines of a
  SIPp ``-trace_logs`` file); ``read_rtt_file``: those of a SIPp ``-trace_rtt`` file (``Date_ms;
  response_time_ms;rtd_no``, whole milliseconds); ``percentile``: nearest-rank percentiles of them; ``sipp_counters``: the last row of a SIPp
  ``-trace_stat`` file by column name.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

from trioproxy.testing.processes import cpu_seconds

__all__ = [
    "MemorySampler",
    "cpu_used",
    "peak_rss_kib",
    "percentile",
    "process_tree",
    "pss_kib",
    "read_rtt_file",
    "read_rtt_log",
    "sipp_counters",
    "tree_cpu_seconds",
]


def _parent_pids() -> dict[int, int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process exited meanwhile
        parents[int(entry)] = int(fields[1])
    return parents


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process descending from it, parents first."""
    children: dict[int, list[int]] = {}
    for child, parent in _parent_pids().items():
        children.setdefault(parent, []).append(child)
    tree, todo = [], [pid]
    while todo:
        current = todo.pop(0)
        tree.append(current)
        todo.extend(sorted(children.get(current, [])))
    return tree


def tree_cpu_seconds(pids: Iterable[int]) -> dict[int, float]:
    """utime + stime of each process still alive, by PID."""
    seconds: dict[int, float] = {}
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            seconds[pid] = cpu_seconds(pid)
    return seconds


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two readings (a process born in between counts from zero)."""
    return sum(value - before.get(pid, 0.0) for pid, value in after.items())


def _status_field(pid: int, name: str) -> int:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    return 0


def peak_rss_kib(pid: int) -> int:
    """The peak resident set of one process in KiB (VmHWM)."""
    return _status_field(pid, "VmHWM")


def pss_kib(pid: int) -> int:
    """Proportional set size of one process in KiB (shared pages divided among their users)."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


class MemorySampler:
    """Samples the PSS sum of a process tree every ``interval`` seconds in a thread, keeping the peak."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_pss_kib = 0
        self.processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pss-sampler", daemon=True)

    def sample(self) -> None:
        tree = process_tree(self.pid)
        total = sum(pss_kib(p) for p in tree)
        if total >= self.peak_pss_kib:
            self.peak_pss_kib = total
            self.processes = len(tree)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> MemorySampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sample()


def read_rtt_file(path: Path) -> list[float]:
    """Response times in milliseconds from a SIPp ``-trace_rtt`` file (the header and bad lines skipped)."""
    times: list[float] = []
    with contextlib.suppress(FileNotFoundError), open(path, errors="replace") as f:
        for line in f:
            parts = line.strip().split(";")
            if len(parts) < 2:
                continue
            try:
                value = float(parts[1])
            except ValueError:
                continue  # the header line
            if math.isfinite(value) and value >= 0:
                times.append(value)
    return times


def read_rtt_log(path: Path) -> list[float]:
    """Response times in milliseconds from the ``rtt_us;MICROSECONDS`` lines of a SIPp ``-trace_logs`` file."""
    times: list[float] = []
    with contextlib.suppress(FileNotFoundError), open(path, errors="replace") as f:
        for line in f:
            tag, _, value = line.strip().partition(";")
            if tag != "rtt_us":
                continue
            try:
                micros = float(value)
            except ValueError:
                continue
            if math.isfinite(micros) and micros >= 0:
                times.append(micros / 1000)
    return times


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile (``pct`` in 0..100) of ``values``; None for no values."""
    if not values:
        return None
    if not 0 <= pct <= 100:
        raise ValueError(f"percentile {pct} is not within 0..100")
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def sipp_counters(stat_file: Path) -> dict[str, str]:
    """The last row of a SIPp ``-trace_stat`` CSV file, by column name ({} when there is none yet)."""
    try:
        with open(stat_file, newline="", errors="replace") as f:
            rows = [row for row in csv.reader(f, delimiter=";") if row]
    except FileNotFoundError:
        return {}
    if len(rows) < 2:
        return {}
    return dict(zip(rows[0], rows[-1], strict=False))
