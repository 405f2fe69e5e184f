"""RFC 4475 torture messages and RFC 5118 IPv6 messages, from tests/data/ (bytes as the RFCs give them).

Who rejects what: the parser (``parse_message_untrusted``) rejects what cannot be framed or has a malformed
start line (bad Request-Line LWS, version -> 505, status code, Content-Length); header values are parsed on
first read, so ``validate_request_untrusted`` / ``validate_response_untrusted`` (what a proxy runs on arrival)
rejects malformed or missing mandatory headers, a Request-URI with a scheme other than sip/sips/tel (416) or
with headers, and a CSeq method that differs from the request method. Semantic checks that belong to the
proxy or registrar (Max-Forwards 0 -> 483, Proxy-Require -> 420, non-SIP URIs in a REGISTER's To, broadcast
Via) are not raised here: the table asserts the fact they act on instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from trioproxy.sip import (
    Message,
    Request,
    Response,
    SIPError,
    decrement_max_forwards,
    parse_message_untrusted,
    validate_request_untrusted,
    validate_response_untrusted,
)

DATA = Path(__file__).parent.parent / "data"

OK = "ok"  # parses and validates
PARSE = "parse"  # parse_message_untrusted raises SIPError(status)
VALIDATE = "validate"  # parses; validate_*_untrusted raises SIPError(status)


@dataclass(frozen=True)
class Case:
    rfc: str
    name: str
    section: str
    rfc_says: str  # "valid" / "invalid" as the RFC classifies it
    outcome: str  # OK, PARSE or VALIDATE
    status: int | None = None
    check: Callable[[Message], object] | None = None  # a fact the message must show (the proxy acts on it)
    note: str = ""


def _req(msg: Message) -> Request:
    assert isinstance(msg, Request)
    return msg


def _resp(msg: Message) -> Response:
    assert isinstance(msg, Response)
    return msg


def _wsinv(m: Message) -> None:
    r = _req(m)
    assert r.max_forwards == 68 and (r.cseq.seq, r.cseq.method) == (9, "INVITE")
    assert [(v.transport, v.host, v.branch) for v in r.vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert r.to.tag == "1918181833n" and r.from_.tag == "98asjd8"
    assert r.from_.display == 'J Rosenberg \\\\\\"'
    assert (
        r.get("subject") == "" and r.get("newfangledheader") == "newfangled value continued newfangled value"
    )
    assert r.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    assert r.contacts[0].q == 0.33 and r.contacts[0].params["secondparam"] is None
    assert r.routes[0].uri.params["unknown-no-value"] is None and r.uri.params == {"unknownparam": None}
    assert len(r.body) == 150


def _intmeth(m: Message) -> None:
    r = _req(m)
    assert r.method == "!interesting-Method0123456789_*+`.%indeed'~" == r.cseq.method
    assert r.uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert r.uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert r.top_via.branch == "z9hG4bK-.!%66*_+`'~" and r.max_forwards == 255
    assert r.from_.tag == "_token~1'+`*%!-." and r.from_.display == "token1~` token2'+_ token3*%!.-"
    assert r.get("extensionHeader-!.%*+_`'~") == "\ufeff大停電"


def _dblreq(m: Message) -> None:
    r = _req(m)
    # RFC 3261 18.3: the octets after Content-Length on a datagram are discarded.
    assert r.method == "REGISTER" and r.body == b"" and not r.to_bytes().endswith(b"a=rtpmap:31 LPC\r\n")


CASES = [
    # RFC 4475 3.1.1: valid messages
    Case("rfc4475", "wsinv", "3.1.1.1", "valid", OK, check=_wsinv),
    Case("rfc4475", "intmeth", "3.1.1.2", "valid", OK, check=_intmeth),
    Case("rfc4475", "esc01", "3.1.1.3", "valid", OK,
         check=lambda m: _req(m).uri.user == "sips%3Auser%40example.com" and m.contacts[0].uri.params
         == {"%6c%72": None, "n%61me": "v%61lue%25%34%31"}),
    Case("rfc4475", "escnull", "3.1.1.4", "valid", OK,
         check=lambda m: [c.uri.user for c in m.contacts] == ["%00", "%00%00"]),
    Case("rfc4475", "esc02", "3.1.1.5", "valid", OK,
         check=lambda m: _req(m).method == "RE%47IST%45R" and len(m.contacts) == 2 and m.has("C%6Fntact")),
    Case("rfc4475", "lwsdisp", "3.1.1.6", "valid", OK, check=lambda m: m.from_.display == "caller"),
    Case("rfc4475", "longreq", "3.1.1.7", "valid", OK,
         check=lambda m: len(m.vias) == 34 and m.to.uri.port == 6000 and len(m.from_.tag or "") == 155),
    Case("rfc4475", "dblreq", "3.1.1.8", "valid", OK, check=_dblreq),
    Case("rfc4475", "semiuri", "3.1.1.9", "valid", OK,
         check=lambda m: _req(m).uri.user == "user;par=u%40example.net" and len(m.get_all("accept")) == 6),
    Case("rfc4475", "transports", "3.1.1.10", "valid", OK,
         check=lambda m: [v.transport for v in m.vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]),
    Case("rfc4475", "mpart01", "3.1.1.11", "valid", OK, check=lambda m: len(m.body) == 553),
    Case("rfc4475", "unreason", "3.1.1.12", "valid", OK,
         check=lambda m: _resp(m).status == 200 and _resp(m).reason.startswith("= 2**3 * 5**2 но")),
    Case("rfc4475", "noreason", "3.1.1.13", "valid", OK,
         check=lambda m: (_resp(m).status, _resp(m).reason) == (100, "")),
    # RFC 4475 3.1.2: invalid messages
    Case("rfc4475", "badinv01", "3.1.2.1", "invalid", VALIDATE, 400, note="empty Via/Contact params"),
    Case("rfc4475", "clerr", "3.1.2.2", "invalid", PARSE, 400, note="Content-Length beyond the datagram"),
    Case("rfc4475", "ncl", "3.1.2.3", "invalid", PARSE, 400),
    Case("rfc4475", "scalar02", "3.1.2.4", "invalid", VALIDATE, 400, note="CSeq >= 2**31, Max-Forwards 300"),
    Case("rfc4475", "scalarlg", "3.1.2.5", "invalid", VALIDATE, 400, note="a response: the proxy drops it"),
    Case("rfc4475", "quotbal", "3.1.2.6", "invalid", VALIDATE, 400),
    Case("rfc4475", "ltgtruri", "3.1.2.7", "invalid", VALIDATE, 400),
    Case("rfc4475", "lwsruri", "3.1.2.8", "invalid", PARSE, 400),
    Case("rfc4475", "lwsstart", "3.1.2.9", "invalid", PARSE, 400),
    Case("rfc4475", "trws", "3.1.2.10", "invalid", PARSE, 400),
    Case("rfc4475", "escruri", "3.1.2.11", "invalid", VALIDATE, 400),
    Case("rfc4475", "baddate", "3.1.2.12", "invalid", OK,
         check=lambda m: m.get("date") == "Fri, 01 Jan 2010 16:00:00 EST",
         note="RFC: a proxy should ignore the bad Date and forward unchanged; accepted"),
    Case("rfc4475", "regbadct", "3.1.2.13", "invalid", VALIDATE, 400, note="'?' in an addr-spec Contact"),
    Case("rfc4475", "badaspec", "3.1.2.14", "invalid", VALIDATE, 400, note="LWS inside <...>"),
    Case("rfc4475", "baddn", "3.1.2.15", "invalid", VALIDATE, 400),
    Case("rfc4475", "badvers", "3.1.2.16", "invalid", PARSE, 505),
    Case("rfc4475", "mismatch01", "3.1.2.17", "invalid", VALIDATE, 400),
    Case("rfc4475", "mismatch02", "3.1.2.18", "invalid", VALIDATE, 400),
    Case("rfc4475", "bigcode", "3.1.2.19", "invalid", PARSE, 400),
    # RFC 4475 3.2 / 3.3 / 3.4: transaction and application semantics
    Case("rfc4475", "badbranch", "3.2.1", "valid", OK, check=lambda m: m.top_via.branch == "z9hG4bK",
         note="no transaction id beyond the cookie: the transaction layer matches it the RFC 2543 way"),
    Case("rfc4475", "insuf", "3.3.1", "invalid", VALIDATE, 400, note="no To, From, Call-ID, Max-Forwards"),
    Case("rfc4475", "unkscm", "3.3.2", "invalid", VALIDATE, 416),
    Case("rfc4475", "novelsc", "3.3.3", "invalid", VALIDATE, 416, note="soap.beep: a proxy has no way to route"),
    Case("rfc4475", "unksm2", "3.3.4", "valid", OK,
         check=lambda m: (m.to.uri.scheme, m.from_.uri.scheme, m.contacts[0].uri.scheme) == ("isbn", "http", "name"),
         note="syntactically valid; refusing non-SIP To in a REGISTER is the registrar's decision (416)"),
    Case("rfc4475", "bext01", "3.3.5", "valid", OK,
         check=lambda m: m.get_all("proxy-require") == ["noProxiesSupportThis", "norDoAnyProxiesSupportThis"],
         note="the proxy answers 420 from Proxy-Require"),
    Case("rfc4475", "invut", "3.3.6", "valid", OK, check=lambda m: m.get("c") == "application/unknownformat"),
    Case("rfc4475", "regaut01", "3.3.7", "valid", OK,
         check=lambda m: m.get("authorization") == "NoOneKnowsThisScheme opaque-data=here"),
    Case("rfc4475", "multi01", "3.3.8", "invalid", PARSE, 400,
         note="duplicated single-value headers (validate: 400); as printed, l: 154 also exceeds the 152-octet body"),
    Case("rfc4475", "mcl01", "3.3.9", "invalid", VALIDATE, 400, note="two Content-Length values"),
    Case("rfc4475", "bcast", "3.3.10", "valid", OK, check=lambda m: m.vias[1].host == "255.255.255.255",
         note="the proxy must not send to a broadcast Via"),
    Case("rfc4475", "zeromf", "3.3.11", "valid", OK, check=lambda m: m.max_forwards == 0,
         note="the proxy answers 483 (decrement_max_forwards raises it)"),
    Case("rfc4475", "cparam01", "3.3.12", "valid", OK,
         check=lambda m: m.contacts[0].params == {"unknownparam": None} and m.contacts[0].uri.params == {}),
    Case("rfc4475", "cparam02", "3.3.13", "valid", OK,
         check=lambda m: m.contacts[0].params == {} and m.contacts[0].uri.params == {"unknownparam": None}),
    Case("rfc4475", "regescrt", "3.3.14", "valid", OK,
         check=lambda m: m.contacts[0].uri.headers == {"Route": "%3Csip:sip.example.com%3E"}),
    Case("rfc4475", "sdp01", "3.3.15", "valid", OK, check=lambda m: m.get("accept") == "text/nobodyKnowsThis"),
    Case("rfc4475", "inv2543", "3.4.1", "valid", OK,
         check=lambda m: m.max_forwards is None and m.from_.tag is None and m.top_via.branch is None),
    # RFC 5118 (IPv6)
    Case("rfc5118", "ipv6-good", "4.1", "valid", OK, check=lambda m: _req(m).uri.host == "2001:db8::10"),
    Case("rfc5118", "ipv6-bad", "4.2", "invalid", VALIDATE, 400),
    Case("rfc5118", "port-ambiguous", "4.3", "valid", OK,
         check=lambda m: (_req(m).uri.host, _req(m).uri.port) == ("2001:db8::10:5070", None)),
    Case("rfc5118", "port-unambiguous", "4.4", "valid", OK,
         check=lambda m: (_req(m).uri.host, _req(m).uri.port) == ("2001:db8::10", 5070)),
    Case("rfc5118", "via-received-param-with-delim", "4.5", "valid", OK,
         check=lambda m: m.top_via.received == "[2001:db8::9:255]"),
    Case("rfc5118", "via-received-param-no-delim", "4.5", "valid", OK,
         check=lambda m: m.top_via.received == "2001:db8::9:255"),
    Case("rfc5118", "ipv6-in-sdp", "4.6", "valid", OK, check=lambda m: b"IN IP6 2001:db8::20" in m.body,
         note="Content-Length set to the printed body (the printed value does not match it)"),
    Case("rfc5118", "mult-ip-in-header", "4.7", "valid", OK,
         check=lambda m: [v.sent_by for v in m.vias]
         == [("2001:db8::9:1", 6050), ("192.0.2.1", None), ("2001:db8::9:255", None)]),
    Case("rfc5118", "mult-ip-in-sdp", "4.8", "valid", OK, check=lambda m: b"c=IN IP6 2001:db8::1" in m.body,
         note="Content-Length set to the printed body"),
    Case("rfc5118", "ipv4-mapped-ipv6", "4.9", "valid", OK,
         check=lambda m: m.top_via.sent_by == ("::ffff:192.0.2.10", 19823),
         note="Content-Length set to the printed body"),
    Case("rfc5118", "ipv6-bug-abnf-3-colons", "4.10", "invalid", VALIDATE, 400,
         note="as printed, no empty line ends the head: taken as a bodiless datagram"),
    Case("rfc5118", "ipv6-correct-abnf-2-colons", "4.10", "valid", OK,
         check=lambda m: _req(m).uri.host == "2001:db8::192.0.2.1"),
]  # fmt: skip


def _validate(msg: Message) -> None:
    if isinstance(msg, Request):
        validate_request_untrusted(msg)
    else:
        assert isinstance(msg, Response)
        validate_response_untrusted(msg)


def test_every_file_is_in_the_table() -> None:
    on_disk = {(p.parent.name, p.stem) for d in ("rfc4475", "rfc5118") for p in (DATA / d).glob("*.dat")}
    assert on_disk == {(c.rfc, c.name) for c in CASES}
    assert len([c for c in CASES if c.rfc == "rfc4475"]) == 49


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.rfc}-{c.section}-{c.name}")
def test_torture(case: Case) -> None:
    data = (DATA / case.rfc / f"{case.name}.dat").read_bytes()
    if case.outcome == PARSE:
        with pytest.raises(SIPError) as exc:
            parse_message_untrusted(data)
        assert exc.value.status == case.status
        return
    msg = parse_message_untrusted(data)
    if case.outcome == VALIDATE:
        with pytest.raises(SIPError) as exc:
            _validate(msg)
        assert exc.value.status == case.status
        return
    _validate(msg)
    if case.check is not None:
        assert case.check(msg) is not False
    # Unedited, a message serializes to the octets it was parsed from (those Content-Length covers).
    out = msg.to_bytes()
    assert data.startswith(out)
    # Edited, it is rebuilt, and parses back to the same message.
    msg.append("X-Torture", "1")
    again = parse_message_untrusted(msg.to_bytes())
    assert again.same_as(msg)


def test_invalid_ones_are_all_rejected_somewhere() -> None:
    # Every message the RFCs call invalid is refused by the parser or by validation, except baddate,
    # which RFC 4475 3.1.2.12 asks a proxy to forward unchanged.
    accepted = [c.name for c in CASES if c.rfc_says == "invalid" and c.outcome == OK]
    assert accepted == ["baddate"]


def test_zeromf_is_answered_483_by_the_proxy_edit() -> None:
    msg = _req(parse_message_untrusted((DATA / "rfc4475" / "zeromf.dat").read_bytes()))
    with pytest.raises(SIPError) as exc:
        decrement_max_forwards(msg)
    assert exc.value.status == 483


def test_wsinv_leading_zeros_survive_the_forward_edit() -> None:
    msg = _req(parse_message_untrusted((DATA / "rfc4475" / "wsinv.dat").read_bytes()))
    assert decrement_max_forwards(msg) == 67
    assert parse_message_untrusted(msg.to_bytes()).max_forwards == 67
