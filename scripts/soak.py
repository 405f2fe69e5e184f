#!/usr/bin/env python3
"""Soak and abuse: legitimate calls through a proxy facing the internet while other sources attack it.

Starts, on 127.0.0.1 only, ``trioproxy run`` with ``examples/routes/public.lua`` (pike for every untrusted
source, digest authentication for REGISTER, calls to registered users) and an operator database, a SIPp
callee registered (with its password) as ``svc``, and a SIPp caller placing ``--rate`` calls per second to
``svc`` for ``--minutes`` (127.0.0.1 is in ``[pike] trusted``; ``[pike] enabled`` counts every other
source's requests at the ingress, before parsing, so garbage floods are blocked too). Meanwhile, each at ``--abuse-factor`` times
the call rate, from sources of their own:

* 127.0.0.2 sends garbage: valid requests mutated by ``trioproxy.testing.mutate``;
* 127.0.0.3 guesses passwords: REGISTERs for an existing user answering each challenge with a wrong one;
* 127.0.0.4 scans: OPTIONS to one user after another, with a scanner's User-Agent;
* 127.0.0.5 sends malformed requests (no Via, a wrong Content-Length, a bad CSeq, NUL octets...).

It reports the legitimate calls that failed, the sources the proxy blocked (the ``pike`` section of the
management API's ``GET /stats``, sampled), the proxy's RSS over time (every ``--sample`` seconds), and
whether it stayed up (the same PID, and an OPTIONS answered at the end). Every wait is bounded; it stops
only the processes it started, by PID. Exit status 1 when the proxy died or did not answer at the end, or
a legitimate call failed.

    .venv/bin/python scripts/soak.py [--minutes 10] [--rate 20] [--abuse-factor 5] [--json]
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
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trioproxy.auth import digest_response, ha1  # noqa: E402
from trioproxy.testing.mutate import fill, mutate, seed_requests  # noqa: E402
from trioproxy.testing.processes import HOST, free_port, port_is_bound, rss_kib, stop_process  # noqa: E402

SCRIPT = ROOT / "examples" / "routes" / "public.lua"
BENCH = ROOT / "bench"
START_TIMEOUT = 20.0
RECV_TIMEOUT_MS = 4000  # a legitimate call waiting longer than this for a message fails
GARBAGE, GUESSER, SCANNER, MALFORMED = "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"
UNUSED = "127.0.0.9"  # where the garbage's requests are addressed: nothing listens there

CONFIG = """
[proxy]
listen = ["udp:{host}:{port}"]
[routing]
script = "{script}"
[pike]
enabled = true
sampling_time_unit = 2.0
reqs_density_per_unit = 30
block_time = 10.0
trusted = ["{host}/32"]
auth_failures = 5
auth_window = 60.0
"""

_MALFORMED = [
    "OPTIONS sip:{h} SIP/2.0\r\nFrom: <sip:m@{s}>;tag=1\r\nTo: <sip:{h}>\r\nCall-ID: {c}\r\nCSeq: 1 OPTIONS\r\n\r\n",
    "INVITE sip:svc@{h} SIP/2.0\r\nVia: SIP/2.0/UDP {s}:{p};branch=z9hG4bK{c}\r\nFrom: <sip:m@{s}>;tag=1\r\n"
    "To: <sip:svc@{h}>\r\nCall-ID: {c}\r\nCSeq: one INVITE\r\nContent-Length: 0\r\n\r\n",
    "INVITE sip:svc@{h} SIP/2.0\r\nVia: SIP/2.0/UDP {s}:{p};branch=z9hG4bK{c}\r\nFrom: <sip:m@{s}>;tag=1\r\n"
    "To: <sip:svc@{h}>\r\nCall-ID: {c}\r\nCSeq: 1 INVITE\r\nContent-Length: 9999\r\n\r\nv=0\r\n",
    "REGISTER sip:{h} SIP/2.0\r\nVia: SIP/2.0/UDP {s}:{p};branch=z9hG4bK{c}\r\nFrom: <sip:m@{s}\r\n"
    "To: sip:m@{h}>>\r\nCall-ID: {c}\r\nCSeq: 1 REGISTER\r\nContact: <sip:\x00@{s}>\r\n\r\n",
    "OPTIONS sip:{h} SIP/7.0\r\nVia: SIP/2.0/UDP {s}:{p};branch=z9hG4bK{c}\r\n\r\n",
    "\x00\x01\x02 garbage {c}\r\n\r\n",
    "BYE sip:svc@{h} SIP/2.0\r\nVia: SIP/2.0/UDP {s}:{p};branch=z9hG4bK{c}\r\nMax-Forwards: -1\r\n"
    "From: <sip:m@{s}>;tag=1\r\nTo: <sip:svc@{h}>;tag=2\r\nCall-ID: {c}\r\nCSeq: 2 BYE\r\n"
    + "X-Long: "
    + "a" * 9000
    + "\r\n\r\n",
]


@dataclass
class Report:
    seconds: float = 0.0
    calls_planned: int = 0
    calls_created: int = 0
    calls_succeeded: int = 0
    calls_failed: int = 0
    sipp_exit: int | None = None
    abuse_sent: dict[str, int] = field(default_factory=dict)
    abuse_answers: dict[str, dict[str, int]] = field(default_factory=dict)
    guesses: int = 0  # REGISTERs sent with wrong credentials
    registrations_ok: int = 0  # legitimate re-registrations during the abuse (one per sample)
    registrations_failed: int = 0
    blocked_sources: dict[str, str] = field(default_factory=dict)  # source: reason (every one seen blocked)
    pike: dict[str, object] = field(default_factory=dict)  # the counters of the last sample
    rss_kib: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, KiB)
    same_pid: bool = False
    answered_at_end: bool = False

    @property
    def ok(self) -> bool:
        return (
            self.same_pid
            and self.answered_at_end
            and self.calls_failed == 0
            and self.sipp_exit == 0
            and self.registrations_failed == 0
        )


def _wait_for(predicate: Callable[[], bool], what: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise SystemExit(f"soak: {what} did not start")


def _request(method: str, ruri: str, src: tuple[str, int], *, user: str, extra: str = "", cseq: int = 1,
             call_id: str = "") -> bytes:  # fmt: skip
    host, port = src
    return (
        f"{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{uuid.uuid4().hex[:16]};rport\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:{user}@{HOST}>;tag={uuid.uuid4().hex[:8]}\r\nTo: <sip:{user}@{HOST}>\r\n"
        f"Call-ID: {call_id or uuid.uuid4().hex}\r\nCSeq: {cseq} {method}\r\n"
        f"Contact: <sip:{user}@{host}:{port}>\r\n{extra}Content-Length: 0\r\n\r\n"
    ).encode()


def _authorization(challenge: bytes, user: str, password: str, uri: str) -> str | None:
    """Credentials answering the first digest challenge of a 401 (None when there is none)."""
    text = challenge.decode(errors="replace")
    m = re.search(r"^WWW-Authenticate:\s*Digest\s+(.*)$", text, re.M | re.I)
    if m is None:
        return None
    params = dict(re.findall(r'(\w+)="?([^",]*)"?', m.group(1)))
    realm, nonce, algorithm = params.get("realm", ""), params.get("nonce", ""), params.get("algorithm", "MD5")
    cnonce = uuid.uuid4().hex[:8]
    response = digest_response(algorithm, ha1(algorithm, user, realm, password), "REGISTER", uri, nonce,
                               qop="auth", nc="00000001", cnonce=cnonce)  # fmt: skip
    return (f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", response="{response}", '
            f'algorithm={algorithm}, qop=auth, nc=00000001, cnonce="{cnonce}"')  # fmt: skip


def register(proxy: tuple[str, int], user: str, password: str, contact: str) -> int:
    """REGISTER ``contact`` for ``user`` with its password (answering the challenge); the final status."""
    uri = f"sip:{proxy[0]}:{proxy[1]}"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        sock.settimeout(5.0)
        src = (HOST, int(sock.getsockname()[1]))
        call_id = uuid.uuid4().hex
        extra = "Expires: 3600\r\n"
        for cseq in (1, 2):
            msg = _request("REGISTER", uri, src, user=user, extra=extra, cseq=cseq, call_id=call_id)
            msg = msg.replace(f"<sip:{user}@{src[0]}:{src[1]}>".encode(), f"<{contact}>".encode())
            sock.sendto(msg, proxy)
            while (reply := sock.recv(65535)).startswith(b"SIP/2.0 1"):
                pass
            status = int(reply.split()[1])
            if status != 401:
                return status
            auth = _authorization(reply, user, password, uri)
            if auth is None:
                return status
            extra = f"Expires: 3600\r\nAuthorization: {auth}\r\n"
    return 401


class Abusers:
    """The four abusive sources: one UDP socket each, paced, with what each gets back counted."""

    def __init__(self, proxy: tuple[str, int], seed: int) -> None:
        self.proxy = proxy
        self.rng = random.Random(seed)
        self.sel = selectors.DefaultSelector()
        self.socks: dict[str, socket.socket] = {}
        for source in (GARBAGE, GUESSER, SCANNER, MALFORMED):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((source, 0))
            sock.setblocking(False)
            self.socks[source] = sock
            self.sel.register(sock, selectors.EVENT_READ, source)
        self.sent: Counter[str] = Counter()
        self.answers: dict[str, Counter[str]] = {s: Counter() for s in self.socks}
        self.guesses = 0
        self.n = 0
        port = int(self.socks[GARBAGE].getsockname()[1])
        # No seed with a Route header: whatever a mutation does, nothing is routed away from loopback.
        self.seeds = [s for s in seed_requests(GARBAGE, port, target=UNUSED) if b"\r\nRoute:" not in s]

    def src(self, source: str) -> tuple[str, int]:
        return source, int(self.socks[source].getsockname()[1])

    def _send(self, source: str, data: bytes) -> None:
        try:
            self.socks[source].sendto(data, self.proxy)
            self.sent[source] += 1
        except OSError:
            pass

    def send_round(self) -> None:
        """One message from each source."""
        self.n += 1
        n, uri = self.n, f"sip:{self.proxy[0]}:{self.proxy[1]}"
        self._send(GARBAGE, mutate(fill(self.rng.choice(self.seeds), f"g{n}"), self.rng)[:65000])
        self._send(GUESSER, _request("REGISTER", uri, self.src(GUESSER), user="victim"))
        scan = f"sip:{100 + n % 900}@{self.proxy[0]}:{self.proxy[1]}"
        self._send(SCANNER, _request("OPTIONS", scan, self.src(SCANNER), user="scan",
                                     extra="User-Agent: friendly-scanner\r\n"))  # fmt: skip
        host, port = self.src(MALFORMED)
        text = _MALFORMED[n % len(_MALFORMED)].format(h=f"{HOST}:{self.proxy[1]}", s=host, p=port, c=f"m{n}")
        self._send(MALFORMED, text.encode("latin-1"))

    def drain(self, timeout: float) -> None:
        for key, _ in self.sel.select(timeout):
            source = str(key.data)
            sock = self.socks[source]
            while True:
                try:
                    data = sock.recv(65535)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:  # an ICMP error on the socket
                    continue
                if data.startswith(b"SIP/2.0 ") and len(data) > 9:
                    self.answers[source][chr(data[8]) + "xx"] += 1
                    if source == GUESSER and data.startswith(b"SIP/2.0 401") and b"CSeq: 1 " in data:
                        self._guess(data)

    def _guess(self, challenge: bytes) -> None:
        uri = f"sip:{self.proxy[0]}:{self.proxy[1]}"
        call_id = re.search(rb"^Call-ID:\s*(\S+)", challenge, re.M | re.I)
        auth = _authorization(challenge, "victim", f"guess-{self.guesses}", uri)
        if auth is None or call_id is None:
            return
        self.guesses += 1
        self._send(GUESSER, _request("REGISTER", uri, self.src(GUESSER), user="victim", cseq=2,
                                     call_id=call_id.group(1).decode(), extra=f"Authorization: {auth}\r\n"))  # fmt: skip

    def close(self) -> None:
        self.sel.close()
        for sock in self.socks.values():
            sock.close()


def mgmt_pike(mgmt: str) -> dict[str, object]:
    try:
        with urllib.request.urlopen(f"http://{mgmt}/stats", timeout=5) as resp:
            pike = json.loads(resp.read()).get("pike")
    except (OSError, ValueError):
        return {}
    return pike if isinstance(pike, dict) else {}


def keepalive(proxy: tuple[str, int]) -> bool:
    """Whether the proxy answers an OPTIONS to itself from 127.0.0.1 with 200 (within 5 s)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        sock.settimeout(5.0)
        sock.sendto(_request("OPTIONS", f"sip:{proxy[0]}:{proxy[1]}", (HOST, sock.getsockname()[1]),
                             user="soak"), proxy)  # fmt: skip
        try:
            return sock.recv(65535).startswith(b"SIP/2.0 200")
        except OSError:
            return False


def soak(args: argparse.Namespace, workdir: Path) -> Report:
    report = Report()
    seconds = max(1, round(args.minutes * 60))
    port, mgmt_port, uas_port = free_port(), free_port(), free_port()
    proxy = (HOST, port)
    mgmt = f"{HOST}:{mgmt_port}"
    db = f"sqlite:///{workdir / 'operator.db'}"
    for user, password in (("svc", "svc-secret"), ("victim", "correct-horse-battery")):
        subprocess.run([sys.executable, "-m", "trioproxy", "user", "add", "--db", db, f"{user}@{HOST}", password],
                       check=True, capture_output=True, timeout=30)  # fmt: skip
    config = workdir / "soak.toml"
    config.write_text(CONFIG.format(host=HOST, port=port, script=SCRIPT))
    procs: list[subprocess.Popen[bytes]] = []
    abusers: Abusers | None = None
    try:
        out = workdir / "proxy.out"
        cmd = [sys.executable, "-m", "trioproxy", "run", "--workers", "1", "-c", str(config), "--db", db, "--mgmt", mgmt,
               "--nameserver", f"{HOST}:{free_port()}", "--log-level", "warning"]  # fmt: skip
        with open(out, "wb") as o, open(workdir / "proxy.err", "wb") as e:
            proxy_proc = subprocess.Popen(cmd, stdout=o, stderr=e, stdin=subprocess.DEVNULL, cwd=workdir)
        procs.append(proxy_proc)
        _wait_for(
            lambda: "trioproxy listening on" in out.read_text(errors="replace"), "the proxy", proxy_proc
        )
        uas_cmd = ["sipp", "-sf", str(BENCH / "uas.xml"), "-i", HOST, "-p", str(uas_port), "-t", "u1",
                   "-nostdin", "-nd"]  # fmt: skip
        with open(workdir / "uas.out", "wb") as o:
            uas = subprocess.Popen(
                uas_cmd, stdout=o, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=workdir
            )
        procs.append(uas)
        _wait_for(lambda: port_is_bound(uas_port, "udp"), "the SIPp callee", uas)
        status = register(proxy, "svc", "svc-secret", f"sip:svc@{HOST}:{uas_port}")
        if status != 200:
            raise SystemExit(f"soak: the callee's REGISTER got {status}")

        csv_file = workdir / "callees.csv"
        csv_file.write_text(f"SEQUENTIAL\nsvc;{HOST}:{port}\n")
        stat_file = workdir / "uac_stat.csv"
        report.calls_planned = args.rate * seconds
        uac_cmd = ["sipp", "-sf", str(BENCH / "uac.xml"), "-inf", str(csv_file), f"{HOST}:{port}", "-i", HOST,
                   "-p", str(free_port()), "-t", "u1", "-r", str(args.rate), "-m", str(report.calls_planned),
                   "-l", str(max(50, args.rate * 5)), "-nostdin", "-nd", "-recv_timeout", str(RECV_TIMEOUT_MS),
                   "-timeout", f"{seconds + 30}s", "-trace_stat", "-stf", str(stat_file), "-fd", "5",
                   "-trace_err", "-error_file", str(workdir / "uac_errors.log")]  # fmt: skip
        with open(workdir / "uac.out", "wb") as o:
            uac = subprocess.Popen(
                uac_cmd, stdout=o, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=workdir
            )
        procs.append(uac)

        abusers = Abusers(proxy, args.seed)
        abuse_rate = args.rate * args.abuse_factor  # messages per second from each abusive source
        started = time.monotonic()
        end = started + seconds
        next_sample = started
        rounds = 0
        while (now := time.monotonic()) < end and proxy_proc.poll() is None:
            if now >= next_sample:
                report.rss_kib.append((round(now - started, 1), rss_kib(proxy_proc.pid)))
                blocked = mgmt_pike(mgmt).get("blocked")
                for entry in blocked if isinstance(blocked, list) else []:
                    if isinstance(entry, dict):
                        report.blocked_sources[str(entry.get("source"))] = str(entry.get("reason"))
                # A legitimate user keeps registering (digest auth) while the guesser is being blocked.
                try:
                    ok = register(proxy, "svc", "svc-secret", f"sip:svc@{HOST}:{uas_port}") == 200
                except OSError:
                    ok = False
                if ok:
                    report.registrations_ok += 1
                else:
                    report.registrations_failed += 1
                next_sample += args.sample
            due = started + rounds / abuse_rate
            if now >= due:
                abusers.send_round()
                rounds += 1
            abusers.drain(max(0.0, min(due - time.monotonic(), 0.05)))
        try:
            report.sipp_exit = uac.wait(timeout=RECV_TIMEOUT_MS / 1000 * 3 + 30)
        except subprocess.TimeoutExpired:
            report.sipp_exit = None
        report.seconds = round(time.monotonic() - started, 1)
        counters = _last_row(stat_file)
        report.calls_created = int(counters.get("TotalCallCreated", 0) or 0)
        report.calls_succeeded = int(counters.get("SuccessfulCall(C)", 0) or 0)
        report.calls_failed = max(report.calls_planned, report.calls_created) - report.calls_succeeded
        report.same_pid = proxy_proc.poll() is None
        if report.same_pid:
            report.rss_kib.append((report.seconds, rss_kib(proxy_proc.pid)))
            report.pike = {k: v for k, v in mgmt_pike(mgmt).items() if k not in ("blocked", "pipes")}
        report.answered_at_end = report.same_pid and keepalive(proxy)
        report.abuse_sent = dict(abusers.sent)
        report.abuse_answers = {s: dict(sorted(c.items())) for s, c in abusers.answers.items()}
        report.guesses = abusers.guesses
        if not report.same_pid:
            print((workdir / "proxy.err").read_text(errors="replace")[-3000:], file=sys.stderr)
    finally:
        if abusers is not None:
            abusers.close()
        for proc in reversed(procs):
            stop_process(proc)
    return report


def _last_row(stat_file: Path) -> dict[str, str]:
    try:
        rows = [line.split(";") for line in stat_file.read_text(errors="replace").splitlines() if line]
    except OSError:
        return {}
    return dict(zip(rows[0], rows[-1], strict=False)) if len(rows) >= 2 else {}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="how long the calls go on (default 10)")
    p.add_argument("--rate", type=int, default=20, help="legitimate calls per second (default 20)")
    p.add_argument(
        "--abuse-factor",
        type=float,
        default=5.0,
        help="messages per second of each abusive source, as a multiple of --rate (default 5)",
    )
    p.add_argument("--sample", type=float, default=5.0, help="seconds between RSS and pike samples")
    p.add_argument("--seed", type=int, default=1, help="of the garbage's mutations")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if args.minutes <= 0 or args.rate <= 0 or args.abuse_factor <= 0 or args.minutes > 24 * 60:
        p.error("--minutes (at most a day), --rate and --abuse-factor must be positive")
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        report = soak(args, Path(tmp))
    if args.json:
        print(json.dumps({**asdict(report), "ok": report.ok}, indent=2))
    else:
        print(f"legitimate calls: {report.calls_succeeded}/{report.calls_planned} succeeded, "
              f"{report.calls_failed} failed (SIPp exit {report.sipp_exit}), {report.seconds} s")  # fmt: skip
        for source, sent in sorted(report.abuse_sent.items()):
            print(f"  {source}: sent {sent}, answers {report.abuse_answers.get(source, {})}")
        print(f"  wrong-password REGISTERs: {report.guesses}")
        print(f"legitimate re-registrations during the abuse: {report.registrations_ok} ok, "
              f"{report.registrations_failed} failed")  # fmt: skip
        print(f"blocked sources: {report.blocked_sources or 'none'}")
        print(f"pike: {report.pike}")
        rss = report.rss_kib
        print("RSS KiB: " + ", ".join(f"{t:g}s={kib}" for t, kib in rss))
        print(f"stayed up: same PID {report.same_pid}, answered OPTIONS at the end {report.answered_at_end}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
