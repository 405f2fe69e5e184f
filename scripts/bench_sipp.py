"""One SIPp load of ``scripts/bench``: a caller at a fixed rate through the proxy, measured.

``run_load`` runs ``bench/uac.xml`` (calls) or ``bench/register.xml`` (REGISTERs) from a CSV file at
``rate`` per second for ``seconds``, with a receive timeout per call and a hard timeout per load, and
returns a ``Load``: calls created, succeeded and failed (SIPp's counters; calls not finished count as
failed), the wall time, the CPU seconds of the proxy's process tree during the load, and the median and
95th percentile of the INVITE-to-200 (REGISTER-to-200) time: microseconds logged by the scenario, or
SIPp's response time 1 (``-trace_rtt``, whole milliseconds) when that log is missing.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench_measure import (
    cpu_used,
    percentile,
    process_tree,
    read_rtt_file,
    read_rtt_log,
    sipp_counters,
    tree_cpu_seconds,
)

from trioproxy.testing.processes import HOST, free_port, stop_process

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"
FAIL_LIMIT = 0.005  # a load passes with fewer than 0.5% failed calls
RECV_TIMEOUT_MS = 4000  # a call waiting longer than this for a message fails


class BudgetExceeded(RuntimeError):
    """The run's time budget is spent: the remaining loads are skipped."""


@dataclass
class Load:
    rate: int
    seconds: int
    created: int
    succeeded: int
    failed: int
    elapsed: float
    sustained: bool  # finished within a quarter more than planned
    sipp_exit: int | None
    cpu_s: float
    cpu_s_per_1000: float | None
    median_ms: float | None
    p95_ms: float | None
    # SIPp aborts a call on a message its scenario does not expect at that point (-trace_err): "reordered" are
    # provisional responses read after the final one (a 180 overtaken by its 200).
    unexpected: int = 0
    reordered: int = 0

    @property
    def passed(self) -> bool:
        return self.created > 0 and self.sustained and self.failed < FAIL_LIMIT * self.created


def run_load(
    workdir: Path,
    tag: str,
    scenario: str,
    proxy_port: int,
    csv_file: Path,
    rate: int,
    seconds: int,
    proxy_pid: int,
    deadline: float,
    keys: dict[str, str],
    transport: str = "u1",
) -> Load:
    """SIPp sends ``rate * seconds`` calls of ``bench/<scenario>`` to 127.0.0.1:``proxy_port``.

    ``transport``: SIPp's ``-t``; ``u1`` sends every call from one socket, ``un`` each call from a socket of
    its own (so that SO_REUSEPORT spreads the calls over a proxy's workers, as many phones would)."""
    planned = rate * seconds
    timeout = seconds * 1.5 + RECV_TIMEOUT_MS / 1000 + 10
    if time.monotonic() + timeout > deadline:
        raise BudgetExceeded(f"time budget spent before {tag} ({rate}/s for {seconds} s)")
    run_dir = workdir / tag
    run_dir.mkdir()
    xml = run_dir / scenario
    shutil.copyfile(BENCH_DIR / scenario, xml)
    stat_file = run_dir / "stat.csv"
    cmd = ["sipp", "-sf", str(xml), "-inf", str(csv_file), f"{HOST}:{proxy_port}", "-i", HOST]
    cmd += ["-p", str(free_port()), "-t", transport, "-r", str(rate), "-m", str(planned), "-l", str(max(50, rate * 3))]
    cmd += ["-nostdin", "-nd", "-trace_stat", "-stf", str(stat_file), "-fd", "1", "-trace_rtt", "-rtt_freq", "1"]
    cmd += ["-recv_timeout", str(RECV_TIMEOUT_MS), "-timeout", f"{timeout:.0f}s", "-trace_err"]
    cmd += ["-error_file", str(run_dir / "errors.log"), "-max_recv_loops", "10000", "-timer_resol", "1"]
    cmd += ["-trace_logs", "-log_file", str(run_dir / "rtt.log")]
    if transport == "un":
        cmd += ["-max_socket", "4096"]  # below the open-file limit; calls at once are bounded by -l anyway
    for key, value in keys.items():
        cmd += ["-key", key, value]
    before = tree_cpu_seconds(process_tree(proxy_pid))
    started = time.monotonic()
    with open(run_dir / "sipp.out", "wb") as out:
        uac = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=run_dir)
    try:
        sipp_exit: int | None = uac.wait(timeout=timeout + 5)
    except subprocess.TimeoutExpired:
        sipp_exit = None
    finally:
        stop_process(uac)
    elapsed = time.monotonic() - started
    cpu = cpu_used(before, tree_cpu_seconds(process_tree(proxy_pid)))
    counters = sipp_counters(stat_file)
    created = int(counters.get("TotalCallCreated", 0) or 0)
    succeeded = int(counters.get("SuccessfulCall(C)", 0) or 0)
    rtts = read_rtt_log(run_dir / "rtt.log")
    if not rtts:  # SIPp's own response times, in whole milliseconds
        rtts = [t for rtt in run_dir.glob("*_rtt.csv") for t in read_rtt_file(rtt)]
    median, p95 = percentile(rtts, 50), percentile(rtts, 95)
    unexpected, reordered = count_unexpected(run_dir / "errors.log")
    return Load(
        rate=rate,
        seconds=seconds,
        created=created,
        succeeded=succeeded,
        failed=max(planned, created) - succeeded,
        elapsed=round(elapsed, 2),
        sustained=sipp_exit is not None and elapsed <= seconds * 1.25 + 1.5,
        sipp_exit=sipp_exit,
        cpu_s=round(cpu, 3),
        cpu_s_per_1000=round(cpu * 1000 / created, 3) if created else None,
        median_ms=None if median is None else round(median, 3),
        p95_ms=None if p95 is None else round(p95, 3),
        unexpected=unexpected,
        reordered=reordered,
    )


_UNEXPECTED = re.compile(r"while expecting '([^']*)'[^,]*, received '([^\r\n]*)")


def count_unexpected(error_file: Path) -> tuple[int, int]:
    """(messages SIPp did not expect, of which provisional responses after the final one) in its error log."""
    try:
        text = error_file.read_text(errors="replace")
    except OSError:
        return 0, 0
    found = [(m.group(1), m.group(2)) for m in _UNEXPECTED.finditer(text)]
    reordered = sum(1 for _expected, got in found if got.startswith("SIP/2.0 1"))
    return len(found), reordered
