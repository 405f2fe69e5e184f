"""Exactly one final response per request, whatever the routes do (RFC 3261 16.7, 16.10), on virtual time.

Every test runs a Lua script through the real proxy core (``RouteTest``) or the static router, plays the
callees, and counts what the caller received: the distinct final responses to its INVITE (retransmissions
of the same final over UDP carry the same To tag and are one answer), each with the caller's own Via.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from trioproxy.proxy import StaticRouter, Target
from trioproxy.sip import Address, Response, make_response, parse_uri_untrusted
from trioproxy.testing import RouteTest
from trioproxy.testing.routes import Call, Leg

from .proxy_harness import CALLER, invite, reply, running_proxy

DESK = "sip:bob@127.0.0.21:5060"
MOBILE = "sip:bob@127.0.0.22:5060"
VOICEMAIL = "sip:bob@127.0.0.23:5060"
DEFAULT_SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "routes" / "default.lua"
SETTLE = 40.0  # virtual seconds to wait for anything more the proxy might send (Timer G, a second final)

# A request route that registers, looks up all contacts of the best q (t_load_contacts/t_next_contacts)
# and relays them; FAILURE / BRANCH / ONREPLY arm the named routes when non-empty.
REQUEST_ROUTE = """
function ksr_request_route()
  if KSR.is_REGISTER() then
    KSR.registrar.save("location", 0)
    return
  end
  if KSR.registrar.lookup("location") < 0 then
    KSR.sl.sl_send_reply(404, "Not Found")
    return
  end
  KSR.tm.t_load_contacts()
  KSR.tm.t_next_contacts()
  SETUP
  KSR.tm.t_relay()
end
"""


def script(tmp_path: Path, routes: str, setup: str = 'KSR.tm.t_on_failure("failure")') -> Path:
    path = tmp_path / "route.lua"
    path.write_text(REQUEST_ROUTE.replace("SETUP", setup) + routes)
    return path


def cancel_of(call: Call) -> bytes:
    """The caller's CANCEL for its INVITE (RFC 3261 9.1: same Request-URI, Via branch, Call-ID, CSeq number)."""
    out = []
    for line in call.raw.decode().split("\r\n"):
        if line.startswith("INVITE "):
            line = "CANCEL " + line[len("INVITE ") :]
        elif line.startswith("CSeq:"):
            line = line.replace("INVITE", "CANCEL")
        elif line.startswith("Contact:"):
            continue
        out.append(line)
    return "\r\n".join(out).encode()


def caller_branch(call: Call) -> str:
    return call.raw.split(b"branch=", 1)[1].split(b";", 1)[0].split(b"\r\n", 1)[0].decode()


def finals(call: Call, method: str = "INVITE") -> list[Response]:
    """The distinct final responses the caller got for ``method`` (a retransmission is the same answer)."""
    seen: dict[tuple[int, str | None], Response] = {}
    for r in call.responses():
        if r.cseq.method == method and r.status >= 200:
            seen.setdefault((r.status, r.to.tag), r)
    return list(seen.values())


async def one_final(call: Call) -> Response:
    """Wait for the final, let everything settle, and check it is the only one and carries the caller's Via."""
    await call.final()
    await trio.sleep(SETTLE)
    got = finals(call)
    assert len(got) == 1, [f"{r.status} {r.reason}" for r in call.responses()]
    final = got[0]
    assert final.get_all("Via") and final.top_via.branch == caller_branch(call), final.to_bytes()
    return final


async def cancel(rt: RouteTest, call: Call) -> None:
    await rt.send(cancel_of(call))
    ok = await call.response(200)
    assert ok.cseq.method == "CANCEL"


async def two_ringing(rt: RouteTest, q2: float = 1.0) -> tuple[Call, Leg, Leg]:
    await rt.register("bob", DESK)
    await rt.register("bob", MOBILE, q=q2)
    call = await rt.call("sip:bob@example.com")
    desk, mobile = await call.branches(2)
    await desk.reply(180)
    await mobile.reply(180)
    return call, desk, mobile


# -- the caller's CANCEL ------------------------------------------------------------------------------------


async def test_cancel_with_failure_route_returning_early(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    routes = "function failure()\n  if KSR.tm.t_is_canceled() > 0 then return 1 end\n  KSR.tm.t_reply(480)\nend\n"
    async with RouteTest(script(tmp_path, routes)) as rt:
        call, desk, mobile = await two_ringing(rt)
        await cancel(rt, call)
        assert await desk.cancelled() and await mobile.cancelled()
        assert (await one_final(call)).status == 487


async def test_cancel_with_the_default_script(autojump_clock: trio.testing.MockClock) -> None:
    async with RouteTest(DEFAULT_SCRIPT) as rt:
        call, desk, mobile = await two_ringing(rt)
        await cancel(rt, call)
        assert await desk.cancelled() and await mobile.cancelled()
        assert (await one_final(call)).status == 487


async def test_failure_route_reply_after_cancel_is_the_final(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Kamailio runs the failure route after a CANCEL; a reply there is the one final response."""
    routes = 'function failure()\n  if KSR.tm.t_is_canceled() > 0 then KSR.tm.t_reply(480, "Gone") end\nend\n'
    async with RouteTest(script(tmp_path, routes)) as rt:
        call, desk, mobile = await two_ringing(rt)
        await cancel(rt, call)
        assert await desk.cancelled() and await mobile.cancelled()
        final = await one_final(call)
        assert (final.status, final.reason) == (480, "Gone")


async def test_relay_from_failure_route_after_cancel_makes_no_branch(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """RFC 3261 16.10: no new branch after a CANCEL; t_relay is refused (<0) and the caller gets 487."""
    routes = """
function failure()
  if KSR.tm.t_next_contacts() > 0 then
    KSR.tm.t_on_failure("failure")
    if KSR.tm.t_relay() < 0 then KSR.tm.t_reply(488, "relay refused") end
  end
end
"""
    async with RouteTest(script(tmp_path, routes)) as rt:
        await rt.register("bob", VOICEMAIL, q=0.5)
        call, desk, mobile = await two_ringing(rt)
        await cancel(rt, call)
        assert await desk.cancelled() and await mobile.cancelled()
        final = await one_final(call)
        # The refused relay returned < 0 (the script then replied): no INVITE ever went to the next contact.
        assert (final.status, final.reason) == (488, "relay refused")
        assert not [s for s in rt.net.sent if s.dest == Address("udp", "127.0.0.23", 5060)]


async def test_relay_from_failure_route_after_cancel_without_reply_gives_487(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    routes = """
function failure()
  if KSR.tm.t_next_contacts() > 0 then KSR.tm.t_relay() end
end
"""
    async with RouteTest(script(tmp_path, routes)) as rt:
        await rt.register("bob", VOICEMAIL, q=0.5)
        call, desk, mobile = await two_ringing(rt)
        await cancel(rt, call)
        assert await desk.cancelled() and await mobile.cancelled()
        assert (await one_final(call)).status == 487
        assert not [s for s in rt.net.sent if s.dest == Address("udp", "127.0.0.23", 5060)]


async def test_sl_reply_error_after_a_refused_relay_answers_487(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Kamailio's `if t_relay() < 0 then sl_reply_error() end` after a CANCEL: the caller gets 487, not 500."""
    routes = """
function failure()
  if KSR.tm.t_next_contacts() > 0 then
    if KSR.tm.t_relay() < 0 then KSR.sl.sl_reply_error() end
  end
end
"""
    async with RouteTest(script(tmp_path, routes)) as rt:
        await rt.register("bob", VOICEMAIL, q=0.5)
        call, desk, mobile = await two_ringing(rt)
        await cancel(rt, call)
        assert await desk.cancelled() and await mobile.cancelled()
        final = await one_final(call)
        assert (final.status, final.reason) == (487, "Request Terminated")
        assert not [s for s in rt.net.sent if s.dest == Address("udp", "127.0.0.23", 5060)]


async def test_cancel_during_second_serial_stage(autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """Stage 1 answers 486, stage 2 rings and is cancelled: the caller gets the 487, not the earlier 486."""
    routes = """
function failure()
  if KSR.tm.t_is_canceled() > 0 then return end
  if KSR.tm.t_next_contacts() > 0 then
    KSR.tm.t_on_failure("failure")
    KSR.tm.t_relay()
  end
end
"""
    async with RouteTest(script(tmp_path, routes)) as rt:
        await rt.register("bob", DESK)
        await rt.register("bob", MOBILE, q=0.5)
        call = await rt.call("sip:bob@example.com")
        first = await call.branch()
        await first.reply(486)
        second = await call.branch()
        assert second.uri == MOBILE
        await second.reply(180)
        await cancel(rt, call)
        assert await second.cancelled()
        assert (await one_final(call)).status == 487


async def test_cancel_before_any_provisional(autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """A branch with no provisional is cancelled once it rings (9.1); a silent one ends by Timer B: 487."""
    routes = "function failure()\n  if KSR.tm.t_is_canceled() > 0 then return 1 end\nend\n"
    async with RouteTest(script(tmp_path, routes)) as rt:
        await rt.register("bob", DESK)
        await rt.register("bob", MOBILE)
        call = await rt.call("sip:bob@example.com")
        desk, _silent = await call.branches(2)
        await cancel(rt, call)
        await desk.reply(180)
        assert await desk.cancelled()
        assert (await one_final(call)).status == 487


# -- failure routes that fail ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        'error("boom")',
        "while true do end",
        'KSR.tm.t_next_contacts(); KSR.tm.t_relay(); error("after relaying")',
    ],
    ids=["raises", "budget", "raises-after-relay"],
)
@pytest.mark.parametrize("canceled", [False, True], ids=["answered", "canceled"])
async def test_failing_failure_route_sends_the_best_response(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, body: str, canceled: bool
) -> None:
    routes = f"function failure()\n  {body}\nend\n"
    async with RouteTest(script(tmp_path, routes), instruction_budget=200_000) as rt:
        await rt.register("bob", VOICEMAIL, q=0.5)
        call, desk, mobile = await two_ringing(rt)
        if canceled:
            await cancel(rt, call)
            assert await desk.cancelled() and await mobile.cancelled()
        else:
            await desk.reply(486)
            await mobile.reply(503)  # a 5xx loses to the 4xx (16.7 step 6)
        final = await one_final(call)
        assert final.status == (487 if canceled else 486)
        # The failed route's relay is void: the next contact never rang.
        assert not [s for s in rt.net.sent if s.dest == Address("udp", "127.0.0.23", 5060)]


async def test_failure_route_reply_is_the_final(autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    routes = 'function failure()\n  KSR.tm.t_reply(404, "Nobody Here")\n  KSR.tm.t_reply(500)\nend\n'
    async with RouteTest(script(tmp_path, routes)) as rt:
        call, desk, mobile = await two_ringing(rt)
        await desk.reply(486)
        await mobile.reply(486)
        final = await one_final(call)
        assert (final.status, final.reason) == (404, "Nobody Here")


async def test_failure_route_after_6xx_makes_no_branch(autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    routes = "function failure()\n  if KSR.tm.t_next_contacts() > 0 then KSR.tm.t_relay() end\nend\n"
    async with RouteTest(script(tmp_path, routes)) as rt:
        await rt.register("bob", VOICEMAIL, q=0.5)
        call, desk, mobile = await two_ringing(rt)
        await desk.reply(603)
        assert await mobile.cancelled()
        assert (await one_final(call)).status == 603
        assert not [s for s in rt.net.sent if s.dest == Address("udp", "127.0.0.23", 5060)]


# -- branch and reply routes ------------------------------------------------------------------------------


@pytest.mark.parametrize("body", ["KSR.x.drop()", 'error("boom")'], ids=["drop", "raises"])
async def test_every_branch_dropped_still_answers(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, body: str
) -> None:
    routes = f"function branch()\n  {body}\nend\nfunction failure()\nend\n"
    setup = 'KSR.tm.t_on_branch("branch"); KSR.tm.t_on_failure("failure")'
    async with RouteTest(script(tmp_path, routes, setup)) as rt:
        await rt.register("bob", DESK)
        await rt.register("bob", MOBILE)
        call = await rt.call("sip:bob@example.com")
        assert (await one_final(call)).status == 500
        assert not [s for s in rt.net.sent if s.dest is not None and s.msg.call_id == call.call_id]


async def test_branch_route_dropping_one_branch(autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    routes = 'function branch()\n  if KSR.pv.get("$ru") == "DESK" then error("boom") end\nend\n'.replace(
        "DESK", DESK
    )
    async with RouteTest(script(tmp_path, routes, 'KSR.tm.t_on_branch("branch")')) as rt:
        await rt.register("bob", DESK)
        await rt.register("bob", MOBILE)
        call = await rt.call("sip:bob@example.com")
        leg = await call.branch()
        assert leg.uri == MOBILE
        await leg.reply(486)
        assert (await one_final(call)).status == 486


@pytest.mark.parametrize(
    "routes,setup",
    [
        ('function ksr_reply_route()\n  error("boom")\nend\n', ""),
        ('function onreply()\n  error("boom")\nend\n', 'KSR.tm.t_on_reply("onreply")'),
        ("function ksr_reply_route()\n  while true do end\nend\n", ""),
    ],
    ids=["global-raises", "onreply-raises", "global-budget"],
)
async def test_reply_route_that_fails_passes_the_response(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, routes: str, setup: str
) -> None:
    async with RouteTest(script(tmp_path, routes, setup), instruction_budget=200_000) as rt:
        await rt.register("bob", DESK)
        call = await rt.call("sip:bob@example.com")
        leg = await call.branch()
        await leg.reply(180)
        await leg.reply(486)
        assert (await one_final(call)).status == 486
        assert 180 in [r.status for r in call.responses()]


async def test_reply_route_drops_provisionals_but_never_a_final(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    routes = "function ksr_reply_route()\n  KSR.x.drop()\nend\n"
    async with RouteTest(script(tmp_path, routes, "")) as rt:
        await rt.register("bob", DESK)
        call = await rt.call("sip:bob@example.com")
        leg = await call.branch()
        await leg.reply(180)
        await leg.reply(486)
        assert (await one_final(call)).status == 486
        assert 180 not in [r.status for r in call.responses()]


async def test_request_route_drop_sends_nothing(autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    path = tmp_path / "drop.lua"
    path.write_text("function ksr_request_route()\n  KSR.x.drop()\nend\n")
    async with RouteTest(path) as rt:
        call = await rt.call("sip:bob@example.com")
        await trio.sleep(SETTLE)
        assert finals(call) == []


# -- timers ---------------------------------------------------------------------------------------------


async def test_fr_inv_timer_cancels_ringing_branch(autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """t_set_fr: the ring time runs out on a ringing branch, which is CANCELled; its 487 is the one final."""
    routes = "function failure()\n  if KSR.tm.t_branch_timeout() > 0 then return end\nend\n"
    setup = 'KSR.tm.t_set_fr(2000, 1000); KSR.tm.t_on_failure("failure")'
    async with RouteTest(script(tmp_path, routes, setup)) as rt:
        await rt.register("bob", DESK)
        call = await rt.call("sip:bob@example.com")
        leg = await call.branch()
        await leg.reply(180)
        assert await leg.cancelled(within=3.0)
        assert (await one_final(call)).status == 487


async def test_fr_timer_without_answer_is_408(autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    routes = "function failure()\n  if KSR.tm.t_branch_timeout() > 0 then return end\nend\n"
    setup = 'KSR.tm.t_set_fr(2000, 1000); KSR.tm.t_on_failure("failure")'
    async with RouteTest(script(tmp_path, routes, setup)) as rt:
        await rt.register("bob", DESK)
        call = await rt.call("sip:bob@example.com")
        await call.branch()
        assert (await one_final(call)).status == 408


# -- Vias: every answer upstream is routed by the request as the caller sent it -------------------------------


async def test_callee_that_loses_the_callers_via(autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    async with RouteTest(script(tmp_path, "function failure()\nend\n")) as rt:
        await rt.register("bob", DESK)
        call = await rt.call("sip:bob@example.com")
        leg = await call.branch()
        resp = make_response(leg.request, 486, to_tag="uas")
        ours = resp.get_all("Via")[0]
        resp.remove("Via")
        resp.insert_top("Via", ours)  # only the proxy's Via comes back
        await rt.net.inject(resp, leg.dest)
        assert (await one_final(call)).status == 486


# -- the static router (no script) --------------------------------------------------------------------------


async def test_static_router_cancel_starts_no_next_stage(autojump_clock: trio.testing.MockClock) -> None:
    a, b = Address("udp", "127.0.0.10", 5060), Address("udp", "127.0.0.11", 5060)
    stages = [[Target(parse_uri_untrusted("sip:a@127.0.0.10"))], [Target(parse_uri_untrusted("sip:b@127.0.0.11"))]]
    async with running_proxy(StaticRouter(stages=stages)) as (_proxy, net):
        raw = invite("sip:bob@127.0.0.1")
        await net.inject(raw, CALLER)
        ia = await net.request_to(a)
        await net.inject(reply(ia, 180, tag="a"), a)
        await net.inject(raw.replace(b"INVITE sip", b"CANCEL sip").replace(b"1 INVITE", b"1 CANCEL"), CALLER)
        cancel = await net.request_to(a, "CANCEL")
        await net.inject(reply(cancel, 200, tag="a"), a)
        await net.inject(reply(ia, 487, tag="a"), a)
        await net.response_up(487)
        await trio.sleep(SETTLE)
        assert net.requests_to(b, "INVITE") == []
        invite_finals = {(r.status, r.to.tag) for r in net.responses_up() if r.cseq.method == "INVITE" and r.status >= 200}
        assert invite_finals == {(487, "a")}
