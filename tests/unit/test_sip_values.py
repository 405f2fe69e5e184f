"""Typed header values: Via, NameAddr, CSeq; header names and list splitting."""

from __future__ import annotations

import pytest

from trioproxy.sip import COMPACT_FORMS, CSeq, NameAddr, SIPError, Via, header_key, split_values

VIA_CASES = [
    # value, transport, host, port, branch, received, rport, maddr, ttl
    ("SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bK776asdhds", "UDP", "pc33.atlanta.com", None,
     "z9hG4bK776asdhds", None, None, None, None),
    ("SIP/2.0/tcp 192.0.2.1:5070;received=192.0.2.9;rport=5071;branch=z9hG4bKx", "TCP", "192.0.2.1", 5070,
     "z9hG4bKx", "192.0.2.9", 5071, None, None),
    ("SIP / 2.0 / UDP  [2001:db8::9] : 5060 ; rport ; branch = z9hG4bKy", "UDP", "2001:db8::9", 5060,
     "z9hG4bKy", None, True, None, None),
    ("SIP/2.0/UDP h;maddr=224.2.0.1;ttl=16;branch=z9hG4bKm", "UDP", "h", None, "z9hG4bKm", None, None,
     "224.2.0.1", 16),
]  # fmt: skip


@pytest.mark.parametrize(
    ("value", "transport", "host", "port", "branch", "received", "rport", "maddr", "ttl"), VIA_CASES
)
def test_via(
    value: str,
    transport: str,
    host: str,
    port: int | None,
    branch: str,
    received: str | None,
    rport: int | bool | None,
    maddr: str | None,
    ttl: int | None,
) -> None:
    via = Via.parse_untrusted(value)
    assert (via.transport, via.host, via.port, via.branch) == (transport, host, port, branch)
    assert (via.received, via.rport, via.maddr, via.ttl) == (received, rport, maddr, ttl)
    assert via.sent_by == (host, port)
    assert Via.parse_untrusted(str(via)) == via


@pytest.mark.parametrize(
    "value",
    ["", "SIP/2.0/UDP", "SIP/2.0 host", "HTTP/1.1/TCP h", "SIP/2.0/UDP h:99999", "SIP/2.0/UDP h;=x",
     "SIP/2.0/UDP h extra"],
)  # fmt: skip
def test_via_malformed(value: str) -> None:
    with pytest.raises(SIPError):
        Via.parse_untrusted(value)


NAME_ADDR_CASES = [
    # value, display, uri, params
    ('"Alice \\"A\\"" <sip:alice@atlanta.com>;tag=12', 'Alice \\"A\\"', "sip:alice@atlanta.com", {"tag": "12"}),
    ("Bob Smith <sip:bob@b.com;lr>;q=0.7;expires=60", "Bob Smith", "sip:bob@b.com;lr", {"q": "0.7",
                                                                                       "expires": "60"}),
    ("<sip:c@d>", None, "sip:c@d", {}),
    ("sip:c@d;tag=x", None, "sip:c@d", {"tag": "x"}),
    ("  <tel:+1234;phone-context=e.com>  ", None, "tel:+1234;phone-context=e.com", {}),
    ('"" <sip:e@f>', "", "sip:e@f", {}),
]  # fmt: skip


@pytest.mark.parametrize(("value", "display", "uri", "params"), NAME_ADDR_CASES)
def test_name_addr(value: str, display: str | None, uri: str, params: dict[str, str]) -> None:
    na = NameAddr.parse_untrusted(value)
    assert (na.display, str(na.uri), na.params) == (display, uri, params)
    assert NameAddr.parse_untrusted(str(na)) == na
    assert na.copy() == na


def test_name_addr_properties() -> None:
    na = NameAddr.parse_untrusted("<sip:a@b>;tag=t;q=0.25;expires=3600")
    assert (na.tag, na.q, na.expires) == ("t", 0.25, 3600)
    plain = NameAddr.parse_untrusted("<sip:a@b>")
    assert (plain.tag, plain.q, plain.expires, plain.is_star) == (None, 1.0, None, False)
    star = NameAddr.parse_untrusted(" * ")
    assert star.is_star and str(star) == "*"
    assert NameAddr.parse_untrusted("<sip:a@b>;expires=99999999999").expires == 2**32 - 1
    for bad in ("<sip:a@b>;q=2", "<sip:a@b>;q=x"):
        with pytest.raises(SIPError):
            NameAddr.parse_untrusted(bad).q  # noqa: B018


@pytest.mark.parametrize(
    "value",
    ['"unterminated <sip:a@b>', "< sip:a@b >", "Bell, Alexander <sip:a@b>", "sip:a@b?x=y", "<sip:a@b",
     "<sip:a@b> junk", "<>"],
)  # fmt: skip
def test_name_addr_malformed(value: str) -> None:
    with pytest.raises(SIPError):
        NameAddr.parse_untrusted(value)


@pytest.mark.parametrize(
    ("value", "seq", "method"), [("1 INVITE", 1, "INVITE"), ("  0009   REGISTER ", 9, "REGISTER")]
)
def test_cseq(value: str, seq: int, method: str) -> None:
    assert CSeq.parse_untrusted(value) == CSeq(seq, method)


@pytest.mark.parametrize(
    "value", ["", "1", "INVITE 1", "-1 INVITE", "2147483648 INVITE", "1 INV@TE", "1 A B"]
)
def test_cseq_malformed(value: str) -> None:
    with pytest.raises(SIPError):
        CSeq.parse_untrusted(value)


def test_compact_forms() -> None:
    for short, long in COMPACT_FORMS.items():
        assert header_key(short) == header_key(short.upper()) == long
    assert header_key("Record-Route") == "record-route"
    assert header_key("Via ") == "via"
    with pytest.raises(SIPError):
        header_key("Bad Name")


@pytest.mark.parametrize(
    ("value", "parts"),
    [
        ("a, b ,c", ["a", "b", "c"]),
        ('"x, y" <sip:a@b>, <sip:c@d>', ['"x, y" <sip:a@b>', "<sip:c@d>"]),
        ('"q\\", z" <sip:a>, b', ['"q\\", z" <sip:a>', "b"]),
        ("<sip:a@b;x=1,2>, c", ["<sip:a@b;x=1,2>", "c"]),
        ("single", ["single"]),
        (" , a,, ", ["a"]),
    ],
)
def test_split_values(value: str, parts: list[str]) -> None:
    assert split_values(value) == parts
