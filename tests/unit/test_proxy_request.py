"""The request API routers use (relay with its options, drop, no decision), the ordering of a stateless ACK
before the BYE that follows it, and the per-call trace ring (fake transport on virtual time)."""

from __future__ import annotations

import trio
import trio.testing

from tests.unit.proxy_harness import CALLER, invite, reply, running_proxy
from trioproxy.proxy import RelayTimers, RequestContext, Router, StaticRouter, Target
from trioproxy.proxy.trace import TraceRing
from trioproxy.sip import Address, Request, parse_uri_untrusted

A = Address("udp", "127.0.0.11", 5060)


def to_a() -> Target:
    return Target(parse_uri_untrusted(f"sip:bob@{A.host}:{A.port}"))


class OptionsRouter(Router):
    """Relays to A with Record-Route parameters and a short fr_timer, through one ``relay`` call."""

    async def on_request(self, ctx: RequestContext) -> None:
        await ctx.relay([to_a()], record_route=True, record_route_params=";x=1", timers=RelayTimers(fr=2.0))


class DropRouter(Router):
    async def on_request(self, ctx: RequestContext) -> None:
        if ctx.original.call_id.startswith("drop"):
            ctx.drop()
        # any other request: no decision at all


async def test_relay_applies_record_route_and_fr_timer(autojump_clock: trio.testing.MockClock) -> None:
    async with running_proxy(OptionsRouter()) as (_proxy, net):
        start = trio.current_time()
        await net.inject(invite("sip:bob@127.0.0.11", call_id="opts"), CALLER)
        fwd = await net.request_to(A)
        assert fwd.get_all("Record-Route") == ["<sip:127.0.0.1:5060;lr;x=1>"]
        timeout = await net.response_up(408)  # no answer from A within fr_timer (2 s), long before Timer B
        assert timeout.call_id == "opts"
        assert trio.current_time() - start < 5


async def test_drop_answers_nothing_and_no_decision_is_a_500(autojump_clock: trio.testing.MockClock) -> None:
    async with running_proxy(DropRouter()) as (_proxy, net):
        await net.inject(invite("sip:bob@127.0.0.11", call_id="drop-1", method="OPTIONS"), CALLER)
        await net.inject(invite("sip:bob@127.0.0.11", call_id="none-1", method="OPTIONS"), CALLER)
        undecided = await net.response_up(500)
        assert undecided.call_id == "none-1"
        assert undecided.get("Warning") == '399 trioproxy "no route decision"'
        await trio.sleep(40)
        assert [r for r in net.responses_up() if r.call_id == "drop-1"] == []
        assert net.requests_to(A, "OPTIONS") == []


async def test_stateless_ack_reaches_the_callee_before_the_bye_after_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The caller sends the ACK of a 2xx and the BYE right after it: both are routed at once by tasks of their
    # own, and the callee must still see the ACK first (SIPp aborts a call on a BYE before its ACK).
    async with running_proxy(StaticRouter(record_route=False)) as (_proxy, net):
        for i in range(30):
            call_id = f"order-{i}"
            ack = invite("sip:bob@127.0.0.11", method="ACK", to_tag="uas", call_id=call_id)
            bye = invite("sip:bob@127.0.0.11", method="BYE", to_tag="uas", call_id=call_id, cseq=2)
            await net.inject(ack, CALLER)
            await net.inject(bye, CALLER)
            await net.wait_for(
                lambda s, c=call_id: isinstance(s.msg, Request) and s.msg.method == "BYE" and s.msg.call_id == c,
                within=5,
            )
        order = [
            (s.msg.call_id, s.msg.method)
            for s in net.sent
            if s.dest == A and isinstance(s.msg, Request) and s.msg.method in ("ACK", "BYE")
        ]
        for i in range(30):
            call_id = f"order-{i}"
            assert [m for c, m in order if c == call_id] == ["ACK", "BYE"], order


async def test_trace_ring_keeps_the_last_requests(autojump_clock: trio.testing.MockClock) -> None:
    async with running_proxy(StaticRouter(stages=[[to_a()]])) as (proxy, net):
        proxy.traces = TraceRing(size=2)
        await net.inject(invite("sip:bob@127.0.0.11", call_id="t-1"), CALLER)
        fwd = await net.request_to(A)
        await net.inject(reply(fwd, 486), A)
        await net.response_up(486)
        await trio.sleep(1)
        (entry,) = proxy.traces.get("t-1") or []
        assert (entry["method"], entry["ruri"], entry["cseq"]) == ("INVITE", "sip:bob@127.0.0.11", 1)
        kinds = [e["kind"] for e in entry["events"]]
        assert kinds == ["relay", "branch", "response", "best", "end"], entry
        relay, branch = entry["events"][0], entry["events"][1]
        assert relay["targets"] == ["sip:bob@127.0.0.11:5060"]
        assert (branch["uri"], branch["dest"]) == ("sip:bob@127.0.0.11:5060", "udp:127.0.0.11:5060")
        assert entry["events"][-1]["status"] == 486 and entry["events"][-1]["ms"] >= 0
        for call_id in ("t-2", "t-3"):
            await net.inject(invite("sip:bob@127.0.0.11", call_id=call_id, method="OPTIONS"), CALLER)
            await net.request_to(A, "OPTIONS", start=len(net.sent))
        assert proxy.traces.get("t-1") is None  # only the last two requests are kept
        assert [t["method"] for t in proxy.traces.get("t-3") or []] == ["OPTIONS"]
