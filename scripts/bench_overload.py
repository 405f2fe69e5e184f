"""``scripts/bench --overload``: a proxy offered twice its capacity, and what it still carries.

The capacity is ``--capacity N`` or the highest rate with fewer than 0.5% failed calls (the stepping of
``scripts/bench``). Then SIPp offers twice that rate for ``--overload-seconds`` (default 20) and the run
reports: goodput (calls completed per second of the load), calls refused at the INVITE with 503 ("shed":
the caller was told to retry later; bench/uac_shed.xml ends them as such), calls that failed after they started
(no answer, a timeout, an error after the INVITE was accepted) as a share of the calls started (created minus
shed), SIPp's retransmissions, the peak resident set of the proxy's main process during the load and its
resident set after ``--rest`` seconds of no traffic. Kamailio has no shedding: its figures are reported alike.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from bench_measure import sipp_counters
from bench_sipp import Load

from trioproxy.testing.processes import rss_kib

__all__ = ["OverloadResult", "count_shed", "measure_overload", "overload_rows"]


class LoadLike(Protocol):
    count: int
    workdir: Path
    shed_scenario: bool

    def __call__(self, rate: int, seconds: int) -> Load: ...


@dataclass
class OverloadResult:
    capacity: int
    offered: int  # calls/s
    seconds: int
    created: int
    succeeded: int
    shed: int  # answered 503 at the INVITE
    failed_after_start: int
    retransmissions: int
    goodput: float  # calls completed per second of the load
    peak_rss_kib: int
    rest_rss_kib: int

    @property
    def failed_after_start_pct(self) -> float:
        started = self.created - self.shed
        return 100.0 * self.failed_after_start / started if started > 0 else 0.0


def count_shed(log: Path) -> int:
    """Calls refused with 503 at their INVITE: the ``shed;1`` lines bench/uac_shed.xml logs."""
    try:
        with open(log, errors="replace") as f:
            return sum(1 for line in f if line.startswith("shed;"))
    except OSError:
        return 0


def measure_overload(load: LoadLike, capacity: int, seconds: int, rest: float, pid: int) -> OverloadResult:
    """Offer ``2 * capacity`` calls/s for ``seconds``; the figures of the load and of the rest after it."""
    offered = 2 * capacity
    load.shed_scenario = True
    result = load(offered, seconds)
    run_dir = load.workdir / f"load{load.count:02d}-{offered}"
    counters = sipp_counters(run_dir / "stat.csv")
    peak = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1])
    except OSError:
        pass
    time.sleep(rest)
    shed = count_shed(run_dir / "rtt.log")
    completed = max(0, result.succeeded - shed)  # bench/uac_shed.xml ends a shed call without a failure
    failed = result.failed
    return OverloadResult(
        capacity=capacity,
        offered=offered,
        seconds=seconds,
        created=result.created,
        succeeded=completed,
        shed=shed,
        failed_after_start=failed,
        retransmissions=int(counters.get("Retransmissions(C)", 0) or 0),
        goodput=round(completed / max(result.elapsed, seconds), 1),
        peak_rss_kib=peak,
        rest_rss_kib=rss_kib(pid),
    )


def overload_rows(name: str, res: OverloadResult) -> list[str]:
    started = res.created - res.shed
    return [
        f"{name}: capacity {res.capacity} calls/s, offered {res.offered} calls/s for {res.seconds} s",
        f"  goodput {res.goodput} calls/s ({100.0 * res.goodput / res.capacity:.0f}% of capacity);"
        f" {res.succeeded} of {res.created} calls completed",
        f"  shed (503 at INVITE) {res.shed}; failed after start {res.failed_after_start} of {started}"
        f" ({res.failed_after_start_pct:.2f}%); retransmissions {res.retransmissions}",
        f"  RSS peak {res.peak_rss_kib / 1024:.1f} MB, after rest {res.rest_rss_kib / 1024:.1f} MB",
    ]
