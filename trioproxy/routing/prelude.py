"""The Lua prelude: runs first in every script runtime, before any user code.

It takes ``coroutine``, ``debug`` and ``collectgarbage`` into locals, builds the sandbox environment from an
allowlist, turns the KSR tables into read-only proxies with effect shims, and hands Python four functions:
``setup`` (build KSR + environment and compile the script), ``start`` / ``resume`` (drive one route
coroutine one step), ``close`` (drop a coroutine that will not be resumed).

Sandbox decisions:

- Python functions (the KSR entries) have their lupa metatable locked, so ``getmetatable`` cannot reach
  its ``__gc``.
- Base functions: assert error ipairs next pairs pcall xpcall select tonumber tostring type rawequal rawlen
  rawget setmetatable getmetatable print; ``rawset`` refuses the KSR tables; ``collectgarbage`` answers
  only ``"count"``. No load, loadfile, dofile, require, string.dump (removed from the runtime's string table
  too, since strings reach it through their metatable, which is locked), no io, debug, package, python.
- ``os`` has only time, clock and date.
- No ``coroutine`` table: a user coroutine would receive the yields of effect shims meant for the bridge,
  and would run without the instruction-count hook, which is installed per coroutine.
- The instruction budget is a count hook on each route coroutine, firing every ``GRAIN`` instructions;
  C functions whose work grows with their arguments ``charge`` that work to the same count first
  (``patterns.py`` for find/match/gmatch/gsub, ``GUARDS_LUA`` for string.rep/format, table.concat/unpack/
  move/sort/insert/remove), so no single call can hold the event loop. Once the budget is exceeded the
  hook fires on every instruction and raises whenever user code or the guard chunk runs, so ``pcall``
  cannot swallow it for long.
"""

from __future__ import annotations

from .patterns import BYTE_DIV, LIB_CHUNK, PATTERNS_LUA

__all__ = ["GUARDS_LUA", "PRELUDE"]

# Elements a C table function visits (each may run an __index metamethod) per instruction charged.
ITEM_DIV = 1
# CPU seconds a route may run between two waits, whatever its instruction count (see the hook).
SLICE_CPU_LIMIT = 0.5

_PRELUDE = r"""
local co_create, co_resume, co_yield = coroutine.create, coroutine.resume, coroutine.yield
local co_status, co_close, co_running = coroutine.status, coroutine.close, coroutine.running
local sethook, getinfo, rawgetmt = debug.sethook, debug.getinfo, debug.getmetatable
local collect = collectgarbage
local _load, _rawset, _setmt, _type, _tostring, _error, _pairs, _xpcall =
    load, rawset, setmetatable, type, tostring, error, pairs, xpcall

local MARK, BUDGET = {}, {}
local CHUNK = "=?"
local ENV, MAIN = nil, nil
local running = {}
local exceeded = _setmt({}, {__mode = "k"})
local protected = _setmt({}, {__mode = "k"})

-- strings reach the real string table through their metatable: strip dump there and lock it
string.dump = nil
getmetatable("").__metatable = false

local LIB, GRAIN = "@LIB@", 1000
local used = _setmt({}, {__mode = "k"})
local limit = _setmt({}, {__mode = "k"})
local grain = _setmt({}, {__mode = "k"})

-- CPU seconds one run of a route (from a start or resume to its next yield) may take: instructions that
-- each copy a large string (`..`) are cheap to count but not to run, so the hook also reads the clock
local clock, TLIMIT = os.clock, @TLIMIT@
local slice0 = _setmt({}, {__mode = "k"})

local hook
hook = function()
  local co = co_running()
  if not exceeded[co] then
    local u = used[co] + grain[co]
    used[co] = u
    if u < limit[co] and clock() - slice0[co] < TLIMIT then return end
    exceeded[co] = true
    sethook(co, hook, "", 1)
  end
  local info = getinfo(2, "S")
  if info and (info.source == CHUNK or info.source == LIB) then _error(BUDGET, 0) end
end

-- add n instructions of C work to the running route's count; raise once it is over the budget
local function charge(n)
  if n < 1 then return end
  local co = co_running()
  local u = used[co]
  if u == nil then return end
  u = u + n
  used[co] = u
  if u >= limit[co] then
    if not exceeded[co] then
      exceeded[co] = true
      sethook(co, hook, "", 1)
    end
    _error(BUDGET, 0)
  end
end

local LIBFNS, lib_int = _load([==[@PATTERNS@]==], LIB, "t", _ENV)(charge)
for k, f in _pairs(_load([==[@GUARDS@]==], LIB, "t", _ENV)(charge, rawgetmt, lib_int)) do LIBFNS[k] = f end
for _, k in ipairs({"find", "match", "gmatch", "gsub", "rep", "format"}) do string[k] = LIBFNS[k] end

local function handler(e)
  local line = 0
  for lvl = 2, 200 do
    local i = getinfo(lvl, "Sl")
    if not i then break end
    if i.source == CHUNK and i.currentline and i.currentline > 0 then line = i.currentline break end
  end
  if e == BUDGET then return {kind = "budget", line = line, msg = "instruction budget exceeded"} end
  return {kind = "error", line = line, msg = _tostring(e)}
end

local function effect(name)
  return function(...)
    local ok, v = co_yield(MARK, name, ...)
    if ok then return v end
    _error(v, 2)
  end
end

local function readonly(t, name)
  local p = _setmt({}, {
    __index = t,
    __newindex = function(_, k) _error("KSR" .. name .. " is read-only (setting " .. _tostring(k) .. ")", 2) end,
    __metatable = false,
  })
  protected[p] = true
  return p
end

local function copy(t, skip)
  local c = {}
  for k, v in _pairs(t) do if not (skip and skip[k]) then c[k] = v end end
  return c
end

local function finish(id, co, ok, a, b, ...)
  if not ok then
    running[id] = nil
    local msg = _tostring(a)
    if msg == "not enough memory" then collect("collect") return "memory", 0, msg end
    return "error", 0, msg
  end
  if co_status(co) == "dead" then
    running[id] = nil
    if a then return "done", b end
    if _type(b) == "table" then return b.kind, b.line, b.msg end
    local msg = _tostring(b)
    if msg == "not enough memory" then collect("collect") return "memory", 0, msg end
    return "error", 0, msg
  end
  if a ~= MARK then
    running[id] = nil
    return "error", 0, "unexpected coroutine.yield"
  end
  return "effect", b, ...
end

local function start(id, fname, budget, ...)
  local fn
  if fname == nil then fn = MAIN else fn = ENV[fname] end
  if _type(fn) ~= "function" then return "missing", 0, fname end
  local co = co_create(function(...) return _xpcall(fn, handler, ...) end)
  local g = budget < GRAIN and budget or GRAIN
  used[co], limit[co], grain[co] = 0, budget, g
  sethook(co, hook, "", g)
  running[id] = co
  slice0[co] = clock()
  return finish(id, co, co_resume(co, ...))
end

local function resume(id, ...)
  local co = running[id]
  if not co then return "error", 0, "route coroutine is gone" end
  slice0[co] = clock()
  return finish(id, co, co_resume(co, ...))
end

local function close(id)
  local co = running[id]
  if co then
    running[id] = nil
    co_close(co)
  end
end

local BASE = {"assert", "error", "ipairs", "next", "pairs", "pcall", "xpcall", "select", "tonumber",
              "tostring", "type", "rawequal", "rawlen", "rawget", "setmetatable", "getmetatable"}

local function setup(raw, shims, chunkname, src)
  CHUNK = "@" .. chunkname
  local core = raw._core
  -- the metatable lupa gives Python objects holds __gc and friends: calling those by hand could free a
  -- live object, so scripts must not reach it
  local pmt = getmetatable(core.info)
  if _type(pmt) == "table" then pmt.__metatable = false end
  local KSR = {}
  for k, v in _pairs(core) do KSR[k] = v end
  for mod, fns in _pairs(raw) do
    if mod ~= "_core" then KSR[mod] = copy(fns) end
  end
  for mod, fns in _pairs(shims) do
    local t = KSR
    if mod ~= "" then
      t = KSR[mod]
      if t == nil then t = {} KSR[mod] = t end
    end
    for fname, eff in _pairs(fns) do t[fname] = effect(eff) end
  end
  for mod, t in _pairs(KSR) do
    if _type(t) == "table" then KSR[mod] = readonly(t, "." .. mod) end
  end
  KSR = readonly(KSR, "")
  local env = {}
  for _, k in ipairs(BASE) do env[k] = _G[k] end
  env._VERSION = _VERSION
  env.string = copy(string)
  env.table = copy(table)
  for _, k in ipairs({"concat", "unpack", "move", "sort", "insert", "remove"}) do env.table[k] = LIBFNS[k] end
  env.math = copy(math)
  env.utf8 = copy(utf8)
  env.os = {time = os.time, clock = os.clock, date = os.date}
  env.rawset = function(t, k, v)
    if protected[t] then _error("KSR is read-only", 2) end
    return _rawset(t, k, v)
  end
  env.collectgarbage = function(opt)
    if opt == "count" then return collect("count") end
    _error("collectgarbage: only 'count' is allowed", 2)
  end
  local info = core.info
  env.print = function(...)
    local parts = table.pack(...)
    for i = 1, parts.n do parts[i] = _tostring(parts[i]) end
    info(table.concat(parts, "\t", 1, parts.n))
  end
  env.KSR = KSR
  env._G = env
  local fn, err = _load(src, CHUNK, "t", env)
  if not fn then return false, err end
  ENV, MAIN = env, fn
  return true
end

local function global_type(name)
  return _type(ENV[name])
end

return setup, start, resume, close, global_type
"""

GUARDS_LUA = r"""
local charge, rawgetmt, int = ...  -- int: the patterns chunk's argument check
local s_rep, s_format, s_gsub, pcall = string.rep, string.format, string.gsub, pcall
local tostring, type, error = tostring, type, error
local t_concat, t_unpack, t_move, t_sort = table.concat, table.unpack, table.move, table.sort
local t_insert, t_remove, select = table.insert, table.remove, select
local BYTE_DIV, ITEM_DIV = @BYTE_DIV@, @ITEM_DIV@

local function len(v)
  local t = type(v)
  if t == "string" then return #v end
  if t == "number" then return #tostring(v) end
  return nil
end

local function length(t)
  local n = int(#t)
  if not n then error("object length is not an integer", 3) end
  return n
end

-- run a C function; its errors read as if the script had called it directly (always tail-called)
local function pass(name, ok, ...)
  if ok then return ... end
  local e = ...
  if e == "not enough memory" then error(e, 0) end
  if type(e) == "string" then
    e = s_gsub(s_gsub(e, "^trioproxy%.patterns:%d+: ", ""), "to '[^']*'", "to '" .. name .. "'", 1)
  end
  error(e, 2)
end

local G = {}

function G.rep(s, n, sep)
  local ls, k, lsep = len(s), int(n), sep == nil and 0 or len(sep)
  if not (ls and k and lsep) or k <= 0 then return pass("rep", pcall(s_rep, s, n, sep)) end
  -- nothing to copy: C would still loop k times
  if ls + lsep == 0 then return "" end
  local total = k * 1.0 * (ls + lsep)
  if total < 2 ^ 40 then charge(k // ITEM_DIV + total // BYTE_DIV) end
  return pass("rep", pcall(s_rep, s, n, sep))
end

function G.format(...)
  local ok, r = pcall(s_format, ...)
  if not ok then return pass("format", false, r) end
  charge(#r // BYTE_DIV)
  return r
end

-- the range [i, j] of a table function, the length by the # operator as C would take it
local function range(t, i, j, di)
  local a = int(i, di)
  local b
  if j == nil then
    if type(t) ~= "table" and type(t) ~= "string" then return nil end
    b = length(t)
  else b = int(j) end
  return a, b
end

function G.concat(t, sep, i, j)
  local a, b = range(t, i, j, 1)
  if a and b and b >= a and type(t) == "table" then
    charge((b * 1.0 - a) // ITEM_DIV)
    local ok, r = pcall(t_concat, t, sep, a, b)
    if not ok then return pass("concat", false, r) end
    charge(#r // BYTE_DIV)
    return r
  end
  return pass("concat", pcall(t_concat, t, sep, i, j))
end

function G.unpack(t, i, j)
  local a, b = range(t, i, j, 1)
  if a and b and b >= a then
    charge((b * 1.0 - a) // ITEM_DIV)
    return pass("unpack", pcall(t_unpack, t, a, b))
  end
  return pass("unpack", pcall(t_unpack, t, i, j))
end

function G.move(a1, f, e, t, a2)
  local x, y = int(f), int(e)
  if x and y and y >= x then charge((y * 1.0 - x) // ITEM_DIV) end
  return pass("move", pcall(t_move, a1, f, e, t, a2))
end

-- with a metatable, C would take #t again (a __len may answer differently the second time): the work
-- is done here, in Lua, where the hook counts it

function G.sort(t, comp)
  if type(t) ~= "table" or rawgetmt(t) == nil then
    local m = type(t) == "table" and #t or 0
    if m > 1 then charge(m * 1.0 * math.log(m, 2) // ITEM_DIV) end
    return pass("sort", pcall(t_sort, t, comp))
  end
  local n = length(t)
  local c = {}
  for k = 1, n do c[k] = t[k] end
  G.sort(c, comp)
  for k = 1, n do t[k] = c[k] end
end

function G.insert(t, ...)
  if type(t) ~= "table" or rawgetmt(t) == nil then
    if type(t) == "table" then charge(#t // ITEM_DIV) end
    return pass("insert", pcall(t_insert, t, ...))
  end
  local nargs = select("#", ...)
  if nargs ~= 1 and nargs ~= 2 then error("wrong number of arguments to 'insert'", 2) end
  local e = length(t) + 1
  local pos, v = e, ...
  if nargs == 2 then
    pos, v = int((...)), select(2, ...)
    if not pos then error("bad argument #2 to 'insert' (number expected)", 2) end
    if pos < 1 or pos > e then error("bad argument #2 to 'insert' (position out of bounds)", 2) end
    for i = e, pos + 1, -1 do t[i] = t[i - 1] end
  end
  t[pos] = v
end

function G.remove(t, ...)
  if type(t) ~= "table" or rawgetmt(t) == nil then
    if type(t) == "table" then charge(#t // ITEM_DIV) end
    return pass("remove", pcall(t_remove, t, ...))
  end
  local size = length(t)
  local pos = size
  if select("#", ...) > 0 and (...) ~= nil then
    pos = int((...))
    if not pos then error("bad argument #2 to 'remove' (number expected)", 2) end
  end
  if pos ~= size and (pos < 1 or pos > size + 1) then
    error("bad argument #2 to 'remove' (position out of bounds)", 2)
  end
  local v = t[pos]
  while pos < size do
    t[pos] = t[pos + 1]
    pos = pos + 1
  end
  t[pos] = nil
  return v
end

return G
"""

PRELUDE = (
    _PRELUDE.replace("@LIB@", LIB_CHUNK)
    .replace("@TLIMIT@", repr(SLICE_CPU_LIMIT))
    .replace("@PATTERNS@", PATTERNS_LUA)
    .replace("@GUARDS@", GUARDS_LUA.replace("@BYTE_DIV@", str(BYTE_DIV)).replace("@ITEM_DIV@", str(ITEM_DIV)))
)
