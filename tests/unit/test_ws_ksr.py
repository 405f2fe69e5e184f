"""The KSR checks and NAT helpers Kamailio scripts use for WebSocket clients (RFC 7118), on one message."""

from __future__ import annotations

from trioproxy.proxy.forward import record_route_values, ws_destinations, ws_flow
from trioproxy.sip import Address, make_response, parse_uri_untrusted

from .test_routing_ksr import ev
from .test_routing_support import make_state

WS_SRC = Address("ws", "198.51.100.7", 53122)
BROWSER = "<sip:k3j2@df7jal23ls0d.invalid;transport=ws>"


async def test_proto_and_nat_uac_test_bit_64() -> None:
    ws = make_state(contact=BROWSER, source=WS_SRC)
    assert await ev("KSR.kx.get_proto()", ws) == "ws"
    assert await ev("KSR.pv.get('$pr')", ws) == "ws"
    assert await ev("KSR.nathelper.nat_uac_test(64)", ws) == "1"
    wss = make_state(contact=BROWSER, source=Address("wss", WS_SRC.host, WS_SRC.port))
    assert await ev("KSR.kx.get_proto()", wss) == "wss"
    assert await ev("KSR.nathelper.nat_uac_test(64)", wss) == "1"
    udp = make_state(source=Address("udp", "192.0.2.10", 5060))
    assert await ev("KSR.nathelper.nat_uac_test(64)", udp) == "-1"


async def test_nat_uac_test_bit_128_contact_port() -> None:
    moved = make_state(contact="<sip:alice@192.0.2.10:5062>", source=Address("udp", "192.0.2.10", 5060))
    assert await ev("KSR.nathelper.nat_uac_test(128)", moved) == "1"
    same = make_state(contact="<sip:alice@192.0.2.10:5060>", source=Address("udp", "192.0.2.10", 5060))
    assert await ev("KSR.nathelper.nat_uac_test(128)", same) == "-1"


async def test_add_contact_alias_and_handle_ruri_alias_with_ws_protocols() -> None:
    for transport, proto in (("ws", 5), ("wss", 6)):
        state = make_state(contact=BROWSER, source=Address(transport, WS_SRC.host, WS_SRC.port))
        assert await ev("KSR.nathelper.add_contact_alias()", state) == "1"
        alias = f"alias={WS_SRC.host}~{WS_SRC.port}~{proto}"
        assert state.req.get("Contact") == f"<sip:k3j2@df7jal23ls0d.invalid;transport=ws;{alias}>"
        back = make_state("BYE", f"sip:k3j2@df7jal23ls0d.invalid;transport=ws;{alias}", to_tag="x")
        assert await ev("KSR.nathelper.handle_ruri_alias()", back) == "1"
        assert str(back.ruri) == "sip:k3j2@df7jal23ls0d.invalid;transport=ws"
        assert back.dst_uri == f"sip:{WS_SRC.host}:{WS_SRC.port};transport={transport}"


async def test_add_contact_alias_in_a_reply_route_edits_the_reply() -> None:
    state = make_state()
    resp = make_response(state.req, 200, "OK", headers=[("Contact", BROWSER)])
    resp.source = WS_SRC
    assert await ev("KSR.nathelper.add_contact_alias()", state.for_reply(resp)) == "1"
    assert (
        resp.get("Contact")
        == f"<sip:k3j2@df7jal23ls0d.invalid;transport=ws;alias={WS_SRC.host}~{WS_SRC.port}~5>"
    )


async def test_fix_nated_register_keeps_the_ws_transport() -> None:
    state = make_state("REGISTER", "sip:proxy.example.com", contact=BROWSER, source=WS_SRC)
    assert await ev("KSR.nathelper.fix_nated_register()", state) == "1"
    assert state.received_uri == f"sip:{WS_SRC.host}:{WS_SRC.port};transport=ws"


def test_double_record_route_carries_the_ws_flow() -> None:
    udp_in = Address("udp", "203.0.113.1", 5060)
    ws_out = Address("ws", "203.0.113.1", 8080)
    peer = Address("ws", "198.51.100.7", 53122)
    values = record_route_values(udp_in, ws_out, source=Address("udp", "192.0.2.1", 5060), dest=peer)
    assert values == [
        "<sip:203.0.113.1:8080;transport=ws;lr;r2=on;wsflow=198.51.100.7~53122~5>",
        "<sip:203.0.113.1:5060;lr;r2=on>",
    ]
    # Both sides on the same WebSocket listener: still two entries, each with its own peer's flow.
    other = Address("ws", "198.51.100.8", 40000)
    both = record_route_values(ws_out, ws_out, source=other, dest=peer)
    assert [ws_flow(v.strip("<>").partition(";")[2]) for v in both] == [peer, other]
    # Not WebSocket at all: one entry, as before.
    assert record_route_values(udp_in, udp_in, source=peer, dest=peer) == ["<sip:203.0.113.1:5060;lr>"]


def test_ws_destinations_never_resolve_names() -> None:
    invalid = parse_uri_untrusted("sip:k3j2@df7jal23ls0d.invalid;transport=ws")
    assert ws_destinations(invalid, None) == []
    assert ws_destinations(invalid, ";lr;wsflow=198.51.100.7~53122~6") == [
        Address("wss", "198.51.100.7", 53122)
    ]
    literal = parse_uri_untrusted("sip:198.51.100.7:53122;transport=ws")
    # An explicit destination ($du, an alias) wins over the recorded flow.
    assert ws_destinations(literal, ";wsflow=198.51.100.9~1~5", explicit=True) == [
        Address("ws", "198.51.100.7", 53122)
    ]
    assert ws_destinations(parse_uri_untrusted("sip:bob@example.com"), ";wsflow=198.51.100.9~1~5") is None
    assert ws_flow(";wsflow=bad") is None


async def test_transport_checks() -> None:
    checks = (
        "is_UDP()",
        "is_TCP()",
        "is_TLS()",
        "is_WS()",
        "is_WSS()",
        "is_WSX()",
        "is_proto('w')",
        "is_proto('W')",
    )
    want = {
        "udp": ("true", "false", "false", "false", "false", "false", "false", "false"),
        "tls": ("false", "false", "true", "false", "false", "false", "false", "false"),
        "ws": ("false", "false", "false", "true", "false", "true", "true", "false"),
        "wss": ("false", "false", "false", "false", "true", "true", "false", "true"),
    }
    for transport, expected in want.items():
        state = make_state(source=Address(transport, "198.51.100.7", 5060))
        got = tuple([await ev(f"KSR.{check}", state) for check in checks])
        assert got == expected, transport
    assert await ev("KSR.is_proto('ut')", make_state(source=Address("tcp", "192.0.2.1", 5060))) == "true"
