"""``KSR.dispatcher`` through the real proxy core on virtual time, with ``examples/routes/lb.lua``: where the
branches go, failover in the failure route, marks, ``ds_is_from_list``, and ``t_set_fr`` on failover branches."""

from __future__ import annotations

from pathlib import Path

import trio

from trioproxy.dispatcher import Dispatcher, DispatcherSets, parse_list, use_dispatcher
from trioproxy.sip import Address
from trioproxy.testing import RouteTest

LB = Path(__file__).resolve().parents[2] / "examples" / "routes" / "lb.lua"
A = Address("udp", "127.0.0.41", 5060)
B = Address("udp", "127.0.0.42", 5060)
LIST = "1 sip:127.0.0.41:5060\n1 sip:127.0.0.42:5060\n"


def dispatcher(text: str = LIST, probing_mode: int = 0) -> Dispatcher:
    return Dispatcher(DispatcherSets.build(parse_list(text)), probing_mode=probing_mode)


async def test_round_robin_spreads_calls_with_record_route(autojump_clock: trio.abc.Clock) -> None:
    with use_dispatcher(dispatcher()):
        async with RouteTest(LB) as rt:
            dests = []
            for _ in range(4):
                call = await rt.call("sip:conference@example.com")
                leg = await call.branch()
                dests.append(leg.dest)
                assert leg.uri == "sip:conference@example.com"  # $du only: the R-URI stays
                assert leg.request.get("Record-Route") is not None
                await leg.reply(200)
                assert (await call.final()).status == 200
            assert dests == [A, B, A, B]


async def test_failover_on_5xx_marks_the_destination(autojump_clock: trio.abc.Clock) -> None:
    ds = dispatcher(probing_mode=1)
    with use_dispatcher(ds):
        async with RouteTest(LB) as rt:
            call = await rt.call("sip:conference@example.com")
            first = await call.branch()
            assert first.dest == A
            await first.reply(503)
            second = await call.branch()
            assert second.dest == B
            await second.reply(200)
            assert (await call.final()).status == 200
            assert ds.sets.sets[1][0].state_text(probing_all=True) == "IP"
            for _ in range(2):  # the marked one is skipped by selection
                call = await rt.call("sip:conference@example.com")
                leg = await call.branch()
                assert leg.dest == B
                await leg.reply(200)
                await call.final()


async def test_silent_destination_times_out_after_fr_and_all_down_answers(
    autojump_clock: trio.abc.Clock,
) -> None:
    with use_dispatcher(dispatcher()):
        async with RouteTest(LB) as rt:
            call = await rt.call("sip:conference@example.com")
            t0 = trio.current_time()
            assert (await call.branch()).dest == A  # sends nothing back
            await rt.net.request_to(B, "INVITE", start=call.start, within=3.0)
            t1 = trio.current_time()
            final = await call.final(within=3.0)  # t_set_fr's 2 s applies to the failover branch too
            assert 1.9 <= t1 - t0 <= 2.5 and 1.9 <= trio.current_time() - t1 <= 2.5
            assert final.status == 408
            call = await rt.call("sip:conference@example.com")
            assert (await call.final()).status == 503  # both marked: no destination left


async def test_t_set_fr_in_the_failure_route(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    script = tmp_path / "fr.lua"
    script.write_text(
        """
function ksr_request_route()
  KSR.dispatcher.ds_select_dst(1, 8)
  KSR.tm.t_on_failure("next")
  KSR.tm.t_set_fr(30000, 5000)
  KSR.tm.t_relay()
end
function next()
  KSR.dispatcher.ds_mark_dst()
  if KSR.dispatcher.ds_next_dst() > 0 then
    KSR.tm.t_set_fr(30000, 1000)
    KSR.tm.t_relay()
  end
end
"""
    )
    ds = dispatcher()
    with use_dispatcher(ds):
        async with RouteTest(script) as rt:
            call = await rt.call("sip:conference@example.com")
            t0 = trio.current_time()
            assert (await call.branch()).dest == A
            await rt.net.request_to(B, "INVITE", start=call.start, within=6.0)
            t1 = trio.current_time()
            await call.final(within=3.0)
            assert 4.9 <= t1 - t0 <= 5.5 and 0.9 <= trio.current_time() - t1 <= 1.5
            # no t_on_failure armed again: the second failure runs no route, B stays active
            assert not ds.sets.sets[1][0].active and ds.sets.sets[1][1].active


async def test_requests_from_a_listed_server_are_not_balanced(autojump_clock: trio.abc.Clock) -> None:
    with use_dispatcher(dispatcher()):
        async with RouteTest(LB) as rt:
            call = await rt.call("sip:carol@127.0.0.77:5090", source=B)
            leg = await call.branch()
            assert leg.dest == Address("udp", "127.0.0.77", 5090)


async def test_without_a_dispatcher_selection_fails(autojump_clock: trio.abc.Clock) -> None:
    async with RouteTest(LB) as rt:
        call = await rt.call("sip:conference@example.com")
        assert (await call.final()).status == 503


FUNCTIONS = """
function ksr_request_route()
  local ds = KSR.dispatcher
  local user = KSR.pv.get("$rU")
  if user == "domain" then
    ds.ds_select_domain(1, 8)
  elseif user == "list" then
    ds.ds_select(1, 8)
    KSR.hdr.append("X-DS: " .. KSR.pv.get("$xavp(_dsdst_=>uri)") .. " " .. KSR.pv.get("$xavp(_dsdst_[1]=>uri)") .. "\\r\\n")
  elseif user == "disable" then
    ds.ds_select_dst(1, 8)
    ds.ds_mark_dst_state("d")
    ds.ds_select_dst(1, 8)
  elseif user == "info" then
    KSR.hdr.append_to_reply(string.format("X-Info: %d %d %d %d %d %d %d %d\\r\\n",
      ds.ds_is_from_list(1), ds.ds_is_from_list_mode(1, 2), ds.ds_is_from_lists(), ds.ds_is_active(1),
      ds.ds_is_active(9), ds.ds_list_exists(1), ds.ds_list_exists(9), ds.ds_reload()))
    KSR.sl.sl_send_reply(200, "OK")
    return
  end
  KSR.tm.t_relay()
end
"""


async def test_the_other_functions(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    script = tmp_path / "functions.lua"
    script.write_text(FUNCTIONS)
    ds = dispatcher()
    with use_dispatcher(ds):
        async with RouteTest(script) as rt:
            call = await rt.call("sip:domain@example.com")
            leg = await call.branch()
            assert leg.dest == A and leg.uri == "sip:domain@127.0.0.41:5060"  # the R-URI rewritten
            call = await rt.call("sip:list@127.0.0.77:5090")
            leg = await call.branch()
            assert leg.dest == Address("udp", "127.0.0.77", 5090)  # no $du: the R-URI
            assert leg.request.get("X-DS") == "sip:127.0.0.41:5060 sip:127.0.0.42:5060"
            call = await rt.call("sip:info@example.com", source=Address("udp", "127.0.0.41", 9999))
            assert (await call.final()).get("X-Info") == "-1 1 -1 1 -1 1 -1 -1"
            call = await rt.call("sip:disable@example.com")
            assert (await call.branch()).dest == B
            assert ds.sets.sets[1][0].state_text() == "DX"
            call = await rt.call("sip:info@example.com", source=A)
            assert (await call.final()).get("X-Info") == "1 1 1 1 -1 1 -1 -1"
