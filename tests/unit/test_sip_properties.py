"""Properties: round trips of generated messages, and nothing but SIPError out of untrusted input."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trioproxy.sip import (
    URI,
    Keepalive,
    Message,
    NameAddr,
    Request,
    Response,
    SIPError,
    StreamFramer,
    Via,
    make_response,
    parse_message_untrusted,
    parse_uri_untrusted,
    validate_request_untrusted,
    validate_response_untrusted,
)
from trioproxy.sip.parser import _parse_general
from trioproxy.sip.values import _VIA_RE

DATA = Path(__file__).parent.parent / "data"
SEEDS = [p.read_bytes() for d in ("rfc4475", "rfc5118") for p in sorted((DATA / d).glob("*.dat"))]
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# The cheap properties over hostile input get more examples.
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~", min_size=1,
                max_size=12)  # fmt: skip
LABEL = st.tuples(
    st.sampled_from("abcxyz"), st.text(alphabet="abc019-", max_size=6), st.sampled_from("az09")
).map("".join)
HOST = st.one_of(
    st.lists(LABEL, min_size=1, max_size=3).map(".".join),
    st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t))),
    st.sampled_from(["::1", "2001:db8::10", "::ffff:192.0.2.1", "fe80::1:2:3"]),
)
USER = st.lists(st.one_of(st.sampled_from(list("aZ09-_.!~*'()&=+$,;?/")), st.sampled_from(["%41", "%00", "%3A"])),
               min_size=1, max_size=10).map("".join)  # fmt: skip
PNAME = st.tuples(st.sampled_from("abqx"), st.text(alphabet="abc09-", max_size=6)).map("".join)
URI_PVALUE = st.one_of(st.none(), st.text(alphabet="aZ09-_.!~*'()", min_size=1, max_size=8))
TOKEN_PVALUE = st.one_of(st.none(), st.text(alphabet="aZ09-_.!~*'%+`", min_size=1, max_size=8))
PARAMS = st.dictionaries(PNAME, URI_PVALUE, max_size=4)
HEADER_PARAMS = st.dictionaries(PNAME, TOKEN_PVALUE, max_size=4)


@st.composite
def uris(draw: st.DrawFn) -> URI:
    return URI(
        draw(st.sampled_from(["sip", "sips"])),
        user=draw(st.one_of(st.none(), USER)),
        host=draw(HOST),
        port=draw(st.one_of(st.none(), st.integers(1, 65535))),
        params=draw(PARAMS),
    )


@st.composite
def requests(draw: st.DrawFn) -> Request:
    method = draw(st.sampled_from(["INVITE", "OPTIONS", "REGISTER", "BYE", "MESSAGE", "X-NEW.m"]))
    vias = draw(st.lists(st.builds(Via, st.sampled_from(["UDP", "TCP", "TLS"]), HOST,
                                   st.one_of(st.none(), st.integers(1, 65535)),
                                   HEADER_PARAMS.map(lambda p: {"branch": "z9hG4bK" + "x" * 5, **p})),
                         min_size=1, max_size=3))  # fmt: skip
    headers = [("Via", ", ".join(map(str, vias)) if draw(st.booleans()) else str(vias[0]))]
    headers += [("Via", str(v)) for v in vias[1:]] if len(headers[0][1].split(", SIP")) == 1 else []
    headers += [
        ("From", str(NameAddr(draw(st.one_of(st.none(), st.text(alphabet="Ab z", max_size=10))),
                              draw(uris()), {"tag": draw(TOKEN)}))),
        ("t", str(NameAddr(None, draw(uris()), {}))),
        ("Call-ID", draw(TOKEN) + "@" + draw(HOST)),
        ("CSeq", f"{draw(st.integers(0, 2**31 - 1))} {method}"),
        ("Max-Forwards", str(draw(st.integers(0, 255)))),
    ]  # fmt: skip
    extra = draw(st.lists(st.tuples(TOKEN.map(lambda t: "X-" + t),
                                    st.text(alphabet=" !#,;:<>@az09\"", max_size=20).map(str.strip)),
                          max_size=4))  # fmt: skip
    body = draw(st.binary(max_size=64))
    return Request.build(method, draw(uris()), headers + extra, body)


def _touch(msg: Message) -> None:
    # Every reader a proxy uses: each raises SIPError or returns.
    readers = [
        lambda: msg.vias, lambda: msg.top_via, lambda: msg.call_id, lambda: msg.cseq, lambda: msg.from_,
        lambda: msg.to, lambda: msg.max_forwards, lambda: msg.content_length, lambda: msg.contacts,
        lambda: msg.routes, lambda: msg.record_routes, lambda: msg.paths, lambda: msg.expires,
        lambda: [msg.get_all(h) for h in ("via", "contact", "accept", "x")],
        lambda: (validate_request_untrusted(msg) if isinstance(msg, Request)
                 else validate_response_untrusted(msg) if isinstance(msg, Response) else None),
    ]  # fmt: skip
    if isinstance(msg, Request):
        readers.append(lambda: msg.uri)
    for read in readers:
        try:
            read()
        except SIPError:
            pass
    copy = msg.copy()
    copy.insert_top("Via", "SIP/2.0/UDP p.example.com;branch=z9hG4bKprop")
    try:
        parse_message_untrusted(copy.to_bytes())
    except SIPError as exc:
        # A message that parsed once is rebuilt into one that parses again, unless it grew past a bound.
        assert exc.status in (400, 413, 414)
    assert msg.to_bytes()


@SETTINGS
@given(requests())
def test_generated_requests_round_trip(req: Request) -> None:
    raw = req.to_bytes()
    first = parse_message_untrusted(raw)
    assert first.same_as(req)
    assert first.to_bytes() == raw
    validate_request_untrusted(first)  # type: ignore[arg-type]
    assert [str(v) for v in first.vias] == [str(v) for v in req.vias]
    second = parse_message_untrusted(first.to_bytes())
    assert second.same_as(first)


@SETTINGS
@given(requests(), st.integers(100, 699), st.booleans())
def test_responses_to_generated_requests_round_trip(req: Request, status: int, reason: bool) -> None:
    resp = make_response(req, status, "Some Reason" if reason else None)
    again = parse_message_untrusted(resp.to_bytes())
    assert isinstance(again, Response) and again.same_as(resp)
    assert (again.status, again.get_all("via"), again.call_id) == (status, req.get_all("via"), req.call_id)
    assert (again.to.tag is not None) == (status > 100 or req.to.tag is not None)
    validate_response_untrusted(again)


@SETTINGS
@given(uris())
def test_generated_uris_round_trip(uri: URI) -> None:
    again = parse_uri_untrusted(str(uri))
    assert again == uri and again.equivalent(uri)


@FUZZ
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_raise_only_sip_error(data: bytes) -> None:
    try:
        msg = parse_message_untrusted(data)
    except SIPError:
        return
    _touch(msg)


@FUZZ
@given(st.text(max_size=200))
def test_arbitrary_values_raise_only_sip_error(text: str) -> None:
    for parse in (parse_uri_untrusted, Via.parse_untrusted, NameAddr.parse_untrusted):
        try:
            parse(text)  # type: ignore[operator]
        except SIPError:
            pass


MUTATION = st.tuples(
    st.sampled_from(["flip", "insert", "delete", "dup"]),
    st.floats(0, 1),
    st.sampled_from([b"\r\n", b"\r\n ", b":", b";", b",", b'"', b"<", b">", b"\\", b"\x00", b"%", b"@", b"[",
                     b"]", b" ", b"\n", b"\r", b"=", b"\xff", b"SIP/2.0", b"Content-Length: 99999\r\n"]),
)  # fmt: skip


@FUZZ
@given(st.sampled_from(SEEDS), st.lists(MUTATION, min_size=1, max_size=6))
def test_mutated_messages_raise_only_sip_error(
    seed: bytes, mutations: list[tuple[str, float, bytes]]
) -> None:
    data = bytearray(seed)
    for kind, where, piece in mutations:
        i = int(where * len(data))
        if kind == "flip" and data:
            data[min(i, len(data) - 1)] ^= 0x20
        elif kind == "insert":
            data[i:i] = piece
        elif kind == "delete":
            del data[i : i + len(piece)]
        else:
            data[i:i] = data[i : i + 40]
    try:
        msg = parse_message_untrusted(bytes(data))
    except SIPError:
        return
    _touch(msg)


@SETTINGS
@given(st.lists(requests(), min_size=1, max_size=4), st.lists(st.integers(1, 300), min_size=1, max_size=20),
       st.booleans())  # fmt: skip
def test_framer_reassembles_any_chunking(reqs: list[Request], cuts: list[int], ping: bool) -> None:
    stream = b"".join((b"\r\n\r\n" if ping else b"") + r.to_bytes() for r in reqs)
    framer = StreamFramer()
    out: list[bytes | Keepalive] = []
    pos = 0
    i = 0
    while pos < len(stream):
        size = cuts[i % len(cuts)]
        out += framer.feed(stream[pos : pos + size])
        pos += size
        i += 1
    messages = [item for item in out if isinstance(item, bytes)]
    assert messages == [r.to_bytes() for r in reqs]
    assert out.count(Keepalive.PING) == (len(reqs) if ping else 0)
    assert framer.buffered == 0


@FUZZ
@given(st.binary(max_size=1024), st.integers(1, 64))
def test_framer_raises_only_sip_error(data: bytes, chunk: int) -> None:
    framer = StreamFramer(max_message_size=4096)
    try:
        for pos in range(0, len(data), chunk):
            for item in framer.feed(data[pos : pos + chunk]):
                if isinstance(item, bytes):
                    try:
                        parse_message_untrusted(item)
                    except SIPError:
                        pass
    except SIPError:
        pass


def _parsed(parse: Callable[[bytes], Message], data: bytes) -> object:
    try:
        msg = parse(data)
    except SIPError as exc:
        return (exc.status, exc.reason)
    return (type(msg), msg.start_line(), msg.headers(), msg.body, msg.to_bytes())


LINE_PIECES = [b"\r\n", b"\n", b"\r", b"\r\n ", b"\r\n\t", b"\x0b", b"\x0c", "\u2028".encode(), b":", b" ", b"X-New-",
               b"l: 0\r\n", b"Content-Length: 007\r\n", b"v: SIP/2.0/UDP h;branch=z9hG4bKv\r\n"]  # fmt: skip


@FUZZ
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.floats(0, 1), st.sampled_from(LINE_PIECES)), max_size=4))
def test_fast_parse_agrees_with_general_parse(seed: bytes, inserts: list[tuple[float, bytes]]) -> None:
    # The parser's one-pass path takes the common messages and leaves the rest to the general path; on any
    # input both give the same message or the same error.
    data = bytearray(seed)
    for where, piece in inserts:
        i = int(where * len(data))
        data[i:i] = piece
    assert _parsed(parse_message_untrusted, bytes(data)) == _parsed(_parse_general, bytes(data))


@SETTINGS
@given(st.lists(st.builds(Via, st.sampled_from(["UDP", "TCP", "TLS", "WSS", "udp"]), HOST,
                          st.one_of(st.none(), st.integers(1, 99999)),
                          HEADER_PARAMS.map(lambda p: {"branch": "z9hG4bK" + "x" * 5, **p})),
                min_size=1, max_size=2),
       st.sampled_from(["", " ", "  "]))  # fmt: skip
def test_via_common_form_agrees_with_full_grammar(vias: list[Via], lead: str) -> None:
    # The everyday Via shape is read by a narrower regex; the full grammar must see the same value.
    for via in vias:
        text = lead + str(via)
        m = _VIA_RE.fullmatch(text)
        try:
            got = Via.parse_untrusted(text)
        except SIPError as exc:
            assert m is None or exc.reason == "Bad Via Port"
            continue
        assert m is not None
        name, version, transport, host, port, params = m.groups()
        assert (name.upper(), version) == ("SIP", "2.0") and str(got).endswith(params)
        assert (got.transport, got.host, got.port) == (
            transport.upper(),
            host.strip("[]"),
            port and int(port),
        )
        assert str(got) == str(via).replace(f"/{via.transport} ", f"/{via.transport.upper()} ")
        assert got.params == dict(via.params) and got.branch == via.params["branch"]
