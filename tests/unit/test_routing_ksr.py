"""KSR functions, table-driven: each row runs one Lua expression against a request and checks the result."""

from __future__ import annotations

from typing import Any

import pytest

from trioproxy.routing import ContactInfo, RequestState
from trioproxy.sip import Address, make_response

from .test_routing_support import FakeServices, load, make_state

# route functions the t_on_* rows name
ROUTES = "function f() end function b() end function r() end"


async def ev(expr: str, state: RequestState | None = None, pre: str = "", services: Any = None) -> str:
    """Run ``pre`` then evaluate ``expr`` in a request route; its tostring() value."""
    state = state or make_state()
    script = load(
        f"function ksr_request_route()\n{pre}\nKSR.pv.sets('$var(out)', tostring({expr}))\nend\n{ROUTES}"
    )
    await script.run_request_route(state, services or FakeServices())
    return str(state.vars["out"])


CORE = [
    ("KSR.is_INVITE()", "INVITE", "true"),
    ("KSR.is_INVITE()", "BYE", "false"),
    ("KSR.is_BYE()", "BYE", "true"),
    ("KSR.is_ACK()", "ACK", "true"),
    ("KSR.is_CANCEL()", "CANCEL", "true"),
    ("KSR.is_REGISTER()", "REGISTER", "true"),
    ("KSR.is_OPTIONS()", "OPTIONS", "true"),
    ("KSR.is_SUBSCRIBE()", "SUBSCRIBE", "true"),
    ("KSR.is_NOTIFY()", "NOTIFY", "true"),
    ("KSR.is_MESSAGE()", "MESSAGE", "true"),
    ("KSR.is_UPDATE()", "UPDATE", "true"),
    ("KSR.is_PRACK()", "PRACK", "true"),
    ("KSR.is_INFO()", "INFO", "true"),
    ("KSR.is_REFER()", "REFER", "true"),
    ("KSR.is_PUBLISH()", "PUBLISH", "true"),
    ("KSR.is_method('INVITE')", "INVITE", "true"),
    ("KSR.is_method('BYE|INVITE')", "INVITE", "true"),
    ("KSR.is_method('BYE')", "INVITE", "false"),
    ("KSR.is_method_in('IBC')", "CANCEL", "true"),
    ("KSR.is_method_in('IBC')", "REGISTER", "false"),
    ("KSR.is_method_in('R')", "REGISTER", "true"),
]


@pytest.mark.parametrize(("expr", "method", "want"), CORE)
async def test_method_predicates(expr: str, method: str, want: str) -> None:
    assert await ev(expr, make_state(method)) == want


CASES = [
    # flags
    ("KSR.isflagset(3)", "KSR.setflag(3)", "true"),
    ("KSR.isflagset(3)", "KSR.setflag(3) KSR.resetflag(3)", "false"),
    ("KSR.pv.get('$mf')", "KSR.setflag(0) KSR.setflag(2)", "5"),
    ("KSR.isbflagset(4)", "KSR.setbflag(4)", "true"),
    ("KSR.isbflagset(4)", "KSR.setbflag(4) KSR.resetbflag(4)", "false"),
    ("KSR.isbflagset(1, 1)", "KSR.corex.append_branch('sip:x@h') KSR.setbflag(1, 1)", "true"),
    ("KSR.isbflagset(1)", "KSR.corex.append_branch('sip:x@h') KSR.setbflag(1, 1)", "false"),
    # R-URI and $du
    ("KSR.kx.get_ruri()", "KSR.seturi('sip:carol@example.net')", "sip:carol@example.net"),
    ("KSR.kx.get_ruri()", "KSR.rewriteuri('sip:dave@example.net:5080')", "sip:dave@example.net:5080"),
    ("KSR.kx.get_ruri()", "KSR.setuser('eve')", "sip:eve@proxy.example.com"),
    ("KSR.kx.get_ruri()", "KSR.sethost('gw.example.org')", "sip:bob@gw.example.org"),
    ("KSR.isdsturiset()", "", "false"),
    ("KSR.isdsturiset()", "KSR.setdsturi('sip:10.0.0.9:5070;transport=tcp')", "true"),
    ("KSR.kx.get_duri()", "KSR.setdsturi('sip:10.0.0.9:5070')", "sip:10.0.0.9:5070"),
    ("KSR.isdsturiset()", "KSR.setdsturi('sip:10.0.0.9') KSR.resetdsturi()", "false"),
    # myself
    ("KSR.is_myself('sip:x@proxy.example.com')", "", "true"),
    ("KSR.is_myself('sip:x@elsewhere.example.com')", "", "false"),
    ("KSR.is_myself_ruri()", "", "true"),
    ("KSR.is_myself_furi()", "", "false"),
    ("KSR.is_myself_srcip()", "", "false"),
    # kx getters
    ("KSR.kx.get_method()", "", "INVITE"),
    ("KSR.kx.get_srcip()", "", "192.0.2.10"),
    ("KSR.kx.get_srcport()", "", "5060"),
    ("KSR.kx.get_rcvip()", "", "203.0.113.1"),
    ("KSR.kx.get_furi()", "", "sip:alice@example.com"),
    ("KSR.kx.get_fhost()", "", "example.com"),
    ("KSR.kx.get_fuser()", "", "alice"),
    ("KSR.kx.get_tuser()", "", "bob"),
    ("KSR.kx.get_ruser()", "", "bob"),
    ("KSR.kx.get_rhost()", "", "proxy.example.com"),
    ("KSR.kx.get_ua()", "", "softphone/1.0"),
    ("KSR.kx.get_callid()", "", "call-1@example.com"),
    ("KSR.kx.get_ttag()", "", "nil"),
    ("KSR.kx.gete_ttag()", "", ""),
    ("KSR.kx.get_duri()", "", "nil"),
    ("KSR.kx.get_status()", "", "nil"),
    ("KSR.kx.get_body()", "", ""),
    # pv
    ("KSR.pv.get('$ru')", "", "sip:bob@proxy.example.com"),
    ("KSR.pv.get('$rU')", "", "bob"),
    ("KSR.pv.get('$rd')", "", "proxy.example.com"),
    ("KSR.pv.get('$rp')", "", "5060"),
    ("KSR.pv.get('$rz')", "", "sip"),
    ("KSR.pv.get('$fu')", "", "sip:alice@example.com"),
    ("KSR.pv.get('$fU')", "", "alice"),
    ("KSR.pv.get('$fd')", "", "example.com"),
    ("KSR.pv.get('$ft')", "", "a1"),
    ("KSR.pv.get('$fn')", "", "Alice"),
    ("KSR.pv.get('$tu')", "", "sip:bob@example.com"),
    ("KSR.pv.get('$tU')", "", "bob"),
    ("KSR.pv.get('$td')", "", "example.com"),
    ("KSR.pv.get('$tt')", "", "nil"),
    ("KSR.pv.get('$ci')", "", "call-1@example.com"),
    ("KSR.pv.get('$cs')", "", "1"),
    ("KSR.pv.get('$rm')", "", "INVITE"),
    ("KSR.pv.get('$si')", "", "192.0.2.10"),
    ("KSR.pv.get('$sp')", "", "5060"),
    ("KSR.pv.get('$pr')", "", "udp"),
    ("KSR.pv.get('$Ri')", "", "203.0.113.1"),
    ("KSR.pv.get('$Rp')", "", "5060"),
    ("KSR.pv.get('$ua')", "", "softphone/1.0"),
    ("KSR.pv.get('$ct')", "", "<sip:alice@192.0.2.10:5060>"),
    ("KSR.pv.get('$hdr(CSeq)')", "", "1 INVITE"),
    ("KSR.pv.get('$hdr(X-Nope)')", "", "nil"),
    ("KSR.pv.get('$T_reply_code')", "", "nil"),
    ("KSR.pv.get('$rs')", "", "nil"),
    ("KSR.pv.get('$br')", "KSR.corex.append_branch('sip:b1@h')", "sip:b1@h"),
    ("KSR.pv.get('$bf')", "KSR.setbflag(2)", "4"),
    ("KSR.pv.get('$ml') > 100", "", "true"),
    ("string.sub(KSR.pv.get('$mb'), 1, 6)", "", "INVITE"),
    ("KSR.pv.get('$ru')", "KSR.pv.sets('$ru', 'sip:x@y.example')", "sip:x@y.example"),
    ("KSR.pv.get('$ru')", "KSR.pv.sets('$rU', 'zed')", "sip:zed@proxy.example.com"),
    ("KSR.pv.get('$ru')", "KSR.pv.sets('$rd', 'h.example')", "sip:bob@h.example"),
    ("KSR.pv.get('$ru')", "KSR.pv.seti('$rp', 5070)", "sip:bob@proxy.example.com:5070"),
    ("KSR.pv.get('$du')", "KSR.pv.sets('$du', 'sip:1.2.3.4:5080')", "sip:1.2.3.4:5080"),
    ("KSR.pv.get('$du')", "KSR.pv.sets('$du', 'sip:1.2.3.4') KSR.pv.unset('$du')", "nil"),
    ("KSR.pv.get('$var(x)')", "KSR.pv.seti('$var(x)', 41)", "41"),
    ("KSR.pv.get('$var(x)')", "KSR.pv.sets('$var(x)', 'v') KSR.pv.unset('$var(x)')", "nil"),
    ("KSR.pv.is_null('$var(x)')", "", "true"),
    ("KSR.pv.gete('$var(x)')", "", ""),
    ("KSR.pv.getvn('$var(x)', 7)", "", "7"),
    ("KSR.pv.getvs('$var(x)', 'd')", "", "d"),
    ("KSR.pv.get('$avp(a)')", "KSR.pv.sets('$avp(a)', 'one') KSR.pv.sets('$avp(a)', 'two')", "two"),
    ("KSR.pv.get('$xavp(r=>k)')", "KSR.pv.sets('$xavp(r=>k)', 'v1')", "v1"),
    (
        "KSR.pv.get('$xavp(r[1]=>k)') .. KSR.pv.get('$xavp(r[0]=>j)')",
        "KSR.pv.sets('$xavp(r=>k)', 'a') KSR.pv.sets('$xavp(r=>k)', 'b') KSR.pv.sets('$xavp(r[0]=>j)', 'c')",
        "ac",
    ),
    # headers
    ("KSR.hdr.is_present('User-Agent')", "", "1"),
    ("KSR.hdr.is_present('X-Foo')", "", "-1"),
    ("KSR.hdr.get('X-Foo')", "KSR.hdr.append('X-Foo: bar\\r\\n')", "bar"),
    ("KSR.hdr.get_idx('X-Foo', 1)", "KSR.hdr.append('X-Foo: a\\r\\nX-Foo: b\\r\\n')", "b"),
    (
        "KSR.hdr.get_idx('X-Foo', -1)",
        "KSR.hdr.append('X-Foo: a\\r\\n') KSR.hdr.append('X-Foo: c\\r\\n')",
        "c",
    ),
    ("KSR.hdr.get_idx('X-Foo', 5)", "KSR.hdr.append('X-Foo: a\\r\\n')", "nil"),
    ("KSR.hdr.remove('User-Agent')", "", "1"),
    ("KSR.hdr.remove('X-Nope')", "", "-1"),
    ("KSR.hdr.get('User-Agent')", "KSR.hdr.remove('User-Agent')", "nil"),
    ("KSR.hdr.get('X-A')", "KSR.hdr.append('X-A: 1\\r\\n') KSR.hdr.rmappend('X-A', 'X-A: 2\\r\\n')", "2"),
    ("KSR.hdr.get('X-Top')", "KSR.hdr.insert('X-Top: t\\r\\n')", "t"),
    ("KSR.textops.is_present_hf('Call-ID')", "", "1"),
    ("KSR.textops.is_present_hf('X-Nope')", "", "-1"),
    ("KSR.textops.remove_hf('User-Agent')", "", "1"),
    ("KSR.hdr.get('X-T')", "KSR.textops.append_hf('X-T: x\\r\\n')", "x"),
    ("KSR.textops.search('softphone/[0-9]')", "", "1"),
    ("KSR.textops.search('^BYE')", "", "-1"),
    # siputils / corex / maxfwd
    ("KSR.siputils.has_totag()", "", "-1"),
    ("KSR.siputils.is_request()", "", "1"),
    ("KSR.siputils.is_reply()", "", "-1"),
    ("KSR.siputils.is_first_hop()", "", "1"),
    ("KSR.corex.has_ruri_user()", "", "1"),
    ("KSR.corex.has_ruri_user()", "KSR.seturi('sip:proxy.example.com')", "-1"),
    ("KSR.maxfwd.process_maxfwd(10)", "", "1"),
    ("KSR.hdr.get('Max-Forwards')", "KSR.maxfwd.process_maxfwd(10)", "69"),  # limit: only when absent
    ("KSR.hdr.get('Max-Forwards')", "KSR.maxfwd.process_maxfwd(100)", "69"),
    # tm / rr decisions read back
    ("KSR.tm.t_is_set('failure_route')", "", "-1"),
    ("KSR.tm.t_is_set('failure_route')", "KSR.tm.t_on_failure('f')", "1"),
    ("KSR.tm.t_is_set('branch_route')", "KSR.tm.t_on_branch('b')", "1"),
    ("KSR.tm.t_is_set('onreply_route')", "KSR.tm.t_on_reply('r')", "1"),
    ("KSR.tm.t_is_canceled()", "", "-1"),
    ("KSR.tm.t_any_timeout()", "", "-1"),
    ("KSR.tm.t_any_replied()", "", "-1"),
    ("KSR.tm.t_branch_timeout()", "", "-1"),
    ("KSR.tm.t_check_status('4..')", "", "-1"),
    ("KSR.tm.t_next_contacts()", "", "-1"),
    ("KSR.tmx.t_precheck_trans()", "", "-1"),
    ("KSR.tm.t_newtran()", "", "1"),
    ("KSR.rr.check_route_param('ftag=')", "", "-1"),
    # htable
    ("KSR.htable.sht_get('t', 'k')", "", "nil"),
    ("KSR.htable.sht_get('t', 'k')", "KSR.htable.sht_sets('t', 'k', 'v')", "v"),
    ("KSR.htable.sht_get('t', 'k')", "KSR.htable.sht_seti('t', 'k', 3)", "3"),
    ("KSR.htable.sht_inc('t', 'k')", "KSR.htable.sht_seti('t', 'k', 3)", "4"),
    ("KSR.htable.sht_dec('t', 'k')", "", "-1"),
    ("KSR.htable.sht_get('t', 'k')", "KSR.htable.sht_sets('t', 'k', 'v') KSR.htable.sht_rm('t', 'k')", "nil"),
    ("KSR.htable.sht_match_name('t', 'sw', 'user:')", "KSR.htable.sht_seti('t', 'user:1', 1)", "1"),
    ("KSR.htable.sht_match_name('t', 're', '^ip:')", "KSR.htable.sht_seti('t', 'user:1', 1)", "-1"),
    ("KSR.htable.sht_match_name('t', 'eq', 'a')", "KSR.htable.sht_seti('t', 'a', 1)", "1"),
    ("KSR.htable.sht_gete('t', 'x')", "", ""),
    ("KSR.htable.sht_is_null('t', 'x')", "", "1"),
]


@pytest.mark.parametrize(("expr", "pre", "want"), CASES, ids=[f"{i}:{c[0]}" for i, c in enumerate(CASES)])
async def test_ksr_table(expr: str, pre: str, want: str) -> None:
    assert await ev(expr, pre=pre) == want


async def test_reply_pvs_in_reply_route() -> None:
    state = make_state()
    resp = make_response(state.req, 486, "Busy Here", to_tag="t9")
    rstate = state.for_reply(resp)
    assert await ev("KSR.pv.get('$rs') .. ' ' .. KSR.pv.get('$rr') .. ' ' .. KSR.pv.get('$rm')", rstate) == (
        "486 Busy Here INVITE"
    )
    assert await ev("KSR.kx.get_status()", state.for_reply(resp)) == "486"
    assert await ev("KSR.siputils.is_reply()", state.for_reply(resp)) == "1"
    assert await ev("KSR.pv.get('$T_reply_code')", state.for_reply(resp)) == "486"
    assert await ev("KSR.tm.t_check_status('486')", state.for_reply(resp)) == "1"
    assert await ev("KSR.pv.get('$tt')", state.for_reply(resp)) == "t9"


async def test_failure_route_inputs() -> None:
    state = make_state()
    state.begin_failure_route(None, timeout=True, canceled=False, replied=False)
    assert await ev(
        "KSR.tm.t_branch_timeout() .. KSR.tm.t_any_timeout() .. KSR.tm.t_any_replied()", state
    ) == ("11-1")
    state.begin_failure_route(make_response(state.req, 408, "Request Timeout"), canceled=True)
    assert await ev("KSR.tm.t_is_canceled() .. KSR.pv.get('$T_reply_code')", state) == "1408"


async def test_maxfwd_zero_and_absent() -> None:
    zero = make_state(max_forwards=0)
    assert await ev("KSR.maxfwd.process_maxfwd(10)", zero) == "-1"
    absent = make_state(max_forwards=None)
    assert await ev("KSR.maxfwd.process_maxfwd(10)", absent) == "2"
    assert absent.req.get("Max-Forwards") == "10"
    assert absent.maxfwd_processed
    # A present value above Kamailio's max_limit (70) is capped there, whatever the argument.
    high = make_state(max_forwards=200)
    assert await ev("KSR.maxfwd.process_maxfwd(10)", high) == "1"
    assert high.req.get("Max-Forwards") == "70"


async def test_force_rport_and_rr_preset_edit_the_messages() -> None:
    # What reaches the wire is in test_ksr_wire.py; here: both the forwarded copy and the request the server
    # transaction answers from get the stamped Via, and the preset Record-Route is on the forwarded copy.
    state = make_state(via_host="192.0.2.10:5099", source=Address("udp", "192.0.2.10", 40000))
    state.original = state.req.copy()
    services = FakeServices()
    await ev(
        "1",
        state,
        pre="KSR.force_rport() KSR.rr.record_route_preset('203.0.113.1:5060', 'sip:10.0.0.1;lr')"
        " KSR.rr.add_rr_param(';nat=yes') KSR.tm.t_newtran()",
        services=services,
    )
    for req in (state.req, state.original):
        via = req.top_via
        assert (via.host, via.port, via.params.get("received"), via.params.get("rport")) == (
            "192.0.2.10", 5099, "192.0.2.10", "40000",
        )  # fmt: skip
    assert not state.original.has("Record-Route")
    assert state.req.get_all("Record-Route") == [
        "<sip:203.0.113.1:5060;lr;r2=on;nat=yes>",
        "<sip:10.0.0.1;lr;r2=on;nat=yes>",
    ]
    assert services.tryings == 1  # t_newtran: the 100 Trying now
    assert await ev("KSR.rr.record_route_preset('bad uri <')", make_state()) == "-1"


async def test_loose_route_pops_own_route() -> None:
    state = make_state(
        "BYE",
        "sip:alice@192.0.2.10:5060",
        to_tag="b1",
        extra=["Route: <sip:203.0.113.1;lr;ftag=a1>, <sip:next.example.net;lr>"],
    )
    assert await ev("KSR.rr.loose_route()", state) == "1"
    assert state.req.get_all("Route") == ["<sip:next.example.net;lr>"]
    assert state.route_params == ";lr;ftag=a1"
    assert await ev("KSR.rr.check_route_param('ftag=a1')", state) == "1"


async def test_loose_route_strict_router_upstream() -> None:
    # RFC 3261 16.4: the R-URI is our own Record-Route value: the real target is the last Route.
    state = make_state("BYE", "sip:203.0.113.1;lr", to_tag="b1", extra=["Route: <sip:alice@192.0.2.10:5060>"])
    assert await ev("KSR.rr.loose_route()", state) == "1"
    assert str(state.ruri) == "sip:alice@192.0.2.10:5060"
    assert not state.req.has("Route")


async def test_loose_route_strict_next_hop() -> None:
    # RFC 3261 16.6 step 6: the next hop has no lr: it becomes the R-URI, the R-URI the last Route.
    state = make_state("BYE", "sip:alice@192.0.2.10", to_tag="b1", extra=["Route: <sip:strict.example.net>"])
    assert await ev("KSR.rr.loose_route()", state) == "1"
    assert str(state.ruri) == "sip:strict.example.net"
    assert state.req.get_all("Route") == ["<sip:alice@192.0.2.10>"]


async def test_loose_route_without_route() -> None:
    assert await ev("KSR.rr.loose_route()", make_state("BYE", to_tag="x")) == "-1"
    popped = make_state("BYE", to_tag="x")
    popped.route_params = ";lr"  # the core already consumed our Route (16.4)
    assert await ev("KSR.rr.loose_route()", popped) == "1"


@pytest.mark.parametrize(
    ("flags", "via", "contact", "want"),
    [
        (1, "192.0.2.10:5060", "<sip:a@10.1.1.1:5060>", "1"),
        (1, "192.0.2.10:5060", "<sip:a@192.0.2.10:5060>", "-1"),
        (2, "198.51.100.7:5060", "<sip:a@192.0.2.10>", "1"),
        (2, "192.0.2.10:5060", "<sip:a@192.0.2.10>", "-1"),
        (4, "10.0.0.5:5060", "<sip:a@192.0.2.10>", "1"),
        (16, "192.0.2.10:5070", "<sip:a@192.0.2.10>", "1"),
        (16, "192.0.2.10", "<sip:a@192.0.2.10>", "-1"),
        (32, "192.0.2.10:5060", "<sip:a@198.51.100.9>", "1"),
        (19, "192.0.2.10:5060", "<sip:a@192.0.2.10:5060>", "-1"),
    ],
)
async def test_nat_uac_test(flags: int, via: str, contact: str, want: str) -> None:
    state = make_state(via_host=via, contact=contact)
    assert await ev(f"KSR.nathelper.nat_uac_test({flags})", state) == want


async def test_nat_uac_test_sdp() -> None:
    body = b"v=0\r\no=- 1 1 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\n"
    state = make_state(body=body, extra=["Content-Type: application/sdp"])
    assert await ev("KSR.nathelper.nat_uac_test(8)", state) == "1"


async def test_nat_fixes() -> None:
    state = make_state(
        contact="<sip:alice@10.0.0.2:5062>;expires=60", source=Address("udp", "198.51.100.4", 40000)
    )
    assert await ev("KSR.nathelper.fix_nated_contact()", state) == "1"
    assert state.req.get("Contact") == "<sip:alice@198.51.100.4:40000>;expires=60"
    alias = make_state(contact="<sip:alice@10.0.0.2:5062>", source=Address("tcp", "198.51.100.4", 40000))
    assert await ev("KSR.nathelper.set_contact_alias()", alias) == "1"
    assert alias.req.get("Contact") == "<sip:alice@10.0.0.2:5062;alias=198.51.100.4~40000~2>"
    # fix_nated_register: test_ksr_wire.py::test_fix_nated_register (the call goes to the REGISTER's source).
    assert await ev("KSR.nathelper.fix_nated_register()", make_state()) == "-1"  # only for a REGISTER


async def test_handle_ruri_alias() -> None:
    state = make_state("BYE", "sip:alice@10.0.0.2:5062;alias=198.51.100.4~40000~2", to_tag="x")
    assert await ev("KSR.nathelper.handle_ruri_alias()", state) == "1"
    assert str(state.ruri) == "sip:alice@10.0.0.2:5062"
    assert state.dst_uri == "sip:198.51.100.4:40000;transport=tcp"
    assert await ev("KSR.nathelper.handle_ruri_alias()", make_state()) == "2"


async def test_contacts_stages() -> None:
    state = make_state()
    services = FakeServices(
        contacts={
            "bob@proxy.example.com": [
                ContactInfo("sip:bob@192.0.2.31", 0.5),
                ContactInfo("sip:bob@192.0.2.30", 1.0, received="sip:198.51.100.30:6000"),
                ContactInfo("sip:bob@192.0.2.32", 0.5),
                ContactInfo("sip:bob@192.0.2.33", 0.1, path=("<sip:edge.example.net;lr>",)),
            ]
        }
    )
    out = await ev(
        "KSR.tm.t_next_contacts()",
        state,
        pre="KSR.registrar.lookup('location') KSR.tm.t_load_contacts()",
        services=services,
    )
    assert out == "1"
    assert str(state.ruri) == "sip:bob@192.0.2.30"
    assert state.dst_uri == "sip:198.51.100.30:6000"
    assert state.branches == []
    assert [[t.uri for t in stage] for stage in state.contact_stages] == [
        ["sip:bob@192.0.2.31", "sip:bob@192.0.2.32"],
        ["sip:bob@192.0.2.33"],
    ]
    await ev("KSR.tm.t_next_contacts()", state)
    assert str(state.ruri) == "sip:bob@192.0.2.31" and [b.uri for b in state.branches] == [
        "sip:bob@192.0.2.32"
    ]
    assert await ev("KSR.tm.t_next_contacts()", state) == "1"
    assert state.path == ("<sip:edge.example.net;lr>",)
    assert await ev("KSR.tm.t_next_contacts()", state) == "-1"


async def test_target_set_after_lookup() -> None:
    state = make_state()
    services = FakeServices(
        contacts={
            "bob@proxy.example.com": [
                ContactInfo("sip:bob@192.0.2.31", 0.5, flags=2),
                ContactInfo(
                    "sip:bob@192.0.2.30", 0.9, received="sip:198.51.100.30:6000", path=("<sip:e;lr>",)
                ),
            ]
        }
    )
    await ev("KSR.registrar.lookup('location')", state, services=services)
    assert [(t.uri, t.dst_uri, t.q, t.path, t.bflags) for t in state.target_set()] == [
        ("sip:bob@192.0.2.30", "sip:198.51.100.30:6000", 0.9, ("<sip:e;lr>",), 0),
        ("sip:bob@192.0.2.31", None, 0.5, (), 2),
    ]


async def test_registrar_effects() -> None:
    services = FakeServices(contacts={"bob@proxy.example.com": [ContactInfo("sip:bob@192.0.2.30")]})
    assert await ev("KSR.registrar.registered('location')", services=services) == "1"
    assert await ev(
        "KSR.registrar.registered('location', 'sip:nobody@proxy.example.com')", services=services
    ) == ("-1")
    assert (
        await ev("KSR.registrar.unregister('location', 'sip:bob@proxy.example.com')", services=services)
        == "1"
    )
    reg = make_state("REGISTER", "sip:proxy.example.com")
    assert await ev("KSR.registrar.save('location', 2)", reg, services=services) == "1"
    assert ("save", ("location", 2, None)) in services.calls
    assert ("unregister", ("location", "bob@proxy.example.com", "")) in services.calls


async def test_replies() -> None:
    services = FakeServices()
    state = make_state()
    out = await ev(
        "KSR.sl.sl_send_reply(404)",
        state,
        pre="KSR.hdr.append_to_reply('X-Why: gone\\r\\n')",
        services=services,
    )
    assert out == "1"
    assert services.replies == [(404, "Not Found", [("X-Why", "gone")])]
    assert state.replied == (404, "Not Found")
    services = FakeServices()
    await ev("KSR.tm.t_reply(180, 'Ringing')", services=services)
    await ev("KSR.sl.send_reply(302, 'Moved')", services=services)
    await ev("KSR.sl.sl_reply_error()", services=services)
    assert [(s, r) for s, r, _ in services.replies] == [
        (180, "Ringing"),
        (302, "Moved"),
        (500, "Server Internal Error"),
    ]
    ack = FakeServices()
    assert await ev("KSR.sl.sl_send_reply(200, 'OK')", make_state("ACK"), services=ack) == "-1"
    assert ack.replies == []


async def test_relay_effects() -> None:
    services = FakeServices(relay_rc=-2)
    state = make_state()
    assert await ev("KSR.tm.t_relay()", state, services=services) == "-2"
    assert state.relayed == 0
    services = FakeServices()
    state = make_state()
    assert (
        await ev("KSR.tm.t_relay_to_proto_addr('TCP', '198.51.100.9', 5070)", state, services=services) == "1"
    )
    assert state.forced_dest == Address("tcp", "198.51.100.9", 5070)
    assert state.relayed == 1
    services = FakeServices(check_trans_rc=0)
    assert await ev("KSR.tm.t_check_trans()", make_state("CANCEL"), services=services) == "0"
    assert services.calls == [("check_trans", "CANCEL")]


@pytest.mark.parametrize(
    ("kw", "status", "extra_header"),
    [
        ({"ruri": "foo:bob@example.com"}, 416, None),
        ({"extra": ["Proxy-Require: foo, bar"]}, 420, ("Unsupported", "foo, bar")),
        ({"extra": ["Expires: soon"]}, 400, None),
        ({"max_forwards": None, "extra": ["Max-Forwards: many"]}, 400, None),
    ],
)
async def test_sanity_check_failures(kw: dict[str, Any], status: int, extra_header: Any) -> None:
    services = FakeServices()
    state = make_state(**kw)
    assert await ev("KSR.sanity.sanity_check(1511, 7)", state, services=services) == "-1"
    assert [r[0] for r in services.replies] == [status]
    if extra_header is not None:
        assert extra_header in services.replies[0][2]


async def test_sanity_check_passes_good_request() -> None:
    services = FakeServices()
    assert await ev("KSR.sanity.sanity_check()", services=services) == "1"
    assert services.replies == []


async def test_logging(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG", logger="trioproxy.routing.lua")
    await ev("1", pre="KSR.info('hello') KSR.err('bad') KSR.dbg('d') KSR.log('warn', 'w') print('p', 1)")
    got = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "trioproxy.routing.lua"]
    assert got == [
        ("INFO", "[test.lua] hello"),
        ("ERROR", "[test.lua] bad"),
        ("DEBUG", "[test.lua] d"),
        ("WARNING", "[test.lua] w"),
        ("INFO", "[test.lua] p\t1"),
    ]


async def test_t_branch_idx() -> None:
    # Kamailio's tmx: the branch's index in a branch or reply route; in a request route, the branches added.
    state = make_state()
    assert await ev("KSR.pv.get('$T_branch_idx')", state) == "0"
    assert await ev("KSR.pv.get('$T_branch_idx')", state, pre="KSR.corex.append_branch('sip:c@h')") == "1"
    branch = state.for_branch(state.req.copy(), 0, 2)
    assert await ev("KSR.pv.get('$T_branch_idx')", branch) == "2"
    reply = state.for_reply(make_response(state.req, 180, "Ringing"), 3)
    assert await ev("KSR.pv.get('$T_branch_idx')", reply) == "3"
