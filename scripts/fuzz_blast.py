#!/usr/bin/env python3
"""A bounded blast of mutated SIP messages at a running proxy over loopback UDP and TCP.

Starts ``trioproxy run`` on free loopback ports (or blasts the one given by ``--target HOST:PORT``, with
``--mgmt HOST:PORT`` for its metrics), then sends ``--datagrams`` mutated messages over UDP and ``--tcp``
mutated messages over TCP (a new connection every ``--per-conn`` messages, since a broken frame ends a
stream). Mutations come from ``trioproxy.testing.mutate`` (the same as the property tests), seeded from
``--seed``, so a run is repeatable.

The proxy started here runs a route script that forces rport and relays every request to a UDP sink socket
of this script (which answers 486), so all traffic stays on 127.0.0.1 (``--script default`` uses the embedded
script instead, with DNS pointed at a closed loopback port). Reports: process deaths (must be 0; a proxy
started here that dies is restarted and counted), the answers received by class, the counters of the
proxy's /metrics about internal errors, malformed and dropped messages, and the proxy's RSS before and after.
Exit status 1 when a process died or an internal error was counted.

    .venv/bin/python scripts/fuzz_blast.py [--datagrams 20000] [--tcp 2000] [--seed 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import selectors
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trioproxy.testing.mutate import fill, mutate, seed_requests, seed_responses  # noqa: E402
from trioproxy.testing.processes import HOST, free_port, rss_kib, stop_process  # noqa: E402

SINK_SCRIPT = """
function ksr_request_route()
  KSR.force_rport()
  if KSR.is_OPTIONS() and KSR.is_myself_ruri() and KSR.corex.has_ruri_user() < 0 then
    KSR.sl.sl_send_reply(200, "Keepalive")
    return
  end
  KSR.setdsturi("sip:127.0.0.1:@SINK@")
  if KSR.tm.t_relay() < 0 then KSR.sl.sl_reply_error() end
end
"""
_METRIC = re.compile(
    r"^(trioproxy_[a-z_]*(?:internal_error|malformed|parse_error|stray|drop)[a-z_]*)(\{[^}]*\})?\s+(\S+)$"
)
START_TIMEOUT = 20.0
_STATS = {
    "proxy": ("malformed", "route_errors", "stray_responses"),
    "transport": ("parse_errors", "malformed_delivered", "udp_drops", "keepalives"),
}


@dataclass
class Report:
    datagrams: int = 0
    tcp_messages: int = 0
    tcp_connections: int = 0
    answers: dict[str, int] = field(default_factory=dict)
    forwarded: int = 0
    deaths: int = 0
    death_logs: list[str] = field(default_factory=list)
    counters: dict[str, float] = field(default_factory=dict)
    rss_kib_before: int | None = None
    rss_kib_after: int | None = None
    rss_kib_rested: int | None = None  # after --rest seconds without traffic (lingering transactions ended)
    seconds: float = 0.0
    keepalive_after: bool = False


class Proxy:
    """A ``trioproxy run`` process started (and restarted) here; stopped by its PID."""

    def __init__(self, workdir: Path, script: str, sink_port: int) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.mgmt = free_port()
        self.runs = 0
        if script == "default":
            self.script = "default"
        else:
            path = workdir / "sink.lua"
            path.write_text(SINK_SCRIPT.replace("@SINK@", str(sink_port)))
            self.script = str(path)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.runs += 1
        out = self.workdir / f"proxy{self.runs}.out"
        args = [sys.executable, "-m", "trioproxy", "run", "--workers", "1", "--listen", f"udp:{HOST}:{self.port}",
                "--listen", f"tcp:{HOST}:{self.port}", "--mgmt", f"{HOST}:{self.mgmt}", "--script", self.script,
                "--nameserver", f"{HOST}:{free_port()}", "--log-level", "warning"]  # fmt: skip
        with open(out, "wb") as o, open(self.workdir / f"proxy{self.runs}.err", "wb") as e:
            self.proc = subprocess.Popen(args, stdout=o, stderr=e, stdin=subprocess.DEVNULL, cwd=self.workdir)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if out.read_text(errors="replace").count("trioproxy listening on") >= 2:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise SystemExit(f"the proxy did not start:\n{self.log()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        text = (self.workdir / f"proxy{self.runs}.err").read_text(errors="replace")
        return text[-3000:]

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


def read_counters(mgmt: str) -> dict[str, float]:
    """The internal-error, malformed, parse-error, stray and drop counters of /metrics (empty if unreachable)."""
    try:
        with urllib.request.urlopen(f"http://{mgmt}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _METRIC.match(line)
        if m and not m.group(1).endswith("_created"):
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    # The malformed and route-error counts are in /stats (JSON), with the transport's parse errors.
    try:
        with urllib.request.urlopen(f"http://{mgmt}/stats", timeout=5) as resp:
            stats = json.loads(resp.read())
    except (OSError, ValueError):
        return out
    requests = (stats.get("proxy") or {}).get("requests")
    if isinstance(requests, dict):
        out["stats.proxy.requests (all methods)"] = float(
            sum(v for v in requests.values() if isinstance(v, int))
        )
    datagrams = (stats.get("transport") or {}).get("udp_datagrams_in")
    if isinstance(datagrams, int):
        out["stats.transport.udp_datagrams_in"] = float(datagrams)
    for section, names in _STATS.items():
        values = stats.get(section) or {}
        for name in names:
            if isinstance(values.get(name), (int, float)):
                out[f"stats.{section}.{name}"] = float(values[name])
    return out


def _answer_class(data: bytes, answers: Counter[str]) -> None:
    if data.startswith(b"SIP/2.0 ") and len(data) > 9:
        answers[chr(data[8]) + "xx"] += 1


def _drain(sel: selectors.BaseSelector, answers: Counter[str], sink: socket.socket, report: Report,
           timeout: float) -> None:  # fmt: skip
    for key, _ in sel.select(timeout):
        sock = key.fileobj
        assert isinstance(sock, socket.socket)
        while True:
            try:
                data, addr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # an ICMP error on the socket
                continue
            if sock is sink:
                report.forwarded += 1
                head = data.split(b"\r\n", 1)[0]
                if not data.startswith(b"SIP/") and not head.startswith(b"ACK "):
                    _sink_answer(sock, data, addr)
            else:
                _answer_class(data, answers)


def _sink_answer(sock: socket.socket, data: bytes, addr: tuple[str, int]) -> None:
    # A 486 built from the forwarded request's own headers (the proxy wrote them: they are well formed).
    head = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    keep = [
        h
        for h in head[1:]
        if h.split(b":", 1)[0].strip().lower() in (b"via", b"from", b"to", b"call-id", b"cseq")
    ]
    keep = [h + b";tag=sink" if h.lower().startswith(b"to:") and b"tag=" not in h else h for h in keep]
    sock.sendto(b"SIP/2.0 486 Busy Here\r\n" + b"\r\n".join(keep) + b"\r\nContent-Length: 0\r\n\r\n", addr)


def _check(proxy: Proxy | None, report: Report) -> None:
    if proxy is not None and not proxy.alive():
        report.deaths += 1
        report.death_logs.append(proxy.log())
        proxy.start()


def blast(
    target: tuple[str, int], proxy: Proxy | None, sink: socket.socket, args: argparse.Namespace
) -> Report:
    report = Report()
    rng = random.Random(args.seed)
    answers: Counter[str] = Counter()
    sel = selectors.DefaultSelector()
    senders = []
    for _ in range(4):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((HOST, 0))
        s.setblocking(False)
        senders.append(s)
        sel.register(s, selectors.EVENT_READ)
    sink.setblocking(False)
    sel.register(sink, selectors.EVENT_READ)
    started = time.monotonic()
    deadline = started + args.max_seconds
    try:
        for i in range(args.datagrams):
            if time.monotonic() > deadline:
                break
            s = senders[i % len(senders)]
            port = int(s.getsockname()[1])
            seeds = seed_requests(HOST, port) + seed_responses(target[0], target[1])
            data = mutate(fill(rng.choice(seeds), f"u{i}"), rng)
            try:
                s.sendto(data[:65000], target)
                report.datagrams += 1
            except OSError:
                pass
            if i % args.burst == args.burst - 1:
                # Paced to --rate: the point is what each message does, not what the kernel drops.
                due = started + (i + 1) / args.rate
                _drain(sel, answers, sink, report, 0.002)
                while time.monotonic() < due:
                    _drain(sel, answers, sink, report, due - time.monotonic())
                if i % (args.burst * 20) == args.burst * 20 - 1:
                    _check(proxy, report)
        _drain(sel, answers, sink, report, 0.5)
        _check(proxy, report)
        sent = 0
        while sent < args.tcp and time.monotonic() < deadline:
            try:
                conn = socket.create_connection(target, timeout=2.0)
            except OSError:
                _check(proxy, report)
                time.sleep(0.1)
                continue
            report.tcp_connections += 1
            with conn:
                port = int(conn.getsockname()[1])
                for _ in range(min(args.per_conn, args.tcp - sent)):
                    seeds = seed_requests(HOST, port, "TCP") + seed_responses(target[0], target[1])
                    data = mutate(fill(rng.choice(seeds), f"t{sent}"), rng)
                    sent += 1
                    try:
                        conn.sendall(data)
                        report.tcp_messages += 1
                    except OSError:
                        break  # the proxy closed a stream it could not frame
                conn.settimeout(0.05)
                try:
                    while chunk := conn.recv(65535):
                        for part in chunk.split(b"\r\n\r\n"):
                            _answer_class(part.lstrip(b"\r\n"), answers)
                except OSError:
                    pass
            _drain(sel, answers, sink, report, 0.0)
            if report.tcp_connections % 20 == 0:
                _check(proxy, report)
        _drain(sel, answers, sink, report, 0.5)
        _check(proxy, report)
        report.keepalive_after = keepalive(target, senders[0], sel)
    finally:
        sel.close()
        for s in senders:
            s.close()
    report.answers = dict(sorted(answers.items()))
    report.seconds = round(time.monotonic() - started, 1)
    return report


def keepalive(target: tuple[str, int], sock: socket.socket, sel: selectors.BaseSelector) -> bool:
    """Whether the proxy answers an OPTIONS keepalive with 200 (within 5 s)."""
    port = int(sock.getsockname()[1])
    msg = (f"OPTIONS sip:{target[0]}:{target[1]} SIP/2.0\r\nVia: SIP/2.0/UDP {HOST}:{port};branch=z9hG4bKka;rport\r\n"
           f"Max-Forwards: 70\r\nFrom: <sip:blast@{HOST}>;tag=ka\r\nTo: <sip:{target[0]}>\r\nCall-ID: blast-ka\r\n"
           "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")  # fmt: skip
    sock.sendto(msg.encode(), target)
    end = time.monotonic() + 5.0
    while time.monotonic() < end:
        for _key, _ in sel.select(0.1):
            try:
                data = sock.recv(65535)
            except (BlockingIOError, OSError):
                continue
            if data.startswith(b"SIP/2.0 200") and b"blast-ka" in data:
                return True
    return False


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datagrams", type=int, default=20_000)
    p.add_argument("--tcp", type=int, default=2_000, help="TCP messages")
    p.add_argument("--per-conn", type=int, default=20, help="TCP messages per connection")
    p.add_argument("--burst", type=int, default=50, help="datagrams between reads of the answers")
    p.add_argument("--rate", type=float, default=4000.0, help="datagrams per second at most")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--max-seconds", type=float, default=300.0, help="stop sending after this long")
    p.add_argument("--target", metavar="HOST:PORT", help="a proxy already running (not started here)")
    p.add_argument("--mgmt", metavar="HOST:PORT", help="its management API, for /metrics")
    p.add_argument("--script", default="sink", help='"sink" (relay all to a socket here) or "default"')
    p.add_argument("--rest", type=float, default=40.0,
                   help="seconds to wait after the blast before reading RSS again (transactions linger 32 s)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind((HOST, 0))
    proxy: Proxy | None = None
    with tempfile.TemporaryDirectory(prefix="fuzz-blast-") as tmp:
        try:
            if args.target:
                host, _, port = args.target.rpartition(":")
                if host != HOST:
                    raise SystemExit("--target must be on 127.0.0.1")
                target = (host, int(port))
                mgmt = args.mgmt
            else:
                proxy = Proxy(Path(tmp), args.script, int(sink.getsockname()[1]))
                proxy.start()
                target = (HOST, proxy.port)
                mgmt = f"{HOST}:{proxy.mgmt}"
            pid = proxy.proc.pid if proxy is not None and proxy.proc is not None else None
            before = read_counters(mgmt) if mgmt else {}
            rss_before = rss_kib(pid) if pid else None
            report = blast(target, proxy, sink, args)
            after = read_counters(mgmt) if mgmt else {}
            report.counters = {k: v - before.get(k, 0.0) for k, v in after.items()}
            report.rss_kib_before = rss_before
            if proxy is not None and proxy.proc is not None and proxy.alive():
                report.rss_kib_after = rss_kib(proxy.proc.pid)
                if args.rest > 0:
                    time.sleep(min(args.rest, 120.0))
                    if proxy.alive():
                        report.rss_kib_rested = rss_kib(proxy.proc.pid)
        finally:
            if proxy is not None:
                proxy.stop()
            sink.close()
    internal = sum(v for k, v in report.counters.items() if "internal_error" in k)
    if args.json:
        print(json.dumps(asdict(report), indent=2))
    else:
        print(f"sent: {report.datagrams} datagrams, {report.tcp_messages} TCP messages on "
              f"{report.tcp_connections} connections, in {report.seconds} s")  # fmt: skip
        print(f"process deaths: {report.deaths}   keepalive answered after: {report.keepalive_after}")
        print(f"answers by class: {report.answers}   requests forwarded to the sink: {report.forwarded}")
        for name, value in sorted(report.counters.items()):
            print(f"  {name} +{value:g}")
        print(f"RSS: {report.rss_kib_before} KiB before, {report.rss_kib_after} KiB after, "
              f"{report.rss_kib_rested} KiB after {args.rest:g} s of rest")
        for log in report.death_logs:
            print("--- log of a proxy that died ---\n" + log)
    return 1 if report.deaths or internal or not report.keepalive_after else 0


if __name__ == "__main__":
    sys.exit(main())
