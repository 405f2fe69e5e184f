#!/usr/bin/env python3
"""Registration benchmark: SIPp REGISTERs from a CSV of users through ``trioproxy run``, per location backend.

For each ``--backend`` (memory, sqlite, redis; repeatable) it starts a proxy with the embedded default script
and that location store, a SIPp callee (``uas_answer.xml``) and a SIPp registrar client
(``tests/e2e/scenarios/reg_users.xml``) that registers ``--users`` users (``-inf users.csv``, one per line,
each bound to the callee's address) at ``--rate`` REGISTERs per second (at most ``--limit`` outstanding).
Reports per backend: REGISTERs sent, answered 200, failed (SIPp's counters and exit code), SIPp's
retransmissions, the wall time, the registration rate achieved, the proxy's CPU seconds per 1000
REGISTERs, then checks that every user is bound (the management API's ``/registrations`` pages and its
``registrations.aors`` stat) and that ``--sample`` users chosen across the list are reachable by a SIPp call.

Redis: ``--redis-url redis://127.0.0.1:PORT/DB`` uses a running server (user names carry a random prefix,
so other keys do not disturb the counts); without it a private ``redis-server`` is started on a free port
(no persistence) and stopped at the end. Every process is started here and stopped by its PID.

Usage: scripts/bench_register.py [--backend memory|sqlite|redis ...] [--users 10000] [--rate 500]
[--limit 200] [--sample 5] [--log-level warning] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from trioproxy.testing.processes import cpu_seconds, free_port
from trioproxy.testing.processes import stop_process as stop

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "tests" / "e2e" / "scenarios"
START_TIMEOUT = 20.0


@dataclass
class Result:
    backend: str
    users: int
    target_rate: int
    sent: int
    succeeded: int
    failed: int
    retransmissions: int
    sipp_exit: int | None
    elapsed_s: float
    achieved_rate: float
    proxy_cpu_s_per_1000: float
    aors_listed: int
    aors_stat: int | None
    sample_calls_ok: int
    sample_calls: int


# -- processes ----------------------------------------------------------------------------------------------








def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise SystemExit(f"bench_register: {what} did not happen within {timeout:.0f} s")


def udp_bound(port: int) -> bool:
    want = f"0100007F:{port:04X}"
    with open("/proc/net/udp") as f:
        return any(len(p) > 1 and p[1] == want for p in (line.split() for line in f.readlines()[1:]))




@contextlib.contextmanager
def private_redis(workdir: Path) -> Iterator[str]:
    """A redis-server on a free loopback port, without persistence, for the duration of the block."""
    port = free_port()
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    cmd = [binary, "--save", "", "--appendonly", "no", "--port", str(port), "--bind", HOST]
    cmd += ["--dir", str(workdir), "--logfile", ""]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def pong() -> bool:
        try:
            with socket.create_connection((HOST, port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    try:
        wait_for(pong, START_TIMEOUT, "redis-server start")
        yield f"redis://{HOST}:{port}/0"
    finally:
        stop(proc)


def start_proxy(workdir: Path, location: str, log_level: str) -> tuple[subprocess.Popen[bytes], int, str]:
    port, mgmt = free_port(), f"{HOST}:{free_port()}"
    config = workdir / "proxy.toml"
    config.write_text("[proxy]\ndrain_time = 0.2\n\n[routing]\nwatch = false\n")
    cmd = [sys.executable, "-m", "trioproxy", "run", "--workers", "1", "-c", str(config), "--listen", f"udp:{HOST}:{port}"]
    cmd += ["--mgmt", mgmt, "--location", location, "--log-level", log_level]
    out_path = workdir / "proxy.out"
    with open(out_path, "wb") as out, open(workdir / "proxy.err", "wb") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=ROOT)

    def ready() -> bool:
        if proc.poll() is not None:
            raise SystemExit(f"bench_register: the proxy exited:\n{(workdir / 'proxy.err').read_text()}")
        return "management API on" in out_path.read_text()

    wait_for(ready, START_TIMEOUT, "proxy start")
    return proc, port, mgmt


def sipp(workdir: Path, name: str, scenario: str, args: list[str]) -> subprocess.Popen[bytes]:
    cmd = ["sipp", "-sf", str(SCENARIOS / scenario), *args, "-nostdin"]
    cmd += ["-trace_err", "-error_file", str(workdir / f"{name}.err")]
    with open(workdir / f"{name}.out", "wb") as out:
        return subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=workdir
        )


def sipp_counters(stat_file: Path) -> dict[str, str]:
    """The last row of a SIPp -trace_stat CSV file, by column name."""
    try:
        with open(stat_file, newline="") as f:
            rows = list(csv.reader(f, delimiter=";"))
    except OSError:
        return {}
    return dict(zip(rows[0], rows[-1], strict=False)) if len(rows) >= 2 else {}


def mgmt_get(mgmt: str, target: str) -> Any:
    with urllib.request.urlopen(f"http://{mgmt}{target}", timeout=10) as answer:
        return json.loads(answer.read())


def listed_aors(mgmt: str, prefix: str, page: int = 1000) -> dict[str, list[str]]:
    """AOR -> contacts of every listed AOR whose user starts with ``prefix`` (all pages)."""
    out: dict[str, list[str]] = {}
    offset = 0
    while True:
        answer: dict[str, list[dict[str, Any]]] = mgmt_get(
            mgmt, f"/registrations?offset={offset}&limit={page}"
        )
        if not answer:
            return out
        out.update({aor: [b["contact"] for b in bs] for aor, bs in answer.items() if aor.startswith(prefix)})
        offset += page


# -- one backend ----------------------------------------------------------------------------------------------


def bench_backend(args: argparse.Namespace, backend: str, workdir: Path, redis_url: str | None) -> Result:
    if backend == "memory":
        location = "memory:"
    elif backend == "sqlite":
        location = f"sqlite:///{workdir / 'location.db'}"
    else:
        assert redis_url is not None
        location = redis_url
    prefix = f"r{secrets.token_hex(3)}u"
    users = [f"{prefix}{i:06d}" for i in range(args.users)]
    step = max(1, len(users) // max(1, args.sample))
    sample = users[::step][: args.sample]
    (workdir / "users.csv").write_text("SEQUENTIAL\n" + "".join(f"{u};\n" for u in users))

    uas_port = free_port()
    uas = sipp(workdir, "uas", "uas_answer.xml", ["-i", HOST, "-p", str(uas_port), "-m", str(len(sample))])
    proxy, port, mgmt = start_proxy(workdir, location, args.log_level)
    try:
        wait_for(lambda: udp_bound(uas_port), START_TIMEOUT, "SIPp callee start")
        stat_file = workdir / "reg.csv"
        budget = args.users / args.rate + 120
        reg_args = [f"{HOST}:{port}", "-i", HOST, "-p", str(free_port()), "-m", str(args.users)]
        reg_args += ["-r", str(args.rate), "-l", str(args.limit), "-inf", str(workdir / "users.csv")]
        reg_args += ["-key", "contact_hostport", f"{HOST}:{uas_port}", "-key", "expires", "3600"]
        reg_args += ["-timeout", str(int(budget)), "-timeout_error"]
        reg_args += ["-trace_stat", "-stf", str(stat_file), "-fd", "1"]
        cpu_before = cpu_seconds(proxy.pid)
        started = time.monotonic()
        reg = sipp(workdir, "reg", "reg_users.xml", reg_args)
        try:
            sipp_exit: int | None = reg.wait(timeout=budget + 30)
        except subprocess.TimeoutExpired:
            sipp_exit = None
        finally:
            stop(reg)
        elapsed = time.monotonic() - started
        cpu_used = cpu_seconds(proxy.pid) - cpu_before
        counters = sipp_counters(stat_file)
        succeeded = int(counters.get("SuccessfulCall(C)", 0) or 0)

        listed = listed_aors(mgmt, prefix)
        good = sum(1 for u in users if listed.get(f"{u}@{HOST}") == [f"sip:{u}@{HOST}:{uas_port}"])
        stat: int | None = None
        if backend != "redis" or args.redis_url is None:  # a shared Redis may hold other AORs
            deadline = time.monotonic() + 15  # the proxy refreshes the counts every few seconds
            while time.monotonic() < deadline:
                stat = int(mgmt_get(mgmt, "/stats")["registrations"]["aors"])
                if stat == args.users:
                    break
                time.sleep(0.5)

        calls_ok = 0
        for i, user in enumerate(sample):
            caller = sipp(
                workdir,
                f"call{i}",
                "uac_call.xml",
                [
                    f"{HOST}:{port}",
                    "-i",
                    HOST,
                    "-p",
                    str(free_port()),
                    "-m",
                    "1",
                    "-s",
                    user,
                    "-timeout",
                    "20",
                    "-timeout_error",
                ],
            )
            try:
                calls_ok += caller.wait(timeout=40) == 0
            finally:
                stop(caller)
        return Result(
            backend=backend,
            users=args.users,
            target_rate=args.rate,
            sent=int(counters.get("TotalCallCreated", 0) or 0),
            succeeded=succeeded,
            failed=int(counters.get("FailedCall(C)", 0) or 0),
            retransmissions=int(counters.get("Retransmissions(C)", 0) or 0),
            sipp_exit=sipp_exit,
            elapsed_s=round(elapsed, 2),
            achieved_rate=round(succeeded / elapsed, 1) if elapsed > 0 else 0.0,
            proxy_cpu_s_per_1000=round(cpu_used * 1000 / succeeded, 3) if succeeded else 0.0,
            aors_listed=good,
            aors_stat=stat,
            sample_calls_ok=calls_ok,
            sample_calls=len(sample),
        )
    finally:
        stop(proxy)
        stop(uas)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", action="append", choices=["memory", "sqlite", "redis"])
    parser.add_argument("--users", type=int, default=10000)
    parser.add_argument("--rate", type=int, default=500, help="REGISTERs per second asked of SIPp")
    parser.add_argument("--limit", type=int, default=200, help="most REGISTERs outstanding at once")
    parser.add_argument("--sample", type=int, default=5, help="users called after registration")
    parser.add_argument("--redis-url", help="use this Redis instead of a private redis-server")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--json", action="store_true", help="one JSON object per backend")
    args = parser.parse_args()
    backends = args.backend or ["memory", "sqlite", "redis"]
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench-register-") as tmp:
        for backend in backends:
            workdir = Path(tmp) / backend
            workdir.mkdir()
            if backend == "redis" and args.redis_url is None:
                with private_redis(workdir) as url:
                    results.append(bench_backend(args, backend, workdir, url))
            else:
                results.append(bench_backend(args, backend, workdir, args.redis_url))
    for r in results:
        if args.json:
            print(json.dumps(asdict(r)))
        else:
            print(
                f"{r.backend:7} users={r.users} target={r.target_rate}/s ok={r.succeeded} failed={r.failed}"
                f" retrans={r.retransmissions} sipp_exit={r.sipp_exit} elapsed={r.elapsed_s}s"
                f" rate={r.achieved_rate}/s cpu/1000={r.proxy_cpu_s_per_1000}s"
                f" listed={r.aors_listed} stat_aors={r.aors_stat} calls={r.sample_calls_ok}/{r.sample_calls}"
            )
    all_ok = all(
        r.sipp_exit == 0
        and r.failed == 0
        and r.aors_listed == r.users
        and r.sample_calls_ok == r.sample_calls
        for r in results
    )
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
