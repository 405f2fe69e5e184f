"""RFC 3581 stamping and RFC 3261 18.2.2 response addressing (pure functions of the transport layer)."""

from __future__ import annotations

import pytest

from trioproxy.sip import Address, Request, SIPError, Via, parse_message_untrusted
from trioproxy.transport import Flow, Malformed, response_address, response_target, same_ip, stamp_via
from trioproxy.transport.inbound import answerable_request, is_blank


def _request(via: str) -> Request:
    data = (
        "OPTIONS sip:bob@example.com SIP/2.0\r\n"
        f"Via: {via}\r\n"
        "Via: SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bKolder\r\n"
        "From: <sip:alice@example.com>;tag=1\r\n"
        "To: <sip:bob@example.com>\r\n"
        "Call-ID: stamp-test\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Max-Forwards: 70\r\n"
        "Content-Length: 0\r\n"
        "\r\n"
    ).encode()
    msg = parse_message_untrusted(data)
    assert isinstance(msg, Request)
    return msg


SRC = Address("udp", "198.51.100.7", 40000)


def test_stamp_leaves_matching_via_untouched() -> None:
    req = _request("SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKa")
    before = req.to_bytes()
    assert stamp_via(req, SRC) is False
    assert req.to_bytes() == before  # the no-edit fast path keeps the original bytes


def test_stamp_adds_received_when_host_differs() -> None:
    req = _request("SIP/2.0/UDP client.example.com:5060;branch=z9hG4bKa")
    assert stamp_via(req, SRC) is True
    top = req.top_via
    assert top.received == "198.51.100.7"
    assert top.rport is None
    assert top.branch == "z9hG4bKa"
    assert [v.branch for v in req.vias] == ["z9hG4bKa", "z9hG4bKolder"]


def test_stamp_fills_empty_rport_and_received_even_if_same_host() -> None:
    # RFC 3581 4: with rport, received is added even when it equals the sent-by host.
    req = _request("SIP/2.0/UDP 198.51.100.7:5060;rport;branch=z9hG4bKa")
    assert stamp_via(req, SRC) is True
    top = req.top_via
    assert top.rport == 40000
    assert top.received == "198.51.100.7"
    assert len(req.vias) == 2


def test_stamp_keeps_valued_rport_and_existing_received() -> None:
    req = _request("SIP/2.0/UDP 10.0.0.1:5060;received=198.51.100.7;rport=40000;branch=z9hG4bKa")
    before = req.to_bytes()
    assert stamp_via(req, SRC) is False
    assert req.to_bytes() == before


def test_stamp_compares_ipv6_by_value() -> None:
    req = _request("SIP/2.0/UDP [2001:db8:0:0::1]:5060;branch=z9hG4bKa")
    assert stamp_via(req, Address("udp", "2001:db8::1", 5060)) is False
    assert stamp_via(req, Address("udp", "2001:db8::2", 5060)) is True
    assert req.top_via.received == "2001:db8::2"


def test_same_ip() -> None:
    assert same_ip("::1", "0:0::1")
    assert same_ip("127.0.0.1", "127.0.0.1")
    assert not same_ip("127.0.0.1", "127.0.0.2")
    assert not same_ip("host.example", "127.0.0.1")


@pytest.mark.parametrize(
    ("via", "transport", "expected"),
    [
        ("SIP/2.0/UDP 192.0.2.1", "udp", Address("udp", "192.0.2.1", 5060)),
        ("SIP/2.0/UDP 192.0.2.1:5070", "udp", Address("udp", "192.0.2.1", 5070)),
        ("SIP/2.0/UDP 192.0.2.1:5070;received=198.51.100.7", "udp", Address("udp", "198.51.100.7", 5070)),
        (
            "SIP/2.0/UDP 192.0.2.1:5070;received=198.51.100.7;rport=40000",
            "udp",
            Address("udp", "198.51.100.7", 40000),
        ),
        # A bare rport (not stamped) falls back to the sent-by port.
        ("SIP/2.0/UDP 192.0.2.1:5070;rport", "udp", Address("udp", "192.0.2.1", 5070)),
        (
            "SIP/2.0/UDP 192.0.2.1:5070;maddr=239.0.0.1;received=1.2.3.4",
            "udp",
            Address("udp", "239.0.0.1", 5070),
        ),
        ("SIP/2.0/UDP 192.0.2.1;maddr=239.0.0.1", "udp", Address("udp", "239.0.0.1", 5060)),
        # maddr is a UDP rule (18.2.2); a stream goes to received and rport.
        (
            "SIP/2.0/TCP 192.0.2.1:5070;maddr=239.0.0.1;received=198.51.100.7;rport=4444",
            "tcp",
            Address("tcp", "198.51.100.7", 4444),
        ),
        ("SIP/2.0/TCP [2001:db8::5]", "tcp", Address("tcp", "2001:db8::5", 5060)),
    ],
)
def test_response_address(via: str, transport: str, expected: Address) -> None:
    parsed = Via.parse_untrusted(via)
    assert response_address(parsed, transport) == expected
    assert response_target(parsed, transport) == (expected.host, expected.port)


def test_answerable_request_needs_request_line_and_via() -> None:
    good_via = b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKa\r\nbroken line\r\n\r\n"
    assert answerable_request(good_via)
    compact = b"OPTIONS sip:x SIP/2.0\r\nv: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKa, SIP/2.0/TCP h\r\n\r\n"
    assert answerable_request(compact)
    assert not answerable_request(b"OPTIONS sip:x SIP/2.0\r\nVia: nonsense\r\n\r\n")
    assert not answerable_request(b"OPTIONS sip:x SIP/2.0\r\nFrom: <sip:a@b>\r\n\r\n")
    assert not answerable_request(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.1\r\n\r\n")
    assert not answerable_request(b"\x00\x01\x02 garbage")
    assert is_blank(b"\r\n\r\n")
    assert not is_blank(b"OPTIONS")


def test_malformed_carries_status() -> None:
    src = Address("udp", "127.0.0.1", 5)
    with pytest.raises(SIPError) as info:
        parse_message_untrusted(b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h\r\nno colon here\r\n\r\n")
    flow = Flow("udp", src, src, False)
    item = Malformed(b"x", src, flow, info.value)
    assert item.error.status == 400
