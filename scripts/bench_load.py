#!/usr/bin/env python3
"""Load benchmark of the running proxy: SIPp calls at a fixed rate through ``trioproxy run``, over loopback.

Starts the proxy (by default with no script: it forwards each request to its Request-URI with
Record-Route; ``--script FILE|default`` routes with a Lua script instead), a SIPp UAS
(built-in ``uas`` scenario) and a SIPp UAC (built-in ``uac``: INVITE, 100, 180, 200, ACK, BYE, 200) sending
``--rate`` calls per second for ``--seconds`` through the proxy. Reports the calls attempted, succeeded and
failed (SIPp's own counters), the call rate reached, the proxy's CPU seconds (utime + stime from
/proc/PID/stat) per 1000 calls, and its resident memory before the load, right after it, and after
``--rest`` seconds of rest.

Usage: scripts/bench_load.py [--rate 50] [--seconds 10] [--rounds 1] [--transport udp|tcp] [--log-level info]
[--script none|default|FILE] [--json]. With ``--rounds N`` the loads run one after another on the same proxy: an RSS that comes back to
the same level after each rest is heap kept for reuse, one that keeps growing is a leak.
Every process is started here and stopped by its PID (SIGTERM, then SIGKILL) at the end.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from trioproxy.testing.processes import cpu_seconds, free_port, rss_kib
from trioproxy.testing.processes import stop_process as stop

HOST = "127.0.0.1"


@dataclass
class Result:
    rate: int
    seconds: int
    transport: str
    log_level: str
    script: str
    attempted: int
    succeeded: int
    failed: int
    sipp_exit: int | None
    elapsed: float
    achieved_rate: float
    proxy_cpu_s: float
    cpu_s_per_1000_calls: float
    rss_before_kib: int
    rss_after_load_kib: int
    rss_after_rest_kib: int
    sipp_retransmissions: int
    failure_causes: dict[str, int]
    unexpected: dict[str, int]














def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(0.05)
    raise SystemExit(f"bench_load: {what} did not happen within {timeout:.0f} s")


def port_bound(port: int, transport: str) -> bool:
    table = "/proc/net/udp" if transport == "udp" else "/proc/net/tcp"
    want = f"0100007F:{port:04X}"
    with open(table) as f:
        return any(
            len(p) > 3 and p[1] == want and (transport == "udp" or p[3] == "0A")
            for p in (line.split() for line in f.readlines()[1:])
        )


_UNEXPECTED = re.compile(r"while expecting '([^']*)'[^,]*, received '([^\r\n]*)")


def unexpected_summary(error_file: Path) -> dict[str, int]:
    """What the UAC got instead of what it expected, counted (from SIPp's -trace_err log)."""
    try:
        text = error_file.read_text(errors="replace")
    except OSError:
        return {}
    counts: Counter[str] = Counter()
    for match in _UNEXPECTED.finditer(text):
        counts[f"expected {match.group(1)}, got {match.group(2).strip()[:60]}"] += 1
    return dict(counts.most_common(5))


def sipp_counters(stat_file: Path) -> dict[str, str]:
    """The last row of a SIPp -trace_stat CSV file, by column name."""
    with open(stat_file, newline="") as f:
        rows = list(csv.reader(f, delimiter=";"))
    if len(rows) < 2:
        return {}
    return dict(zip(rows[0], rows[-1], strict=False))


def start_proxy(args: argparse.Namespace, workdir: Path, port: int) -> subprocess.Popen[bytes]:
    proxy_out = workdir / "proxy.out"
    cmd = [sys.executable, "-m", "trioproxy", "run", "--workers", "1", "--listen", f"udp:{HOST}:{port}"]
    cmd += ["--listen", f"tcp:{HOST}:{port}", "--log-level", args.log_level]
    cmd += ["--script", args.script, "--mgmt", f"{HOST}:{free_port()}"]
    with open(proxy_out, "wb") as out, open(workdir / "proxy.err", "wb") as err:
        return subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)


def load_round(
    args: argparse.Namespace,
    workdir: Path,
    n: int,
    proxy: subprocess.Popen[bytes],
    proxy_port: int,
    uas_port: int,
) -> Result:
    """One load: a SIPp UAC at ``--rate`` for ``--seconds``, then ``--rest`` seconds of rest."""
    tflag = "u1" if args.transport == "udp" else "t1"
    rss_before = rss_kib(proxy.pid)
    cpu_before = cpu_seconds(proxy.pid)
    stat_file = workdir / f"uac{n}.csv"
    cmd = ["sipp", "-sn", "uac", f"{HOST}:{uas_port}", "-rsa", f"{HOST}:{proxy_port}", "-i", HOST]
    cmd += ["-p", str(free_port()), "-t", tflag, "-r", str(args.rate), "-m", str(args.rate * args.seconds)]
    cmd += ["-l", str(args.limit), "-d", "0", "-nostdin", "-trace_stat", "-stf", str(stat_file), "-fd", "1"]
    cmd += ["-timeout", str(args.seconds + 60), "-trace_err", "-error_file", str(workdir / f"uac{n}.err")]
    started = time.monotonic()
    with open(workdir / f"uac{n}.out", "wb") as out:
        uac = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=workdir
        )
    try:
        sipp_exit: int | None = uac.wait(timeout=args.seconds + 90)
    except subprocess.TimeoutExpired:
        sipp_exit = None
    finally:
        stop(uac)
    elapsed = time.monotonic() - started
    cpu_used = cpu_seconds(proxy.pid) - cpu_before
    rss_after = rss_kib(proxy.pid)
    time.sleep(args.rest)
    rss_rest = rss_kib(proxy.pid)
    counters = sipp_counters(stat_file)
    attempted = int(counters.get("TotalCallCreated", 0) or 0)
    causes = {
        name[len("Failed") : -3]: int(value)
        for name, value in counters.items()
        if name.startswith("Failed")
        and name.endswith("(C)")
        and name != "FailedCall(C)"
        and value not in ("", "0")
    }
    return Result(
        unexpected=unexpected_summary(workdir / f"uac{n}.err"),
        rate=args.rate,
        seconds=args.seconds,
        transport=args.transport,
        log_level=args.log_level,
        script=args.script,
        attempted=attempted,
        succeeded=int(counters.get("SuccessfulCall(C)", 0) or 0),
        failed=int(counters.get("FailedCall(C)", 0) or 0),
        sipp_exit=sipp_exit,
        elapsed=round(elapsed, 2),
        achieved_rate=round(attempted / elapsed, 1) if elapsed > 0 else 0.0,
        proxy_cpu_s=round(cpu_used, 2),
        cpu_s_per_1000_calls=round(cpu_used * 1000 / attempted, 3) if attempted else 0.0,
        rss_before_kib=rss_before,
        rss_after_load_kib=rss_after,
        rss_after_rest_kib=rss_rest,
        sipp_retransmissions=int(counters.get("Retransmissions(C)", 0) or 0),
        failure_causes=causes,
    )


def run(args: argparse.Namespace, workdir: Path) -> list[Result]:
    """Start the proxy and the UAS, run ``--rounds`` loads against the same proxy, stop everything."""
    proxy_port, uas_port = free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        proxy = start_proxy(args, workdir, proxy_port)
        procs.append(proxy)
        proxy_out = workdir / "proxy.out"
        wait_for(lambda: proxy_out.read_text().count("listening on") >= 2, 20, "the proxy start")
        tflag = "u1" if args.transport == "udp" else "t1"
        with open(workdir / "uas.out", "wb") as out:
            uas = subprocess.Popen(
                ["sipp", "-sn", "uas", "-i", HOST, "-p", str(uas_port), "-t", tflag, "-nostdin"],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=workdir,
            )
        procs.append(uas)
        wait_for(lambda: port_bound(uas_port, args.transport), 20, "the SIPp UAS start")
        time.sleep(1.0)  # let the proxy settle (imports done) before the first reading
        return [load_round(args, workdir, n, proxy, proxy_port, uas_port) for n in range(args.rounds)]
    finally:
        for proc in reversed(procs):
            stop(proc)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--rate", type=int, default=50, help="calls per second (default 50)")
    p.add_argument("--seconds", type=int, default=10, help="length of the load (default 10)")
    p.add_argument("--limit", type=int, default=5000, help="SIPp's limit of simultaneous calls (-l)")
    p.add_argument("--transport", choices=["udp", "tcp"], default="udp")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--rest", type=float, default=10.0, help="seconds of rest before the last RSS reading")
    p.add_argument("--script", default="none", help='route script: "none" (default), "default" or a Lua file')
    p.add_argument("--rounds", type=int, default=1, help="loads run one after another on the same proxy")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, SIPp statistics)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = p.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="trioproxy-bench-"))
    try:
        results = run(args, workdir)
    finally:
        if not args.keep:
            for child in workdir.iterdir():
                child.unlink()
            workdir.rmdir()
    for n, result in enumerate(results):
        if args.json:
            print(json.dumps({"round": n, **asdict(result)}))
            continue
        print(
            f"round {n}: rate {result.rate}/s for {result.seconds} s over {result.transport} "
            f"(log level {result.log_level}, script {result.script})"
        )
        print(f"  calls attempted {result.attempted}, succeeded {result.succeeded}, failed {result.failed}")
        print(
            f"  elapsed {result.elapsed} s, achieved {result.achieved_rate} calls/s, SIPp exit {result.sipp_exit}"
        )
        print(
            f"  UAC retransmissions {result.sipp_retransmissions}, failure causes {result.failure_causes or '-'}"
        )
        for what, count in result.unexpected.items():
            print(f"  unexpected: {count} x {what}")
        print(f"  proxy CPU {result.proxy_cpu_s} s = {result.cpu_s_per_1000_calls} s per 1000 calls")
        print(
            f"  proxy RSS before {result.rss_before_kib} KiB, after load {result.rss_after_load_kib} KiB, "
            f"after {args.rest:.0f} s rest {result.rss_after_rest_kib} KiB"
        )
    if args.keep:
        print(f"work directory: {workdir}")
    ok = all(r.failed == 0 and r.sipp_exit == 0 for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
