"""The proxy core against a fake transport on virtual time: RFC 3261 16 behaviours, one test each."""

from __future__ import annotations

import trio
import trio.testing

from tests.unit.proxy_harness import CALLER, PROXY, invite, reply, running_proxy
from trioproxy.proxy import StaticRouter, Target
from trioproxy.sip import Address, Request, make_response, parse_message_untrusted, parse_uri_untrusted
from trioproxy.transaction import Timers

A = Address("udp", "127.0.0.11", 5060)
B = Address("udp", "127.0.0.12", 5060)
C = Address("udp", "127.0.0.13", 5060)


def target(addr: Address, user: str = "bob") -> Target:
    return Target(parse_uri_untrusted(f"sip:{user}@{addr.host}:{addr.port}"))


def parallel(*addrs: Address) -> StaticRouter:
    return StaticRouter(stages=[[target(a) for a in addrs]])


async def test_basic_forward_record_route_max_forwards_via(autojump_clock: trio.testing.MockClock) -> None:
    async with running_proxy(StaticRouter()) as (_proxy, net):
        await net.inject(invite("sip:bob@127.0.0.11"), CALLER)
        trying = await net.response_up(100)
        assert trying.to.tag is None
        fwd = await net.request_to(A)
        assert fwd.max_forwards == 69
        assert len(fwd.vias) == 2
        top = fwd.top_via
        assert (top.host, top.port) == (PROXY.host, PROXY.port)
        assert top.branch is not None and top.branch.startswith("z9hG4bK")
        assert fwd.get_all("Record-Route") == ["<sip:127.0.0.1:5060;lr>"]
        await net.inject(reply(fwd, 180), A)
        ringing = await net.response_up(180)
        assert len(ringing.vias) == 1  # 16.7 step 3: our Via removed
        await net.inject(reply(fwd, 200), A)
        ok = await net.response_up(200)
        assert ok.to.tag == "uas"  # 16.7 step 9: To-tag unchanged
        assert ok.vias[0].branch == parse_message_untrusted(invite()).top_via.branch or len(ok.vias) == 1


async def test_max_forwards_zero_gets_483(autojump_clock: trio.testing.MockClock) -> None:
    async with running_proxy(StaticRouter()) as (_proxy, net):
        await net.inject(invite("sip:bob@127.0.0.11").replace(b"Max-Forwards: 70", b"Max-Forwards: 0"), CALLER)
        resp = await net.response_up(483)
        assert resp.status == 483
        await trio.sleep(1)
        assert net.requests_to(A, "INVITE") == []


async def test_unsupported_scheme_416_and_proxy_require_420(autojump_clock: trio.testing.MockClock) -> None:
    async with running_proxy(StaticRouter()) as (_proxy, net):
        await net.inject(invite("foo:bob@127.0.0.11", call_id="c416"), CALLER)
        await net.response_up(416)
        await net.inject(invite("sip:bob@127.0.0.11", call_id="c420", extra="Proxy-Require: frobnicate\r\n"), CALLER)
        resp = await net.response_up(420)
        assert resp.get("Unsupported") == "frobnicate"


async def test_loop_is_482_but_spiral_is_forwarded(autojump_clock: trio.testing.MockClock) -> None:
    async with running_proxy(StaticRouter()) as (_proxy, net):
        # The proxy forwards to itself (127.0.0.1:5060): the request comes back with its own Via.
        await net.inject(invite("sip:bob@127.0.0.1:5060;x=1"), CALLER)
        first = await net.request_to(PROXY)
        await net.inject(first, PROXY)  # unchanged: a loop
        await net.response_up(482)
        # A spiral: the request comes back through another proxy that changed the Request-URI: forwarded.
        spiral = first.copy()
        spiral.uri = parse_uri_untrusted("sip:carol@127.0.0.11")
        spiral.insert_top("Via", "SIP/2.0/UDP 127.0.0.99:5060;branch=z9hG4bKother")
        await net.inject(spiral, Address("udp", "127.0.0.99", 5060))
        fwd = await net.request_to(A)
        assert len(fwd.vias) == 4


async def test_route_preprocessing_pops_our_route(autojump_clock: trio.testing.MockClock) -> None:
    async with running_proxy(StaticRouter()) as (_proxy, net):
        extra = "Route: <sip:127.0.0.1:5060;lr>, <sip:127.0.0.12;lr>\r\n"
        await net.inject(invite("sip:bob@127.0.0.11", to_tag="t1", method="BYE", extra=extra), CALLER)
        fwd = await net.request_to(B, "BYE")  # loose routing: next hop is the remaining Route
        assert fwd.get_all("Route") == ["<sip:127.0.0.12;lr>"]
        assert str(fwd.uri) == "sip:bob@127.0.0.11"
        assert not fwd.has("Record-Route")  # in-dialog requests are not record-routed


async def test_strict_router_upstream_request_uri_restored(autojump_clock: trio.testing.MockClock) -> None:
    async with running_proxy(StaticRouter()) as (_proxy, net):
        extra = "Route: <sip:bob@127.0.0.11>\r\n"
        await net.inject(invite("sip:127.0.0.1:5060;lr", to_tag="t1", method="BYE", extra=extra), CALLER)
        fwd = await net.request_to(A, "BYE")
        assert str(fwd.uri) == "sip:bob@127.0.0.11"
        assert not fwd.has("Route")


async def test_parallel_fork_first_2xx_cancels_other(autojump_clock: trio.testing.MockClock) -> None:
    async with running_proxy(parallel(A, B)) as (_proxy, net):
        await net.inject(invite(), CALLER)
        ia, ib = await net.request_to(A), await net.request_to(B)
        assert ia.top_via.branch != ib.top_via.branch  # 16.6 step 8: unique branch per branch
        await net.inject(reply(ib, 180, tag="b"), B)
        await net.response_up(180)
        await net.inject(reply(ia, 200, tag="a"), A)
        ok = await net.response_up(200)
        assert ok.to.tag == "a"
        cancel = await net.request_to(B, "CANCEL")
        assert cancel.top_via.branch == ib.top_via.branch  # 9.1: CANCEL has the INVITE's branch
        await net.inject(reply(cancel, 200, tag="b"), B)
        await net.inject(reply(ib, 487, tag="b"), B)
        ack = await net.request_to(B, "ACK")  # 17.1.1.3: ACK for the non-2xx
        assert ack.top_via.branch == ib.top_via.branch
        await trio.sleep(40)
        assert [r.status for r in net.responses_up() if r.status >= 200] == [200]


async def test_late_2xx_from_other_branch_is_forwarded(autojump_clock: trio.testing.MockClock) -> None:
    async with running_proxy(parallel(A, B)) as (_proxy, net):
        await net.inject(invite(), CALLER)
        ia, ib = await net.request_to(A), await net.request_to(B)
        await net.inject(reply(ib, 180, tag="b"), B)
        await net.inject(reply(ia, 200, tag="a"), A)
        await net.response_up(200)
        await net.request_to(B, "CANCEL")
        await net.inject(reply(ib, 200, tag="b"), B)  # B answered before the CANCEL arrived
        await net.wait_for(lambda s: s.dest is None and getattr(s.msg, "status", 0) == 200 and s.msg.to.tag == "b")
        assert sorted(r.to.tag or "" for r in net.responses_up(200)) == ["a", "b"]


async def test_6xx_cancels_pending_and_wins(autojump_clock: trio.testing.MockClock) -> None:
    router = StaticRouter(stages=[[target(A), target(B)], [target(C)]])
    async with running_proxy(router) as (_proxy, net):
        await net.inject(invite(), CALLER)
        ia, ib = await net.request_to(A), await net.request_to(B)
        await net.inject(reply(ib, 180, tag="b"), B)
        await net.inject(reply(ia, 603, tag="a"), A)
        cancel = await net.request_to(B, "CANCEL")
        assert net.responses_up(603) == []  # 16.7 step 6: a 6xx waits for the others' answers
        await net.inject(reply(cancel, 200, tag="b"), B)
        await net.inject(reply(ib, 487, tag="b"), B)
        await net.response_up(603)
        await trio.sleep(10)
        assert net.requests_to(C, "INVITE") == []  # no new branch after a 6xx


async def test_serial_fork_next_stage_after_486(autojump_clock: trio.testing.MockClock) -> None:
    router = StaticRouter(stages=[[target(A)], [target(B)]])
    async with running_proxy(router) as (_proxy, net):
        await net.inject(invite(), CALLER)
        ia = await net.request_to(A)
        assert net.requests_to(B, "INVITE") == []
        await net.inject(reply(ia, 486, tag="a"), A)
        ib = await net.request_to(B)
        await net.inject(reply(ib, 200, tag="b"), B)
        ok = await net.response_up(200)
        assert ok.to.tag == "b"
        assert net.responses_up(486) == []


async def test_best_response_prefers_lowest_class_and_401(autojump_clock: trio.testing.MockClock) -> None:
    async with running_proxy(parallel(A, B, C)) as (_proxy, net):
        await net.inject(invite(), CALLER)
        ia, ib, ic = await net.request_to(A), await net.request_to(B), await net.request_to(C)
        await net.inject(reply(ia, 500, tag="a"), A)
        await net.inject(reply(ib, 404, tag="b"), B)
        await net.inject(reply(ic, 401, tag="c", headers=(("WWW-Authenticate", 'Digest realm="c"'),)), C)
        resp = await net.response_up(401)
        assert resp.get_all("WWW-Authenticate") == ['Digest realm="c"']


async def test_401_407_challenges_aggregated(autojump_clock: trio.testing.MockClock) -> None:
    async with running_proxy(parallel(A, B)) as (_proxy, net):
        await net.inject(invite(), CALLER)
        ia, ib = await net.request_to(A), await net.request_to(B)
        await net.inject(reply(ia, 401, tag="a", headers=(("WWW-Authenticate", 'Digest realm="a"'),)), A)
        await net.inject(reply(ib, 407, tag="b", headers=(("Proxy-Authenticate", 'Digest realm="b"'),)), B)
        resp = await net.wait_for(lambda s: s.dest is None and getattr(s.msg, "status", 0) in (401, 407))
        assert resp.msg.get_all("WWW-Authenticate") == ['Digest realm="a"']
        assert resp.msg.get_all("Proxy-Authenticate") == ['Digest realm="b"']


async def test_503_becomes_500(autojump_clock: trio.testing.MockClock) -> None:
    async with running_proxy(parallel(A)) as (_proxy, net):
        await net.inject(invite(), CALLER)
        ia = await net.request_to(A)
        await net.inject(reply(ia, 503, tag="a"), A)
        await net.response_up(500)
        assert net.responses_up(503) == []


async def test_no_answer_gives_408_after_timer_b(autojump_clock: trio.testing.MockClock) -> None:
    async with running_proxy(parallel(A)) as (_proxy, net):
        t0 = trio.current_time()
        await net.inject(invite(), CALLER)
        await net.response_up(408)
        assert trio.current_time() - t0 == 32.0  # Timer B = 64*T1
        assert len(net.requests_to(A, "INVITE")) == 7  # sent at 0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5


async def test_non_invite_timeout_sends_no_408(autojump_clock: trio.testing.MockClock) -> None:
    async with running_proxy(parallel(A)) as (_proxy, net):
        await net.inject(invite(method="OPTIONS"), CALLER)
        await net.request_to(A, "OPTIONS")
        await trio.sleep(60)
        assert net.responses_up() == []  # RFC 4320: never a 408 to a non-INVITE


async def test_caller_cancel(autojump_clock: trio.testing.MockClock) -> None:
    async with running_proxy(parallel(A, B)) as (_proxy, net):
        raw = invite(branch="z9hG4bKcaller1")
        await net.inject(raw, CALLER)
        ia, ib = await net.request_to(A), await net.request_to(B)
        await net.inject(reply(ia, 180, tag="a"), A)
        await net.inject(reply(ib, 180, tag="b"), B)
        inv = parse_message_untrusted(raw)
        assert isinstance(inv, Request)
        cancel = inv.copy()
        cancel_raw = cancel.to_bytes().replace(b"INVITE sip", b"CANCEL sip").replace(b"1 INVITE", b"1 CANCEL")
        await net.inject(cancel_raw, CALLER)
        ok = await net.wait_for(lambda s: s.dest is None and getattr(s.msg, "status", 0) == 200)
        assert ok.msg.cseq.method == "CANCEL"
        ca, cb = await net.request_to(A, "CANCEL"), await net.request_to(B, "CANCEL")
        for c, r, addr, tag in ((ca, ia, A, "a"), (cb, ib, B, "b")):
            await net.inject(reply(c, 200, tag=tag), addr)
            await net.inject(reply(r, 487, tag=tag), addr)
        resp = await net.response_up(487)
        assert resp.cseq.method == "INVITE"


async def test_cancel_waits_for_provisional(autojump_clock: trio.testing.MockClock) -> None:
    """RFC 3261 9.1: a branch with no provisional yet is cancelled only once one arrives."""
    async with running_proxy(parallel(A, B)) as (_proxy, net):
        await net.inject(invite(), CALLER)
        ia, ib = await net.request_to(A), await net.request_to(B)
        await net.inject(reply(ia, 200, tag="a"), A)
        await net.response_up(200)
        await trio.sleep(0.2)
        assert net.requests_to(B, "CANCEL") == []
        await net.inject(reply(ib, 180, tag="b"), B)
        await net.request_to(B, "CANCEL")


async def test_timer_c_cancels_ringing_branch(autojump_clock: trio.testing.MockClock) -> None:
    timers = Timers(timer_c=10.0)
    async with running_proxy(parallel(A), timers=timers) as (_proxy, net):
        await net.inject(invite(), CALLER)
        ia = await net.request_to(A)
        t0 = trio.current_time()
        await net.inject(reply(ia, 180, tag="a"), A)
        cancel = await net.request_to(A, "CANCEL")
        assert trio.current_time() - t0 == 10.0
        await net.inject(reply(cancel, 200, tag="a"), A)
        await net.inject(reply(ia, 487, tag="a"), A)
        await net.response_up(487)


async def test_timer_c_restarts_on_provisional(autojump_clock: trio.testing.MockClock) -> None:
    timers = Timers(timer_c=10.0)
    async with running_proxy(parallel(A), timers=timers) as (_proxy, net):
        await net.inject(invite(), CALLER)
        ia = await net.request_to(A)
        await net.inject(reply(ia, 180, tag="a"), A)
        await trio.sleep(8)
        t1 = trio.current_time()
        await net.inject(reply(ia, 183, tag="a"), A)
        await net.request_to(A, "CANCEL")
        assert trio.current_time() - t1 == 10.0


async def test_retransmitted_invite_absorbed(autojump_clock: trio.testing.MockClock) -> None:
    async with running_proxy(parallel(A)) as (_proxy, net):
        raw = invite(branch="z9hG4bKretrans")
        await net.inject(raw, CALLER)
        await net.request_to(A)
        await net.inject(raw, CALLER)
        await net.inject(raw, CALLER)
        await trio.sleep(0.3)
        assert len(net.requests_to(A, "INVITE")) == 1
        assert len(net.responses_up(100)) == 3  # each retransmission gets the last provisional again


async def test_ack_for_2xx_routed_as_own_request(autojump_clock: trio.testing.MockClock) -> None:
    async with running_proxy(StaticRouter()) as (_proxy, net):
        await net.inject(invite("sip:bob@127.0.0.11"), CALLER)
        ia = await net.request_to(A)
        await net.inject(reply(ia, 200, tag="a"), A)
        await net.response_up(200)
        ack = invite("sip:bob@127.0.0.11", method="ACK", to_tag="a", extra="Route: <sip:127.0.0.1:5060;lr>\r\n")
        await net.inject(ack, CALLER)
        fwd = await net.request_to(A, "ACK")
        assert not fwd.has("Route")
        assert fwd.max_forwards == 69


async def test_stray_response_dropped(autojump_clock: trio.testing.MockClock) -> None:
    async with running_proxy(StaticRouter()) as (proxy, net):
        stray = make_response(parse_message_untrusted(invite()), 200, to_tag="x")  # type: ignore[arg-type]
        stray.insert_top("Via", "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKnotours")
        await net.inject(stray, A)
        await trio.sleep(1)
        assert net.sent == []
        assert proxy.stats.stray_responses == 1


async def test_transport_error_fails_over_to_next_address(autojump_clock: trio.testing.MockClock) -> None:
    async with running_proxy(StaticRouter()) as (proxy, net):
        async def locate(uri: object) -> list[Address]:
            return [A, B]

        proxy._locate = locate
        net.unreachable.add(A)
        await net.inject(invite("sip:bob@example.test"), CALLER)
        ib = await net.request_to(B)
        await net.inject(reply(ib, 200, tag="b"), B)
        await net.response_up(200)


async def test_503_fails_over_and_one_final_upstream(autojump_clock: trio.testing.MockClock) -> None:
    async with running_proxy(StaticRouter()) as (proxy, net):
        async def locate(uri: object) -> list[Address]:
            return [A, B]

        proxy._locate = locate
        await net.inject(invite("sip:bob@example.test"), CALLER)
        ia = await net.request_to(A)
        await net.inject(reply(ia, 503, tag="a"), A)
        ib = await net.request_to(B)
        assert ib.top_via.branch != ia.top_via.branch
        await net.inject(reply(ib, 486, tag="b"), B)
        await net.response_up(486)
        await trio.sleep(1)
        assert {(r.status, r.to.tag) for r in net.responses_up() if r.status >= 200} == {(486, "b")}


async def test_router_error_answers_500_and_proxy_goes_on(autojump_clock: trio.testing.MockClock) -> None:
    class Broken(StaticRouter):
        async def on_request(self, ctx):  # type: ignore[no-untyped-def]
            if ctx.request.uri.user == "boom":
                raise RuntimeError("boom")
            await super().on_request(ctx)

    async with running_proxy(Broken()) as (proxy, net):
        await net.inject(invite("sip:boom@127.0.0.11", call_id="c1"), CALLER)
        await net.response_up(500)
        await net.inject(invite("sip:bob@127.0.0.11", call_id="c2"), CALLER)
        await net.request_to(A)
        assert proxy.stats.route_errors == 1


async def test_request_nursery_leaves_nothing_running(autojump_clock: trio.testing.MockClock) -> None:
    async with running_proxy(parallel(A, B)) as (proxy, net):
        await net.inject(invite(), CALLER)
        ia, ib = await net.request_to(A), await net.request_to(B)
        await net.inject(reply(ib, 180, tag="b"), B)
        await net.inject(reply(ia, 200, tag="a"), A)
        cancel = await net.request_to(B, "CANCEL")
        await net.inject(reply(cancel, 200, tag="b"), B)
        await net.inject(reply(ib, 487, tag="b"), B)
        await trio.sleep(1)
        assert proxy.active == set()
        await trio.sleep(60)  # Timer L / M / D / K and friends
        stats = proxy.table.statistics()
        live = ("server_invite", "server_non_invite", "client_invite", "client_non_invite")
        assert [stats[k] for k in live] == [0, 0, 0, 0]


class _RewritingRouter(StaticRouter):
    """A reply hook that rewrites the body of a 2xx, as a media relay's reply route does."""

    async def on_response(self, ctx: object, branch: object, response: object) -> bool:
        from trioproxy.sip import Response

        if isinstance(response, Response) and 200 <= response.status < 300 and response.body:
            response.set_body(b"v=0\r\nc=IN IP4 127.0.0.99\r\n", "application/sdp")
        return True


async def test_retransmitted_2xx_goes_up_with_the_body_first_forwarded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The callee resends its 2xx (the ACK was lost): the resend reaches the caller with the body the reply
    hook gave the first one (rtpengine's SDP), not the callee's own."""
    async with running_proxy(_RewritingRouter(stages=[[target(A)]])) as (_proxy, net):
        await net.inject(invite(), CALLER)
        ia = await net.request_to(A)
        ok = reply(ia, 200, tag="a")
        ok.set_body(b"v=0\r\nc=IN IP4 127.0.0.11\r\n", "application/sdp")
        await net.inject(ok, A)
        first = await net.response_up(200)
        assert first.body == b"v=0\r\nc=IN IP4 127.0.0.99\r\n"
        await trio.sleep(1)
        await net.inject(ok, A)  # the same 2xx again
        await net.wait_for(lambda s: s.dest is None and len(net.responses_up(200)) == 2)
        assert [r.body for r in net.responses_up(200)] == [first.body, first.body]
