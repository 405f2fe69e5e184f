#!/usr/bin/env python3
"""trioproxy against Kamailio in one run: SIPp traffic on 127.0.0.1, the same KEMI Lua route script for both.

For each scenario and each proxy (Kamailio when Debian's ``kamailio`` and ``kamailio-lua-modules`` are
installed; ``--install`` installs them) it starts the proxy and the SIPp callees, then measures:

- at each fixed rate (``--rates``, ``--seconds`` each): CPU seconds per 1000 calls (utime + stime of every
  process of the proxy, from /proc), the INVITE-to-200 (REGISTER-to-200) median and 95th percentile (SIPp
  response time 1, one line per call with ``-trace_rtt``) and the calls that failed;
- the highest rate with fewer than 0.5% failed calls: rates double from ``--step-start`` up to
  ``--max-rate``, then two bisection steps between the last rate passed and the first failed (a step fails
  as well when it takes a quarter longer than planned: the rate was not sustained);
- the peak resident set of the main process (VmHWM) and the peak PSS summed over all its processes, and
  both again after ``--rest`` seconds without traffic (memory a proxy gives back when the load stops).

Scenarios (``--scenario NAME``, repeatable): ``call-fixed`` (calls with Record-Route to a fixed next hop),
``call-lookup`` (calls to 1,000 registered users, registrar lookup), ``relay`` (a script that only relays),
``fork-cancel`` (parallel fork to two callees; one answers, the proxy cancels the other), ``register`` (a
registration storm). Scripts and SIPp scenarios are in ``bench/``. Every step has a timeout, the whole run
has ``--budget`` seconds (steps past it are skipped and reported), and every process is started here and
stopped by its PID. ``--quick`` is a short run of every scenario at a low rate (checks the script works).
``--overload`` (``bench_overload.py``): instead of the fixed rates, the capacity (``--capacity N`` or found by
stepping) and twice that rate for ``--overload-seconds``: goodput, shed calls, calls failed after they
started, retransmissions, RSS at peak and after a rest.
Prints ``figure | kamailio | trioproxy | ratio`` (ratio = trioproxy / kamailio); ``--json FILE`` saves all.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from bench_measure import MemorySampler, peak_rss_kib, process_tree, pss_kib, sipp_counters
from bench_overload import OverloadResult, measure_overload, overload_rows
from bench_servers import (
    PROXIES,
    Started,
    install_kamailio,
    kamailio_available,
    start_proxy,
    start_uas,
)
from bench_sipp import BudgetExceeded, Load, run_load

from trioproxy.testing.processes import HOST, free_port, rss_kib


@dataclass(frozen=True)
class Scenario:
    name: str
    script: str  # file in bench/
    mode: str  # @MODE@ of bench/route.lua
    callees: tuple[str, ...]  # SIPp scenarios of the callees, one process each
    ruri: str  # "proxy", "callee" or "users": whom the calls' Request-URI names
    register: bool = False  # the load is REGISTERs, not calls


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("call-fixed", "route.lua", "fixed", ("uas.xml",), "proxy"),
        Scenario("call-lookup", "route.lua", "lookup", ("uas.xml",), "users"),
        Scenario("relay", "relay.lua", "relay", ("uas.xml",), "callee"),
        Scenario("fork-cancel", "route.lua", "fork", ("uas.xml", "uas_ring.xml"), "proxy"),
        Scenario("register", "route.lua", "lookup", (), "proxy", register=True),
    )
}
LOOKUP_USERS = 1000
STORM_USERS = 10000


@dataclass
class Run:
    """One scenario on one proxy."""

    scenario: str
    proxy: str
    fixed: list[Load] = field(default_factory=list)
    steps: list[Load] = field(default_factory=list)
    max_rate: int | None = None
    peak_rss_main_kib: int = 0  # over the whole run (fixed rates and stepping)
    peak_pss_kib: int = 0
    fixed_rss_main_kib: int = 0  # over the fixed-rate loads only: the same load for every proxy
    fixed_pss_kib: int = 0
    rest_seconds: float = 0.0  # --rest: idle time after the fixed-rate loads before the figures below
    rest_rss_main_kib: int = 0
    rest_pss_kib: int = 0
    processes: int = 0
    callee_calls: dict[str, int] = field(default_factory=dict)  # calls each callee completed, by scenario
    overload: OverloadResult | None = None  # --overload
    error: str | None = None


def write_users(path: Path, order: str, names: list[str], host: str) -> None:
    path.write_text(order + "\n" + "".join(f"{name};{host};\n" for name in names))


def step_rates(args: argparse.Namespace) -> list[int]:
    rates, rate = [], args.step_start
    while rate < args.max_rate:
        rates.append(rate)
        rate *= 2
    return [*rates, args.max_rate]


def find_max_rate(args: argparse.Namespace, load: LoadFn, run: Run) -> None:
    """Doubling steps until one fails, then two bisection steps; the highest rate that passed."""
    best, failed = None, None
    for rate in step_rates(args):
        step = load(rate, args.step_seconds)
        run.steps.append(step)
        if not step.passed:
            failed = rate
            break
        best = rate
        time.sleep(0.5)
    for _ in range(2):
        if failed is None:
            break
        low = best or 0
        if failed - low <= max(5, low // 10):
            break
        time.sleep(2.0)  # let the proxy drain the failed step
        rate = (low + failed) // 2
        step = load(rate, args.step_seconds)
        run.steps.append(step)
        if step.passed:
            best = rate
        else:
            failed = rate
    run.max_rate = best


class LoadFn:
    """Runs SIPp loads of one scenario against one started proxy (calls, or REGISTERs)."""

    def __init__(
        self, args: argparse.Namespace, workdir: Path, scn: Scenario, proxy: Started, port: int, callee: str
    ) -> None:
        self.args, self.workdir, self.scn, self.proxy, self.port = args, workdir, scn, proxy, port
        self.keys = {"contact_hostport": callee}
        self.count = 0
        self.shed_scenario = False  # set by bench_overload for its 2x load

    def __call__(self, rate: int, seconds: int, csv_name: str = "calls.csv", register: bool = False) -> Load:
        if self.proxy.proc.poll() is not None:
            raise RuntimeError(f"{self.proxy.name} exited with status {self.proxy.proc.returncode}")
        self.count += 1
        calls = "uac_shed.xml" if self.shed_scenario else "uac.xml"  # --overload: a 503 ends the call as "shed"
        xml = "register.xml" if register or self.scn.register else calls
        load = run_load(
            self.workdir, f"load{self.count:02d}-{rate}", xml, self.port, self.workdir / csv_name,
            rate, seconds, self.proxy.pid, self.args.deadline, self.keys,
            "un" if self.args.uac_sockets == "per-call" or (self.args.uac_sockets == "auto" and self.args.workers > 1) else "u1",
        )
        if self.proxy.proc.poll() is not None:
            raise RuntimeError(f"{self.proxy.name} exited with status {self.proxy.proc.returncode} during a load")
        return load


def run_scenario(args: argparse.Namespace, scn: Scenario, proxy_name: str, root: Path) -> Run:
    run = Run(scn.name, proxy_name)
    workdir = root / f"{proxy_name}-{scn.name}"
    workdir.mkdir()
    started: list[Started] = []
    ports = [free_port() for _ in scn.callees]
    try:
        callee = f"{HOST}:{ports[0]}" if ports else f"{HOST}:{free_port()}"
        values = {"MODE": scn.mode, "UAS1": callee, "UAS2": f"{HOST}:{ports[-1]}" if ports else callee}
        proxy_port = free_port()
        proxy = start_proxy(proxy_name, workdir, proxy_port, scn.script, values, args.workers, args.kamailio_shm)
        started.append(proxy)
        for xml, port in zip(scn.callees, ports, strict=True):
            started.append(start_uas(workdir, xml, port))
        load = LoadFn(args, workdir, scn, proxy, proxy_port, callee)
        if scn.register:
            users = [f"storm{n:05d}" for n in range(STORM_USERS)]
            write_users(workdir / "calls.csv", "SEQUENTIAL", users, HOST)
        elif scn.ruri == "users":
            users = [f"user{n:04d}" for n in range(LOOKUP_USERS)]
            write_users(workdir / "users.csv", "SEQUENTIAL", users, HOST)
            write_users(workdir / "calls.csv", "RANDOM", users, HOST)
            pre = load(500, LOOKUP_USERS // 500, "users.csv", register=True)
            if pre.succeeded < LOOKUP_USERS:
                raise RuntimeError(f"only {pre.succeeded} of {LOOKUP_USERS} users registered")
        else:
            target = callee if scn.ruri == "callee" else f"{HOST}:{proxy_port}"
            write_users(workdir / "calls.csv", "SEQUENTIAL", ["bench"], target)
        with MemorySampler(proxy.pid) as memory:
            try:
                if args.overload:
                    capacity = args.capacity
                    if capacity is None:
                        find_max_rate(args, load, run)
                        capacity = run.max_rate
                        time.sleep(2.0)  # let the proxy drain the last step
                    if not capacity:
                        raise RuntimeError("no capacity found (no rate passed)")
                    run.overload = measure_overload(load, capacity, args.overload_seconds, args.rest, proxy.pid)
                else:
                    for rate in args.rates:
                        run.fixed.append(load(rate, args.seconds))
                        time.sleep(0.5)
                    memory.sample()
                    run.fixed_rss_main_kib, run.fixed_pss_kib = peak_rss_kib(proxy.pid), memory.peak_pss_kib
                    time.sleep(args.rest)  # memory comes back toward its idle size once the load stops
                    run.rest_seconds = args.rest
                    run.rest_rss_main_kib = rss_kib(proxy.pid)
                    run.rest_pss_kib = sum(pss_kib(pid) for pid in process_tree(proxy.pid))
                    if args.max_rate > 0:
                        find_max_rate(args, load, run)
            finally:
                run.peak_rss_main_kib = peak_rss_kib(proxy.pid)
        run.peak_pss_kib, run.processes = memory.peak_pss_kib, memory.processes
    except (RuntimeError, BudgetExceeded, OSError) as exc:
        run.error = str(exc)
        print(f"bench: {scn.name} on {proxy_name}: {exc}", file=sys.stderr)
    finally:
        for proc in reversed(started):
            proc.stop()
    for xml, port in zip(scn.callees, ports, strict=True):
        counters = sipp_counters(workdir / f"uas-{port}.csv")
        run.callee_calls[xml] = int(counters.get("SuccessfulCall(C)", 0) or 0)
    return run


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _rows(runs: dict[str, Run], rates: list[int]) -> list[tuple[str, dict[str, float | None], int]]:
    """(figure, value per proxy, digits) for one scenario."""
    any_run = next(iter(runs.values()))
    what = "REGISTER->200" if any_run.scenario == "register" else "INVITE->200"
    rows: list[tuple[str, dict[str, float | None], int]] = []
    if any(r.steps for r in runs.values()):
        rows.append(("max rate /s (<0.5% failed)", {p: r.max_rate for p, r in runs.items()}, 0))
    for i, rate in enumerate(rates):
        fixed = {p: (r.fixed[i] if i < len(r.fixed) else None) for p, r in runs.items()}
        loads = {p: f for p, f in fixed.items() if f is not None}
        rows.append((f"CPU-s/1000 @{rate}/s", {p: f.cpu_s_per_1000 for p, f in loads.items()}, 3))
        rows.append((f"{what} median ms @{rate}/s", {p: f.median_ms for p, f in loads.items()}, 2))
        rows.append((f"{what} p95 ms @{rate}/s", {p: f.p95_ms for p, f in loads.items()}, 2))
        failed = {p: 100.0 * f.failed / max(1, f.created, f.rate * f.seconds) for p, f in loads.items()}
        rows.append((f"failed % @{rate}/s", dict(failed), 2))
        rows.append((f"unexpected msgs @{rate}/s", {p: f.unexpected for p, f in loads.items()}, 0))
        rows.append((f"180 after 200 @{rate}/s", {p: f.reordered for p, f in loads.items()}, 0))
    at = "@" + ",".join(str(r) for r in rates) + "/s"
    rows.append((f"peak RSS main MB {at}", {p: r.fixed_rss_main_kib / 1024 or None for p, r in runs.items()}, 1))
    rows.append((f"peak PSS sum MB {at}", {p: r.fixed_pss_kib / 1024 or None for p, r in runs.items()}, 1))
    rest = f"{max(r.rest_seconds for r in runs.values()):g} s after the load"
    rows.append((f"RSS main MB {rest}", {p: r.rest_rss_main_kib / 1024 or None for p, r in runs.items()}, 1))
    rows.append((f"PSS sum MB {rest}", {p: r.rest_pss_kib / 1024 or None for p, r in runs.items()}, 1))
    if any(r.steps for r in runs.values()):
        rows.append(("peak RSS main MB, whole run", {p: r.peak_rss_main_kib / 1024 or None for p, r in runs.items()}, 1))
        rows.append(("peak PSS sum MB, whole run", {p: r.peak_pss_kib / 1024 or None for p, r in runs.items()}, 1))
    rows.append(("processes", {p: r.processes or None for p, r in runs.items()}, 0))
    for xml in any_run.callee_calls:
        rows.append((f"calls completed by {xml}", {p: r.callee_calls.get(xml) for p, r in runs.items()}, 0))
    return rows


def print_table(runs: list[Run], rates: list[int]) -> None:
    """figure | kamailio | trioproxy | ratio (trioproxy / kamailio), one block per scenario."""
    by_scenario: dict[str, dict[str, Run]] = {}
    for run in runs:
        by_scenario.setdefault(run.scenario, {})[run.proxy] = run
    lines = [("figure", "kamailio", "trioproxy", "ratio")]
    for scenario, per_proxy in by_scenario.items():
        for figure, values, digits in _rows(per_proxy, rates):
            kam, trio = values.get("kamailio"), values.get("trioproxy")
            ratio = trio / kam if kam and trio is not None else None
            lines.append((f"{scenario}: {figure}", _fmt(kam, digits), _fmt(trio, digits), _fmt(ratio, 2)))
    widths = [max(len(line[i]) for line in lines) for i in range(4)]
    for n, line in enumerate(lines):
        cells = [cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths, strict=True))]
        print(" | ".join(cells))
        if n == 0:
            print("-|-".join("-" * w for w in widths))
    for run in runs:
        if run.steps and run.max_rate is not None and run.max_rate >= max(s.rate for s in run.steps):
            print(f"{run.scenario} on {run.proxy}: passed every step; the max rate is at least {run.max_rate}/s")
        elif run.steps and run.max_rate is None:
            print(f"{run.scenario} on {run.proxy}: failed from the first step ({run.steps[0].rate}/s) on")
        if run.error:
            print(f"{run.scenario} on {run.proxy}: {run.error}")


QUICK = {"rates": "20", "seconds": 3, "step_start": 40, "max_rate": 80, "step_seconds": 2}


def run_json(run: Run) -> dict[str, object]:
    data = asdict(run)
    for key in ("fixed", "steps"):
        data[key] = [{**asdict(load), "passed": load.passed} for load in getattr(run, key)]
    return data


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--scenario", action="append", choices=sorted(SCENARIOS), help="repeatable; default all")
    p.add_argument("--rates", default="200", help="fixed rates in calls/s, comma-separated (default 200)")
    p.add_argument("--seconds", type=int, default=10, help="length of each fixed-rate load (default 10)")
    p.add_argument("--max-rate", type=int, default=2000, help="highest rate stepped to; 0: no stepping")
    p.add_argument("--step-start", type=int, default=200, help="first stepping rate (default 200)")
    p.add_argument("--step-seconds", type=int, default=5, help="length of each stepping load (default 5)")
    p.add_argument("--quick", action="store_true", help="a few seconds of every scenario at a low rate")
    p.add_argument("--proxy", action="append", choices=PROXIES, help="repeatable; default both")
    p.add_argument(
        "--workers", type=int, default=1, help="trioproxy worker processes (run --workers N), Kamailio children=N"
    )
    p.add_argument(
        "--uac-sockets", choices=["auto", "one", "per-call"], default="auto",
        help="the SIPp caller sends from one socket, or each call from its own (auto: per call with --workers > 1)",
    )
    p.add_argument("--kamailio-shm", type=int, default=256, help="Kamailio shared memory in MB (default 256)")
    p.add_argument("--overload", action="store_true", help="offer twice the capacity (see bench_overload.py)")
    p.add_argument("--capacity", type=int, help="--overload: calls/s taken as capacity (default: found by stepping)")
    p.add_argument("--overload-seconds", type=int, default=20, help="--overload: seconds of 2x load (default 20)")
    p.add_argument("--rest", type=float, default=10.0, help="seconds idle after the load before the last RSS (default 10)")
    p.add_argument("--budget", type=float, default=900.0, help="seconds for the whole run (default 900)")
    p.add_argument("--json", type=Path, help="write every result to this file")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, SIPp files)")
    p.add_argument("--install", action="store_true", help="install kamailio and kamailio-lua-modules (apt)")
    if "--quick" in (sys.argv[1:] if argv is None else argv):
        p.set_defaults(**QUICK)  # options given explicitly still win
    args = p.parse_args(argv)
    try:
        args.rates = [int(r) for r in str(args.rates).split(",") if r.strip()]
    except ValueError:
        p.error("--rates: comma-separated integers, e.g. 100,200")
    if any(r <= 0 for r in args.rates) or args.seconds <= 0 or args.step_seconds <= 0 or args.step_start <= 0:
        p.error("rates and durations must be positive")
    return args


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.install and install_kamailio() != 0:
        return 1
    if args.workers < 1:
        print("bench: --workers: at least 1", file=sys.stderr)
        return 2
    proxies = args.proxy or list(PROXIES)
    if "kamailio" in proxies and not kamailio_available():
        print("bench: Kamailio with app_lua is not installed (scripts/bench --install): trioproxy only")
        proxies.remove("kamailio")
    if not shutil.which("sipp"):
        print("bench: SIPp is not installed (apt-get install sip-tester)", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _interrupted)  # stop what was started, as on Ctrl-C
    args.deadline = time.monotonic() + args.budget
    root = Path(tempfile.mkdtemp(prefix="trioproxy-bench-"))
    runs: list[Run] = []
    try:
        for name in args.scenario or list(SCENARIOS):
            for proxy in proxies:
                print(f"bench: {name} on {proxy} ...", flush=True)
                runs.append(run_scenario(args, SCENARIOS[name], proxy, root))
    finally:
        if args.keep:
            print(f"bench: work directory {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    if args.overload:
        for run in runs:
            if run.overload is not None:
                print("\n".join(overload_rows(f"{run.scenario} on {run.proxy}", run.overload)))
            else:
                print(f"{run.scenario} on {run.proxy}: no overload figures ({run.error})")
    else:
        print_table(runs, args.rates)
    if args.json:
        args.json.write_text(json.dumps({"rates": args.rates, "runs": [run_json(r) for r in runs]}, indent=2))
    ok = all(r.error is None and all(f.passed for f in r.fixed) for r in runs)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
