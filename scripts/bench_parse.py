#!/usr/bin/env python3
"""Messages per second of the SIP message layer on one core.

(a) parse a realistic INVITE (2 Vias, Record-Route, ~12 headers, SDP body) and its 200 OK;
(b) the proxy's forwarding edit: parse, read the transaction key (top Via branch and sent-by, CSeq method),
    decrement Max-Forwards, add a Via and a Record-Route, serialize.
Each figure is the median of several repeats, in CPU time of this process. Usage: scripts/bench_parse.py [--repeats 5] [--iterations 20000]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from trioproxy.sip import Request, decrement_max_forwards, new_branch, parse_message_untrusted

SDP = (
    b"v=0\r\no=alice 2890844526 2890844526 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
    b"m=audio 49170 RTP/AVP 0 8 97\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:97 iLBC/8000\r\na=sendrecv\r\n"
)
INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP proxy1.example.net:5060;branch=z9hG4bK2d4790.1;received=192.0.2.20\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com:5060;rport=5060;branch=z9hG4bK74bf9;received=192.0.2.10\r\n"
    b"Record-Route: <sip:proxy1.example.net;lr>\r\n"
    b"Max-Forwards: 69\r\n"
    b'From: "Alice" <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n'
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b"Call-ID: 3848276298220188511@atlanta.example.com\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Contact: <sip:alice@192.0.2.10:5060;transport=udp>\r\n"
    b"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE\r\n"
    b"Supported: replaces, timer\r\n"
    b"User-Agent: bench-ua/1.0\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(SDP)).encode() + b"\r\n\r\n" + SDP
)
OK200 = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP proxy1.example.net:5060;branch=z9hG4bK2d4790.1;received=192.0.2.20\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com:5060;rport=5060;branch=z9hG4bK74bf9;received=192.0.2.10\r\n"
    b"Record-Route: <sip:proxy1.example.net;lr>\r\n"
    b'From: "Alice" <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n'
    b"To: Bob <sip:bob@biloxi.example.com>;tag=8321234356\r\n"
    b"Call-ID: 3848276298220188511@atlanta.example.com\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Contact: <sip:bob@192.0.2.4:5060;transport=udp>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(SDP)).encode() + b"\r\n\r\n" + SDP
)
LOCAL_VIA = "SIP/2.0/UDP 192.0.2.1:5060;branch="
RECORD_ROUTE = "<sip:192.0.2.1:5060;lr>"


def parse_invite() -> None:
    parse_message_untrusted(INVITE)


def parse_ok() -> None:
    parse_message_untrusted(OK200)


def forward() -> None:
    req = parse_message_untrusted(INVITE)
    assert isinstance(req, Request)
    via = req.top_via
    _key = (via.branch, via.sent_by, req.cseq.method)
    decrement_max_forwards(req)
    req.insert_top("Via", LOCAL_VIA + new_branch())
    req.insert_top("Record-Route", RECORD_ROUTE)
    req.to_bytes()


def measure(fn: Callable[[], None], iterations: int, repeats: int) -> float:
    """Median messages per second over ``repeats`` runs of ``iterations`` calls."""
    rates = []
    for _ in range(repeats):
        # CPU time of this process: other work on a shared machine does not count against it.
        start = time.process_time()
        for _ in range(iterations):
            fn()
        rates.append(iterations / (time.process_time() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=20000)
    args = parser.parse_args()
    forward()  # warm caches and check the edit works
    print(
        f"INVITE {len(INVITE)} bytes, 200 OK {len(OK200)} bytes; median of {args.repeats} x {args.iterations}"
    )
    for label, fn in (
        ("(a) parse INVITE", parse_invite),
        ("(a) parse 200 OK", parse_ok),
        ("(b) forward edit (parse, key, Max-Forwards, Via, Record-Route, serialize)", forward),
    ):
        rate = measure(fn, args.iterations, args.repeats)
        print(f"{label:78s} {rate:>10,.0f} msgs/s  ({1e6 / rate:.2f} us)")


if __name__ == "__main__":
    main()
