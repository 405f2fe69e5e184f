"""Mutations of SIP messages for fuzzing: pure functions of bytes and a ``random.Random``.

A mutation takes a message's octets and a seeded generator and returns other octets: headers deleted,
duplicated or reordered, the message truncated anywhere, bytes flipped, a value made huge, a wrong
Content-Length, unbalanced quotes, angle brackets or IPv6 brackets, bad %-escapes, octets that are not UTF-8,
folded lines. The same (message, steps) always gives the same result, so a failure is replayed from its seed.

Used by the property tests of the proxy core (the steps are drawn by Hypothesis, which shrinks them) and by
``scripts/fuzz_blast.py`` (random steps, against a running proxy):

    rng = random.Random(7)
    data = mutate(seed_messages()[0], rng)               # 1..3 random steps
    data = apply_steps(seed, [("truncate", 12345)])      # replay exact steps
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence

__all__ = ["MUTATIONS", "apply_steps", "fill", "mutate", "seed_messages", "seed_requests", "seed_responses"]

Mutation = Callable[[bytes, random.Random], bytes]

_CRLF = b"\r\n"
_ADDRESS_HEADERS = (b"From", b"To", b"Contact", b"Route", b"Record-Route", b"f", b"t", b"m")


def _template(lines: Sequence[str], body: str = "") -> bytes:
    raw_body = body.replace("\n", "\r\n").encode()
    head = "\r\n".join([*lines, f"Content-Length: {len(raw_body)}"]) + "\r\n\r\n"
    return head.encode() + raw_body


_SDP = (
    "v=0\no=alice 2890844526 2890844526 IN IP4 127.0.0.2\ns=-\nc=IN IP4 127.0.0.2\nt=0 0\n"
    "m=audio 49170 RTP/AVP 0\na=rtpmap:0 PCMU/8000\n"
)


def seed_requests(
    host: str = "127.0.0.2", port: int = 5060, transport: str = "UDP", target: str = "example.com"
) -> list[bytes]:
    """Valid requests from a caller at host:port (INVITE with SDP, REGISTER, OPTIONS, in-dialog BYE, MESSAGE)."""
    via = f"Via: SIP/2.0/{transport} {host}:{port};branch=z9hG4bK{{b}};rport"
    common = [
        "Max-Forwards: 70",
        f'From: "Alice \\"A\\"" <sip:alice@{target}>;tag=a{{b}}',
    ]
    out = [
        _template(
            [
                f"INVITE sip:bob@{target} SIP/2.0",
                via,
                *common,
                f"To: Bob <sip:bob@{target}>",
                "Call-ID: inv{b}@127.0.0.2",
                "CSeq: 1 INVITE",
                f"Contact: <sip:alice@{host}:{port};transport=udp>",
                "Supported: replaces, timer",
                "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS",
                "Content-Type: application/sdp",
            ],
            _SDP,
        ),
        _template(
            [
                f"REGISTER sip:{target} SIP/2.0",
                via,
                *common,
                f"To: <sip:alice@{target}>",
                "Call-ID: reg{b}@127.0.0.2",
                "CSeq: 7 REGISTER",
                f'Contact: <sip:alice@{host}:{port}>;expires=600;q=0.5;+sip.instance="<urn:uuid:1>"',
                "Expires: 600",
            ]
        ),
        _template(
            [
                f"OPTIONS sip:{target} SIP/2.0",
                via,
                *common,
                f"To: <sip:{target}>",
                "Call-ID: opt{b}@127.0.0.2",
                "CSeq: 1 OPTIONS",
                "Accept: application/sdp",
            ]
        ),
        _template(
            [
                "BYE sip:bob@[::1]:5070;transport=udp SIP/2.0",
                via,
                *common,
                f"To: <sip:bob@{target}>;tag=b{{b}}",
                "Call-ID: bye{b}@127.0.0.2",
                "CSeq: 2 BYE",
                f"Route: <sip:{target};lr>, <sip:[::1];lr>",
            ]
        ),
        _template(
            [
                f"MESSAGE sip:bob%40x@{target};user=phone?Subject=hi SIP/2.0",
                via,
                *common,
                f"To: <sip:bob@{target}>",
                "Call-ID: msg{b}@127.0.0.2",
                "CSeq: 3 MESSAGE",
                "Content-Type: text/plain;charset=utf-8",
            ],
            "h\u00e9llo",
        ),
    ]
    return out


def seed_responses(host: str = "127.0.0.1", port: int = 5060, target: str = "example.com") -> list[bytes]:
    """Valid responses as a downstream UA would send them (to a proxy at host:port)."""
    via = f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{{b}}.x, SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bKc"
    out = []
    for status, reason, method, extra in (
        (180, "Ringing", "INVITE", ["Contact: <sip:bob@127.0.0.3>"]),
        (200, "OK", "INVITE", ["Contact: <sip:bob@127.0.0.3>", "Record-Route: <sip:p.example.com;lr>"]),
        (486, "Busy Here", "INVITE", ["Retry-After: 30"]),
        (200, "OK", "REGISTER", ["Contact: <sip:alice@127.0.0.2>;expires=600"]),
    ):
        out.append(
            _template(
                [
                    f"SIP/2.0 {status} {reason}",
                    via,
                    f"From: <sip:alice@{target}>;tag=a1",
                    f"To: <sip:bob@{target}>;tag=uas",
                    "Call-ID: resp{b}@127.0.0.2",
                    f"CSeq: 1 {method}",
                    *extra,
                ]
            )
        )
    return out


def seed_messages() -> list[bytes]:
    """Every seed, requests first; ``{b}`` marks where a branch/tag/Call-ID token goes (see ``fill``)."""
    return seed_requests() + seed_responses()


def fill(template: bytes, token: str) -> bytes:
    """Put ``token`` where a seed says ``{b}`` (a unique branch, tag and Call-ID per message)."""
    return template.replace(b"{b}", token.encode())


# -- the mutations ----------------------------------------------------------------------------------------


def _split(data: bytes) -> tuple[list[bytes], bytes]:
    head, sep, body = data.partition(b"\r\n\r\n")
    return head.split(_CRLF), (body if sep else b"")


def _join(lines: list[bytes], body: bytes) -> bytes:
    return _CRLF.join(lines) + b"\r\n\r\n" + body


def _pick_header(lines: list[bytes], rng: random.Random, names: Sequence[bytes] = ()) -> int | None:
    wanted = {n.lower() for n in names}
    idx = [
        i
        for i in range(1, len(lines))
        if b":" in lines[i] and (not wanted or lines[i].split(b":", 1)[0].strip().lower() in wanted)
    ]
    return rng.choice(idx) if idx else None


def delete_header(data: bytes, rng: random.Random) -> bytes:
    lines, body = _split(data)
    i = _pick_header(lines, rng)
    if i is not None:
        del lines[i]
    return _join(lines, body)


def duplicate_header(data: bytes, rng: random.Random) -> bytes:
    lines, body = _split(data)
    i = _pick_header(lines, rng)
    if i is not None:
        lines.insert(rng.randrange(1, len(lines) + 1), lines[i])
    return _join(lines, body)


def reorder_headers(data: bytes, rng: random.Random) -> bytes:
    lines, body = _split(data)
    rest = lines[1:]
    rng.shuffle(rest)
    return _join(lines[:1] + rest, body)


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(0, len(data) + 1)]


def flip_bytes(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        if buf:
            buf[rng.randrange(len(buf))] = rng.randrange(256)
    return bytes(buf)


def oversize_value(data: bytes, rng: random.Random) -> bytes:
    lines, body = _split(data)
    i = _pick_header(lines, rng)
    size = rng.choice((300, 4_000, 20_000, 70_000))
    filler = rng.choice((b"a", b"9", b";p=1", b",<sip:x@y>", b" ", b"%41"))
    if i is None or rng.random() < 0.2:
        lines[0] = lines[0] + filler * (size // len(filler))  # the start line
    else:
        name, _, value = lines[i].partition(b":")
        lines[i] = name + b":" + value + filler * (size // len(filler))
    return _join(lines, body)


def wrong_content_length(data: bytes, rng: random.Random) -> bytes:
    value = rng.choice(
        (b"-1", b"99999999999", b"1x", b"", b"0", b"5, 6", str(rng.randrange(0, 2000)).encode())
    )
    out = re.sub(rb"(?im)^(content-length|l)[ \t]*:.*$", b"Content-Length: " + value, data, count=1)
    if rng.random() < 0.3:
        out += b"extra octets after the body"
    return out


def _edit_value(
    data: bytes, rng: random.Random, names: Sequence[bytes], edit: Callable[[bytes], bytes]
) -> bytes:
    lines, body = _split(data)
    i = _pick_header(lines, rng, names) if rng.random() < 0.85 else 0
    if i is None:
        i = 0
    if i == 0:
        lines[0] = edit(lines[0])
    else:
        name, _, value = lines[i].partition(b":")
        lines[i] = name + b":" + edit(value)
    return _join(lines, body)


def _insert_at(value: bytes, rng: random.Random, what: bytes) -> bytes:
    pos = rng.randrange(0, len(value) + 1)
    return value[:pos] + what + value[pos:]


def unbalanced_quote(data: bytes, rng: random.Random) -> bytes:
    what = rng.choice((b'"', b"\\", b'"\\', b'\\"'))
    return _edit_value(data, rng, (*_ADDRESS_HEADERS, b"Via", b"v"), lambda v: _insert_at(v, rng, what))


def unbalanced_angle(data: bytes, rng: random.Random) -> bytes:
    def edit(v: bytes) -> bytes:
        if rng.random() < 0.5 and (b"<" in v or b">" in v):
            return v.replace(rng.choice((b"<", b">")), b"", 1)
        return _insert_at(v, rng, rng.choice((b"<", b">", b"<<", b"<>")))

    return _edit_value(data, rng, _ADDRESS_HEADERS, edit)


def unbalanced_ipv6(data: bytes, rng: random.Random) -> bytes:
    def edit(v: bytes) -> bytes:
        if b"]" in v and rng.random() < 0.5:
            return v.replace(b"]", b"", 1)
        # Loopback addresses only: a fuzzed message must not send the proxy anywhere else.
        host = rng.choice((b"[::1", b"::1]", b"[::ffff:127.0.0.1", b"[]", b"[:::]", b"[::1]]", b"[::1]:"))
        return re.sub(rb"(127\.0\.0\.\d|example\.com|\[[^\]]*\])", host, v, count=1)

    return _edit_value(data, rng, (*_ADDRESS_HEADERS, b"Via", b"v"), edit)


def bad_escape(data: bytes, rng: random.Random) -> bytes:
    what = rng.choice((b"%", b"%z", b"%zz", b"%0", b"%00", b"%C3%28", b"%%41"))
    return _edit_value(data, rng, _ADDRESS_HEADERS, lambda v: _insert_at(v, rng, what))


def non_utf8(data: bytes, rng: random.Random) -> bytes:
    what = rng.choice((b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xfe\xff", b"\x80\x80", b"\xc0\xaf", b"\x00"))
    return _edit_value(data, rng, (), lambda v: _insert_at(v, rng, what))


def fold_line(data: bytes, rng: random.Random) -> bytes:
    def edit(v: bytes) -> bytes:
        return _insert_at(v, rng, rng.choice((b"\r\n ", b"\r\n\t", b"\r\n", b"\n", b"\r")))

    return _edit_value(data, rng, (), edit)


def empty_value(data: bytes, rng: random.Random) -> bytes:
    return _edit_value(data, rng, (), lambda v: rng.choice((b"", b" ", b";", b",", b"<>", b"sip:")))


def bad_number(data: bytes, rng: random.Random) -> bytes:
    number = rng.choice((b"-1", b"4294967296", b"99999999999999999999", b"1e3", b"0x10", b"", b"\xd9\xa3"))
    names = (b"CSeq", b"Max-Forwards", b"Expires", b"Via", b"v", b"Contact", b"m", b"Retry-After")

    def edit(v: bytes) -> bytes:
        return re.sub(rb"\d+", number, v, count=1) if re.search(rb"\d", v) else v + number

    return _edit_value(data, rng, names, edit)


MUTATIONS: dict[str, Mutation] = {
    "delete_header": delete_header,
    "duplicate_header": duplicate_header,
    "reorder_headers": reorder_headers,
    "truncate": truncate,
    "flip_bytes": flip_bytes,
    "oversize_value": oversize_value,
    "wrong_content_length": wrong_content_length,
    "unbalanced_quote": unbalanced_quote,
    "unbalanced_angle": unbalanced_angle,
    "unbalanced_ipv6": unbalanced_ipv6,
    "bad_escape": bad_escape,
    "non_utf8": non_utf8,
    "fold_line": fold_line,
    "empty_value": empty_value,
    "bad_number": bad_number,
}


def apply_steps(data: bytes, steps: Sequence[tuple[str, int]]) -> bytes:
    """Apply mutations in order, each ``(name, seed)`` with a generator of its own seed (replayable)."""
    for name, seed in steps:
        data = MUTATIONS[name](data, random.Random(seed))
    return data


def mutate(data: bytes, rng: random.Random, *, max_steps: int = 3) -> bytes:
    """1..max_steps random mutations drawn from ``rng``."""
    steps = [(rng.choice(list(MUTATIONS)), rng.getrandbits(32)) for _ in range(rng.randint(1, max_steps))]
    return apply_steps(data, steps)
