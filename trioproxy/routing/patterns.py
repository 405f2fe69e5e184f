"""Bounded Lua pattern matching for route scripts: ``string.find``, ``match``, ``gmatch`` and ``gsub``.

Lua's C matcher backtracks without limit and the instruction budget does not reach inside C functions:
``string.find(string.rep(s, 40), "(.-)(.-)(.-)(.-)(.-)(.-)(.-)(.-)(.-)b")`` on a value chosen by the sender
of a request would hold the event loop for minutes. The sandbox therefore replaces the four functions (in
the script's ``string`` table and in the runtime's string metatable, which ``s:find(...)`` goes through)
with the wrappers in ``PATTERNS_LUA``:

- Before a call, a worst-case step count is computed from the pattern's shape and the subject's length
  (per pattern item: a ``*``/``+``/``-`` item multiplies the rest by ``n + 1``, ``?`` by 2, ``%b`` and
  back-references add ``n``; unanchored searches multiply by ``n + 1`` start positions). When that bound
  is at most ``C_MAX_STEPS``, the C implementation runs and the bound (divided by ``STEP_DIV``) is charged
  to the route's instruction budget.
- Otherwise the call runs in a port of Lua 5.4's ``lstrlib.c`` matcher written in Lua, whose every step
  is counted by the instruction hook, so a runaway match ends with the same "instruction budget exceeded"
  error as a runaway loop (the route answers 500 naming the script line). The port keeps Lua 5.4's
  semantics: captures and position captures, ``%b``, ``%f``, back-references, anchors, the 200-level
  "pattern too complex" limit, the error messages, ``gsub`` with string/number/table/function
  replacement and a maximum count, ``gmatch`` with ``init``.
- Plain ``find`` (``plain`` or no special characters) runs in C when ``(n - m + 1) * m`` bytes of
  comparison is small, and otherwise scans candidates found by a one-byte plain search.

The chunk is loaded by the prelude under the name ``LIB_CHUNK``; the budget hook raises inside it as it
does in the user's script. It receives ``charge(units)`` (add to the running route's count, raise when
over budget) and returns the table of wrappers and its ``int(v, default)`` argument check (an integer,
or a number or numeric string with an integral value; ``default`` for nil), which ``GUARDS_LUA`` uses too.
"""

from __future__ import annotations

__all__ = ["BYTE_DIV", "C_MAX_STEPS", "LIB_CHUNK", "PATTERNS_LUA", "STEP_DIV"]

LIB_CHUNK = "=trioproxy.patterns"
# Largest worst-case step count run by the C matcher; beyond it the counted matcher runs.
C_MAX_STEPS = 400_000
# Worst-case C matcher steps charged as one instruction of the budget.
STEP_DIV = 8
# Bytes copied or compared by a C string function charged as one instruction of the budget.
BYTE_DIV = 64

_MATCHER = r"""
local charge = ...
local byte, sub, format, c_find, c_match, c_gmatch, c_gsub =
  string.byte, string.sub, string.format, string.find, string.match, string.gmatch, string.gsub
local concat, tointeger, mtype, type, tostring, tonumber, error, pcall =
  table.concat, math.tointeger, math.type, type, tostring, tonumber, error, pcall
local C_MAX, STEP_DIV, BYTE_DIV = @C_MAX@, @STEP_DIV@, @BYTE_DIV@
local ESC, CAP_UNFINISHED, CAP_POSITION, MAXCAPTURES, MAXCCALLS = 37, -1, -2, 32, 200

-- character classes of the C locale, keyed by class letter (upper case: complement)
local CLS = {}
do
  local function def(l, f)
    local lo, up = {}, {}
    for c = 0, 255 do lo[c] = f(c) up[c] = not lo[c] end
    CLS[byte(l)], CLS[byte(l) - 32] = lo, up
  end
  local function r(c, a, b) return c >= byte(a) and c <= byte(b) end
  def("a", function(c) return r(c, "a", "z") or r(c, "A", "Z") end)
  def("c", function(c) return c < 32 or c == 127 end)
  def("d", function(c) return r(c, "0", "9") end)
  def("g", function(c) return c > 32 and c < 127 end)
  def("l", function(c) return r(c, "a", "z") end)
  def("p", function(c)
    return c > 32 and c < 127 and not (r(c, "a", "z") or r(c, "A", "Z") or r(c, "0", "9")) end)
  def("s", function(c) return (c >= 9 and c <= 13) or c == 32 end)
  def("u", function(c) return r(c, "A", "Z") end)
  def("w", function(c) return r(c, "a", "z") or r(c, "A", "Z") or r(c, "0", "9") end)
  def("x", function(c) return r(c, "0", "9") or r(c, "a", "f") or r(c, "A", "F") end)
  def("z", function(c) return c == 0 end)
end

-- state of the match in progress (one at a time; callers re-set it after calling user code)
local src, slen, pat, plen = "", 0, "", 0
local level, depth = 0, MAXCCALLS
local cinit, clen = {}, {}
local match

-- errors of the matcher: tagged, so the wrappers re-raise them at the script's call as C would
local PE = {}
local function perr(msg) error({[PE] = msg}, 0) end

-- results of a counted call; errors re-raised as a C function called by the script would raise them
local function rethrow(ok, ...)
  if ok then return ... end
  local e = ...
  if type(e) == "table" and e[PE] then error(e[PE], 2) end
  error(e, 0)
end

-- results of a C matcher call run under pcall; its own errors re-raised at the script's call
local function is_c_error(e)
  return c_find(e, "^invalid ") or c_find(e, "^malformed pattern") or c_find(e, "^missing '%[' after")
    or e == "pattern too complex" or e == "too many captures" or e == "unfinished capture"
end

local function cpass(ok, ...)
  if ok then return ... end
  local e = ...
  if type(e) == "string" and is_c_error(e) then error(e, 2) end
  error(e, 0)
end

local function setstate(s, p) src, slen, pat, plen = s, #s, p, #p end

local function class_end(p)
  local c = byte(pat, p)
  p = p + 1
  if c == ESC then
    if p > plen then perr("malformed pattern (ends with '%')") end
    return p + 1
  elseif c == 91 then
    if byte(pat, p) == 94 then p = p + 1 end
    repeat
      if p > plen then perr("malformed pattern (missing ']')") end
      local cc = byte(pat, p)
      p = p + 1
      if cc == ESC and p <= plen then p = p + 1 end
    until byte(pat, p) == 93
    return p + 1
  end
  return p
end

local function match_class(c, cl)
  local t = CLS[cl]
  if t then return t[c] end
  return cl == c
end

local function bracket(c, p, ec)
  local sig = true
  if byte(pat, p + 1) == 94 then sig = false p = p + 1 end
  while true do
    p = p + 1
    if p >= ec then return not sig end
    local pc = byte(pat, p)
    if pc == ESC then
      p = p + 1
      if match_class(c, byte(pat, p)) then return sig end
    elseif byte(pat, p + 1) == 45 and p + 2 < ec then
      p = p + 2
      if pc <= c and c <= byte(pat, p) then return sig end
    elseif pc == c then return sig end
  end
end

local function single(s, p, ep)
  if s > slen then return false end
  local c, pc = byte(src, s), byte(pat, p)
  if pc == 46 then return true
  elseif pc == ESC then return match_class(c, byte(pat, p + 1))
  elseif pc == 91 then return bracket(c, p, ep - 1) end
  return pc == c
end

local function balance(s, p)
  if p >= plen then perr("malformed pattern (missing arguments to '%b')") end
  local b, e = byte(pat, p), byte(pat, p + 1)
  if s > slen or byte(src, s) ~= b then return nil end
  local cont = 1
  for i = s + 1, slen do
    local c = byte(src, i)
    if c == e then
      cont = cont - 1
      if cont == 0 then return i + 1 end
    elseif c == b then cont = cont + 1 end
  end
  return nil
end

local function max_expand(s, p, ep)
  local i = 0
  while single(s + i, p, ep) do i = i + 1 end
  while i >= 0 do
    local res = match(s + i, ep + 1)
    if res then return res end
    i = i - 1
  end
  return nil
end

local function min_expand(s, p, ep)
  while true do
    local res = match(s, ep + 1)
    if res then return res
    elseif single(s, p, ep) then s = s + 1
    else return nil end
  end
end

local function start_capture(s, p, what)
  if level >= MAXCAPTURES then perr("too many captures") end
  level = level + 1
  cinit[level], clen[level] = s, what
  local res = match(s, p)
  if not res then level = level - 1 end
  return res
end

local function end_capture(s, p)
  local l = level
  while l > 0 and clen[l] ~= CAP_UNFINISHED do l = l - 1 end
  if l == 0 then perr("invalid pattern capture") end
  clen[l] = s - cinit[l]
  local res = match(s, p)
  if not res then clen[l] = CAP_UNFINISHED end
  return res
end

local function match_capture(s, d)
  local l = d - 48
  if l < 1 or l > level or clen[l] == CAP_UNFINISHED then
    perr(format("invalid capture index %%%d", l))
  end
  local len = clen[l]
  if len < 0 or slen - s + 1 < len then return nil end
  if len > 256 then charge(len // BYTE_DIV) end
  if sub(src, cinit[l], cinit[l] + len - 1) == sub(src, s, s + len - 1) then return s + len end
  return nil
end

match = function(s, p)
  if depth == 0 then perr("pattern too complex") end
  depth = depth - 1
  while p <= plen do
    local pc = byte(pat, p)
    local nx = byte(pat, p + 1)
    if pc == 40 then
      if nx == 41 then s = start_capture(s, p + 2, CAP_POSITION)
      else s = start_capture(s, p + 1, CAP_UNFINISHED) end
      break
    elseif pc == 41 then
      s = end_capture(s, p + 1)
      break
    elseif pc == 36 and p == plen then
      if s ~= slen + 1 then s = nil end
      break
    elseif pc == ESC and nx == 98 then
      s = balance(s, p + 2)
      if not s then break end
      p = p + 4
    elseif pc == ESC and nx == 102 then
      p = p + 2
      if byte(pat, p) ~= 91 then perr("missing '[' after '%f' in pattern") end
      local ep = class_end(p)
      local prev = s == 1 and 0 or byte(src, s - 1)
      if bracket(prev, p, ep - 1) or not bracket(byte(src, s) or 0, p, ep - 1) then s = nil break end
      p = ep
    elseif pc == ESC and nx and nx >= 48 and nx <= 57 then
      s = match_capture(s, nx)
      if not s then break end
      p = p + 2
    else
      local ep = class_end(p)
      local q = byte(pat, ep)
      if not single(s, p, ep) then
        if q == 42 or q == 63 or q == 45 then p = ep + 1
        else s = nil break end
      elseif q == 63 then
        local res = match(s + 1, ep + 1)
        if res then s = res break end
        p = ep + 1
      elseif q == 43 then s = max_expand(s + 1, p, ep) break
      elseif q == 42 then s = max_expand(s, p, ep) break
      elseif q == 45 then s = min_expand(s, p, ep) break
      else s, p = s + 1, ep end
    end
  end
  depth = depth + 1
  return s
end

local function capture(i, s, e)
  if i > level then
    if i ~= 1 then perr(format("invalid capture index %%%d", i)) end
    return sub(src, s, e - 1)
  end
  local l = clen[i]
  if l == CAP_UNFINISHED then perr("unfinished capture") end
  if l == CAP_POSITION then return cinit[i] end
  return sub(src, cinit[i], cinit[i] + l - 1)
end

local function captures(s, e, i, n)
  if i > n then return end
  return capture(i, s, e), captures(s, e, i + 1, n)
end

local function all_captures(s, e)
  return captures(s, e, 1, (level == 0 and s) and 1 or level)
end
"""

_WRAPPERS = r"""
-- worst-case analysis of a pattern, cached: items (>= 0: that many fixed steps; -1: '?'; -2: '*', '+'
-- or '-'; -4: %b or a back-reference), widest set, literal first byte
local function set_end(p, i)
  local lp = #p
  if byte(p, i) == ESC then return i + 1 < lp + 1 and i + 2 or nil end
  if byte(p, i) ~= 91 then return i + 1 end
  i = i + 1
  if byte(p, i) == 94 then i = i + 1 end
  repeat
    if i > lp then return nil end
    local c = byte(p, i)
    i = i + 1
    if c == ESC and i <= lp then i = i + 1 end
  until byte(p, i) == 93
  return i + 1
end

local LITERAL_NOT = {}
for c in ("^$*+?.([%-)"):gmatch(".") do LITERAL_NOT[byte(c)] = true end

local function analyze(p, anchored)
  local items, k, fixed, widest = {}, 0, 0, 1
  local i, lp = anchored and 2 or 1, #p
  local first = nil
  do
    local c, q = byte(p, i), byte(p, i + 1)
    if c and not LITERAL_NOT[c] and q ~= 42 and q ~= 63 and q ~= 45 then first = sub(p, i, i) end
  end
  local function push(v)
    if fixed > 0 then k = k + 1 items[k] = fixed fixed = 0 end
    k = k + 1 items[k] = v
  end
  while i <= lp do
    local c, nx = byte(p, i), byte(p, i + 1)
    if c == 40 or c == 41 or (c == 36 and i == lp) then fixed, i = fixed + 1, i + 1
    elseif c == ESC and nx == 98 then push(-4) i = i + 4
    elseif c == ESC and nx and nx >= 48 and nx <= 57 then push(-4) i = i + 2
    elseif c == ESC and nx == 102 then
      local e = byte(p, i + 2) == 91 and set_end(p, i + 2)
      if not e then return false end
      if e - i > widest then widest = e - i end
      fixed, i = fixed + 1, e
    else
      local e = set_end(p, i)
      if not e then return false end
      if e - i > widest then widest = e - i end
      local q = byte(p, e)
      if q == 42 or q == 43 or q == 45 then push(-2) i = e + 1
      elseif q == 63 then push(-1) i = e + 1
      else fixed, i = fixed + 1, e end
    end
  end
  if fixed > 0 then k = k + 1 items[k] = fixed end
  return {items = items, k = k, widest = widest, first = first, anchored = anchored}
end

-- a malformed pattern: always the counted matcher, which raises Lua's error where C would
local function unknown(anchored)
  return {items = {}, k = 0, widest = 1, first = nil, anchored = anchored}
end

local caches, ncached = {{}, {}}, 0
local function info_of(p, gm)
  local cache = caches[gm and 2 or 1]
  local r = cache[p]
  if r == nil then
    r = analyze(p, not gm and byte(p, 1) == 94)
    if #p <= 200 then
      if ncached >= 500 then caches, ncached = {{}, {}}, 0 cache = caches[gm and 2 or 1] end
      cache[p] = r
      ncached = ncached + 1
    end
  end
  return r
end

-- worst-case steps of the C matcher on n subject bytes (stops growing once over C_MAX)
local function bound(info, n)
  local n1, w, items = n + 1, 1, info.items
  for k = info.k, 1, -1 do
    local it = items[k]
    if it >= 0 then w = w + it
    elseif it == -2 then w = n1 * (w + 1)
    elseif it == -1 then w = 2 * w + 1
    else w = w + n1 end
    if w > C_MAX then return w end
  end
  if not info.anchored then w = w * n1 end
  return w * (1 + info.widest // 8)
end

-- arguments C refuses: let C raise its error (before any work), named and placed as a direct call
local function fail(name, f, ...)
  local ok, e = pcall(f, ...)
  if ok then error("bad argument to '" .. name .. "'", 2) end
  if type(e) == "string" then e = c_gsub(e, "to '[^']*'", "to '" .. name .. "'", 1) end
  error(e, 2)  -- always tail-called: level 2 is the script's call
end

local function str(v)
  local t = type(v)
  if t == "string" then return v elseif t == "number" then return tostring(v) end
  return nil
end

local function int(v, default)
  if v == nil then return default end
  if mtype(v) == "integer" then return v end
  local t = type(v)
  if t == "number" or t == "string" then
    local x = tonumber(v)
    return x and tointeger(x)
  end
  return nil
end

local function posrelat(pos, len)
  if pos > 0 then return pos elseif pos == 0 or pos < -len then return 1 end
  return len + pos + 1
end

local SPECIALS = "[%^%$%*%+%?%.%(%[%%%-]"

-- a plain search too long for one C call: candidates by first byte, each compared once
local function plain_find(s, p, init)
  local lp = #p
  if lp == 0 then return init, init - 1 end
  local c1, last = sub(p, 1, 1), #s - lp + 1
  local i = init
  while i <= last do
    local j = c_find(s, c1, i, true)
    if not j or j > last then return nil end
    charge(lp // BYTE_DIV + 1)
    if sub(s, j, j + lp - 1) == p then return j, j + lp - 1 end
    i = j + 1
  end
  return nil
end

local function skip(info, s, i)
  -- next start that can match: the pattern's literal first byte, found by a plain C search
  if info.first then return c_find(s, info.first, i, true) end
  return i
end

local function lua_find(s, p, init, find, info)
  setstate(s, p)
  local anchor = info.anchored
  local ps = anchor and 2 or 1
  local s1 = init
  repeat
    if not anchor then
      s1 = skip(info, s, s1)
      if not s1 then return nil end
    end
    level, depth = 0, MAXCCALLS
    local e = match(s1, ps)
    if e then
      if find then return s1, e - 1, captures(nil, nil, 1, level) end
      return all_captures(s1, e)
    end
    s1 = s1 + 1
  until anchor or s1 > slen + 1
  return nil
end

local W = {}

-- tests run the counted matcher on every call with set_c_max(-1); the sandbox never installs this
function W.set_c_max(n) C_MAX = n end

function W.find(s, p, init, plain)
  local ts, tp, i = str(s), str(p), int(init, 1)
  if not (ts and tp and i) then return fail("find", c_find, ts or s, tp or p, i or init) end
  local ls = #ts
  i = posrelat(i, ls)
  if i > ls + 1 then return nil end
  local n = ls - i + 1
  if plain or not c_find(tp, SPECIALS) then
    local lp = #tp
    local cost = lp <= n and (n - lp + 1) * lp or 0
    if cost <= C_MAX * BYTE_DIV then
      charge(cost // (BYTE_DIV * BYTE_DIV))
      return c_find(ts, tp, i, true)
    end
    return plain_find(ts, tp, i)
  end
  local info = info_of(tp)
  if info then
    local b = bound(info, n)
    if b <= C_MAX then charge(b // STEP_DIV) return cpass(pcall(c_find, ts, tp, i)) end
  else info = unknown(byte(tp, 1) == 94) end
  return rethrow(pcall(lua_find, ts, tp, i, true, info))
end

function W.match(s, p, init)
  local ts, tp, i = str(s), str(p), int(init, 1)
  if not (ts and tp and i) then return fail("match", c_match, ts or s, tp or p, i or init) end
  local ls = #ts
  i = posrelat(i, ls)
  if i > ls + 1 then return nil end
  local info = info_of(tp)
  if info then
    local b = bound(info, ls - i + 1)
    if b <= C_MAX then charge(b // STEP_DIV) return cpass(pcall(c_match, ts, tp, i)) end
  else info = unknown(byte(tp, 1) == 94) end
  return rethrow(pcall(lua_find, ts, tp, i, false, info))
end

function W.gmatch(s, p, init)
  local ts, tp, i = str(s), str(p), int(init, 1)
  if not (ts and tp and i) then return fail("gmatch", c_gmatch, ts or s, tp or p, i or init) end
  local ls = #ts
  i = posrelat(i, ls)
  if i > ls + 1 then i = ls + 2 end
  local info = info_of(tp, true)
  if info then
    local b = bound(info, ls - i + 1)
    if b <= C_MAX then charge(b // STEP_DIV) return c_gmatch(ts, tp, i) end
  else info = unknown(false) end
  local pos, last = i, nil
  local function step()
    setstate(ts, tp)
    while pos <= ls + 1 do
      pos = skip(info, ts, pos)
      if not pos then pos = ls + 2 return end
      level, depth = 0, MAXCCALLS
      local e = match(pos, 1)
      if e and e ~= last then
        local start = pos
        pos, last = e, e
        return all_captures(start, e)
      end
      pos = pos + 1
    end
  end
  return function() return rethrow(pcall(step)) end
end

local REPL = {string = true, number = true, table = true, ["function"] = true}

local function gsub(orig, s, p, repl, tr, max_n, info)
  local out, no = {}, 0
  local ls, anchor = #s, info.anchored
  local ps = anchor and 2 or 1
  local si, kept, last, n, changed = 1, 1, nil, 0, false
  setstate(s, p)
  while n < max_n do
    if not anchor then
      local j = skip(info, s, si)
      if not j then break end
      si = j
    end
    level, depth = 0, MAXCCALLS
    local e = match(si, ps)
    if e and e ~= last then
      n = n + 1
      if si > kept then no = no + 1 out[no] = sub(s, kept, si - 1) end
      if tr == "string" then
        local i, lr = 1, #repl
        while true do
          local j = c_find(repl, "%", i, true)
          if not j then break end
          no = no + 1 out[no] = sub(repl, i, j - 1)
          local d = byte(repl, j + 1)
          if d == ESC then no = no + 1 out[no] = "%"
          elseif d == 48 then no = no + 1 out[no] = sub(s, si, e - 1)
          elseif d and d >= 49 and d <= 57 then no = no + 1 out[no] = capture(d - 48, si, e)
          else perr("invalid use of '%' in replacement string") end
          i = j + 2
        end
        if i <= lr then no = no + 1 out[no] = sub(repl, i) end
        changed = true
      else
        local v
        if tr == "function" then v = repl(all_captures(si, e)) else v = repl[capture(1, si, e)] end
        setstate(s, p)
        if not v then
          no = no + 1 out[no] = sub(s, si, e - 1)
        elseif type(v) ~= "string" and type(v) ~= "number" then
          perr("invalid replacement value (a " .. type(v) .. ")")
        else
          no = no + 1 out[no] = v
          changed = true
        end
      end
      si, kept, last = e, e, e
    elseif si <= ls then si = si + 1
    else break end
    if anchor then break end
  end
  if not changed then return orig, n end
  if kept <= ls then no = no + 1 out[no] = sub(s, kept) end
  local r = concat(out)
  charge(#r // BYTE_DIV)
  return r, n
end

function W.gsub(s, p, repl, max_n)
  local ts, tp, tr = str(s), str(p), type(repl)
  local m = int(max_n, ts and #ts + 1)
  if not (ts and tp and m and REPL[tr]) then return fail("gsub", c_gsub, ts or s, tp or p, repl, m or max_n) end
  if tr == "number" then repl, tr = tostring(repl), "string" end
  local info = info_of(tp)
  if info then
    local b = bound(info, #ts)
    if b <= C_MAX then
      charge(b // STEP_DIV)
      local ok, r, k = pcall(c_gsub, s, tp, repl, m)
      if not ok then return cpass(false, r) end
      if type(r) == "string" then charge(#r // BYTE_DIV) end
      return r, k
    end
  else info = unknown(byte(tp, 1) == 94) end
  return rethrow(pcall(gsub, ts, ts, tp, repl, tr, m, info))
end

return W, int
"""

PATTERNS_LUA = (
    (_MATCHER + _WRAPPERS)
    .replace("@C_MAX@", str(C_MAX_STEPS))
    .replace("@STEP_DIV@", str(STEP_DIV))
    .replace("@BYTE_DIV@", str(BYTE_DIV))
)
