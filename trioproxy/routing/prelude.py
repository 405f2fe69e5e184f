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
- The instruction budget is a count hook on each route coroutine. Once it fires, it fires on every
  instruction and raises whenever user code runs, so ``pcall`` cannot swallow it for long.
"""

from __future__ import annotations

__all__ = ["PRELUDE"]

PRELUDE = r"""
local co_create, co_resume, co_yield = coroutine.create, coroutine.resume, coroutine.yield
local co_status, co_close, co_running = coroutine.status, coroutine.close, coroutine.running
local sethook, getinfo = debug.sethook, debug.getinfo
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

local function hook()
  local co = co_running()
  if not exceeded[co] then
    exceeded[co] = true
    sethook(co, hook, "", 1)
  end
  local info = getinfo(2, "S")
  if info and info.source == CHUNK then _error(BUDGET, 0) end
end

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
  sethook(co, hook, "", budget)
  running[id] = co
  return finish(id, co, co_resume(co, ...))
end

local function resume(id, ...)
  local co = running[id]
  if not co then return "error", 0, "route coroutine is gone" end
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
