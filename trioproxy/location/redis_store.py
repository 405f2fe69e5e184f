"""Location store in Redis, shared by several proxy instances.

Layout, with `P` the key prefix (default `tp:loc:`) and `A` the AOR key:

- `P{A}`          set of the AOR's contact URIs; its TTL follows the longest binding put into it
- `P{A}:<contact>` one binding as JSON, with a TTL equal to the binding's expiry (`expires_at -
                  last_modified`), so Redis drops expired bindings by itself
- `P aors`        sorted set (all scores 0, so ordered by name) indexing the AORs, for management paging

The call path (`get`, `update`) touches only the keys of one AOR, in one Lua script each (one round trip,
atomic: the RFC 3261 10.3 step 7 Call-ID/CSeq check and the writes cannot interleave with another
instance's). No KEYS or SCAN anywhere; management walks the index in pages. The `{A}` hash tag keeps an
AOR's keys in one slot; scripts that walk several AORs assume one Redis server (no cluster).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
import trio

from .binding import Binding
from .store import Guard, Plan, after_change

__all__ = ["RedisStore"]

T = TypeVar("T")

_GET = """
local out = {}
for _, c in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local v = redis.call('GET', ARGV[1] .. c)
  if v then out[#out + 1] = v else redis.call('SREM', KEYS[1], c) end
end
if #out == 0 then redis.call('ZREM', KEYS[2], ARGV[2]) end
return out
"""

# ARGV: 1 binding-key prefix, 2 aor, 3 guard call-id, 4 guard cseq, 5 "1" when guarded, 6 number of puts,
# then (contact, json, ttl) per put, then the contacts to remove.
_UPDATE = """
local pre = ARGV[1]
local nputs = tonumber(ARGV[6])
local first_remove = 7 + 3 * nputs
if ARGV[5] == '1' then
  local gcseq = tonumber(ARGV[4])
  local function blocked(c)
    local v = redis.call('GET', pre .. c)
    if not v then return false end
    local b = cjson.decode(v)
    return b.call_id == ARGV[3] and tonumber(b.cseq) >= gcseq
  end
  for i = 0, nputs - 1 do
    if blocked(ARGV[7 + 3 * i]) then return 0 end
  end
  for i = first_remove, #ARGV do
    if blocked(ARGV[i]) then return 0 end
  end
end
for i = first_remove, #ARGV do
  redis.call('DEL', pre .. ARGV[i])
  redis.call('SREM', KEYS[1], ARGV[i])
end
for i = 0, nputs - 1 do
  local c = ARGV[7 + 3 * i]
  local ttl = tonumber(ARGV[9 + 3 * i])
  redis.call('SET', pre .. c, ARGV[8 + 3 * i], 'EX', ttl)
  redis.call('SADD', KEYS[1], c)
  if redis.call('TTL', KEYS[1]) < ttl then redis.call('EXPIRE', KEYS[1], ttl) end
end
if redis.call('SCARD', KEYS[1]) > 0 then
  redis.call('ZADD', KEYS[2], 0, ARGV[2])
else
  redis.call('ZREM', KEYS[2], ARGV[2])
end
return 1
"""

_DELETE = """
local n = redis.call('DEL', ARGV[1] .. ARGV[3])
redis.call('SREM', KEYS[1], ARGV[3])
if redis.call('SCARD', KEYS[1]) == 0 then redis.call('ZREM', KEYS[2], ARGV[2]) end
return n
"""

_DELETE_AOR = """
local n = 0
for _, c in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  n = n + redis.call('DEL', ARGV[1] .. c)
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
return n
"""

# Management walk over a batch of AORs (ARGV 3..): ARGV[1] prefix, ARGV[2] now ('' = no filter),
# KEYS[1] the index. mode 'purge' deletes bindings expired at now and returns the count; mode 'count'
# returns {live aors, live contacts}. Stale set members and empty index entries are cleaned either way.
_WALK = """
local prefix, mode = ARGV[1], ARGV[2]
local now = tonumber(ARGV[3])
local removed, aors, contacts = 0, 0, 0
for i = 4, #ARGV do
  local aor = ARGV[i]
  local setkey = prefix .. '{' .. aor .. '}'
  local live = 0
  for _, c in ipairs(redis.call('SMEMBERS', setkey)) do
    local key = setkey .. ':' .. c
    local v = redis.call('GET', key)
    if not v then
      redis.call('SREM', setkey, c)
    elseif now and tonumber(cjson.decode(v).expires_at) <= now then
      if mode == 'purge' then
        redis.call('DEL', key)
        redis.call('SREM', setkey, c)
        removed = removed + 1
      end
    else
      live = live + 1
    end
  end
  if redis.call('SCARD', setkey) == 0 then redis.call('ZREM', KEYS[1], aor) end
  if live > 0 then aors = aors + 1; contacts = contacts + live end
end
if mode == 'purge' then return removed end
return {aors, contacts}
"""

_BATCH = 200


class RedisStore:
    """Bindings in Redis (see the module docstring for the layout).

    redis-py's blocking client runs in worker threads (`trio.to_thread.run_sync`, bounded by a
    `CapacityLimiter`); its connection pool is thread-safe. Each call is one short script.
    """

    def __init__(self, client: Any, *, prefix: str = "tp:loc:", threads: int = 8) -> None:
        self._r = client
        self._prefix = prefix
        self._index = f"{prefix}aors"
        self._limiter = trio.CapacityLimiter(threads)
        self._get = client.register_script(_GET)
        self._update = client.register_script(_UPDATE)
        self._delete = client.register_script(_DELETE)
        self._delete_aor = client.register_script(_DELETE_AOR)
        self._walk = client.register_script(_WALK)

    @classmethod
    def from_url(cls, url: str) -> RedisStore:
        """`redis://host:port/db`; option `?prefix=name:` sets the key prefix (default `tp:loc:`)."""
        parts = urlsplit(url)
        query = parse_qsl(parts.query)
        prefix = "tp:loc:"
        rest = []
        for name, value in query:
            if name == "prefix":
                prefix = value
            else:
                rest.append((name, value))
        clean = urlunsplit(parts._replace(query=urlencode(rest)))
        client = redis.Redis.from_url(clean, decode_responses=True)
        return cls(client, prefix=prefix)

    def _set_key(self, aor: str) -> str:
        return f"{self._prefix}{{{aor}}}"

    async def _run(self, fn: Callable[[], T]) -> T:
        return await trio.to_thread.run_sync(fn, limiter=self._limiter)

    def _get_sync(self, aor: str, now: float) -> list[Binding]:
        key = self._set_key(aor)
        values = self._get(keys=[key, self._index], args=[key + ":", aor])
        bindings = [Binding.from_json(v) for v in values]
        return [b for b in bindings if b.expires_at > now]

    async def get(self, aor: str, now: float) -> list[Binding]:
        """Bindings of `aor` not expired at `now`."""
        return await self._run(lambda: self._get_sync(aor, now))

    async def put(self, binding: Binding) -> None:
        """Insert or replace the binding with the same aor and contact."""
        await self.update(binding.aor, [binding])

    async def update(
        self,
        aor: str,
        puts: Sequence[Binding],
        removes: Sequence[str] = (),
        *,
        guard: Guard | None = None,
    ) -> bool:
        """Apply puts and removals in one script, or nothing if `guard` blocks a touched binding."""
        return await self._run(lambda: self._update_sync(aor, puts, removes, guard))

    def _update_sync(
        self, aor: str, puts: Sequence[Binding], removes: Sequence[str], guard: Guard | None
    ) -> bool:
        key = self._set_key(aor)
        live: list[str] = []
        gone = list(removes)
        for b in puts:
            ttl = math.ceil(b.expires_at - b.last_modified)
            if ttl > 0:
                live += [b.contact, b.to_json(), str(ttl)]
            else:  # already expired when written: nothing to keep
                gone.append(b.contact)
        args: list[str] = [key + ":", aor, guard[0] if guard else "", str(guard[1] if guard else 0)]
        args += ["1" if guard else "0", str(len(live) // 3), *live, *gone]
        return bool(self._update(keys=[key, self._index], args=args))

    async def transact(
        self, aor: str, now: float, plan: Plan, *, guard: Guard | None = None
    ) -> list[Binding] | None:
        """Read, plan and write in one worker-thread call (two scripts, two round trips).

        Another instance may change the AOR between the two scripts; the write script re-checks the
        Call-ID/CSeq `guard` atomically, so a REGISTER overtaken by a newer one fails (None) instead of
        undoing it.
        """

        def run() -> list[Binding] | None:
            snapshot = self._get_sync(aor, now)
            puts, removes = plan(snapshot)
            if not self._update_sync(aor, puts, removes, guard):
                return None
            return after_change(snapshot, puts, removes)

        return await self._run(run)

    async def delete(self, aor: str, contact: str) -> bool:
        """Remove one binding; True if it existed."""
        key = self._set_key(aor)
        args = [key + ":", aor, contact]
        n = await self._run(lambda: self._delete(keys=[key, self._index], args=args))
        return bool(n)

    async def delete_aor(self, aor: str) -> int:
        """Remove every binding of `aor`; returns how many."""
        key = self._set_key(aor)
        n = await self._run(lambda: self._delete_aor(keys=[key, self._index], args=[key + ":", aor]))
        return int(n)

    async def list_aors(self, offset: int = 0, limit: int = 100) -> list[str]:
        """AORs in the index, sorted, one page."""
        if limit <= 0:
            return []
        names = await self._run(lambda: self._r.zrange(self._index, offset, offset + limit - 1))
        return list(names)

    async def _walk_all(self, mode: str, now: float | None) -> list[Any]:
        # Pages through the index by name (ZRANGE BYLEX from the last name seen), so entries removed by
        # an earlier batch do not shift the next page.
        results: list[Any] = []
        start = "-"
        while True:
            names = await self._run(
                lambda s=start: self._r.zrangebylex(self._index, s, "+", start=0, num=_BATCH)  # type: ignore[misc]
            )
            if not names:
                return results
            args = [self._prefix, mode, "" if now is None else repr(now), *names]
            results.append(await self._run(lambda a=args: self._walk(keys=[self._index], args=a)))  # type: ignore[misc]
            if len(names) < _BATCH:
                return results
            start = "(" + names[-1]

    async def counts(self, now: float | None = None) -> tuple[int, int]:
        """(AORs, contacts) stored; with `now`, only those not expired at `now`."""
        aors = contacts = 0
        for pair in await self._walk_all("count", now):
            aors += int(pair[0])
            contacts += int(pair[1])
        return aors, contacts

    async def purge_expired(self, now: float) -> int:
        """Drop bindings expired at `now` (Redis also expires them by TTL); returns how many."""
        return sum(int(n) for n in await self._walk_all("purge", now))

    async def close(self) -> None:
        """Release the connection pool."""
        await self._run(self._r.close)
