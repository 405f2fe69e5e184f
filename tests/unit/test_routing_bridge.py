"""The effect bridge: yields awaited on trio, resumed with results, interleaved routes, exit and drop."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trioproxy.routing import ContactInfo, RouteError

from .test_routing_support import FakeServices, load, make_state

LOOKUP_SCRIPT = """
function ksr_request_route()
  local before = KSR.kx.get_ruri()
  local marker = "kept-" .. KSR.kx.get_callid()
  local rc = KSR.registrar.lookup("location")
  KSR.pv.sets("$var(before)", before)
  KSR.pv.sets("$var(marker)", marker)
  KSR.pv.seti("$var(rc)", rc)
  if rc < 0 then
    KSR.sl.sl_send_reply(404, "Not Found")
    return -1
  end
  return KSR.tm.t_relay()
end
"""


async def test_effect_resumes_with_result_and_keeps_locals() -> None:
    script = load(LOOKUP_SCRIPT)
    services = FakeServices(contacts={"bob@proxy.example.com": [ContactInfo("sip:bob@192.0.2.50:5070", 1.0)]})
    state = make_state()
    assert await script.run_request_route(state, services) == 1
    assert state.vars == {
        "before": "sip:bob@proxy.example.com",
        "marker": "kept-call-1@example.com",
        "rc": 1,
    }
    assert services.names() == ["lookup", "relay"]
    assert services.relays[0].ruri == "sip:bob@192.0.2.50:5070"
    assert state.relayed == 1


async def test_not_found_branch() -> None:
    script = load(LOOKUP_SCRIPT)
    services = FakeServices()
    state = make_state()
    assert await script.run_request_route(state, services) == -1
    assert services.replies == [(404, "Not Found", [])]
    assert state.replied == (404, "Not Found")


async def test_two_routes_interleave(autojump_clock: trio.testing.MockClock) -> None:
    # One route waits 5 s in a slow lookup; another, started later, finishes first.
    script = load(LOOKUP_SCRIPT)
    slow = FakeServices(
        lookup_delay=5.0, contacts={"bob@proxy.example.com": [ContactInfo("sip:bob@192.0.2.50")]}
    )
    fast = FakeServices(contacts={"carol@proxy.example.com": [ContactInfo("sip:carol@192.0.2.60")]})
    done: list[tuple[str, float]] = []

    async def run(label: str, services: FakeServices, ruri: str) -> None:
        state = make_state(ruri=ruri)
        await script.run_request_route(state, services)
        done.append((label, trio.current_time()))
        assert state.vars["before"] == ruri

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, "slow", slow, "sip:bob@proxy.example.com")
            await trio.sleep(1.0)
            nursery.start_soon(run, "fast", fast, "sip:carol@proxy.example.com")
    assert [d[0] for d in done] == ["fast", "slow"]
    assert done[0][1] == pytest.approx(1.0)
    assert done[1][1] == pytest.approx(5.0)
    assert slow.relays[0].ruri == "sip:bob@192.0.2.50"
    assert fast.relays[0].ruri == "sip:carol@192.0.2.60"


async def test_sleep_is_virtual_time(autojump_clock: trio.testing.MockClock) -> None:
    script = load(
        "function ksr_request_route()\n local t = 2\n KSR.x.sleep(t)\n KSR.x.sleep(0.5)\n return t\nend"
    )
    services = FakeServices()
    start = trio.current_time()
    assert await script.run_request_route(make_state(), services) == 2
    assert trio.current_time() - start == pytest.approx(2.5)
    assert services.calls == [("sleep", 2), ("sleep", 0.5)]


async def test_cancelled_route_leaves_no_coroutine_and_next_call_works(
    autojump_clock: trio.testing.MockClock,
) -> None:
    script = load("function ksr_request_route()\n  KSR.x.sleep(100)\n  return KSR.tm.t_relay()\nend")
    services = FakeServices()
    with trio.move_on_after(1):
        await script.run_request_route(make_state(), services)
    assert services.names() == ["sleep"]
    fast = load("function ksr_request_route() return KSR.tm.t_relay() end")
    assert await fast.run_request_route(make_state(), services) == 1
    assert services.names() == ["sleep", "relay"]


async def test_exit_and_drop_end_the_route() -> None:
    script = load(
        "function ksr_request_route()\n"
        "  if KSR.is_ACK() then KSR.x.drop() end\n"
        "  pcall(KSR.x.exit)\n"
        "  KSR.setflag(1)\n"
        "end"
    )
    state = make_state("OPTIONS")
    assert await script.run_request_route(state, FakeServices()) == 0
    assert state.exited and not state.dropped
    assert state.flags == 0  # pcall cannot catch exit: it is not an error
    ack = make_state("ACK")
    assert await script.run_request_route(ack, FakeServices()) == 0
    assert ack.dropped


async def test_failing_service_becomes_error_at_call_line() -> None:
    script = load(LOOKUP_SCRIPT)
    with pytest.raises(RouteError) as info:
        await script.run_request_route(make_state(), FakeServices(fail_lookup=True))
    assert info.value.line == 5
    assert "location backend down" in info.value.cause


async def test_service_errors_can_be_caught_with_pcall() -> None:
    script = load(
        "function ksr_request_route()\n"
        "  local ok, rc = pcall(KSR.registrar.lookup, 'location')\n"
        "  if not ok then KSR.sl.sl_send_reply(503, 'Location Unavailable') return 9 end\n"
        "end"
    )
    services = FakeServices(fail_lookup=True)
    assert await script.run_request_route(make_state(), services) == 9
    assert services.replies == [(503, "Location Unavailable", [])]


@pytest.mark.parametrize(
    ("ret", "code"), [("", 1), ("return true", 1), ("return false", -1), ("return 0", 0), ("return -3", -3)]
)
async def test_return_conventions(ret: str, code: int) -> None:
    script = load(f"function ksr_request_route() {ret} end")
    assert await script.run_request_route(make_state(), FakeServices()) == code


async def test_other_routes_and_missing_route() -> None:
    script = load(
        "function ksr_request_route() end\n"
        "function fail_here() KSR.pv.sets('$var(where)', 'failure') return KSR.tm.t_check_status('486') end\n"
        "function ksr_reply_route() return KSR.pv.get('$rs') end\n"
    )
    state = make_state()
    from trioproxy.sip import make_response

    busy = make_response(state.req, 486, "Busy Here")
    state.begin_failure_route(busy)
    assert await script.run_failure_route("fail_here", state, FakeServices()) == 1
    assert state.vars["where"] == "failure"
    assert await script.run_reply_route(state.for_reply(busy), FakeServices()) == 486
    with pytest.raises(RouteError) as info:
        await script.run_branch_route("nope", state, FakeServices())
    assert info.value.kind == "missing"


async def test_resolve_returns_a_lua_table() -> None:
    script = load(
        "function ksr_request_route()\n"
        "  local ips = KSR.x.resolve('gw.example.com')\n"
        "  KSR.setdsturi('sip:' .. ips[#ips] .. ':5060')\n"
        "  return #ips\n"
        "end"
    )
    state = make_state()
    services = FakeServices(addresses={"gw.example.com": ["198.51.100.1", "198.51.100.2"]})
    assert await script.run_request_route(state, services) == 2
    assert state.dst_uri == "sip:198.51.100.2:5060"


async def test_yield_from_inside_a_c_callback_is_an_error() -> None:
    script = load(
        "function ksr_request_route()\n"
        "  local t = {3, 1, 2}\n"
        "  table.sort(t, function(a, b) KSR.x.sleep(0) return a < b end)\n"
        "end"
    )
    with pytest.raises(RouteError) as info:
        await script.run_request_route(make_state(), FakeServices())
    assert info.value.line == 3
    assert "yield" in info.value.cause


async def test_empty_route_name_does_not_rerun_top_level_code() -> None:
    script = load("n = (n or 0) + 1\nfunction ksr_request_route() return n end")
    with pytest.raises(RouteError) as info:
        await script.run_failure_route("", make_state(), FakeServices())
    assert info.value.kind == "missing"
    assert await script.run_request_route(make_state(), FakeServices()) == 1
