"""Registrations per second of `Registrar.save` on each location backend.

Usage: `.venv/bin/python scripts/bench_registrar.py [-n 10000] [--runs 3] [--concurrency 1,32]
[--backends memory,sqlite,redis] [--redis-url redis://127.0.0.1:6379/0]`.

Each run saves N generated REGISTERs (N distinct AORs, one Contact each, parsed from bytes beforehand, so
the timing covers the registrar and the store, not the parser's first pass) into a fresh store and reports
the median of the runs. Without --redis-url a private redis-server is started on a free loopback port and
stopped by its PID afterwards.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trioproxy.location import Registrar, open_store
from trioproxy.sip import Request, parse_message_untrusted

NOW = 1_700_000_000.0


def make_requests(n: int, tag: str) -> list[Request]:
    out = []
    for i in range(n):
        raw = (
            f"REGISTER sip:example.com SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}:5060;branch=z9hG4bK{tag}{i};rport\r\n"
            f"Max-Forwards: 70\r\n"
            f"From: <sip:user{i}@example.com>;tag=f{i}\r\n"
            f"To: <sip:user{i}@example.com>\r\n"
            f"Call-ID: {tag}-{i}@bench\r\n"
            f"CSeq: 1 REGISTER\r\n"
            f"Contact: <sip:user{i}@10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}:5060;transport=udp>"
            f";expires=3600;q=0.8\r\n"
            f"User-Agent: bench/1.0\r\n"
            f"Content-Length: 0\r\n\r\n"
        ).encode()
        msg = parse_message_untrusted(raw)
        assert isinstance(msg, Request)
        out.append(msg)
    return out


async def one_run(url: str, requests: list[Request], concurrency: int) -> tuple[float, float]:
    """(registrations per second of wall time, microseconds of this process's CPU per registration)."""
    store = open_store(url)
    registrar = Registrar(store)
    queue = iter(requests)

    async def worker() -> None:
        for req in queue:
            resp = await registrar.save(req, now=NOW)
            if resp.status != 200:
                raise RuntimeError(f"unexpected {resp.status}")

    start = time.perf_counter()
    cpu_start = time.process_time()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    aors, contacts = await store.counts(NOW)
    await store.close()
    if (aors, contacts) != (len(requests), len(requests)):
        raise RuntimeError(f"store holds {aors}/{contacts}, expected {len(requests)}")
    return len(requests) / elapsed, cpu / len(requests) * 1e6


def start_redis() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [shutil.which("redis-server") or "/usr/bin/redis-server", "--save", "", "--appendonly", "no",
         "--port", str(port), "--bind", "127.0.0.1", "--dir", tempfile.mkdtemp()],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    raise RuntimeError("redis-server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", default="1,32")
    parser.add_argument("--backends", default="memory,sqlite,redis")
    parser.add_argument("--redis-url")
    args = parser.parse_args()
    backends = args.backends.split(",")
    levels = [int(c) for c in args.concurrency.split(",")]
    proc = None
    redis_url = args.redis_url
    if "redis" in backends and redis_url is None:
        proc, redis_url = start_redis()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for backend in backends:
                for conc in levels:
                    rates: list[float] = []
                    cpus: list[float] = []
                    for run in range(args.runs):
                        if backend == "memory":
                            url = "memory:"
                        elif backend == "sqlite":
                            url = f"sqlite://{tmp}/bench-{conc}-{run}.db"
                        else:
                            url = f"{redis_url}?prefix=bench{os.getpid()}c{conc}r{run}:"
                        requests = make_requests(args.n, f"{backend}{conc}{run}")
                        rate, cpu = trio.run(one_run, url, requests, conc)
                        rates.append(rate)
                        cpus.append(cpu)
                    print(
                        f"{backend:7s} concurrency={conc:<3d} median {statistics.median(rates):7.0f} reg/s, "
                        f"{statistics.median(cpus):5.0f} us CPU/reg in this process"
                        f"  (runs: {', '.join(f'{r:.0f}' for r in rates)} reg/s)",
                        flush=True,
                    )
    finally:
        if proc is not None:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)


if __name__ == "__main__":
    main()
