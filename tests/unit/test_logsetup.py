"""Logging set-up (text and JSON lines) and the per-call SIP message trace."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from trioproxy.logsetup import TraceFilter, setup_logging, trace_filter, trace_message
from trioproxy.sip import parse_message_untrusted

INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b"From: Alice <sip:alice@Atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Content-Length: 0\r\n\r\n"
)
OTHER = INVITE.replace(b"a84b4c76e66710", b"zzz").replace(b"sip:alice@", b"sip:carol@").replace(b"sip:bob@", b"sip:dave@")
BROKEN_FROM = INVITE.replace(b"From: Alice <sip:alice@Atlanta.example.com>;tag=1928301774", b"From: <<<")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


@pytest.mark.usefixtures("restore_logging")
def test_json_lines_carry_extra_fields_and_exceptions() -> None:
    stream = io.StringIO()
    setup_logging("info", "json", stream)
    log = logging.getLogger("trioproxy.proxy")
    log.info("relayed %s to %s", "INVITE", "192.0.2.1", extra={"call_id": "c1", "status": 200})
    log.debug("not shown at info")
    try:
        raise KeyError("boom")
    except KeyError:
        log.exception("failed\nbadly")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert set(first) == {"ts", "level", "logger", "msg", "call_id", "status"}
    assert first["ts"].endswith("Z") and first["ts"][10] == "T"
    assert (first["level"], first["logger"], first["msg"]) == ("info", "trioproxy.proxy", "relayed INVITE to 192.0.2.1")
    assert (first["call_id"], first["status"]) == ("c1", 200)
    assert second["level"] == "error"
    assert second["msg"] == "failed\nbadly"
    assert "KeyError: 'boom'" in second["exc"]


@pytest.mark.usefixtures("restore_logging")
def test_text_lines_and_replacing_the_handler() -> None:
    first_stream, stream = io.StringIO(), io.StringIO()
    setup_logging("debug", "text", first_stream)
    setup_logging("WARNING", "text", stream)
    log = logging.getLogger("trioproxy.transport")
    log.info("hidden")
    log.warning("queue full", extra={"dropped": 3})
    assert first_stream.getvalue() == ""
    (line,) = stream.getvalue().splitlines()
    assert line.endswith(" WARNING trioproxy.transport: queue full dropped=3")
    assert sum(getattr(h, "_trioproxy", False) for h in logging.getLogger().handlers) == 1


def test_bad_level_or_format() -> None:
    with pytest.raises(ValueError, match="level"):
        setup_logging("loud", "text", io.StringIO())
    with pytest.raises(ValueError, match="format"):
        setup_logging("info", "xml", io.StringIO())


def test_filter_matches_call_id_and_users() -> None:
    invite, other, broken = (parse_message_untrusted(m) for m in (INVITE, OTHER, BROKEN_FROM))
    tf = TraceFilter()
    assert not tf.active and not tf.matches(invite)
    tf.set(call_id="a84b4c76e66710@pc33.atlanta.example.com")
    assert tf.active and tf.matches(invite) and tf.matches(broken) and not tf.matches(other)
    tf.set(call_id="a84b4c76e66710@pc33.atlanta.example.com", on=False)
    assert not tf.active
    tf.set(user="bob")  # the To user
    assert tf.matches(invite) and not tf.matches(other)
    tf.clear()
    tf.set(user="sip:alice@ATLANTA.example.com")  # host compared case-insensitively, scheme dropped
    assert tf.snapshot() == {"call_ids": [], "users": ["alice@atlanta.example.com"]}
    assert tf.matches(invite) and not tf.matches(broken)
    tf.clear()
    tf.set(user="Alice")  # user parts are case-sensitive (RFC 3261 19.1.4)
    assert not tf.matches(invite)


def test_capture_is_bounded() -> None:
    tf = TraceFilter(max_calls=2, max_messages=3)
    for i in range(5):
        tf.capture("c1", {"n": i})
    tf.capture("c2", {"n": 0})
    tf.capture("c1", {"n": 5})  # c1 becomes the most recent call
    tf.capture("c3", {"n": 0})  # so c2 is the one dropped
    assert [m["n"] for m in tf.captured("c1") or []] == [3, 4, 5]
    assert tf.captured("c2") is None
    assert tf.captured("c3") == [{"n": 0}]


def test_trace_message_logs_only_traced_calls(caplog: pytest.LogCaptureFixture) -> None:
    invite, other = parse_message_untrusted(INVITE), parse_message_untrusted(OTHER)
    tf = TraceFilter()
    with caplog.at_level(logging.INFO, logger="trioproxy.sip.trace"):
        trace_message("in", invite, "udp:192.0.2.10:5060", filter=tf)
        assert caplog.records == []
        tf.set(user="alice")
        trace_message("in", invite, "udp:192.0.2.10:5060", filter=tf)
        trace_message("out", other, "udp:192.0.2.20:5060", filter=tf)
        trace_message("out", invite, "udp:192.0.2.20:5060", filter=tf)
    assert [r.getMessage().splitlines()[0] for r in caplog.records] == [
        "<< udp:192.0.2.10:5060 INVITE sip:bob@biloxi.example.com SIP/2.0",
        ">> udp:192.0.2.20:5060 INVITE sip:bob@biloxi.example.com SIP/2.0",
    ]
    record = caplog.records[0]
    assert record.name == "trioproxy.sip.trace" and record.levelno == logging.INFO
    assert record.__dict__["call_id"] == "a84b4c76e66710@pc33.atlanta.example.com"
    assert INVITE.decode() in record.getMessage()
    captured = tf.captured("a84b4c76e66710@pc33.atlanta.example.com") or []
    assert [(c["direction"], c["peer"]) for c in captured] == [("in", "udp:192.0.2.10:5060"), ("out", "udp:192.0.2.20:5060")]
    assert captured[0]["message"] == INVITE.decode()


def test_module_filter_is_the_default(caplog: pytest.LogCaptureFixture) -> None:
    invite = parse_message_untrusted(INVITE)
    try:
        trace_filter.set(call_id=invite.call_id)
        with caplog.at_level(logging.INFO, logger="trioproxy.sip.trace"):
            trace_message("in", invite, "peer")
        assert len(caplog.records) == 1
    finally:
        trace_filter.clear()
