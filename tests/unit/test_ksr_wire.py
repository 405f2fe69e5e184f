"""KSR functions by what they put on the wire: the real proxy core on a fake network, on virtual time.

Each test runs a small route script in ``RouteTest`` and asserts what a peer receives: the request a callee
gets (its headers, where it is sent), the responses the caller gets and where they would be sent
(``response_target`` of the top Via, exactly as the UDP transport addresses them).
"""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from trioproxy.sip import Address, Response
from trioproxy.testing import RouteTest
from trioproxy.transport.via import response_target

NAT = Address("udp", "127.0.0.2", 40123)  # where a NAT'd caller's packets come from
BOB = Address("udp", "127.0.0.30", 5060)


def script(tmp_path: Path, body: str, name: str = "wire.lua") -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


def nat_invite(rt: RouteTest, uri: str, sent_by: str, **kw: object) -> bytes:
    """An INVITE from ``NAT`` whose top Via names ``sent_by`` and has no ``rport``."""
    data = rt.request("INVITE", uri, source=NAT, **kw)  # type: ignore[arg-type]
    head, rest = data.split(b"\r\n", 1)
    via, rest = rest.split(b"\r\n", 1)
    branch = via.split(b";branch=", 1)[1].split(b";", 1)[0]
    return head + b"\r\nVia: SIP/2.0/UDP " + sent_by.encode() + b";branch=" + branch + b"\r\n" + rest


def where(resp: Response) -> tuple[str, int]:
    return response_target(resp.top_via, "udp")


RELAY = """
function ksr_request_route()
  {pre}
  KSR.tm.t_relay()
end
"""


# -- force_rport and the automatic 100 Trying --------------------------------------------------------------


async def test_force_rport_sends_responses_to_the_source(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with RouteTest(script(tmp_path, RELAY.format(pre="KSR.force_rport()"))) as rt:
        call = await rt.send(nat_invite(rt, "sip:bob@127.0.0.30", "127.0.0.2:5099"), NAT)
        leg = await call.branch()
        # The caller's Via as forwarded carries what Kamailio stamps: received and the source port.
        caller_via = leg.request.vias[1]
        assert (caller_via.params.get("received"), caller_via.params.get("rport")) == ("127.0.0.2", "40123")
        await leg.reply(180)
        await leg.reply(200)
        final = await call.final()
        assert final.status == 200
        assert [r.status for r in call.responses()] == [100, 180, 200]
        assert {where(r) for r in call.responses()} == {("127.0.0.2", 40123)}


async def test_without_force_rport_responses_follow_the_via(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # The control: the same request without force_rport is answered to its Via's sent-by port.
    async with RouteTest(script(tmp_path, RELAY.format(pre=""))) as rt:
        call = await rt.send(nat_invite(rt, "sip:bob@127.0.0.30", "127.0.0.2:5099"), NAT)
        leg = await call.branch()
        assert "rport" not in leg.request.vias[1].params
        await leg.reply(200)
        await call.final()
        assert {where(r) for r in call.responses()} == {("127.0.0.2", 5099)}


async def test_trying_goes_when_the_route_first_waits(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    body = RELAY.format(pre="KSR.force_rport() KSR.x.sleep(1)")
    async with RouteTest(script(tmp_path, body)) as rt:
        start = trio.current_time()
        call = await rt.send(nat_invite(rt, "sip:bob@127.0.0.30", "127.0.0.2:5099"), NAT)
        trying = await call.response(100, within=0.5)  # before the 1 s sleep ends
        assert where(trying) == ("127.0.0.2", 40123)
        await call.branch()
        assert trio.current_time() - start >= 1.0


async def test_drop_and_exit_send_nothing(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    body = """
function ksr_request_route()
  if KSR.hdr.is_present("X-Drop") > 0 then KSR.x.drop() end
  KSR.x.exit()
end
"""
    async with RouteTest(script(tmp_path, body)) as rt:
        dropped = await rt.call("sip:bob@127.0.0.30", headers=[("X-Drop", "1")])
        exited = await rt.call("sip:bob@127.0.0.30")
        await trio.sleep(5)
        assert dropped.responses() == [] and exited.responses() == []
        assert rt.net.requests_to(BOB, "INVITE") == []


async def test_t_newtran_sends_trying_then_stateful_reply(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    body = """
function ksr_request_route()
  local runs = KSR.htable.sht_inc("t", "runs")
  if KSR.hdr.is_present("X-Newtran") > 0 then KSR.tm.t_newtran() end
  KSR.hdr.append_to_reply("X-Run: " .. runs .. "\\r\\n")
  KSR.sl.sl_send_reply(404, "Not Found")
end
"""
    async with RouteTest(script(tmp_path, body)) as rt:
        plain = await rt.call("sip:bob@127.0.0.30")
        await plain.final()
        assert [r.status for r in plain.responses()] == [404]
        data = rt.request("INVITE", "sip:bob@127.0.0.30", headers=[("X-Newtran", "1")])
        call = await rt.send(data)
        await call.final()
        assert [r.status for r in call.responses()] == [100, 404]
        # A retransmission is absorbed by the transaction: the same 404 again, the route does not run again.
        await rt.send(data)
        await trio.sleep(1)
        finals = [r for r in call.responses() if r.status == 404]
        assert len(finals) >= 2 and {r.get("X-Run") for r in finals} == {"2"}


# -- record-route --------------------------------------------------------------------------------------------


async def test_record_route_preset(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    body = """
function ksr_request_route()
  local u = KSR.kx.get_ruser()
  if u == "one" then
    KSR.rr.record_route_preset("203.0.113.5:5090")
  elseif u == "two" then
    KSR.rr.record_route_preset("203.0.113.5:5090;transport=tcp", "sip:10.0.0.5:5060;lr")
  else
    KSR.rr.add_rr_param(";nat=yes")
    KSR.rr.record_route_preset("sip:203.0.113.5")
  end
  KSR.tm.t_relay()
end
"""
    async with RouteTest(script(tmp_path, body)) as rt:
        one = await (await rt.call("sip:one@127.0.0.30")).branch()
        assert one.request.get_all("Record-Route") == ["<sip:203.0.113.5:5090;lr>"]
        two = await (await rt.call("sip:two@127.0.0.30")).branch()
        assert two.request.get_all("Record-Route") == [
            "<sip:203.0.113.5:5090;transport=tcp;lr;r2=on>",
            "<sip:10.0.0.5:5060;lr;r2=on>",
        ]
        param = await (await rt.call("sip:three@127.0.0.30")).branch()
        assert param.request.get_all("Record-Route") == ["<sip:203.0.113.5;lr;nat=yes>"]


async def test_add_rr_param_and_check_route_param(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    body = """
function ksr_request_route()
  if KSR.siputils.has_totag() > 0 then
    KSR.rr.loose_route()
    if KSR.rr.check_route_param("nat=yes") > 0 then KSR.hdr.append("X-Nat: yes\\r\\n") end
    KSR.tm.t_relay()
    return
  end
  KSR.rr.record_route()
  KSR.rr.add_rr_param(";nat=yes")
  KSR.tm.t_relay()
end
"""
    async with RouteTest(script(tmp_path, body)) as rt:
        leg = await (await rt.call("sip:bob@127.0.0.30")).branch()
        rr = leg.request.get_all("Record-Route")
        assert rr == ["<sip:127.0.0.1:5060;lr;nat=yes>"]
        for route, want in ((rr[0], ["yes"]), ("<sip:127.0.0.1:5060;lr>", [])):
            bye = await rt.call(
                "sip:bob@127.0.0.30", method="BYE", to_tag="x1", headers=[("Route", route)], cseq=2
            )
            fwd = await bye.branch("BYE")
            assert fwd.request.get_all("X-Nat") == want
            assert not fwd.request.has("Route")


# -- tm: timers, branch and reply routes, status checks -----------------------------------------------------


async def test_t_set_fr_timers(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    body = RELAY.format(pre="KSR.tm.t_set_fr(3000, 1000)")
    async with RouteTest(script(tmp_path, body)) as rt:
        start = trio.current_time()
        silent = await rt.call("sip:bob@127.0.0.30")
        assert (await silent.final()).status == 408
        assert 1.0 <= trio.current_time() - start < 2.0  # fr_timer 1 s, not Timer B (32 s)
        ringing = await rt.call("sip:bob@127.0.0.31")
        leg = await ringing.branch()
        start = trio.current_time()
        await leg.reply(180)
        assert await leg.cancelled(within=10)
        assert 3.0 <= trio.current_time() - start < 4.0  # fr_inv_timer 3 s after the 180
        assert (await ringing.final()).status == 487


async def test_branch_route_with_bflags_and_drop(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    body = """
function ksr_request_route()
  KSR.corex.append_branch("sip:carol@127.0.0.31")
  KSR.corex.append_branch("sip:dave@127.0.0.32")
  KSR.setbflag(2)
  KSR.tm.t_on_branch("per_branch")
  KSR.tm.t_relay()
end
function per_branch()
  if KSR.kx.get_ruser() == "dave" then KSR.x.drop() end
  if KSR.isbflagset(2) then KSR.hdr.append("X-Flagged: 1\\r\\n") end
  KSR.hdr.append("X-Branch: " .. KSR.kx.get_ruser() .. "\\r\\n")
end
"""
    async with RouteTest(script(tmp_path, body)) as rt:
        call = await rt.call("sip:bob@127.0.0.30")
        legs = {leg.request.uri.user: leg for leg in await call.branches(2)}
        assert set(legs) == {"bob", "carol"}
        assert legs["bob"].request.get_all("X-Flagged") == ["1"]
        assert legs["carol"].request.get_all("X-Flagged") == []
        assert legs["carol"].request.get("X-Branch") == "carol"
        await trio.sleep(1)
        assert rt.net.requests_to(Address("udp", "127.0.0.32", 5060), "INVITE") == []


async def test_reply_routes_edit_and_drop_replies(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    body = """
function ksr_request_route()
  KSR.tm.t_on_reply("on_reply")
  KSR.tm.t_relay()
end
function on_reply()
  KSR.hdr.remove("X-Secret")
  KSR.hdr.append("X-Seen: " .. KSR.kx.get_status() .. "\\r\\n")
end
function ksr_reply_route()
  if KSR.kx.get_status() == 183 then KSR.x.drop() end
end
"""
    async with RouteTest(script(tmp_path, body)) as rt:
        call = await rt.call("sip:bob@127.0.0.30")
        leg = await call.branch()
        await leg.reply(183)
        await leg.reply(180, headers=[("X-Secret", "s")])
        await leg.reply(200)
        final = await call.final()
        assert [r.status for r in call.responses()] == [100, 180, 200]
        ringing = call.responses()[1]
        assert ringing.get("X-Seen") == "180" and not ringing.has("X-Secret")
        assert final.get("X-Seen") == "200"


async def test_failure_route_t_check_status(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    body = """
function ksr_request_route()
  KSR.tm.t_on_failure("next")
  KSR.tm.t_relay()
end
function next()
  if KSR.tm.t_check_status("486|408") > 0 then
    KSR.seturi("sip:voicemail@127.0.0.40")
    KSR.tm.t_relay()
  end
end
"""
    async with RouteTest(script(tmp_path, body)) as rt:
        busy = await rt.call("sip:bob@127.0.0.30")
        await (await busy.branch()).reply(486)
        vm = await busy.branch()
        assert vm.request.uri.user == "voicemail"
        await vm.reply(200)
        assert (await busy.final()).status == 200
        gone = await rt.call("sip:bob@127.0.0.30")
        await (await gone.branch()).reply(404)
        assert (await gone.final()).status == 404


# -- destinations: $du, t_relay_to_proto_addr, nathelper ----------------------------------------------------


async def test_destination_overrides(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    body = """
function ksr_request_route()
  local u = KSR.kx.get_ruser()
  if u == "du" then
    KSR.pv.sets("$du", "sip:127.0.0.40:5070")
  elseif u == "to" then
    KSR.tm.t_relay_to_proto_addr("udp", "127.0.0.41", 5071)
    return
  end
  KSR.tm.t_relay()
end
"""
    async with RouteTest(script(tmp_path, body)) as rt:
        du = await (await rt.call("sip:du@127.0.0.30")).branch()
        assert du.dest == Address("udp", "127.0.0.40", 5070) and str(du.request.uri) == "sip:du@127.0.0.30"
        to = await (await rt.call("sip:to@127.0.0.30")).branch()
        assert to.dest == Address("udp", "127.0.0.41", 5071) and str(to.request.uri) == "sip:to@127.0.0.30"


async def test_nathelper_contact_and_alias(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    body = """
function ksr_request_route()
  if KSR.siputils.has_totag() > 0 then
    KSR.nathelper.handle_ruri_alias()
  elseif KSR.kx.get_ruser() == "fix" then
    KSR.nathelper.fix_nated_contact()
  else
    KSR.nathelper.set_contact_alias()
  end
  KSR.tm.t_relay()
end
"""
    async with RouteTest(script(tmp_path, body)) as rt:
        natted = "<sip:alice@10.0.0.2:5062>"
        fix = await (await rt.call("sip:fix@127.0.0.30", source=NAT, contact=natted)).branch()
        assert fix.request.get("Contact") == "<sip:alice@127.0.0.2:40123>"
        alias = await (await rt.call("sip:bob@127.0.0.30", source=NAT, contact=natted)).branch()
        contact = alias.request.get("Contact")
        assert contact == "<sip:alice@10.0.0.2:5062;alias=127.0.0.2~40123~1>"
        # The callee's BYE to that Contact goes to the alias address, with the alias removed.
        bye = await rt.call(contact.strip("<>"), method="BYE", to_tag="t1", source=BOB)
        fwd = await bye.branch("BYE")
        assert fwd.dest == NAT and str(fwd.request.uri) == "sip:alice@10.0.0.2:5062"


async def test_fix_nated_register(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    body = """
function ksr_request_route()
  if KSR.is_REGISTER() then
    if KSR.kx.get_fuser() == "nat" then KSR.nathelper.fix_nated_register() end
    KSR.registrar.save("location", 0)
    return
  end
  if KSR.registrar.lookup("location") < 0 then KSR.sl.sl_send_reply(404, "Not Found") return end
  KSR.tm.t_relay()
end
"""
    async with RouteTest(script(tmp_path, body)) as rt:
        assert (await rt.register("nat", "sip:nat@10.0.0.9:5062", source=NAT)).status == 200
        assert (await rt.register("plain", "sip:plain@127.0.0.33:5062", source=NAT)).status == 200
        nat = await (await rt.call("sip:nat@example.com")).branch()
        assert nat.dest == NAT and str(nat.request.uri) == "sip:nat@10.0.0.9:5062"
        plain = await (await rt.call("sip:plain@example.com")).branch()
        assert plain.dest == Address("udp", "127.0.0.33", 5062)


# -- replies and headers -------------------------------------------------------------------------------------


async def test_replies_with_headers(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    body = """
function ksr_request_route()
  KSR.hdr.append_to_reply("X-Why: blocked\\r\\n")
  if KSR.kx.get_ruser() == "err" then KSR.sl.sl_reply_error() return end
  KSR.tm.t_reply(403, "Forbidden Here")
end
"""
    async with RouteTest(script(tmp_path, body)) as rt:
        final = await (await rt.call("sip:bob@127.0.0.30", method="MESSAGE")).final()
        assert (final.status, final.reason, final.get("X-Why")) == (403, "Forbidden Here", "blocked")
        err = await (await rt.call("sip:err@127.0.0.30", method="MESSAGE")).final()
        assert (err.status, err.get("X-Why")) == (500, "blocked")


async def test_request_edits_are_forwarded(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    body = """
function ksr_request_route()
  KSR.maxfwd.process_maxfwd(10)
  KSR.hdr.remove("User-Agent")
  KSR.hdr.insert("X-Top: 1\\r\\n")
  KSR.textops.append_hf("X-End: 2\\r\\n")
  KSR.setuser("robert")
  KSR.corex.append_branch("sip:carol@127.0.0.31")
  KSR.tm.t_relay()
end
"""
    async with RouteTest(script(tmp_path, body)) as rt:
        call = await rt.call("sip:bob@127.0.0.30", headers=[("User-Agent", "x")])
        legs = {leg.request.uri.user: leg.request for leg in await call.branches(2)}
        assert set(legs) == {"robert", "carol"}
        for req in legs.values():
            assert req.get("Max-Forwards") == "69" and not req.has("User-Agent")
            assert (req.get("X-Top"), req.get("X-End")) == ("1", "2")


async def test_tmx_route_kind_checks(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """KSR.tmx.t_is_*_route: true only in that kind of route (Kamailio's example adds ;nat=yes in branch routes)."""
    body = """
function ksr_request_route()
  if KSR.tmx.t_is_request_route() > 0 and KSR.tmx.t_is_branch_route() < 0 then
    KSR.hdr.append("X-Request-Route: 1\\r\\n")
  end
  KSR.tm.t_on_branch("per_branch")
  KSR.tm.t_relay()
end
function per_branch()
  if KSR.tmx.t_is_branch_route() > 0 and KSR.tmx.t_is_failure_route() < 0 then
    KSR.hdr.append("X-Branch-Route: 1\\r\\n")
  end
end
"""
    async with RouteTest(script(tmp_path, body)) as rt:
        call = await rt.call("sip:bob@127.0.0.30")
        (leg,) = await call.branches(1)
        assert leg.request.get_all("X-Request-Route") == ["1"]
        assert leg.request.get_all("X-Branch-Route") == ["1"]
