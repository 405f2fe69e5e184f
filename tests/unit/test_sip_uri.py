"""URIs: parsing, serializing, RFC 3261 19.1.4 comparison."""

from __future__ import annotations

import pytest

from trioproxy.sip import URI, SIPError, parse_uri_untrusted

PARSE_CASES = [
    # text, scheme, user, password, host, port, params
    ("sip:alice@atlanta.com", "sip", "alice", None, "atlanta.com", None, {}),
    ("SIP:alice:secretword@atlanta.com;transport=tcp", "sip", "alice", "secretword", "atlanta.com", None,
     {"transport": "tcp"}),
    ("sips:alice@atlanta.com?subject=project%20x&priority=urgent", "sips", "alice", None, "atlanta.com", None,
     {}),
    ("sip:+1-212-555-1212:1234@gateway.com;user=phone", "sip", "+1-212-555-1212", "1234", "gateway.com", None,
     {"user": "phone"}),
    ("sips:1212@gateway.com", "sips", "1212", None, "gateway.com", None, {}),
    ("sip:alice@192.0.2.4:5070", "sip", "alice", None, "192.0.2.4", 5070, {}),
    ("sip:atlanta.com;method=REGISTER?to=alice%40atlanta.com", "sip", None, None, "atlanta.com", None,
     {"method": "REGISTER"}),
    ("sip:alice;day=tuesday@atlanta.com", "sip", "alice;day=tuesday", None, "atlanta.com", None, {}),
    ("sip:[2001:db8::10]:5060;LR", "sip", None, None, "2001:db8::10", 5060, {"lr": None}),
    ("sip:user@[::1];maddr=[::2]", "sip", "user", None, "::1", None, {"maddr": "[::2]"}),
    ("sip:%61lice@atlanta.com", "sip", "%61lice", None, "atlanta.com", None, {}),
    ("tel:+1-201-555-0123;phone-context=example.com", "tel", "+1-201-555-0123", None, "", None,
     {"phone-context": "example.com"}),
]  # fmt: skip


@pytest.mark.parametrize(("text", "scheme", "user", "password", "host", "port", "params"), PARSE_CASES)
def test_parse(
    text: str,
    scheme: str,
    user: str | None,
    password: str | None,
    host: str,
    port: int | None,
    params: dict[str, str | None],
) -> None:
    uri = parse_uri_untrusted(text)
    assert (uri.scheme, uri.user, uri.password, uri.host, uri.port, uri.params) == (
        scheme, user, password, host, port, params,
    )  # fmt: skip
    again = parse_uri_untrusted(str(uri))
    assert again == uri
    assert uri.copy() == uri and uri.copy() is not uri


def test_headers_transport_host_port() -> None:
    uri = parse_uri_untrusted("sips:alice@atlanta.com?subject=project%20x&priority=urgent")
    assert uri.headers == {"subject": "project%20x", "priority": "urgent"}
    assert parse_uri_untrusted("sip:h;transport=TCP").transport == "tcp"
    assert parse_uri_untrusted("sip:h").transport is None
    assert parse_uri_untrusted("sip:[::1]:5060").host_port == "[::1]:5060"
    assert parse_uri_untrusted("sip:x@h").host_port == "h"


def test_other_schemes_are_opaque() -> None:
    uri = parse_uri_untrusted("urn:service:sos")
    assert uri.scheme == "urn" and uri.opaque == "service:sos" and str(uri) == "urn:service:sos"


@pytest.mark.parametrize(
    "text",
    ["", "sip", "sip:", "sip:user@", "sip:host:99999", "sip:host:abc", "sip:[::1", "sip:ho st", "sip:a@b;=x",
     "sip:a@b?x", "1sip:a@b", "tel:abc z", "sip:a@b;p=<x>", "sip:[1.2.3.4]"],
)  # fmt: skip
def test_malformed(text: str) -> None:
    with pytest.raises(SIPError):
        parse_uri_untrusted(text)


# RFC 3261 19.1.4 examples: equivalent pairs, then non-equivalent pairs.
EQUIVALENT = [
    ("sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com;security=on"),
    ("sip:carol@chicago.com;newparam=5", "sip:carol@chicago.com;security=on"),
    ("sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
     "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com"),
    ("sip:alice@atlanta.com?subject=project%20x&priority=urgent",
     "sip:alice@atlanta.com?priority=urgent&subject=project%20x"),
    ("tel:+1-201-555-0123", "tel:+12015550123"),
]  # fmt: skip
NOT_EQUIVALENT = [
    ("SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:6000;transport=tcp"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com?Subject=next%20meeting"),
    ("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"),
    ("sip:carol@chicago.com;security=on", "sip:carol@chicago.com;security=off"),
    ("sip:a@b", "sips:a@b"),
    ("sip:a@b", "tel:+1"),
]


@pytest.mark.parametrize(("a", "b"), EQUIVALENT)
def test_equivalent(a: str, b: str) -> None:
    ua, ub = parse_uri_untrusted(a), parse_uri_untrusted(b)
    assert ua.equivalent(ub) and ub.equivalent(ua)


@pytest.mark.parametrize(("a", "b"), NOT_EQUIVALENT)
def test_not_equivalent(a: str, b: str) -> None:
    ua, ub = parse_uri_untrusted(a), parse_uri_untrusted(b)
    assert not ua.equivalent(ub) and not ub.equivalent(ua)


def test_build_and_str() -> None:
    uri = URI("sip", user="bob", host="2001:db8::1", port=5080, params={"transport": "tcp", "lr": None})
    assert str(uri) == "sip:bob@[2001:db8::1]:5080;transport=tcp;lr"
