"""The Lua sandbox: escapes refused, budget and memory overruns contained to one call."""

from __future__ import annotations

import pytest

from trioproxy.routing import RouteError

from .test_routing_support import FakeServices, load, make_state

# Each probe must report "blocked" (or raise); "escaped" means the sandbox leaked something.
ESCAPES = {
    "os.execute": "return os.execute == nil and io == nil",
    "io": "return io == nil",
    "require": "return require == nil and package == nil",
    "load": "return load == nil and loadstring == nil and loadfile == nil and dofile == nil",
    "string.dump": "return string.dump == nil and ('').dump == nil",
    "python": "return python == nil",
    "debug": "return debug == nil",
    "coroutine": "return coroutine == nil",
    "string metatable": "return getmetatable('') == false",
    "os.getenv": "return os.getenv == nil and os.exit == nil and os.remove == nil",
    "_G is the sandbox": "return _G.KSR == KSR and _G.debug == nil",
    "python object metatable locked": "return getmetatable(KSR.info) == false and getmetatable(KSR.kx.get_ruri) == false",
    "KSR metatable locked": "return getmetatable(KSR) == false and getmetatable(KSR.tm) == false",
    "collectgarbage limited": "return not pcall(collectgarbage, 'stop') and type(collectgarbage('count')) == 'number'",
}


@pytest.mark.parametrize("probe", list(ESCAPES), ids=list(ESCAPES))
async def test_sandbox_globals(probe: str) -> None:
    script = load(
        f"function ksr_request_route() if (function() {ESCAPES[probe]} end)() then return 1 end return -1 end"
    )
    assert await script.run_request_route(make_state(), FakeServices()) == 1


RAISING = {
    "python attribute via KSR function": "local g = KSR.info.__globals__",
    "python attribute via kx function": "local c = KSR.kx.get_ruri.__class__",
    "assign into KSR": "KSR.tm = {}",
    "assign into KSR module": "KSR.tm.t_relay = function() return 1 end",
    "rawset on KSR": "rawset(KSR, 'x', 1)",
    "rawset on KSR module": "rawset(KSR.sl, 'sl_send_reply', print)",
    "setmetatable on KSR": "setmetatable(KSR, {})",
    "string metatable index": "local d = getmetatable('').__index.dump",
}


@pytest.mark.parametrize("body", list(RAISING.values()), ids=list(RAISING))
async def test_sandbox_refusals_raise_route_errors(body: str) -> None:
    script = load(f"function ksr_request_route()\n  {body}\nend")
    with pytest.raises(RouteError) as info:
        await script.run_request_route(make_state(), FakeServices())
    assert info.value.file == "test.lua"
    assert info.value.line == 2
    assert info.value.kind == "error"


async def test_tampering_stays_inside_the_call() -> None:
    # A failed tampering attempt leaves KSR intact for the next call.
    script = load(
        "function ksr_request_route()\n"
        "  if KSR.pv.get('$var(n)') == nil then pcall(function() KSR.tm.t_relay = nil end) end\n"
        "  return KSR.tm.t_relay()\n"
        "end"
    )
    services = FakeServices(relay_rc=3)
    assert await script.run_request_route(make_state(), services) == 3
    assert services.names() == ["relay"]


async def test_budget_overrun_is_contained_and_next_call_works() -> None:
    script = load(
        "function ksr_request_route()\n"
        "  if KSR.is_INVITE() then\n"
        "    while true do end\n"
        "  end\n"
        "  return 5\n"
        "end",
        instruction_budget=10_000,
    )
    with pytest.raises(RouteError) as info:
        await script.run_request_route(make_state("INVITE"), FakeServices())
    err = info.value
    assert (err.file, err.line, err.kind) == ("test.lua", 3, "budget")
    assert "budget" in err.cause
    assert script.stats.budget_overruns == 1
    assert await script.run_request_route(make_state("OPTIONS"), FakeServices()) == 5


async def test_budget_overrun_cannot_be_swallowed_by_pcall() -> None:
    script = load(
        "function ksr_request_route()\n"
        "  while true do\n"
        "    pcall(function() while true do end end)\n"
        "  end\n"
        "end",
        instruction_budget=5_000,
    )
    with pytest.raises(RouteError) as info:
        await script.run_request_route(make_state(), FakeServices())
    assert info.value.kind == "budget"
    assert info.value.line in (2, 3)


async def test_budget_counts_across_effects() -> None:
    # The budget is per route call, including the parts after a resume.
    script = load(
        "function ksr_request_route()\n"
        "  for i = 1, 3 do\n"
        "    KSR.tm.t_relay()\n"
        "    local x = 0\n"
        "    for j = 1, 3000 do x = x + j end\n"
        "  end\n"
        "end",
        instruction_budget=10_000,
    )
    services = FakeServices()
    with pytest.raises(RouteError) as info:
        await script.run_request_route(make_state(), services)
    assert info.value.kind == "budget"
    assert info.value.line == 5
    assert 1 <= services.names().count("relay") < 3


async def test_memory_limit_is_contained_and_next_call_works() -> None:
    script = load(
        "function ksr_request_route()\n"
        "  if KSR.is_INVITE() then\n"
        "    local t = {}\n"
        "    for i = 1, 1e8 do t[i] = string.rep('x', 64) .. i end\n"
        "  end\n"
        "  return 7\n"
        "end",
        memory_limit=8 * 1024 * 1024,
        instruction_budget=10**9,
    )
    with pytest.raises(RouteError) as info:
        await script.run_request_route(make_state("INVITE"), FakeServices())
    assert info.value.kind == "memory"
    assert script.stats.memory_errors == 1
    assert await script.run_request_route(make_state("OPTIONS"), FakeServices()) == 7
    assert script.memory_used < 8 * 1024 * 1024


async def test_error_names_file_and_line_and_reply_state() -> None:
    script = load(
        "function ksr_request_route()\n"
        "  KSR.sl.sl_send_reply(404, 'Not Found')\n"
        "  local t = nil\n"
        "  return t.field\n"
        "end",
        name="routes/x.lua",
    )
    with pytest.raises(RouteError) as info:
        await script.run_request_route(make_state(), FakeServices())
    err = info.value
    assert (err.file, err.line) == ("routes/x.lua", 4)
    assert "attempt to index" in err.cause
    assert err.reply_queued is True
    assert str(err).startswith("routes/x.lua:4:")


async def test_python_exception_in_ksr_call_points_at_the_call_line() -> None:
    script = load("function ksr_request_route()\n  local a = 1\n  KSR.setflag(99)\nend")
    with pytest.raises(RouteError) as info:
        await script.run_request_route(make_state(), FakeServices())
    assert info.value.line == 3
    assert "out of range" in info.value.cause
    assert info.value.reply_queued is False


@pytest.mark.parametrize(
    "call",
    [
        "KSR.info(t)",
        "KSR.pv.sets('$var(x)', t)",
        "KSR.hdr.append(t)",
        "KSR.x.sleep(t)",
        "KSR.registrar.lookup(t)",
    ],
)
async def test_lua_tables_never_reach_python(call: str) -> None:
    # str() of a table in Python would run its __tostring outside the budget: refused at the call.
    script = load(
        "function ksr_request_route()\n"
        "  local t = setmetatable({}, {__tostring = function() while true do end end})\n"
        f"  {call}\n"
        "end",
        instruction_budget=10_000,
    )
    services = FakeServices()
    with pytest.raises(RouteError) as info:
        await script.run_request_route(make_state(), services)
    assert info.value.line == 3
    assert "arguments must be strings" in info.value.cause
    assert services.calls == []


async def test_print_uses_tostring_under_the_budget() -> None:
    script = load(
        "function ksr_request_route()\n"
        "  local t = setmetatable({}, {__tostring = function() while true do end end})\n"
        "  print(t)\n"
        "end",
        instruction_budget=10_000,
    )
    with pytest.raises(RouteError) as info:
        await script.run_request_route(make_state(), FakeServices())
    assert info.value.kind == "budget"
    assert info.value.line == 2
