"""The location store interface, the in-memory backend and `open_store`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from .binding import Binding

__all__ = [
    "Guard",
    "LocationStore",
    "MemoryStore",
    "Plan",
    "after_change",
    "guard_blocks",
    "open_store",
]

# (Call-ID, CSeq) of the REGISTER performing an update. RFC 3261 10.3 step 7: a stored binding with the
# same Call-ID and a CSeq not lower than the request's is newer than the request, so the update aborts.
Guard = tuple[str, int]

# A registrar's decision, given the AOR's current bindings: (bindings to put, contacts to remove). Pure and
# synchronous (a backend may run it in its worker thread); it may raise to abort the change.
Plan = Callable[[list[Binding]], tuple[Sequence[Binding], Sequence[str]]]


def after_change(snapshot: list[Binding], puts: Sequence[Binding], removes: Sequence[str]) -> list[Binding]:
    """The bindings of an AOR once `puts` and `removes` are applied to `snapshot`."""
    gone = set(removes)
    gone.update(b.contact for b in puts)
    return [b for b in snapshot if b.contact not in gone] + list(puts)


def guard_blocks(stored_call_id: str, stored_cseq: int, guard: Guard | None) -> bool:
    """True when `guard` forbids touching a binding stored with that Call-ID and CSeq (10.3 step 7)."""
    return guard is not None and stored_call_id == guard[0] and stored_cseq >= guard[1]


@runtime_checkable
class LocationStore(Protocol):
    """Address-of-record -> bindings. Every backend implements this; times are epoch seconds.

    `get` never returns bindings expired at `now`. `update` applies puts and removals atomically: all of
    them, or (when `guard` blocks any binding touched) none, returning False. `transact` is the registrar's
    step: read the AOR's bindings at `now`, let `plan` decide, apply with `update`'s rule, and return the
    bindings after the change (None when `guard` blocked it); backends do it in one worker-thread call.
    """

    async def get(self, aor: str, now: float) -> list[Binding]: ...

    async def put(self, binding: Binding) -> None: ...

    async def update(
        self,
        aor: str,
        puts: Sequence[Binding],
        removes: Sequence[str] = (),
        *,
        guard: Guard | None = None,
    ) -> bool: ...

    async def transact(
        self, aor: str, now: float, plan: Plan, *, guard: Guard | None = None
    ) -> list[Binding] | None: ...

    async def delete(self, aor: str, contact: str) -> bool: ...

    async def delete_aor(self, aor: str) -> int: ...

    async def list_aors(self, offset: int = 0, limit: int = 100) -> list[str]: ...

    async def counts(self, now: float | None = None) -> tuple[int, int]: ...

    async def purge_expired(self, now: float) -> int: ...

    async def close(self) -> None: ...


class MemoryStore:
    """Bindings in a dict of dicts, for one process (the default backend).

    Nothing here awaits between reading and writing, so every method is atomic within the trio loop.
    """

    def __init__(self) -> None:
        self._aors: dict[str, dict[str, Binding]] = {}

    async def get(self, aor: str, now: float) -> list[Binding]:
        """Bindings of `aor` not expired at `now`."""
        contacts = self._aors.get(aor)
        if not contacts:
            return []
        return [b for b in contacts.values() if b.expires_at > now]

    async def put(self, binding: Binding) -> None:
        """Insert or replace the binding with the same aor and contact."""
        self._aors.setdefault(binding.aor, {})[binding.contact] = binding

    async def update(
        self,
        aor: str,
        puts: Sequence[Binding],
        removes: Sequence[str] = (),
        *,
        guard: Guard | None = None,
    ) -> bool:
        """Apply puts and removals atomically, or nothing if `guard` blocks a touched binding."""
        return self._update(aor, puts, removes, guard)

    async def transact(
        self, aor: str, now: float, plan: Plan, *, guard: Guard | None = None
    ) -> list[Binding] | None:
        """Read, plan and update with no await in between (atomic in the trio loop)."""
        contacts = self._aors.get(aor)
        snapshot = [b for b in contacts.values() if b.expires_at > now] if contacts else []
        puts, removes = plan(snapshot)
        if not self._update(aor, puts, removes, guard):
            return None
        return after_change(snapshot, puts, removes)

    def _update(self, aor: str, puts: Sequence[Binding], removes: Sequence[str], guard: Guard | None) -> bool:
        contacts = self._aors.get(aor, {})
        for contact in [b.contact for b in puts] + list(removes):
            old = contacts.get(contact)
            if old is not None and guard_blocks(old.call_id, old.cseq, guard):
                return False
        for contact in removes:
            contacts.pop(contact, None)
        for binding in puts:
            contacts[binding.contact] = binding
        if contacts:
            self._aors[aor] = contacts
        else:
            self._aors.pop(aor, None)
        return True

    async def delete(self, aor: str, contact: str) -> bool:
        """Remove one binding; True if it existed."""
        contacts = self._aors.get(aor)
        if not contacts or contacts.pop(contact, None) is None:
            return False
        if not contacts:
            del self._aors[aor]
        return True

    async def delete_aor(self, aor: str) -> int:
        """Remove every binding of `aor`; returns how many."""
        return len(self._aors.pop(aor, {}))

    async def list_aors(self, offset: int = 0, limit: int = 100) -> list[str]:
        """AORs with stored bindings, sorted, one page."""
        return sorted(self._aors)[offset : offset + limit]

    async def counts(self, now: float | None = None) -> tuple[int, int]:
        """(AORs, contacts) stored; with `now`, only those not expired at `now`."""
        aors = contacts = 0
        for bindings in self._aors.values():
            live = len(bindings) if now is None else sum(1 for b in bindings.values() if b.expires_at > now)
            if live:
                aors += 1
                contacts += live
        return aors, contacts

    async def purge_expired(self, now: float) -> int:
        """Drop bindings expired at `now`; returns how many."""
        removed = 0
        for aor in list(self._aors):
            contacts = self._aors[aor]
            dead = [c for c, b in contacts.items() if b.expires_at <= now]
            for contact in dead:
                del contacts[contact]
            removed += len(dead)
            if not contacts:
                del self._aors[aor]
        return removed

    async def close(self) -> None:
        """Nothing to release."""


def open_store(url: str = "memory:") -> LocationStore:
    """A store for `url`: `memory:`, `sqlite:///path/location.db`, `redis://host:port/db`.

    Query options: sqlite `?synchronous=normal|full`; redis `?prefix=name:` (key prefix, default `tp:loc:`).
    """
    scheme = url.partition(":")[0].lower()
    if scheme in ("", "memory"):
        return MemoryStore()
    if scheme == "sqlite":
        from .sqlite_store import SqliteStore

        return SqliteStore.from_url(url)
    if scheme in ("redis", "rediss", "unix"):
        from .redis_store import RedisStore

        return RedisStore.from_url(url)
    raise ValueError(f"unknown location store URL scheme: {url!r}")
