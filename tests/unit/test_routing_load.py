"""Load-time checks, check_script, and hot reload through ScriptHolder."""

from __future__ import annotations

from pathlib import Path

import pytest

from trioproxy.routing import LuaScript, ScriptError, ScriptHolder, check_script
from trioproxy.routing.scan import tokenize

from .test_routing_support import FakeServices, load, make_state

GOOD = "function ksr_request_route()\n  return KSR.tm.t_relay()\nend\n"


@pytest.mark.parametrize(
    ("source", "line", "message"),
    [
        ("function ksr_request_route()\n  KSR.tm.t_rely()\nend", 2, "unknown function KSR.tm.t_rely"),
        ("function ksr_request_route()\n\n  KSR.is_INVITEE()\nend", 3, "unknown function KSR.is_INVITEE"),
        ("function ksr_request_route()\n  if KSR.hdr.is_presnt('X') then end\nend", 2, "KSR.hdr.is_presnt"),
        (
            'function ksr_request_route()\n  KSR.tm.t_on_failure("missing_route")\nend',
            2,
            "no function missing_route",
        ),
        (
            "function ksr_request_route()\n  KSR.tm.t_on_branch('b')\n  KSR.tm.t_on_reply([[r]])\nend\nfunction b() end",
            3,
            "no function r",
        ),
        ("function ksr_reply_route() end", 0, "does not define ksr_request_route"),
        ("function ksr_request_route()\n  if then\nend", 2, "unexpected symbol"),
        ("function ksr_request_route() end\nerror('top-level boom')", 2, "top-level boom"),
        ("function ksr_request_route() end\nfunction ksr_init()\n  local x = nil\n  x()\nend", 4, "ksr_init"),
        ("function ksr_request_route() end\nfunction ksr_init() KSR.x.sleep(1) end", 0, "not allowed"),
        ("function ksr_request_route() end\nfunction ksr_init() while true do end end", 2, "budget"),
        (
            "function ksr_request_route() end\nfunction ksr_init() KSR.setflag(1) end",
            2,
            "needs a SIP message",
        ),
    ],
)
def test_load_refusals(source: str, line: int, message: str) -> None:
    with pytest.raises(ScriptError) as info:
        LuaScript.load(source, name="bad.lua", instruction_budget=10_000)
    err = info.value
    assert err.file == "bad.lua"
    assert err.line == line
    assert message in err.message
    assert err.errors[0].startswith(f"bad.lua:{line}:")


def test_references_in_comments_and_strings_are_ignored() -> None:
    script = load(
        "-- KSR.tm.t_rely() in a comment\n"
        "--[[ KSR.nosuch.fn()\n KSR.tm.t_rely ]]\n"
        "local s = 'KSR.tm.t_rely' .. [==[ KSR.tm.t_rely ]==]\n"
        "function ksr_request_route() KSR.info(s) end\n"
    )
    assert script.warnings == []


def test_unknown_modules_are_warnings_and_nil_at_run_time() -> None:
    script = load(
        "function ksr_request_route()\n"
        "  if KSR.rtpproxy then KSR.rtpproxy.rtpproxy_manage() end\n"
        "  if KSR.sdpops ~= nil then return 5 end\n"
        "  return 2\n"
        "end"
    )
    assert script.warnings == [
        "test.lua:2: module KSR.rtpproxy is not provided (nil at run time)",
        "test.lua:3: module KSR.sdpops is not provided (nil at run time)",
    ]


async def test_unknown_module_guard_works() -> None:
    script = load("function ksr_request_route()\n  if KSR.rtpproxy then return 5 end\n  return 2\nend")
    assert await script.run_request_route(make_state(), FakeServices()) == 2


async def test_ksr_init_runs_once_at_load() -> None:
    script = load(
        "count = 0\nfunction ksr_init() count = count + 1 end\n"
        "function ksr_request_route() count = count + 10 return count end"
    )
    assert script.has_route("ksr_init")
    assert not script.has_route("count")
    assert await script.run_request_route(make_state(), FakeServices()) == 11


def test_tokenizer_lines() -> None:
    toks = list(tokenize("a = 'x\\'y'\n--[[\n\n]] b = [[\nz]]\nc"))
    assert [(t.kind, t.text, t.line) for t in toks] == [
        ("name", "a", 1),
        ("op", "=", 1),
        ("str", "x\\'y", 1),
        ("name", "b", 4),
        ("op", "=", 4),
        ("str", "\nz", 4),
        ("name", "c", 6),
    ]


def test_check_script(tmp_path: Path) -> None:
    good = tmp_path / "good.lua"
    good.write_text(GOOD + "function x() if KSR.sdpops then end end\n")
    r = check_script(good)
    assert r.ok and r.errors == []
    assert r.warnings == [f"{good}:4: module KSR.sdpops is not provided (nil at run time)"]
    assert len(r.sha256) == 64
    bad = tmp_path / "bad.lua"
    bad.write_text("function ksr_request_route()\n  KSR.sl.sl_send_replay(404)\nend\n")
    r = check_script(bad)
    assert not r.ok
    assert r.errors == [f"{bad}:2: unknown function KSR.sl.sl_send_replay"]
    missing = check_script(tmp_path / "none.lua")
    assert not missing.ok and "cannot read" in missing.errors[0]


async def test_reload_swaps_and_keeps_old_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "route.lua"
    path.write_text("function ksr_request_route() return 1 end\n")
    holder = ScriptHolder()
    first = holder.reload(path)
    assert first.ok and holder.path == str(path)
    v1 = holder.current()
    assert await v1.run_request_route(make_state(), FakeServices()) == 1

    path.write_text("function ksr_request_route()\n  return 2\nend\nfunction f() KSR.tm.t_rely() end\n")
    failed = holder.reload()
    assert not failed.ok
    assert failed.errors == [f"{path}:4: unknown function KSR.tm.t_rely"]
    assert (failed.line, failed.error) == (4, "unknown function KSR.tm.t_rely")
    assert holder.loaded_at == first.at
    assert holder.current() is v1
    assert holder.last_reload is failed
    assert failed.sha256 != v1.sha256

    path.write_text("function ksr_request_route() return 3 end\n")
    ok = holder.reload()
    assert ok.ok
    v3 = holder.current()
    assert v3 is not v1 and holder.sha256 == ok.sha256 == v3.sha256
    # A transaction that started on v1 keeps running v1.
    assert await v1.run_request_route(make_state(), FakeServices()) == 1
    assert await v3.run_request_route(make_state(), FakeServices()) == 3
    stats = holder.statistics()
    assert (stats["reloads_ok"], stats["reloads_failed"]) == (2, 1)
    assert stats["route_calls"] == 3


async def test_holder_counts_route_errors_and_shares_htables(tmp_path: Path) -> None:
    path = tmp_path / "route.lua"
    path.write_text(
        "function ksr_request_route()\n"
        "  local n = KSR.htable.sht_inc('hits', 'k')\n"
        "  if n == 2 then while true do end end\n"
        "  if n == 3 then error('third') end\n"
        "  return n\n"
        "end\n"
    )
    holder = ScriptHolder(instruction_budget=10_000)
    assert holder.reload(path).ok
    assert await holder.current().run_request_route(make_state(), FakeServices()) == 1
    assert holder.reload(path).ok  # the htable survives the reload
    with pytest.raises(Exception, match="budget"):
        await holder.current().run_request_route(make_state(), FakeServices())
    with pytest.raises(Exception, match="third"):
        await holder.current().run_request_route(make_state(), FakeServices())
    stats = holder.statistics()
    assert (stats["script_errors"], stats["budget_overruns"]) == (2, 1)


def test_holder_without_script() -> None:
    holder = ScriptHolder()
    with pytest.raises(RuntimeError):
        holder.current()
    assert holder.sha256 is None


def test_syntax_error_line_with_a_long_path(tmp_path: Path) -> None:
    # Lua shortens long chunk names to "...<tail>:LINE:"; the line must still be found.
    folder = tmp_path / ("d" * 80)
    folder.mkdir()
    script = folder / "route.lua"
    script.write_text("function ksr_request_route()\n  local x = (\nend\n")
    with pytest.raises(ScriptError) as info:
        LuaScript.load(script)
    assert info.value.line == 3
