"""End-to-end: KSR functions on real sockets, a ``trioproxy run`` with its embedded default script.

``KSR.force_rport()`` (the default script calls it for every request): a caller whose Via names a port that
nothing listens on, without ``rport`` (a phone behind a NAT that does not implement RFC 3581), still gets its
100 Trying, 180 and 200 on the socket it sent from, and the callee sees the caller's Via stamped with
``received``/``rport`` as Kamailio stamps it. Everything stays on 127.0.0.1: were force_rport broken, the
proxy would answer to the closed loopback port named in the Via, and the caller's bounded wait would fail.
"""

from __future__ import annotations

import socket
import time

import pytest

from tests.e2e.conftest import Lab, free_port
from trioproxy.sip import Request, Response, parse_message_untrusted

pytestmark = pytest.mark.e2e

HOST = "127.0.0.1"
WAIT = 10.0  # seconds for any one expected message


def receive(sock: socket.socket, want: type[Request] | type[Response], deadline: float) -> Request | Response:
    """The next SIP message of kind ``want`` on ``sock`` (others skipped), before ``deadline``."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {want.__name__} within {WAIT}s")
        sock.settimeout(left)
        data, _peer = sock.recvfrom(65535)
        msg = parse_message_untrusted(data)
        if isinstance(msg, want):
            return msg


def request(method: str, uri: str, via: str, from_uri: str, to_uri: str, call_id: str, contact: str) -> bytes:
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/UDP {via}",
        "Max-Forwards: 70",
        f"From: <{from_uri}>;tag=e2e{call_id[:6]}",
        f"To: <{to_uri}>",
        f"Call-ID: {call_id}",
        f"CSeq: 1 {method}",
        f"Contact: <{contact}>",
        "Content-Length: 0",
        "",
        "",
    ]
    return "\r\n".join(lines).encode()


def answer(req: Request, status: int, reason: str, to_tag: str, contact: str) -> bytes:
    """A UAS response to ``req``: its Vias, From, Call-ID, CSeq; a To tag; a Contact."""
    lines = [f"SIP/2.0 {status} {reason}"]
    lines += [f"Via: {v}" for v in req.get_all("Via")]
    lines += [
        f"From: {req.get('From')}",
        f"To: {req.get('To')};tag={to_tag}",
        f"Call-ID: {req.call_id}",
        f"CSeq: {req.get('CSeq')}",
        f"Contact: <{contact}>",
        "Content-Length: 0",
        "",
        "",
    ]
    return "\r\n".join(lines).encode()


def test_force_rport_answers_a_caller_without_rport_on_its_own_socket(lab: Lab) -> None:
    proxy = lab.proxy()
    target = (HOST, proxy.port)
    closed = free_port()  # nothing listens there: the Via's sent-by port
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as callee,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as caller,
    ):
        callee.bind((HOST, 0))
        caller.bind((HOST, 0))
        u_port, c_port = callee.getsockname()[1], caller.getsockname()[1]
        assert closed not in (u_port, c_port)
        bob = f"sip:bob@{HOST}:{u_port}"

        reg = request(
            "REGISTER", f"sip:{HOST}:{proxy.port}", f"{HOST}:{u_port};branch=z9hG4bK-ksr-reg;rport",
            f"sip:bob@{HOST}", f"sip:bob@{HOST}", "ksr-reg@127.0.0.1", bob,
        )  # fmt: skip
        callee.sendto(reg.replace(b"Content-Length: 0", b"Expires: 60\r\nContent-Length: 0"), target)
        ok = receive(callee, Response, time.monotonic() + WAIT)
        assert isinstance(ok, Response) and ok.status == 200, proxy.log()

        invite = request(
            "INVITE", f"sip:bob@{HOST}:{proxy.port}", f"{HOST}:{closed};branch=z9hG4bK-ksr-inv",
            f"sip:alice@{HOST}", f"sip:bob@{HOST}", "ksr-inv@127.0.0.1", f"sip:alice@{HOST}:{closed}",
        )  # fmt: skip
        caller.sendto(invite, target)

        fwd = receive(callee, Request, time.monotonic() + WAIT)
        assert isinstance(fwd, Request) and fwd.method == "INVITE", proxy.log()
        caller_via = fwd.vias[1]  # below the proxy's own
        assert (caller_via.port, caller_via.params.get("rport"), caller_via.params.get("received")) == (
            closed, str(c_port), HOST,
        ), fwd.get_all("Via")  # fmt: skip
        callee.sendto(answer(fwd, 180, "Ringing", "b1", bob), target)
        callee.sendto(answer(fwd, 200, "OK", "b1", bob), target)

        deadline = time.monotonic() + WAIT
        statuses: list[int] = []
        while 200 not in statuses:
            resp = receive(caller, Response, deadline)
            assert isinstance(resp, Response)
            statuses.append(resp.status)
            top = resp.top_via
            assert (top.port, top.params.get("rport")) == (closed, str(c_port)), resp.get_all("Via")
        assert statuses[0] == 100 and statuses[-1] == 200 and set(statuses) <= {100, 180, 200}, statuses
