"""Overload shedding at the UDP ingress: verdicts on raw datagrams, and a real UDP listener answering them."""

from __future__ import annotations

import socket

import trio
import trio.testing

from tests.unit.transport_support import TIMEOUT
from trioproxy.flood import FloodGate, PikeConfig, PikeTracker, Trusted
from trioproxy.flood.overload import OverloadConfig, OverloadDetector
from trioproxy.flood.shed import IngressShedder
from trioproxy.sip import Request, Response, parse_message_untrusted
from trioproxy.transport import Listen, Transports

SRC = ("127.0.0.1", 5099)


def request(
    method: str = "INVITE",
    branch: str = "z9hG4bK-1",
    *,
    to_tag: str = "",
    compact: bool = False,
    via: str = "SIP/2.0/UDP 127.0.0.1:5099;branch={branch};rport",
) -> bytes:
    names = ("v", "f", "t", "i") if compact else ("Via", "From", "To", "Call-ID")
    to = "<sip:bob@example.com>" + (f";tag={to_tag}" if to_tag else "")
    return (
        f"{method} sip:bob@example.com SIP/2.0\r\n"
        f"{names[0]}: {via.format(branch=branch)}\r\n"
        f"{names[0]}: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKlower\r\n"
        f"{names[1]}: Alice <sip:alice@example.com>;tag=a1\r\n"
        f"{names[2]}: {to}\r\n"
        f"{names[3]}: call-{branch}\r\n"
        f"CSeq: 7 {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def ack_for(answer: bytes, branch: str = "z9hG4bK-1") -> bytes:
    """The caller's ACK of a 503 (RFC 3261 17.1.1.3): the 503's To, the INVITE's branch."""
    to = parse_message_untrusted(answer).get("To")
    return (
        f"ACK sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5099;branch={branch}\r\n"
        f"From: Alice <sip:alice@example.com>;tag=a1\r\nTo: {to}\r\nCall-ID: call-{branch}\r\n"
        "CSeq: 7 ACK\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def shedder(level: float, action: str = "503") -> IngressShedder:
    det = OverloadDetector(OverloadConfig(lag_high=0.1, lag_low=0.03))
    det.sample(0.2 if level else 0.0, 1.0)
    det.level = level
    return IngressShedder(det, action=action, retry_after=3, remember=4, linger=10.0)


def test_calm_proxy_passes_everything_and_remembers_nothing() -> None:
    sh = shedder(0.0)
    assert sh.screen(request(), *SRC) is None
    assert len(sh) == 0 and sh.detector.stats.shed == 0


def test_refused_invite_gets_a_503_built_from_its_own_headers() -> None:
    sh = shedder(1.0)
    answer = sh.screen(request(), *SRC)
    assert answer
    msg = parse_message_untrusted(answer)
    assert isinstance(msg, Response) and (msg.status, msg.reason) == (503, "Service Unavailable")
    assert msg.get("Retry-After") == "3" and msg.call_id == "call-z9hG4bK-1" and msg.get("CSeq") == "7 INVITE"
    assert msg.from_.tag == "a1" and msg.to.tag  # a To tag of ours
    vias = msg.get_all("Via")
    assert vias == [
        "SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bK-1;rport=5099;received=127.0.0.1",
        "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKlower",
    ]
    assert sh.detector.stats.shed == 1


def test_retransmission_gets_the_same_bytes_and_the_ack_is_absorbed() -> None:
    sh = shedder(1.0)
    answer = sh.screen(request(), *SRC)
    assert answer
    assert sh.screen(request(), *SRC) == answer  # one answer per request, however often it comes
    assert sh.screen(ack_for(answer), *SRC) == b""  # the ACK of our 503: dropped, nothing to route
    assert sh.detector.stats.shed == 1 and sh.detector.stats.absorbed == 2
    other_ack = request("ACK", to_tag="x1")  # an ACK of someone else's answer passes
    assert sh.screen(other_ack, *SRC) is None


def test_in_dialog_requests_cancel_and_responses_pass_while_everything_new_is_refused() -> None:
    sh = shedder(1.0)
    assert sh.screen(request("BYE", "z9hG4bK-2", to_tag="b1"), *SRC) is None
    assert sh.screen(request("INVITE", "z9hG4bK-3", to_tag="b1"), *SRC) is None  # a re-INVITE
    assert sh.screen(request("CANCEL", "z9hG4bK-4"), *SRC) is None
    assert sh.screen(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1\r\n\r\n", *SRC) is None
    assert sh.screen(request("BYE", "z9hG4bK-5", to_tag="b1", compact=True), *SRC) is None
    assert sh.screen(request("REGISTER", "z9hG4bK-6"), *SRC)  # a new REGISTER is refused
    assert sh.screen(request("OPTIONS", "z9hG4bK-7", compact=True), *SRC)  # compact header names too
    # A tag parameter inside the To URI is not a To tag.
    tagged_uri = request("INVITE", "z9hG4bK-8").replace(b"example.com>\r", b"example.com;tag=u>\r")
    assert sh.screen(tagged_uri, *SRC)
    assert sh.detector.stats.shed == 3


def test_what_it_cannot_read_cheaply_is_left_to_the_parser() -> None:
    sh = shedder(1.0)
    folded = request().replace(b"\r\nTo: <sip:bob@example.com>", b"\r\nTo:\r\n <sip:bob@example.com>")
    for data in (folded, request()[:60], b"INVITE", b"\r\n\r\n", request().replace(b"Call-ID", b"X-Call")):
        assert sh.screen(data, *SRC) is None
    assert sh.detector.stats.shed == 0


def test_an_admitted_request_stays_admitted_and_drop_answers_nothing() -> None:
    sh = shedder(0.5, action="drop")
    assert sh.screen(request(branch="z9hG4bK-a"), *SRC) is None  # admitted (credit 0.5)
    assert sh.screen(request(branch="z9hG4bK-b"), *SRC) == b""  # refused, no answer
    assert sh.screen(request(branch="z9hG4bK-a"), *SRC) is None  # its retransmission: for its transaction
    assert sh.screen(request(branch="z9hG4bK-b"), *SRC) == b""  # refused again, not decided again
    assert sh.detector.stats.shed == 1 and sh.detector.stats.absorbed == 1


def test_branch_memories_are_bounded_and_forgotten_when_calm() -> None:
    sh = shedder(1.0)
    for n in range(10):
        assert sh.screen(request(branch=f"z9hG4bK-m{n}"), *SRC)
    assert len(sh) == 4  # remember=4: the oldest are forgotten
    det = sh.detector
    det.level = 0.0
    det.sample(0.0, 5.0)
    assert sh.screen(request(branch="z9hG4bK-m9"), *SRC)  # recent refusal: still the same answer
    det.sample(0.0, 12.0)  # linger (10 s) since the last refusal
    assert sh.screen(request(branch="z9hG4bK-m9"), *SRC) is None and len(sh) == 0


async def test_udp_listener_answers_503_itself_and_delivers_in_dialog_requests() -> None:
    det = OverloadDetector(OverloadConfig(lag_high=0.1, lag_low=0.03))
    det.sample(0.2, 1.0)
    det.level = 1.0
    gate = FloodGate(PikeTracker(PikeConfig(), Trusted()))
    gate.shedder = IngressShedder(det, retry_after=4)
    transports = Transports([Listen("udp", "127.0.0.1", 0)], gate=gate)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(transports.serve)
            dest = ("127.0.0.1", transports.local_address("udp").port)
            with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                await client.bind(("127.0.0.1", 0))
                port = client.getsockname()[1]
                via = f"SIP/2.0/UDP 127.0.0.1:{port};branch={{branch}};rport"
                await client.sendto(request(via=via), dest)
                answer, _ = await client.recvfrom(65535)
                msg = parse_message_untrusted(answer)
                assert isinstance(msg, Response) and msg.status == 503 and msg.get("Retry-After") == "4"
                await client.sendto(ack_for(answer), dest)
                await client.sendto(request("BYE", "z9hG4bK-2", to_tag="b1", via=via), dest)
                got = await transports.incoming.receive()
                # Only the BYE reached the proxy core: the INVITE was answered and its ACK absorbed.
                assert isinstance(got, Request) and got.method == "BYE"
                await trio.testing.wait_all_tasks_blocked()
                assert transports.incoming.statistics().current_buffer_used == 0
            assert det.stats.shed == 1 and det.stats.absorbed == 1
            nursery.cancel_scope.cancel()
