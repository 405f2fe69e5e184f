"""No script call can stall the loop: bounded Lua pattern matching, guarded C string/table functions, RE2."""

from __future__ import annotations

import time
from typing import Any

import lupa.lua54 as lua54
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trioproxy.routing import RouteError, saferegex
from trioproxy.routing.patterns import LIB_CHUNK, PATTERNS_LUA

from .test_routing_support import FakeServices, load, make_state

# --- the counted matcher against Lua 5.4's C implementation -------------------------------------------

_LUA = lua54.LuaRuntime(unpack_returned_tuples=True)
# (the chunk returns the wrappers and its int() check: keep the first)
_W = _LUA.execute(f"return (load([==[{PATTERNS_LUA}]==], '{LIB_CHUNK}')(function(n) end))")
_W.set_c_max(-1)  # every call through the counted matcher
_COMPARE = _LUA.eval(
    """function(W, fn, s, p, a, b)
  local function show(ok, ...)
    local t = table.pack(...)
    local o = {tostring(ok)}
    for i = 1, t.n do o[#o + 1] = type(t[i]) .. ":" .. tostring(t[i]) end
    return table.concat(o, "|")
  end
  local function run(f)
    if fn == "gmatch" then
      return show(pcall(function()
        local o = {}
        for x, y in f(s, p, a) do o[#o + 1] = tostring(x) .. "," .. tostring(y) if #o > 50 then break end end
        return table.concat(o, ";")
      end))
    end
    if fn == "gsub_f" then
      return show(pcall(f, s, p, function(x, y) if x == "a" then return nil end return "<" .. x .. tostring(y) .. ">" end, a))
    end
    if fn == "gsub_t" then return show(pcall(f, s, p, {a = "A", b = false, c = 7}, a)) end
    return show(pcall(f, s, p, a, b))
  end
  local base = (fn == "gsub_f" or fn == "gsub_t") and "gsub" or fn
  return run(string[base]), run(W[base])
end"""
)

TOKENS = [
    "a", "b", "c", ".", "%a", "%d", "%s", "%w", "%A", "[ab]", "[^a]", "[a-c]", "[%a_]", "[]]", "(", ")", "()",
    "*", "+", "-", "?", "%b()", "%bab", "%f[%w]", "%f[^a]", "%1", "%2", "^", "$", "%", "[", "%.", "%%", "%z",
]  # fmt: skip
patterns = st.lists(st.sampled_from(TOKENS), max_size=7).map("".join)
subjects = st.text(alphabet="abc( )1_.", max_size=12)
inits = st.one_of(st.none(), st.integers(-14, 14))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fn=st.sampled_from(["find", "match", "gmatch", "gsub", "gsub_f", "gsub_t"]),
    s=subjects,
    p=patterns,
    init=inits,
    repl=st.sampled_from(["x", "%0", "<%1>", "%%", "%2", "%", 5]),
)
def test_counted_matcher_is_lua54(fn: str, s: str, p: str, init: int | None, repl: Any) -> None:
    if fn == "gsub":
        a, b = repl, (None if init is None else abs(init))
    elif fn in ("gsub_f", "gsub_t"):
        a, b = (None if init is None else abs(init)), None
    else:
        a, b = init, None
    c_result, lua_result = _COMPARE(_W, fn, s, p, a, b)
    assert lua_result == c_result


@pytest.mark.parametrize(
    ("fn", "s", "p", "a", "b"),
    [
        ("find", "THE (quick) fox", "%f[%a]%a+", 5, None),
        ("match", "  padded  ", "^%s*(.-)%s*$", None, None),
        ("match", "[[nested [x] ]] tail", "%b[]", None, None),
        ("find", "abc", "()b()", None, None),
        ("find", "a+b", "+", 1, True),
        ("find", "abc\0def", "\0d", None, None),
        ("match", "a", "(" * 33 + "a" + ")" * 33, None, None),  # too many captures
        ("match", "a" * 300, "a?" * 250, None, None),  # pattern too complex
        ("gsub", "hello world", "(o)", "[%1%0]", 1),
        ("gsub", 12345, "9", "x", None),  # nothing changed: the original number comes back
    ],
)
def test_counted_matcher_edge_cases(fn: str, s: Any, p: str, a: Any, b: Any) -> None:
    c_result, lua_result = _COMPARE(_W, fn, s, p, a, b)
    assert lua_result == c_result


# --- in the sandbox: pathological calls end the route with a budget error, quickly ------------------------

PATHOLOGICAL = {
    "find (.-)x9": 'string.find(string.rep("aaaaaaaaaaaaaaaaaaaa", 40), "(.-)(.-)(.-)(.-)(.-)(.-)(.-)(.-)(.-)b")',
    "method match": 'local s = string.rep("a", 3000) local _ = s:match("(.-)(.-)(.-)b")',
    "a*b on a long subject": 'local _ = string.find(string.rep("a", 100000), "a*b")',
    "gsub": 'local _ = (string.rep("a", 5000)):gsub("(a-)(a-)(a-)c", "x")',
    "gmatch": 'for x in string.gmatch(string.rep("a", 5000), "(a*)(a*)(a*)c") do end',
    "backreference": 'local _ = string.find(string.rep("ab", 20000), "(.*)%1c")',
    "plain find": 'local _ = string.find(string.rep("a", 4000000), string.rep("a", 100000) .. "b", 1, true)',
    "rep in a loop": 'for i = 1, 1e6 do local x = string.rep("x", 3e7) end',
    "concat with __len": (
        "local t = setmetatable({}, {__index = tostring, __len = function() return 1e12 end}) "
        "local _ = table.concat(t)"
    ),
    "insert with __len": (
        "local t = setmetatable({}, {__index = tostring, __newindex = rawequal, "
        '__len = function() return 1e12 end}) table.insert(t, 1, "x")'
    ),
    "move": "local t = {} table.move(t, 1, 1e12, 2)",
    "unpack": (
        "local t = setmetatable({}, {__index = tostring}) "
        'for i = 1, 1e6 do local _ = select("#", table.unpack(t, 1, 100000)) end'
    ),
    "sort": "local t = {string.byte(string.rep('x', 900000), 1, -1)} for i = 1, 20 do table.sort(t) end",
    "copying a large string": 'local s = "x" for i = 1, 22 do s = s .. s end for i = 1, 1e9 do local t = s .. "y" end',
    "pcall cannot swallow it": 'while true do pcall(string.find, string.rep("a", 400), "(.-)(.-)(.-)(.-)b") end',
}


@pytest.mark.parametrize("body", list(PATHOLOGICAL.values()), ids=list(PATHOLOGICAL))
async def test_expensive_calls_end_in_the_budget_error(body: str) -> None:
    script = load(f"function ksr_request_route()\n  {body}\nend\nfunction ok() return 42 end")
    started = time.monotonic()
    with pytest.raises(RouteError) as info:
        await script.run_request_route(make_state(), FakeServices())
    assert time.monotonic() - started < 1.0
    assert (info.value.file, info.value.line, info.value.kind) == ("test.lua", 2, "budget")
    assert await script.run_failure_route("ok", make_state(), FakeServices()) == 42


ORDINARY = {
    "uri user": 'return KSR.pv.get("$ru"):match("^sip:([^@]+)@") == "bob"',
    "find with captures": 'local a, b, c = string.find("k=v", "(%w+)=") return a == 1 and b == 2 and c == "k"',
    "gmatch over a long value": (
        'local n = 0 for w in string.rep("ab,", 2000):gmatch("[^,]+") do n = n + 1 end return n == 2000'
    ),
    "gsub over a long value": 'local r, n = string.rep("ab", 30000):gsub("a", "c") return n == 30000 and #r == 60000',
    "match in a long body": (
        'return (string.rep("x", 60000) .. "m=audio 4000 RTP"):match("m=audio (%d+)") == "4000"'
    ),
    "plain find": 'return string.find(string.rep("xy", 100000), "yx", 1, true) == 2',
    "rep of nothing": 'return string.rep("", 1e15) == ""',
    "rep with a separator": 'return string.rep("ab", 3, ",") == "ab,ab,ab"',
    "format": 'return string.format("%5.2f|%-4s|%q", 1.5, "a", "b\\n") == " 1.50|a   |\\"b\\\\\\n\\""',
    "table functions": (
        "local t = {3, 1, 2} table.sort(t) table.insert(t, 1, 0) table.remove(t) "
        'return table.concat(t, ",") == "0,1,2" and select("#", table.unpack(t)) == 3'
    ),
    "table functions with a metatable": (
        "local t = setmetatable({5, 4}, {}) table.insert(t, 1, 6) table.sort(t) "
        'return table.remove(t, 1) == 4 and table.concat(t, ",") == "5,6"'
    ),
    "errors keep their message": (
        'local ok, e = pcall(string.find, "a", "(") return not ok and e == "unfinished capture"'
    ),
}


@pytest.mark.parametrize("body", list(ORDINARY.values()), ids=list(ORDINARY))
async def test_ordinary_calls_work_within_the_budget(body: str) -> None:
    script = load(
        f"local function probe() {body} end\nfunction ksr_request_route()\n  if probe() then return 1 end\n  return -1\nend"
    )
    assert await script.run_request_route(make_state(), FakeServices()) == 1


# --- regexes from scripts run on RE2 ------------------------------------------------------------------


def test_saferegex_has_no_catastrophic_backtracking() -> None:
    started = time.monotonic()
    assert not saferegex.search(r"^(a|aa)*(a*)*c$", "a" * 200_000)
    assert saferegex.fullmatch(r"(a+)+b", "a" * 100_000 + "b")
    assert time.monotonic() - started < 1.0
    assert saferegex.fullmatch("[45][0-9][0-9]", "486")
    assert not saferegex.fullmatch("[45][0-9][0-9]", "200")


@pytest.mark.parametrize(
    ("pattern", "text"),
    [(r"(a)\1", "aa"), ("(?=a)a", "a"), ("(", "x"), ("a" * (saferegex.MAX_PATTERN + 1), "a"),
     ("a", "a" * (saferegex.MAX_SUBJECT + 1))],
)  # fmt: skip
def test_saferegex_refuses_what_it_cannot_bound(pattern: str, text: str) -> None:
    with pytest.raises(ValueError):
        saferegex.search(pattern, text)


async def test_ksr_regexes_from_the_script_are_linear() -> None:
    # the request's user part is long; each KSR regex call must come back at once
    ruri = "sip:" + "a" * 200 + "@proxy.example.com"
    script = load(
        "function ksr_request_route()\n"
        '  KSR.htable.sht_sets("t", KSR.pv.get("$rU"), "1")\n'
        '  if KSR.textops.search("sip:(a|aa)*(a*)*c@") > 0 then return -1 end\n'
        '  if KSR.htable.sht_match_name("t", "re", "^(a|aa)*(a*)*$") < 0 then return -2 end\n'
        '  if KSR.rr.check_route_param("(x+x+)+y") > 0 then return -3 end\n'
        "  return 1\n"
        "end"
    )
    started = time.monotonic()
    assert await script.run_request_route(make_state(ruri=ruri), FakeServices()) == 1
    assert time.monotonic() - started < 1.0


async def test_invalid_ksr_regex_is_a_route_error() -> None:
    script = load('function ksr_request_route()\n  return KSR.textops.search("(a)\\\\1")\nend')
    with pytest.raises(RouteError) as info:
        await script.run_request_route(make_state(), FakeServices())
    assert info.value.line == 2
    assert "invalid regex" in info.value.cause
