"""Malformed requests and a caller that comes back on the same port, against one real ``trioproxy run``.

Theory of operation
-------------------
One proxy process (the embedded default script) for the module; peers are plain sockets of this test on
127.0.0.1. Each malformed request goes out from a UDP socket or TCP connection of its own, so what comes back
there belongs to it. A request whose From/To does not parse must get a 400 (with a To tag added by text,
RFC 3261 8.2.6.2), and a request whose top Via cannot route a response is dropped over UDP (answered on the
connection over TCP); after each, the same process (same PID, not exited) answers an OPTIONS to itself.

The ICMP test: a caller sends an INVITE the default script refuses (404, no such user) and closes its socket
without the ACK; the proxy's retransmissions of the 404 to the closed port bring back ICMP port-unreachable.
A new socket on that port then sends an INVITE: its 100 Trying must arrive within 1 s.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import Lab, ProxyRun
from trioproxy.sip import Response, SIPError, new_branch, parse_message_untrusted
from trioproxy.sip.framing import StreamFramer
from trioproxy.testing.processes import HOST

ANSWER_WAIT = 3.0  # seconds for an answer that must come
QUIET_WAIT = 0.3  # seconds to watch for an answer that must not come

# (name, From value, To value, top Via host:port template or None for our own): the requests that used to end
# the process, each with the reason validation gives.
KILLERS = [
    ("unterminated-quote", "<sip:alice@127.0.0.1>;tag=a1", '"Bob <sip:bob@127.0.0.1>'),
    ("bad-uri-in-name-addr", "<sip:alice@127.0.0.1>;tag=a1", "Bob <sip:@127.0.0.1>"),
    ("bad-display-name", 'Al"ice <sip:alice@127.0.0.1>;tag=a1', "<sip:bob@127.0.0.1>"),
    ("ipv6-no-bracket", "<sip:alice@127.0.0.1>;tag=a1", "<sip:bob@[::1>"),
]


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyRun]:
    lab = Lab(tmp_path_factory.mktemp("malformed"))
    try:
        yield lab.proxy()
    finally:
        lab.close()


def request(method: str, uri: str, transport: str, port: int, *, from_: str, to: str, via: str | None = None) -> bytes:
    call_id = f"{method.lower()}-{new_branch()[7:]}"
    via = via or f"SIP/2.0/{transport.upper()} {HOST}:{port};branch={new_branch()};rport"
    return (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: {via}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: {from_}\r\n"
        f"To: {to}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: 1 {method}\r\n"
        f"Contact: <sip:alice@{HOST}:{port}>\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


class Peer:
    """A UDP socket or a TCP connection to the proxy, reading the responses that come back to it."""

    def __init__(self, transport: str, proxy: ProxyRun, bind_port: int = 0) -> None:
        self.transport = transport
        self.proxy = proxy
        kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
        self.sock = socket.socket(socket.AF_INET, kind)
        if transport == "udp":
            self.sock.bind((HOST, bind_port))
        else:
            self.sock.settimeout(ANSWER_WAIT)
            self.sock.connect((HOST, proxy.port))
        self.port: int = self.sock.getsockname()[1]
        self.framer = StreamFramer()

    def send(self, data: bytes) -> None:
        if self.transport == "udp":
            self.sock.sendto(data, (HOST, self.proxy.port))
        else:
            self.sock.sendall(data)

    def responses(self, within: float, *, until: int = 200) -> list[Response]:
        """What comes back within ``within`` seconds (stops early at a status >= ``until``)."""
        out: list[Response] = []
        deadline = time.monotonic() + within
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65535)
            except (TimeoutError, BlockingIOError):
                break
            if not data:
                break
            chunks = [data] if self.transport == "udp" else self.framer.feed(data)
            for chunk in chunks:
                if not isinstance(chunk, bytes):
                    continue
                try:
                    msg = parse_message_untrusted(chunk)
                except SIPError:
                    continue
                if isinstance(msg, Response):
                    out.append(msg)
            if any(r.status >= until for r in out):
                break
        return out

    def close(self) -> None:
        self.sock.close()


def assert_alive(proxy: ProxyRun, transport: str) -> None:
    """The same process answers an OPTIONS to itself (the default script: 200)."""
    assert proxy.proc.poll() is None, f"the proxy exited ({proxy.proc.poll()})\n{proxy.log()}"
    peer = Peer(transport, proxy)
    try:
        target = f"{HOST}:{proxy.port}"
        peer.send(request("OPTIONS", f"sip:{target}", transport, peer.port, from_="<sip:ka@127.0.0.1>;tag=k",
                          to=f"<sip:{target}>"))
        answers = peer.responses(ANSWER_WAIT)
    finally:
        peer.close()
    assert proxy.proc.poll() is None, f"the proxy exited ({proxy.proc.poll()})\n{proxy.log()}"
    assert answers, f"no answer to the keepalive OPTIONS\n{proxy.log()}"


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize(("name", "from_", "to"), KILLERS, ids=[k[0] for k in KILLERS])
def test_malformed_from_to_is_answered_400(proxy: ProxyRun, transport: str, name: str, from_: str, to: str) -> None:
    pid = proxy.proc.pid
    for method in ("OPTIONS", "INVITE"):
        peer = Peer(transport, proxy)
        try:
            data = request(method, f"sip:bob@{HOST}:{proxy.port}", transport, peer.port, from_=from_, to=to)
            peer.send(data)
            answers = peer.responses(ANSWER_WAIT)
        finally:
            peer.close()
        finals = [r for r in answers if r.status >= 200]
        assert [r.status for r in finals][:1] == [400], f"{name} {method}: {answers}\n{proxy.log()}"
        to_line = finals[0].get("To") or ""
        assert to_line.startswith(to) and ";tag=" in to_line[len(to) :], to_line  # copied as text, tag added
        assert_alive(proxy, transport)
    assert proxy.proc.pid == pid


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_unusable_via_is_dropped_over_udp_and_the_proxy_lives(proxy: ProxyRun, transport: str) -> None:
    peer = Peer(transport, proxy)
    try:
        via = f"SIP/2.0/{transport.upper()} [::1:{peer.port};branch={new_branch()}"
        data = request("INVITE", f"sip:bob@{HOST}:{proxy.port}", transport, peer.port,
                       from_="<sip:alice@127.0.0.1>;tag=a1", to="<sip:bob@[::1>", via=via)
        peer.send(data)
        answers = peer.responses(QUIET_WAIT if transport == "udp" else ANSWER_WAIT)
    finally:
        peer.close()
    if transport == "udp":
        assert answers == []  # the Via cannot route a response: dropped
    else:
        assert [r.status for r in answers if r.status >= 200] == [400]  # back on the connection
    assert_alive(proxy, transport)


def test_caller_back_on_a_port_the_proxy_saw_unreachable_is_answered_at_once(proxy: ProxyRun) -> None:
    uri = f"sip:nobody-{new_branch()[7:15]}@{HOST}:{proxy.port}"
    old = Peer("udp", proxy)
    port = old.port
    try:
        old.send(request("INVITE", uri, "udp", port, from_="<sip:alice@127.0.0.1>;tag=a1", to=f"<{uri}>"))
        first = old.responses(ANSWER_WAIT)
        assert any(r.status >= 300 for r in first), f"{first}\n{proxy.log()}"
    finally:
        old.close()  # no ACK: the proxy retransmits its final response to a closed port (Timer G, T1 = 0.5 s)
    time.sleep(1.2)
    new = Peer("udp", proxy, bind_port=port)
    try:
        started = time.monotonic()
        new.send(request("INVITE", uri, "udp", port, from_="<sip:alice@127.0.0.1>;tag=a2", to=f"<{uri}>"))
        answers = new.responses(1.0, until=100)
        elapsed = time.monotonic() - started
    finally:
        new.close()
    assert [r.status for r in answers][:1] == [100], f"{answers}\n{proxy.log()}"
    assert elapsed < 1.0
    assert proxy.proc.poll() is None
