"""Pure parts of the proxy core: the response context (16.7), validation (16.3), branch building (16.6)."""

from __future__ import annotations

import pytest

from tests.unit.proxy_harness import invite
from trioproxy.proxy import Disposition, ResponseContext, check_request, loop_hash, prepare_branch
from trioproxy.proxy.forward import preprocess_routes, record_route_values
from trioproxy.sip import (
    Address,
    Request,
    Response,
    make_response,
    parse_message_untrusted,
    parse_uri_untrusted,
)


def req(data: bytes = b"") -> Request:
    msg = parse_message_untrusted(data or invite())
    assert isinstance(msg, Request)
    return msg


def resp(status: int, *headers: tuple[str, str]) -> Response:
    r = make_response(req(), status, to_tag="t")
    for name, value in headers:
        r.append(name, value)
    return r


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ([486], 486),
        ([500, 404], 404),
        ([404, 302], 302),
        ([500, 603, 200], 603),
        ([404, 484, 486], 484),
        ([486, 415, 401], 401),
        ([486, 407, 401], 401),
        ([503], 503),  # the caller turns a chosen 503 into 500
        ([503, 480], 480),
    ],
)
def test_best_response(statuses: list[int], expected: int) -> None:
    rc = ResponseContext(is_invite=True)
    for s in statuses:
        if s < 300:
            continue
        rc.classify(resp(s))
    best = rc.best()
    assert best is not None and best.status == expected


def test_classify_rules() -> None:
    rc = ResponseContext(is_invite=True)
    assert rc.classify(resp(100)) is Disposition.DROP
    assert rc.classify(resp(180)) is Disposition.FORWARD
    assert rc.classify(resp(486)) is Disposition.STORE
    assert rc.classify(resp(200)) is Disposition.FORWARD_AND_CANCEL
    assert rc.classify(resp(200)) is Disposition.FORWARD  # every 2xx to an INVITE goes up
    assert rc.classify(resp(180)) is Disposition.DROP  # nothing provisional after a final
    assert rc.classify(resp(404)) is Disposition.DROP
    assert not rc.may_branch
    rc6 = ResponseContext(is_invite=True)
    assert rc6.classify(resp(603)) is Disposition.STORE_AND_CANCEL
    assert not rc6.may_branch
    non_invite = ResponseContext(is_invite=False)
    assert non_invite.classify(resp(200)) is Disposition.FORWARD_AND_CANCEL
    assert non_invite.classify(resp(200)) is Disposition.DROP


def test_no_answer_is_none() -> None:
    assert ResponseContext(is_invite=True).best() is None


def test_challenges_collected() -> None:
    rc = ResponseContext(is_invite=True)
    rc.classify(resp(401, ("WWW-Authenticate", 'Digest realm="a", nonce="1"')))
    rc.classify(resp(407, ("Proxy-Authenticate", 'Digest realm="b"')))
    rc.classify(resp(486))
    assert rc.challenges() == [
        ("WWW-Authenticate", 'Digest realm="a", nonce="1"'),
        ("Proxy-Authenticate", 'Digest realm="b"'),
    ]


OWN = {("127.0.0.1", 5060)}


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (invite("foo:bob@x"), 416),
        (invite().replace(b"Max-Forwards: 70", b"Max-Forwards: 0"), 483),
        (invite(extra="Proxy-Require: foo, bar\r\n"), 420),
        (invite(), None),
        (invite(method="OPTIONS").replace(b"Max-Forwards: 70", b"Max-Forwards: 1"), None),
    ],
)
def test_check_request(data: bytes, status: int | None) -> None:
    rejection = check_request(req(data), own_sent_by=OWN)
    assert (rejection.status if rejection else None) == status


def test_420_lists_unsupported() -> None:
    rejection = check_request(req(invite(extra="Proxy-Require: foo, bar\r\n")), own_sent_by=OWN)
    assert rejection is not None and rejection.headers == (("Unsupported", "foo, bar"),)


def test_loop_hash_depends_on_routing_fields() -> None:
    base = loop_hash(req())
    assert base == loop_hash(req())
    assert base != loop_hash(req(invite("sip:carol@127.0.0.1")))
    assert base != loop_hash(req(invite(cseq=2)))
    assert base != loop_hash(req(invite(extra="Route: <sip:x;lr>\r\n")))
    assert base == loop_hash(req(invite(extra="Subject: hello\r\n")))


def test_prepare_branch_loose_and_strict_next_hop() -> None:
    r = req(invite(extra="Route: <sip:10.9.9.9;lr>\r\n"))
    fwd, hop = prepare_branch(r, parse_uri_untrusted("sip:bob@127.0.0.5"))
    assert str(hop) == "sip:10.9.9.9;lr" and str(fwd.uri) == "sip:bob@127.0.0.5"
    r = req(invite(extra="Route: <sip:10.9.9.9>\r\n"))
    fwd, hop = prepare_branch(r, parse_uri_untrusted("sip:bob@127.0.0.5"))
    assert str(fwd.uri) == "sip:10.9.9.9" and fwd.get_all("Route") == ["<sip:bob@127.0.0.5>"]
    fwd, hop = prepare_branch(req(), parse_uri_untrusted("sip:bob@127.0.0.5"), path=["<sip:edge@127.0.0.7;lr>"])
    assert str(hop) == "sip:edge@127.0.0.7;lr"


def test_preprocess_routes() -> None:
    def mine(uri: object) -> bool:
        return str(uri).startswith("sip:127.0.0.1:5060")

    r = req(invite(extra="Route: <sip:127.0.0.1:5060;lr;r2=on>, <sip:127.0.0.1:5060;transport=tcp;lr;r2=on>, <sip:x@127.0.0.9;lr>\r\n"))
    assert preprocess_routes(r, mine)
    assert r.get_all("Route") == ["<sip:x@127.0.0.9;lr>"]


def test_double_record_route_when_transports_differ() -> None:
    udp = Address("udp", "127.0.0.1", 5060)
    tcp = Address("tcp", "127.0.0.1", 5060)
    assert record_route_values(udp, udp) == ["<sip:127.0.0.1:5060;lr>"]
    assert record_route_values(udp, tcp) == [
        "<sip:127.0.0.1:5060;transport=tcp;lr;r2=on>",
        "<sip:127.0.0.1:5060;lr;r2=on>",
    ]
