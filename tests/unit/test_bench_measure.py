"""scripts/bench's measurements: SIPp response-time files, percentiles, statistics rows, process trees."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from bench_measure import (
    cpu_used,
    percentile,
    process_tree,
    read_rtt_file,
    read_rtt_log,
    sipp_counters,
)


def test_rtt_file_of_sipp_trace_rtt(tmp_path: Path) -> None:
    rtt = tmp_path / "uac_123_rtt.csv"
    rtt.write_text("Date_ms;response_time_ms;rtd_no\n56.001;4;1\n108.001;0;1\n\ngarbage\n156.001;12.5;1\n1;-3;1\n")
    assert read_rtt_file(rtt) == [4.0, 0.0, 12.5]
    assert read_rtt_file(tmp_path / "missing.csv") == []


def test_rtt_log_in_microseconds(tmp_path: Path) -> None:
    log = tmp_path / "rtt.log"
    log.write_text("rtt_us;4889.000000\nsomething else;12\nrtt_us;250\nrtt_us;nan\nrtt_us;x\nrtt_us;1500000\n")
    assert read_rtt_log(log) == [4.889, 0.25, 1500.0]


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]  # 100 .. 1, unsorted on purpose
    assert percentile(values, 50) == 50.0
    assert percentile(values, 95) == 95.0
    assert percentile(values, 100) == 100.0
    assert percentile(values, 0) == 1.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([3.0, 1.0, 2.0, 4.0], 95) == 4.0
    assert percentile([7.5], 95) == 7.5
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile(values, 101)


def test_sipp_counters_last_row(tmp_path: Path) -> None:
    stat = tmp_path / "stat.csv"
    stat.write_text(
        "TotalCallCreated;SuccessfulCall(C);FailedCall(C);\n10;9;0;\n2000;1990;10;\n"
    )
    counters = sipp_counters(stat)
    assert counters["TotalCallCreated"] == "2000"
    assert counters["SuccessfulCall(C)"] == "1990"
    assert counters["FailedCall(C)"] == "10"
    stat.write_text("TotalCallCreated;\n")
    assert sipp_counters(stat) == {}
    assert sipp_counters(tmp_path / "none.csv") == {}


def test_cpu_used_counts_new_processes_from_zero() -> None:
    before = {10: 1.5, 11: 0.25}
    after = {10: 2.0, 11: 0.75, 12: 0.5}  # 12 was born during the load
    assert cpu_used(before, after) == pytest.approx(1.5)


def test_process_tree_finds_grandchildren() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys; subprocess.run(['sleep', '20'])"],
        stdin=subprocess.DEVNULL,
    )
    try:
        below: list[int] = []
        for _ in range(200):  # the grandchild appears once the child's interpreter has started
            below = process_tree(child.pid)
            if len(below) >= 2:
                break
            time.sleep(0.05)
        assert below[0] == child.pid
        grandchild = below[1]
        with open(f"/proc/{grandchild}/cmdline", "rb") as f:
            assert f.read().split(b"\0")[0] == b"sleep"
        tree = process_tree(os.getpid())
        assert tree[0] == os.getpid()
        assert tree.index(child.pid) < tree.index(grandchild)
    finally:
        for pid in reversed(process_tree(child.pid)):
            os.kill(pid, 15)
        child.wait(timeout=10)
