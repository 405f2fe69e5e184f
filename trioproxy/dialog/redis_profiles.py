"""Dialog profiles in Redis, shared by every proxy instance that uses the same server (``[dialog] store``).

Each instance still tracks its own dialogs (``DialogTracker``: states, lifetimes, the management list);
what it writes here is profile membership, so that ``get_profile_size`` counts the dialogs of every
instance. Layout, with ``P`` the key prefix (default ``tp:dlg:``):

- ``P{profile}:v:<value>``  sorted set of the dialogs in the profile with that value (``""`` for a profile
  without values); member ``<Call-ID> <From tag>``, score the dialog's expiry (start + lifetime)
- ``P{profile}:all``        sorted set of the same entries over all values (member
  ``<Call-ID> <From tag> <value>``), for ``get_profile_size(profile, "")``

A dialog leaves its sets when it ends (one script per profile, queued at once and written by the service's
task; a count on this instance waits for its pending removals, so a caller whose call just ended here is
never refused by that call); an instance that dies without ending its dialogs leaves members that stop counting at their expiry:
counting is one script (``ZREMRANGEBYSCORE`` of the expired members, then ``ZCARD``). Keys get a TTL that
follows their latest expiry, so idle profiles vanish. The ``{profile}`` hash tag keeps a profile's keys in
one slot.

redis-py's blocking client runs in worker threads (``trio.to_thread.run_sync`` under a
``CapacityLimiter``), never on the event loop. A failing Redis never fails a route: writes are logged and
dropped (the members expire), a count returns None (``get_profile_size`` answers -1), and the outage is
logged once until Redis answers again.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
import trio

from .fsm import Dialog

__all__ = ["RedisProfiles", "member_of"]

log = logging.getLogger("trioproxy.dialog")

T = TypeVar("T")

# KEYS: the value set, the all-values set. ARGV: member, value, expiry, ttl (seconds).
_ADD = """
local exp, ttl = tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZADD', KEYS[1], exp, ARGV[1])
redis.call('ZADD', KEYS[2], exp, ARGV[1] .. ' ' .. ARGV[2])
for i = 1, 2 do
  if redis.call('TTL', KEYS[i]) < ttl then redis.call('EXPIRE', KEYS[i], ttl) end
end
return 1
"""

# KEYS: the value set, the all-values set. ARGV: member, value.
_REMOVE = """
local n = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1] .. ' ' .. ARGV[2])
return n
"""

# KEYS: one set. ARGV: now. Members expired at now leave, then the count.
_SIZE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
return redis.call('ZCARD', KEYS[1])
"""

_QUEUE = 10_000  # pending removals; beyond, a removal is dropped (its member expires instead)
_SETTLE = 1.0  # seconds a count waits at most for this instance's pending removals


def member_of(dialog: Dialog) -> str:
    """The dialog's member name in the sets: Call-ID and From tag (neither holds a space)."""
    return f"{dialog.call_id} {dialog.from_tag}"


class RedisProfiles:
    """Profile membership and counts in Redis (see the module docstring)."""

    def __init__(self, client: Any, *, prefix: str = "tp:dlg:", threads: int = 4) -> None:
        self._r = client
        self.prefix = prefix
        self._limiter = trio.CapacityLimiter(threads)
        self._add = client.register_script(_ADD)
        self._remove = client.register_script(_REMOVE)
        self._size = client.register_script(_SIZE)
        self._send, self._jobs = trio.open_memory_channel[Callable[[], object]](_QUEUE)
        self._written: dict[str, set[tuple[str, str]]] = {}  # member -> (profile, value) written
        self._pending = 0  # queued changes not yet written
        self._idle = trio.Event()  # set while nothing is pending
        self._idle.set()
        self.down = False  # the last call failed (the outage is logged once)
        self.errors = 0
        self.dropped = 0

    @classmethod
    def from_url(cls, url: str) -> RedisProfiles:
        """``redis://host:port/db``; option ``?prefix=name:`` sets the key prefix (default ``tp:dlg:``)."""
        parts = urlsplit(url)
        prefix = "tp:dlg:"
        rest = []
        for name, value in parse_qsl(parts.query):
            if name == "prefix":
                prefix = value
            else:
                rest.append((name, value))
        clean = urlunsplit(parts._replace(query=urlencode(rest)))
        client = redis.Redis.from_url(
            clean, decode_responses=True, socket_timeout=2.0, socket_connect_timeout=2.0
        )
        return cls(client, prefix=prefix)

    def value_key(self, profile: str, value: str) -> str:
        return f"{self.prefix}{{{profile}}}:v:{value}"

    def all_key(self, profile: str) -> str:
        return f"{self.prefix}{{{profile}}}:all"

    async def _call(self, what: str, fn: Callable[[], T]) -> T | None:
        """Run ``fn`` in a worker thread; None (logged once per outage) when Redis fails."""
        try:
            result = await trio.to_thread.run_sync(fn, limiter=self._limiter)
        except redis.RedisError as exc:
            self.errors += 1
            if not self.down:
                log.error(
                    "dialog profiles: Redis failed (%s): %s; profile sizes are -1 until it answers", what, exc
                )
            self.down = True
            return None
        if self.down:
            log.warning("dialog profiles: Redis answers again")
            self.down = False
        return result

    # -- the route's calls --

    async def add(self, dialog: Dialog, profile: str, value: str, now: float) -> bool:
        """Put the dialog in the profile's sets until its expiry; False when Redis failed."""
        member = member_of(dialog)
        self._written.setdefault(member, set()).add((profile, value))
        ok = await self._call("add", lambda: self._add_sync(member, profile, value, dialog.expires_at(), now))
        if not dialog.active:  # it ended while the write was on its way: take it out again
            await self.remove(member, [(profile, value)])
        return ok is not None

    def _add_sync(self, member: str, profile: str, value: str, expires: float, now: float) -> object:
        ttl = max(1, math.ceil(expires - now) + 1)
        keys = [self.value_key(profile, value), self.all_key(profile)]
        return self._add(keys=keys, args=[member, value, repr(expires), str(ttl)])

    async def remove(self, member: str, entries: Iterable[tuple[str, str]]) -> bool:
        """Take the member out of the given (profile, value) sets; False when Redis failed."""
        pairs = list(entries)
        written = self._written.get(member)
        if written is not None:
            written.difference_update(pairs)
            if not written:
                del self._written[member]
        ok = await self._call("remove", lambda: self._remove_sync(member, pairs))
        return ok is not None

    def _remove_sync(self, member: str, pairs: list[tuple[str, str]]) -> int:
        n = 0
        for profile, value in pairs:
            n += int(
                self._remove(
                    keys=[self.value_key(profile, value), self.all_key(profile)], args=[member, value]
                )
            )
        return n

    async def size(self, profile: str, value: str | None, now: float) -> int | None:
        """Dialogs in the profile (with ``value``; over all values when None) not expired at ``now``;
        None when Redis failed."""
        key = self.all_key(profile) if value is None else self.value_key(profile, value)
        with trio.move_on_after(_SETTLE):  # this instance's own removals land first (read your writes)
            await self._idle.wait()
        n = await self._call("size", lambda: self._size(keys=[key], args=[repr(now)]))
        return None if n is None else int(n)

    # -- what the tracker tells (synchronously) and the task that writes it --

    def on_end(self, dialog: Dialog) -> None:
        """A tracker listener: the dialog ended, so it leaves every profile this instance wrote it into."""
        member = member_of(dialog)
        entries = self._written.pop(member, None)
        if entries:
            self._queue(lambda: self._remove_sync(member, list(entries)))

    def retime(self, dialog: Dialog, now: float) -> None:
        """The dialog's lifetime changed: its members get the new expiry."""
        member = member_of(dialog)
        expires = dialog.expires_at()
        for profile, value in list(self._written.get(member, ())):
            self._queue(lambda p=profile, v=value: self._add_sync(member, p, v, expires, now))  # type: ignore[misc]

    def _queue(self, job: Callable[[], object]) -> None:
        try:
            self._send.send_nowait(job)
        except trio.WouldBlock:
            self.dropped += 1
            return
        if self._pending == 0:
            self._idle = trio.Event()
        self._pending += 1

    async def run(self) -> None:
        """Write the queued changes, in order, until cancelled."""
        async for job in self._jobs:
            try:
                await self._call("update", job)
            except Exception as exc:  # an unexpected answer costs one change, never the task
                self.errors += 1
                log.warning("dialog profiles: update failed: %r", exc)
            self._pending -= 1
            if self._pending == 0:
                self._idle.set()

    async def close(self) -> None:
        """Release the connection pool."""
        await trio.to_thread.run_sync(self._r.close, limiter=self._limiter)
