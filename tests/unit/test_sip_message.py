"""Parsing, serializing and editing messages (table-driven)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from trioproxy.sip import (
    Request,
    Response,
    SIPError,
    decrement_max_forwards,
    make_ack,
    make_cancel,
    make_response,
    new_branch,
    parse_message_untrusted,
    reason_phrase,
)

INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKnashds8;rport, "
    b"SIP/2.0/TCP x.example.com:5070;branch=z9hG4bKx;received=192.0.2.1\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b'f: "Alice A" <sip:alice@atlanta.example.com>;tag=1928301774\r\n'
    b"i: a84b4c76e66710\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\n"
    b"m: <sip:alice@pc33.atlanta.example.com>;expires=30;q=0.5\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 4\r\n\r\nv=0\n"
)

OK = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKnashds8\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>;tag=a6c85cf\r\n"
    b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def test_unmodified_round_trip() -> None:
    for raw in (INVITE, OK):
        assert parse_message_untrusted(raw).to_bytes() == raw


def test_request_fields() -> None:
    req = parse_message_untrusted(INVITE)
    assert isinstance(req, Request) and req.is_request
    assert req.method == "INVITE"
    assert str(req.uri) == "sip:bob@biloxi.example.com"
    assert req.version == "SIP/2.0"
    assert req.body == b"v=0\n"
    assert req.call_id == "a84b4c76e66710"
    assert (req.cseq.seq, req.cseq.method) == (314159, "INVITE")
    assert req.from_.tag == "1928301774" and req.from_.display == "Alice A"
    assert req.to.tag is None and str(req.to.uri) == "sip:bob@biloxi.example.com"
    assert req.max_forwards == 70 and req.content_length == 4
    assert [v.branch for v in req.vias] == ["z9hG4bKnashds8", "z9hG4bKx"]
    assert req.top_via.rport is True and req.vias[1].received == "192.0.2.1"
    assert req.vias[1].sent_by == ("x.example.com", 5070)
    assert [str(r.uri) for r in req.routes] == ["sip:p1.example.com;lr", "sip:p2.example.com;lr"]
    assert req.contacts[0].expires == 30 and req.contacts[0].q == 0.5
    assert req.expires is None and req.record_routes == [] and req.paths == []


def test_response_fields() -> None:
    resp = parse_message_untrusted(OK)
    assert isinstance(resp, Response) and not resp.is_request
    assert (resp.status, resp.reason) == (200, "OK")
    assert resp.to.tag == "a6c85cf"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("via", "SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKnashds8;rport"),
        ("V", "SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKnashds8;rport"),
        ("from", '"Alice A" <sip:alice@atlanta.example.com>;tag=1928301774'),
        ("Call-ID", "a84b4c76e66710"),
        ("CALL-ID", "a84b4c76e66710"),
        ("i", "a84b4c76e66710"),
        ("contact", "<sip:alice@pc33.atlanta.example.com>;expires=30;q=0.5"),
        ("l", "4"),
        ("c", "application/sdp"),
        ("Subject", None),
    ],
)
def test_get_case_and_compact(name: str, expected: str | None) -> None:
    req = parse_message_untrusted(INVITE)
    assert req.get(name) == expected
    assert req.has(name) is (expected is not None)


def test_get_all_splits_lists_only() -> None:
    raw = (
        b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
        b'Contact: "Doe, John" <sip:j,k@x;a=1>, <sip:k@y>\r\nContact: sip:l@z\r\n'
        b"Subject: hello, world\r\nSubject: again\r\nAllow: INVITE, ACK,BYE\r\n\r\n"
    )
    msg = parse_message_untrusted(raw)
    assert msg.get_all("m") == ['"Doe, John" <sip:j,k@x;a=1>', "<sip:k@y>", "sip:l@z"]
    assert msg.get_all("s") == ["hello, world", "again"]
    assert msg.get_all("allow") == ["INVITE", "ACK", "BYE"]
    assert msg.contacts[0].display == "Doe, John"


def test_line_folding() -> None:
    raw = b"OPTIONS sip:a@b SIP/2.0\r\nSubject: one\r\n  two\r\n\tthree\r\nVia: SIP/2.0/UDP h\r\n\r\n"
    msg = parse_message_untrusted(raw)
    assert msg.get("subject") == "one two three"
    assert msg.to_bytes() == raw


def test_edits_and_rebuild() -> None:
    req = parse_message_untrusted(INVITE)
    assert isinstance(req, Request)
    assert decrement_max_forwards(req) == 69
    branch = new_branch()
    assert branch.startswith("z9hG4bK") and len(branch) >= 23
    req.insert_top("Via", f"SIP/2.0/UDP proxy.example.com;branch={branch}")
    req.insert_top("Record-Route", "<sip:proxy.example.com;lr>")
    assert req.pop_first("Route") == "<sip:p1.example.com;lr>"
    assert req.get_all("route") == ["<sip:p2.example.com;lr>"]
    req.uri = req.routes[0].uri.copy()
    out = parse_message_untrusted(req.to_bytes())
    assert isinstance(out, Request)
    assert str(out.uri) == "sip:p2.example.com;lr"
    assert out.top_via.branch == branch and len(out.vias) == 3
    assert out.max_forwards == 69
    assert out.get("record-route") == "<sip:proxy.example.com;lr>"
    assert out.body == b"v=0\n" and out.content_length == 4


def test_set_remove_append_and_cache_invalidation() -> None:
    req = parse_message_untrusted(INVITE)
    assert req.max_forwards == 70
    req.set("Max-Forwards", "5")
    assert req.max_forwards == 5
    assert req.remove("via") == 1 and not req.has("v")
    with pytest.raises(SIPError) as exc:
        req.top_via  # noqa: B018
    assert exc.value.status == 400
    req.append("v", "SIP/2.0/TLS h.example.com:5061;branch=z9hG4bKq")
    assert req.top_via.transport == "TLS" and req.top_via.port == 5061
    assert b"\r\nVia: SIP/2.0/TLS" in req.to_bytes()
    req.set_body(b"hello", "text/plain")
    out = parse_message_untrusted(req.to_bytes())
    assert out.body == b"hello" and out.get("content-type") == "text/plain" and out.content_length == 5


def test_in_place_uri_change_is_serialized() -> None:
    req = parse_message_untrusted(INVITE)
    assert isinstance(req, Request)
    req.uri.host = "other.example.com"
    assert b"INVITE sip:bob@other.example.com SIP/2.0\r\n" in req.to_bytes()


def test_copy_is_independent() -> None:
    req = parse_message_untrusted(INVITE)
    assert isinstance(req, Request)
    twin = req.copy()
    twin.insert_top("Via", "SIP/2.0/UDP p;branch=z9hG4bKz")
    twin.uri.user = "carol"
    assert req.to_bytes() == INVITE
    assert twin.top_via.host == "p" and req.top_via.host == "pc33.atlanta.example.com"


def test_make_response() -> None:
    req = parse_message_untrusted(INVITE)
    assert isinstance(req, Request)
    resp = make_response(req, 486)
    assert (resp.status, resp.reason) == (486, "Busy Here")
    assert resp.get_all("via") == req.get_all("via")
    assert resp.to.tag and resp.from_.tag == "1928301774"
    assert resp.call_id == req.call_id and resp.cseq == req.cseq
    assert resp.content_length == 0 and not resp.has("contact")
    trying = make_response(req, 100, headers=[("Server", "trioproxy")])
    assert trying.to.tag is None and trying.get("server") == "trioproxy"
    tagged = make_response(req, 200, "Fine", to_tag="abc")
    assert tagged.to.tag == "abc" and tagged.reason == "Fine"
    assert parse_message_untrusted(tagged.to_bytes()).same_as(tagged)


def test_make_cancel_and_ack() -> None:
    req = parse_message_untrusted(INVITE)
    assert isinstance(req, Request)
    cancel = make_cancel(req)
    assert cancel.method == "CANCEL" and cancel.uri.equivalent(req.uri)
    assert len(cancel.vias) == 1 and cancel.top_via.branch == req.top_via.branch
    assert (cancel.cseq.seq, cancel.cseq.method) == (314159, "CANCEL")
    assert cancel.get_all("route") == req.get_all("route")
    resp = make_response(req, 404, to_tag="t1")
    ack = make_ack(req, resp)
    assert ack.method == "ACK" and ack.to.tag == "t1" and ack.cseq.method == "ACK"
    assert ack.top_via.branch == req.top_via.branch and ack.call_id == req.call_id
    assert parse_message_untrusted(ack.to_bytes()).same_as(ack)


def test_build() -> None:
    req = Request.build(
        "OPTIONS", "sip:x@y.example.com", [("Via", "SIP/2.0/UDP h;branch=z9hG4bK1"), ("CSeq", "1 OPTIONS")]
    )
    raw = req.to_bytes()
    assert raw.startswith(b"OPTIONS sip:x@y.example.com SIP/2.0\r\nVia: ") and raw.endswith(
        b"Content-Length: 0\r\n\r\n"
    )
    resp = Response.build(404, None, [("CSeq", "1 OPTIONS")], b"x")
    assert resp.to_bytes() == b"SIP/2.0 404 Not Found\r\nCSeq: 1 OPTIONS\r\nContent-Length: 1\r\n\r\nx"


def test_max_forwards_zero_and_absent() -> None:
    req = parse_message_untrusted(INVITE.replace(b"Max-Forwards: 70", b"Max-Forwards: 0"))
    assert isinstance(req, Request)
    with pytest.raises(SIPError) as exc:
        decrement_max_forwards(req)
    assert exc.value.status == 483
    req.remove("Max-Forwards")
    assert decrement_max_forwards(req) == 70 and req.max_forwards == 70


@pytest.mark.parametrize(
    ("status", "phrase"), [(100, "Trying"), (200, "OK"), (487, "Request Terminated"), (499, "Client Error")]
)
def test_reason_phrase(status: int, phrase: str) -> None:
    assert reason_phrase(status) == phrase


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"", 400),
        (b"INVITE sip:a@b SIP/2.0\r\nVia: x", 400),
        (b"INVITE  sip:a@b SIP/2.0\r\n\r\n", 400),
        (b"INVITE sip:a@b SIP/3.0\r\n\r\n", 505),
        (b"SIP/2.0 99 Low\r\n\r\n", 400),
        (b"SIP/2.0 2000 Big\r\n\r\n", 400),
        (b"INVITE sip:a@b SIP/2.0\r\nNoColon\r\n\r\n", 400),
        (b"INVITE sip:a@b SIP/2.0\r\nBad Name: x\r\n\r\n", 400),
        (b"INVITE sip:a@b SIP/2.0\r\nl: 10\r\n\r\nshort", 400),
        (b"INVITE sip:a@b SIP/2.0\r\nl: -1\r\n\r\n", 400),
        (b"INVITE sip:a@b SIP/2.0\r\nX: a\rb\r\n\r\n", 400),
        (b"INVITE sip:a@b SIP/2.0\r\n" + b"X: y\r\n" * 200 + b"\r\n", 400),
        (b"INVITE sip:a@b SIP/2.0\r\nX: " + b"y" * 9000 + b"\r\n\r\n", 400),
        (b"INVITE sip:" + b"a" * 9000 + b" SIP/2.0\r\n\r\n", 414),
        (b"INVITE sip:a@b SIP/2.0\r\n\r\n" + b"x" * 70000, 413),
    ],
)
def test_malformed(raw: bytes, status: int) -> None:
    with pytest.raises(SIPError) as exc:
        parse_message_untrusted(raw)
    assert exc.value.status == status


def test_datagram_body_truncated_to_content_length() -> None:
    raw = b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 2\r\n\r\nhi"
    msg = parse_message_untrusted(raw + b"garbage")
    assert msg.body == b"hi" and msg.to_bytes() == raw


def test_leading_crlf_and_bare_lf() -> None:
    msg = parse_message_untrusted(b"\r\n\r\nOPTIONS sip:a@b SIP/2.0\r\nCSeq: 1 OPTIONS\r\n\r\n")
    assert msg.cseq.seq == 1
    lf = parse_message_untrusted(b"OPTIONS sip:a@b SIP/2.0\nCSeq: 2 OPTIONS\nl: 0\n\n")
    assert lf.cseq.seq == 2 and b"\r\nCSeq: 2 OPTIONS\r\n" in (lf.set("X", "1"), lf.to_bytes())[1]


@pytest.mark.parametrize("value", ["a\r\nVia: SIP/2.0/UDP evil", "a\nb", "a\rb"])
def test_edits_refuse_line_breaks(value: str) -> None:
    req = parse_message_untrusted(INVITE)
    for edit in (req.set, req.append, req.insert_top):
        with pytest.raises(ValueError, match="line break"):
            edit("X-Test", value)
    assert req.to_bytes() == INVITE


def test_read_uri_keeps_its_text_and_rewrites_when_changed() -> None:
    raw = INVITE.replace(b"INVITE sip:bob@biloxi.example.com", b"INVITE SIP:bob@BILOXI.example.com")
    req = parse_message_untrusted(raw)
    assert isinstance(req, Request)
    assert req.uri.host == "BILOXI.example.com"
    assert req.to_bytes() == raw
    req.set("X-Edit", "1")
    assert req.to_bytes().startswith(b"INVITE SIP:bob@BILOXI.example.com SIP/2.0\r\n")
    req.uri.user = "carol"
    assert req.to_bytes().startswith(b"INVITE sip:carol@BILOXI.example.com SIP/2.0\r\n")


@pytest.mark.parametrize(
    "raw",
    [
        INVITE,
        OK,
        # Each of these leaves the one-pass path of the parser for the general one; both must agree.
        INVITE.replace(b"i: a84b4c76e66710\r\n", b"i: a84b4c76e66710\r\n x\r\n"),
        INVITE.replace(b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\n"),
        INVITE.replace(b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\rX: 1\r\n"),
        INVITE.replace(b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\x0b\r\n"),
        INVITE.replace(b"Max-Forwards: 70\r\n", "Max-Forwards: 70\u2028\r\n".encode()),
        INVITE.replace(b"Content-Length: 4\r\n\r\n", b"Content-Length: 4\r\r\n\r\n"),
        INVITE.replace(b"Max-Forwards: 70\r\n", b"X-Never-Seen-Before-Name: 1\r\n"),
        INVITE.replace(b"Max-Forwards: 70\r\n", b"Max-Forwards 70\r\n"),
        INVITE.replace(b"Max-Forwards: 70\r\n", b"Max Forwards: 70\r\n"),
        b"\r\n" + INVITE,
    ],
)
def test_fast_and_general_parse_agree(raw: bytes) -> None:
    from trioproxy.sip.parser import _parse_general

    def outcome(parse: Callable[[bytes], Request | Response]) -> object:
        try:
            msg = parse(raw)
        except SIPError as exc:
            return (exc.status, exc.reason)
        return (type(msg), msg.start_line(), msg.headers(), msg.body, msg.to_bytes())

    assert outcome(parse_message_untrusted) == outcome(_parse_general)


@pytest.mark.parametrize("written", ["70", " 70", "070", "1", "255", "70 ", "\t9"])
def test_decrement_max_forwards_however_written(written: str) -> None:
    req = parse_message_untrusted(INVITE.replace(b"Max-Forwards: 70", f"Max-Forwards:{written}".encode()))
    assert isinstance(req, Request)
    n = int(written.strip()) - 1
    assert decrement_max_forwards(req) == n
    assert f"\r\nMax-Forwards: {n}\r\n".encode() in req.to_bytes()
    for bad, status in (("256", 400), ("0", 483), ("00", 483), ("x", 400), ("", 400)):
        req = parse_message_untrusted(INVITE.replace(b"Max-Forwards: 70", f"Max-Forwards: {bad}".encode()))
        assert isinstance(req, Request)
        with pytest.raises(SIPError) as exc:
            decrement_max_forwards(req)
        assert exc.value.status == status


# A Content-Length line that states the body's length is kept as written; leading zeros are rewritten.
@pytest.mark.parametrize(("written", "rebuilt"), [("4", "4"), ("004", " 4"), (" 4 ", " 4 "), ("\t4", "\t4")])
def test_content_length_rewritten_only_when_it_must_be(written: str, rebuilt: str) -> None:
    raw = INVITE.replace(b"Content-Length: 4", f"Content-Length:{written}".encode())
    req = parse_message_untrusted(raw)
    assert req.to_bytes() == raw
    req.set("X-Edit", "1")
    assert f"\r\nContent-Length:{rebuilt}\r\n".encode() in req.to_bytes()
    req.body = b"v=0\r\nx"
    req.set("X-Edit", "2")
    assert b"\r\nContent-Length: 6\r\n" in req.to_bytes() and req.to_bytes().endswith(b"\r\n\r\nv=0\r\nx")
    copy = req.copy()
    copy.insert_top("Content-Length", "99")
    copy.remove("Content-Length")
    assert copy.to_bytes().endswith(b"\r\nContent-Length: 6\r\n\r\nv=0\r\nx")
