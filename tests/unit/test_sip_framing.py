"""Stream framing by Content-Length and RFC 5626 keepalives."""

from __future__ import annotations

import pytest

from trioproxy.sip import Keepalive, SIPError, StreamFramer, parse_message_untrusted

MSG = b"MESSAGE sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nl: 5\r\n\r\nhello"
EMPTY = b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length:   0\r\n\r\n"


def test_one_message_in_one_read() -> None:
    assert StreamFramer().feed(MSG) == [MSG]


def test_byte_by_byte() -> None:
    framer = StreamFramer()
    out: list[bytes | Keepalive] = []
    for i in range(len(MSG + EMPTY)):
        out += framer.feed((MSG + EMPTY)[i : i + 1])
    assert out == [MSG, EMPTY] and framer.buffered == 0


def test_several_messages_and_keepalives() -> None:
    stream = b"\r\n\r\n" + MSG + b"\r\n" + EMPTY + MSG[:10]
    framer = StreamFramer()
    assert framer.feed(stream) == [Keepalive.PING, MSG, Keepalive.PONG, EMPTY]
    assert framer.feed(MSG[10:]) == [MSG]
    for item in (MSG, EMPTY):
        assert parse_message_untrusted(item).to_bytes() == item


def test_split_ping() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\r\n") == []
    assert framer.feed(b"\r\n") == [Keepalive.PING]
    assert framer.feed(b"\r\n") == []
    assert framer.feed(EMPTY) == [Keepalive.PONG, EMPTY]


@pytest.mark.parametrize(
    ("stream", "status"),
    [
        (b"OPTIONS sip:a@b SIP/2.0\r\nVia: x\r\n\r\n", 400),
        (b"OPTIONS sip:a@b SIP/2.0\r\nl: x\r\n\r\n", 400),
        (b"OPTIONS sip:a@b SIP/2.0\r\nl: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"OPTIONS sip:a@b SIP/2.0\r\nl: 70000\r\n\r\n", 413),
        (b"OPTIONS sip:a@b SIP/2.0\r\nX: " + b"y" * 40000, 413),
        (b"\n\rX", 400),
    ],
)
def test_unrecoverable(stream: bytes, status: int) -> None:
    with pytest.raises(SIPError) as exc:
        StreamFramer().feed(stream)
    assert exc.value.status == status


def test_small_max_message_size() -> None:
    with pytest.raises(SIPError) as exc:
        StreamFramer(max_message_size=20).feed(MSG)
    assert exc.value.status == 413


def test_drip_feed_of_a_long_head_stays_bounded() -> None:
    framer = StreamFramer()
    with pytest.raises(SIPError):
        for _ in range(40000):
            framer.feed(b"a")
    assert framer.buffered > 32000


def test_messages_before_garbage_are_delivered_then_the_error() -> None:
    framer = StreamFramer()
    assert framer.feed(MSG + b"\n\rjunk") == [MSG]
    with pytest.raises(SIPError) as exc:
        framer.feed(b"more")
    assert exc.value.status == 400


def test_many_keepalives_and_messages_in_one_read() -> None:
    framer = StreamFramer()
    out = framer.feed(b"\r\n\r\n" * 5000 + EMPTY * 500)
    assert out.count(Keepalive.PING) == 5000 and out.count(EMPTY) == 500 and framer.buffered == 0
