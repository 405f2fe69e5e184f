"""The RFC 4475 / RFC 5118 corpus through a real ``trioproxy run`` process, byte-exact, over UDP and TCP.

Theory of operation
-------------------
One proxy process per (transport, script): the embedded default script, and ``scripts/torture_failover.lua``
(branch route marking each branch with ``X-Torture-Branch``, failure route moving a request that got 486 from
the first target to the second). Both targets are UDP sockets of this test that answer what they get: the
first 486, the second 603 to an INVITE and 200 to anything else, so "forwarded" and "the failure route ran"
are seen on the wire.

Each corpus message goes out from a socket (UDP) or connection (TCP) of its own, so everything that comes
back there belongs to it; forwarded requests are matched by Call-ID and arrival time. After each message an
OPTIONS keepalive to the proxy must be answered 200 by the same process. Then, per message:

- a response (a stray, RFC 6026): nothing comes back, nothing is forwarded;
- an invalid request: never a 2xx, never forwarded; any final answer is 4xx (or the status the corpus table
  names, 505 for a bad version);
- a valid request: with the failover script, forwarded to both targets with the branch header and answered
  with the second target's status; with the default script, answered with a final status other than 400.

Both scripts call ``KSR.force_rport()``, so answers made by the route go to the source port. Answers the core
makes before any route runs (483 for Max-Forwards 0, 420 for Proxy-Require, the rejections of validation) go
where RFC 3261 18.2.2 says: over UDP to the top Via's sent-by, which in the corpus names hosts that are not
this test; those cases are listed in ``UDP_UNSEEN``. Over TCP every answer comes back on the connection.
"""

from __future__ import annotations

import queue
import re
import selectors
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from tests.dns_responder import DnsResponder
from tests.e2e.conftest import Lab
from tests.unit.test_torture import CASES, DATA, OK, Case
from trioproxy.sip import Request, Response, SIPError, make_response, new_branch, parse_message_untrusted
from trioproxy.sip.framing import StreamFramer
from trioproxy.testing.processes import HOST

SCRIPT = Path(__file__).parent / "scripts" / "torture_failover.lua"
COMBOS = [("udp", "default"), ("udp", "failover"), ("tcp", "default"), ("tcp", "failover")]

# Requests the core answers before the route runs (so without force_rport): over UDP the answer goes to the
# Via's sent-by (RFC 3261 18.2.2), a host of the corpus, and this test cannot see it.
UDP_UNSEEN = {"zeromf", "bext01"}
# The default script drops (no answer at all) a request its sanity check refuses, and answers the rest.
DEFAULT_DROPPED: set[str] = set()

KEEPALIVE_WAIT = 5.0  # seconds for the proxy to answer the OPTIONS keepalive after a message
VALID_WAIT = 3.0  # seconds for a valid request's outcome (a DNS failure with the default script included)
QUIET_WAIT = 0.05  # seconds to watch for what must not happen, once the keepalive is answered

_CALL_ID = re.compile(rb"^(?:call-id|i)[ \t]*:[ \t]*(\S+)", re.IGNORECASE | re.MULTILINE)


def _call_id(data: bytes) -> bytes | None:
    head = data.split(b"\r\n\r\n", 1)[0]
    match = _CALL_ID.search(head)
    return match.group(1) if match else None


@dataclass
class Target:
    """A UDP socket the proxy forwards to; answers every request but ACK with ``status(request)``."""

    name: str
    sock: socket.socket
    got: list[tuple[float, Request]] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def status_for(self, req: Request) -> int:
        if self.name == "first":
            return 486
        return 603 if req.method == "INVITE" else 200

    def handle(self) -> None:
        data, addr = self.sock.recvfrom(65535)
        try:
            msg = parse_message_untrusted(data)
        except SIPError:
            return
        if not isinstance(msg, Request):
            return
        self.got.append((time.monotonic(), msg))
        if msg.method != "ACK":
            self.sock.sendto(make_response(msg, self.status_for(msg), to_tag=self.name).to_bytes(), addr)


@dataclass
class Rig:
    transport: str
    script: str
    lab: Lab
    port: int
    targets: list[Target]
    keepalive: socket.socket  # UDP; TCP keepalives use a new connection each
    # Each message's socket or connection stays open until the end: a retransmission of an earlier message
    # is answered on that message's flow, and an ICMP error there would end its transaction early.
    kept: list[socket.socket] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.lab.proxies[0].proc.pid


@dataclass
class Outcome:
    answers: list[Response] = field(default_factory=list)
    forwarded: list[tuple[str, Request]] = field(default_factory=list)  # (target name, request)
    keepalive_ok: bool = False

    def finals(self) -> list[int]:
        return [r.status for r in self.answers if r.status >= 200]


@pytest.fixture(scope="module")
def dns_server() -> Iterator[str]:
    """A DNS server on loopback with an empty zone: every name of the corpus is NXDOMAIN, at once."""
    ready: queue.Queue[tuple[trio.lowlevel.TrioToken, trio.Event, int]] = queue.Queue()

    async def serve() -> None:
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            _host, port = await nursery.start(DnsResponder({}).serve)
            ready.put((trio.lowlevel.current_trio_token(), stop, port))
            await stop.wait()
            nursery.cancel_scope.cancel()

    thread = threading.Thread(target=trio.run, args=(serve,), daemon=True)
    thread.start()
    token, stop, port = ready.get(timeout=10)
    try:
        yield f"{HOST}:{port}"
    finally:
        trio.from_thread.run_sync(stop.set, trio_token=token)
        thread.join(timeout=10)


@pytest.fixture(scope="module", params=COMBOS, ids=[f"{t}-{s}" for t, s in COMBOS])
def rig(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, dns_server: str
) -> Iterator[Rig]:
    transport, script = request.param
    workdir = tmp_path_factory.mktemp(f"torture-{transport}-{script}")
    lab = Lab(workdir)
    targets = []
    for name in ("first", "second"):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((HOST, 0))
        targets.append(Target(name, sock))
    keepalive = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    keepalive.bind((HOST, 0))
    rig_kept: list[socket.socket] = []
    try:
        # DNS is a server of this test that knows no name: the corpus names hosts that exist nowhere, and
        # the default script answers those requests (478) instead of waiting on them.
        settings: dict[str, dict[str, str | int | float | bool]] = {
            "dns": {"timeout": 1.0, "lifetime": 2.0},
            "registrar": {"enabled": True},
        }
        extra = ["--nameserver", dns_server]
        if script == "failover":
            text = SCRIPT.read_text()
            text = text.replace("@FWD1@", str(targets[0].port)).replace("@FWD2@", str(targets[1].port))
            path = workdir / "torture_failover.lua"
            path.write_text(text)
            proxy = lab.proxy(script=str(path), settings=settings, extra_args=extra)
        else:
            proxy = lab.proxy(settings=settings, extra_args=extra)
        yield Rig(transport, script, lab, proxy.port, targets, keepalive, rig_kept)
    finally:
        lab.close()
        for t in targets:
            t.sock.close()
        keepalive.close()
        for sock in rig_kept:
            sock.close()


# -- one message --------------------------------------------------------------------------------------------


def _keepalive_request(rig: Rig, local_port: int) -> tuple[bytes, str]:
    call_id = f"ka-{new_branch()[7:]}"
    proto = rig.transport.upper()
    text = (
        f"OPTIONS sip:{HOST}:{rig.port} SIP/2.0\r\n"
        f"Via: SIP/2.0/{proto} {HOST}:{local_port};branch={new_branch()};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:torture@{HOST}>;tag=ka\r\n"
        f"To: <sip:{HOST}:{rig.port}>\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    return text.encode(), call_id


class _Stream:
    """Responses read from a TCP connection, framed as RFC 3261 18.3 says."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.framer = StreamFramer()
        self.closed = False

    def read(self) -> list[bytes]:
        try:
            data = self.sock.recv(65535)
        except OSError:
            data = b""
        if not data:
            self.closed = True
            return []
        try:
            return [m for m in self.framer.feed(data) if isinstance(m, bytes)]
        except SIPError:
            self.closed = True
            return []


def _parse_response(data: bytes) -> Response | None:
    try:
        msg = parse_message_untrusted(data)
    except SIPError:
        return None
    return msg if isinstance(msg, Response) else None


def run_message(rig: Rig, case: Case, data: bytes, *, retransmission: bool = False) -> Outcome:
    """Send one corpus message and a keepalive; collect what comes back until the outcome is known."""
    out = Outcome()
    call_id = _call_id(data)
    started = time.monotonic()
    sel = selectors.DefaultSelector()
    for target in rig.targets:
        sel.register(target.sock, selectors.EVENT_READ, target)
    own: socket.socket
    streams: dict[socket.socket, _Stream] = {}
    if rig.transport == "udp":
        own = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        own.bind((HOST, 0))
        own.sendto(data, (HOST, rig.port))
        ka_sock = rig.keepalive
        ka_data, ka_id = _keepalive_request(rig, int(ka_sock.getsockname()[1]))
        ka_sock.sendto(ka_data, (HOST, rig.port))
    else:
        own = socket.create_connection((HOST, rig.port), timeout=KEEPALIVE_WAIT)
        own.sendall(data)
        ka_sock = socket.create_connection((HOST, rig.port), timeout=KEEPALIVE_WAIT)
        ka_data, ka_id = _keepalive_request(rig, int(ka_sock.getsockname()[1]))
        ka_sock.sendall(ka_data)
        streams = {own: _Stream(own), ka_sock: _Stream(ka_sock)}
    sel.register(own, selectors.EVENT_READ, "own")
    sel.register(ka_sock, selectors.EVENT_READ, "keepalive")
    expect_more = case.outcome == OK and case_is_request(data) and not retransmission
    keepalive_done_at = 0.0
    try:
        deadline = started + KEEPALIVE_WAIT
        while True:
            now = time.monotonic()
            if out.keepalive_ok:
                settled = not expect_more or _settled(rig, case, out)
                quiet_until = keepalive_done_at + QUIET_WAIT
                if now >= quiet_until and (settled or now >= started + VALID_WAIT):
                    break
                deadline = quiet_until if settled else max(quiet_until, started + VALID_WAIT)
            if now >= deadline:
                break
            for key, _ in sel.select(timeout=max(0.0, min(deadline - now, 0.05))):
                if isinstance(key.data, Target):
                    before = len(key.data.got)
                    key.data.handle()
                    for _at, req in key.data.got[before:]:
                        if call_id is not None and req.call_id.encode() == call_id:
                            out.forwarded.append((key.data.name, req))
                    continue
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if rig.transport == "udp":
                    try:
                        chunks = [sock.recv(65535)]
                    except OSError:  # an ICMP error queued on the socket
                        chunks = []
                else:
                    stream = streams[sock]
                    chunks = stream.read()
                    if stream.closed:
                        sel.unregister(sock)
                for chunk in chunks:
                    resp = _parse_response(chunk)
                    if resp is None:
                        continue
                    if key.data == "keepalive":
                        if resp.call_id == ka_id and resp.status == 200:
                            out.keepalive_ok = True
                            keepalive_done_at = time.monotonic()
                    else:
                        out.answers.append(resp)
    finally:
        sel.close()
        rig.kept.append(own)
        if rig.transport == "tcp":
            ka_sock.close()
    return out


def case_is_request(data: bytes) -> bool:
    return not data.startswith(b"SIP/")


def _tcp_unframeable(data: bytes) -> bool:
    # Over a stream the first message must frame (RFC 3261 18.3: Content-Length is mandatory there).
    try:
        return not StreamFramer().feed(data)
    except SIPError:
        return True


def _settled(rig: Rig, case: Case, out: Outcome) -> bool:
    """Whether a valid request's outcome is complete (so waiting longer would show nothing new)."""
    if rig.transport == "udp" and case.name in UDP_UNSEEN:
        return True
    if rig.script == "default" and case.name in DEFAULT_DROPPED:
        return True
    return bool(out.finals())


# -- verdicts -------------------------------------------------------------------------------------------------


def judge(rig: Rig, case: Case, data: bytes, out: Outcome) -> list[str]:
    """What went wrong with one message (empty: nothing)."""
    problems = []
    finals = out.finals()
    provisional = [r.status for r in out.answers if r.status < 200]
    if not case_is_request(data):
        if out.answers or out.forwarded:
            problems.append(
                f"a stray response got answers {finals + provisional} / forwards {len(out.forwarded)}"
            )
        return problems
    valid = case.outcome == OK and not (rig.transport == "tcp" and _tcp_unframeable(data))
    if not valid:
        allowed = {case.status} if case.status else set()
        bad = [s for s in finals if not (400 <= s < 500 or s in allowed)]
        if bad:
            problems.append(f"invalid request answered {bad}")
        if out.forwarded:
            problems.append(f"invalid request forwarded to {[n for n, _ in out.forwarded]}")
        if any(s != 100 for s in provisional):
            problems.append(f"invalid request got provisional {provisional}")
        return problems
    if 400 in finals:
        problems.append(f"valid request answered 400 ({finals})")
    if rig.transport == "udp" and case.name in UDP_UNSEEN:
        if out.forwarded:
            problems.append("forwarded a request the core must answer itself")
        return problems
    if case.name in ("zeromf", "bext01"):
        want = 483 if case.name == "zeromf" else 420
        if want not in finals:
            problems.append(f"expected {want}, got {finals}")
        if out.forwarded:
            problems.append("forwarded a request the core must answer itself")
        return problems
    if rig.script == "failover":
        names = [n for n, _ in out.forwarded if _ is not None]
        if "first" not in names or "second" not in names:
            problems.append(f"not forwarded to both targets (got {names})")
        for name, req in out.forwarded:
            marks = req.get_all("X-Torture-Branch")
            if req.method != "ACK" and marks != [name]:
                problems.append(f"branch to {name} without its branch-route header ({marks})")
        method = data.split(b" ", 1)[0]
        want = 603 if method == b"INVITE" else 200
        if want not in finals:
            problems.append(f"expected the second target's {want} upstream, got {finals}")
    else:
        if case.name not in DEFAULT_DROPPED and not finals:
            problems.append("no final answer")
    return problems


def _alive(rig: Rig) -> bool:
    return rig.lab.proxies[0].proc.poll() is None


def transaction_key(data: bytes) -> tuple[str, str, int | None, str] | None:
    """RFC 3261 17.2.3: a request with the branch, sent-by and method of an earlier one is its retransmission."""
    try:
        msg = parse_message_untrusted(data)
        if not isinstance(msg, Request) or not (msg.top_via.branch or "").startswith("z9hG4bK"):
            return None
        method = "INVITE" if msg.method == "ACK" else msg.method
        return (msg.top_via.branch or "", msg.top_via.host.lower(), msg.top_via.port, method)
    except SIPError:
        return None


def test_torture_corpus_end_to_end(rig: Rig) -> None:
    pid = rig.pid
    report: list[str] = []
    seen: dict[tuple[str, str, int | None, str], str] = {}
    for case in CASES:
        data = (DATA / case.rfc / f"{case.name}.dat").read_bytes()
        label = f"{case.rfc}/{case.name} ({case.rfc_says})"
        key = transaction_key(data)
        earlier = seen.get(key) if key is not None else None
        if key is not None and earlier is None:
            seen[key] = case.name
        out = run_message(rig, case, data, retransmission=earlier is not None)
        if not _alive(rig):
            pytest.fail(
                f"after {label} the proxy (PID {pid}) exited\n"
                + "\n".join(report)
                + f"\n{rig.lab.proxies[0].log()}"
            )
        if not out.keepalive_ok:
            report.append(f"{label}: the proxy did not answer the keepalive sent after it")
        if earlier is not None:
            # The corpus reuses branches: the transaction layer absorbs this one as a retransmission of
            # ``earlier`` (answered, if at all, on that message's flow), so it is neither routed nor answered...
            # Unless that transaction has ended (a reliable flow's non-INVITE ends at once, RFC 3261 17.2.2;
            # an answer that met an ICMP error ends it too, 17.2.4): then this is a new request, judged as one.
            problems = judge(rig, case, data, out) if out.forwarded or out.finals() else []
        else:
            problems = judge(rig, case, data, out)
        report += [f"{label}: {p}" for p in problems]
    report += [
        f"internal error counted: {name} {value:g}" for name, value in internal_errors(rig).items() if value
    ]
    assert not report, "\n".join(report) + "\n" + rig.lab.proxies[0].log()


def internal_errors(rig: Rig) -> dict[str, float]:
    """``trioproxy_internal_errors_total`` samples of the proxy's /metrics (exceptions a boundary stopped)."""
    match = re.search(r"management API listening on (http://\S+)", rig.lab.proxies[0].stderr_path.read_text())
    assert match, "no management API address in the proxy's log"
    with urllib.request.urlopen(match.group(1) + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("trioproxy_internal_errors_total"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out
