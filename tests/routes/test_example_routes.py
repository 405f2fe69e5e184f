"""Route tests of every example script, through the real proxy core on virtual time (trioproxy.testing)."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from trioproxy.sip import Address, Request, parse_message_untrusted
from trioproxy.testing import RouteTest

ROUTES = Path(__file__).resolve().parents[2] / "examples" / "routes"
DESK = Address("udp", "127.0.0.21", 5060)
MOBILE = Address("udp", "127.0.0.22", 5060)
VM = Address("udp", "127.0.0.23", 5060)


async def test_default_register_and_call(autojump_clock: trio.testing.MockClock) -> None:
    async with RouteTest(ROUTES / "default.lua") as rt:
        ok = await rt.register("bob", "sip:bob@127.0.0.21:5060")
        assert ok.status == 200
        assert [c.uri.host for c in ok.contacts] == ["127.0.0.21"]
        call = await rt.call("sip:bob@example.com")
        leg = await call.branch()
        assert leg.uri == "sip:bob@127.0.0.21:5060"
        assert leg.request.get_all("Record-Route")  # INVITE is record-routed
        assert leg.request.max_forwards == 69  # process_maxfwd(10) decrements 70 (10: only when absent)
        await leg.reply(180)
        await leg.reply(200)
        assert (await call.final()).status == 200
        assert [r.status for r in call.responses()] == [100, 180, 200]


async def test_default_unknown_user_404_and_keepalive(autojump_clock: trio.testing.MockClock) -> None:
    async with RouteTest(ROUTES / "default.lua") as rt:
        call = await rt.call("sip:nobody@example.com")
        assert (await call.final()).status == 404
        ping = await rt.call("sip:example.com", method="OPTIONS")
        assert (await ping.final()).status == 200


async def test_default_serial_by_q_on_busy(autojump_clock: trio.testing.MockClock) -> None:
    async with RouteTest(ROUTES / "default.lua") as rt:
        await rt.register("bob", "sip:bob@127.0.0.21:5060", q=1.0)
        await rt.register("bob", "sip:bob@127.0.0.22:5060", q=0.5)
        call = await rt.call("sip:bob@example.com")
        first = await call.branch()
        assert first.dest == DESK
        await first.reply(486)
        second = await call.branch()  # failure route: t_next_contacts
        assert second.dest == MOBILE
        await second.reply(200)
        final = await call.final()
        assert final.status == 200
        assert [r.status for r in call.responses() if r.status >= 200] == [200]


async def test_default_in_dialog_bye_follows_route(autojump_clock: trio.testing.MockClock) -> None:
    async with RouteTest(ROUTES / "default.lua") as rt:
        bye = await rt.call(
            "sip:bob@127.0.0.21:5060",
            method="BYE",
            to_tag="b1",
            headers=[("Route", "<sip:127.0.0.1:5060;lr>")],
        )
        leg = await bye.branch("BYE")
        assert leg.dest == DESK and not leg.request.has("Route")
        await leg.reply(200)
        assert (await bye.final()).status == 200


async def test_ring_all_forks_and_cancels_the_rest(autojump_clock: trio.testing.MockClock) -> None:
    async with RouteTest(ROUTES / "ring-all.lua") as rt:
        await rt.register("bob", "sip:bob@127.0.0.21:5060")
        await rt.register("bob", "sip:bob@127.0.0.22:5060")
        call = await rt.call("sip:bob@example.com")
        a, b = await call.branches(2)
        assert {a.dest, b.dest} == {DESK, MOBILE}
        await a.reply(180)
        await b.reply(180)
        await b.reply(200)
        assert (await call.final()).status == 200
        assert await a.cancelled()


async def test_ring_all_unregistered_480(autojump_clock: trio.testing.MockClock) -> None:
    async with RouteTest(ROUTES / "ring-all.lua") as rt:
        call = await rt.call("sip:carol@example.com")
        assert (await call.final()).status == 480


async def test_ring_all_no_answer_ends_by_fr_inv_timer(autojump_clock: trio.testing.MockClock) -> None:
    async with RouteTest(ROUTES / "ring-all.lua") as rt:
        await rt.register("bob", "sip:bob@127.0.0.21:5060")
        call = await rt.call("sip:bob@example.com")
        leg = await call.branch()
        await leg.reply(180)
        t0 = trio.current_time()
        assert await leg.cancelled()  # t_set_fr(30000, ...): 30 s of ringing at most
        assert trio.current_time() - t0 == 30.0
        assert (await call.final()).status == 487


async def test_serial_desk_then_mobile_then_voicemail(autojump_clock: trio.testing.MockClock) -> None:
    hosts = {"desk.example.com": DESK, "mobile.example.com": MOBILE, "vm.example.com": VM}
    async with RouteTest(ROUTES / "serial.lua", hosts=hosts) as rt:
        call = await rt.call("sip:bob@example.com")
        desk = await call.branch()
        assert desk.uri == "sip:bob@desk.example.com" and desk.dest == DESK
        await desk.reply(486)
        mobile = await call.branch()
        assert mobile.uri == "sip:bob@mobile.example.com"
        await mobile.reply(180)
        t0 = trio.current_time()
        assert await mobile.cancelled(within=61)  # t_set_fr(60000, ...): 60 s of ringing at most
        assert trio.current_time() - t0 == 60.0
        vm = await call.branch()  # then the next stage
        assert vm.uri == "sip:voicemail@vm.example.com" and vm.dest == VM
        await vm.reply(200)
        assert (await call.final()).status == 200


async def test_blocklist_blocks_a_flooding_source(autojump_clock: trio.testing.MockClock) -> None:
    async with RouteTest(ROUTES / "blocklist.lua") as rt:
        first = await rt.call("sip:bob@127.0.0.21:5060", method="MESSAGE")
        leg = await first.branch()
        assert leg.request.get("X-Screened") == "yes"
        await leg.reply(200)
        statuses = []
        for _ in range(25):
            call = await rt.call("sip:bob@127.0.0.21:5060", method="MESSAGE")
            with trio.move_on_after(1):
                leg = await call.branch(within=1)
                await leg.reply(200)
            statuses.append((await call.final()).status)
        assert statuses[:19] == [200] * 19
        assert statuses[-5:] == [403] * 5


async def test_async_lookup_waits_for_registration(autojump_clock: trio.testing.MockClock) -> None:
    async with RouteTest(ROUTES / "async_lookup.lua") as rt:
        call = await rt.call("sip:bob@example.com")
        await trio.sleep(0.6)  # the route sleeps 0.5 s, looks again, sleeps 1.0 s ...
        other = await rt.call("sip:dave@127.0.0.22:5060", method="MESSAGE")
        quick = await other.branch()  # another request is routed while the first one waits
        await quick.reply(200)
        register = parse_message_untrusted(
            rt.request("REGISTER", "sip:example.com", from_user="bob", to="sip:bob@example.com",
                       contact="<sip:bob@127.0.0.21:5060>")
        )
        assert isinstance(register, Request)
        assert (await rt.registrar.save(register, now=rt.now())).status == 200  # straight into the store
        leg = await call.branch()
        assert leg.request.get("X-Lookup-Tries") == "2"
        await leg.reply(200)
        assert (await call.final()).status == 200
