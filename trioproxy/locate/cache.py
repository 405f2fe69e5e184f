"""The DNS cache shared by every lookup: TTL-bound, negative answers included, LRU-bounded in size.

Pure: the caller passes ``now`` (seconds on any monotonic clock).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["NEGATIVE_NOANSWER", "NEGATIVE_NXDOMAIN", "CacheEntry", "DnsCache"]

NEGATIVE_NXDOMAIN = "nxdomain"
NEGATIVE_NOANSWER = "noanswer"

# An NXDOMAIN says the name has no records of any type (RFC 2308 5), so it is kept once per name under
# this pseudo type and answers every type's lookup.
_ANY_TYPE = "*"


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """Records of one (name, type), or a negative answer (``negative`` set, ``records`` empty)."""

    expires: float
    records: tuple[object, ...]
    negative: str | None = None


class DnsCache:
    """(name, rdtype) -> CacheEntry, at most ``max_entries`` entries, least recently used evicted first."""

    def __init__(self, max_entries: int = 4096) -> None:
        self._max = max_entries
        self._entries: OrderedDict[tuple[str, str], CacheEntry] = OrderedDict()
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: str, rdtype: str, now: float) -> CacheEntry | None:
        """The live entry for ``name``/``rdtype`` (a cached NXDOMAIN of the name counts), or None."""
        name = _key_name(name)
        for key in ((name, rdtype), (name, _ANY_TYPE)):
            entry = self._entries.get(key)
            if entry is None:
                continue
            if entry.expires <= now:
                del self._entries[key]
                continue
            self._entries.move_to_end(key)
            return entry
        return None

    def put(self, name: str, rdtype: str, records: tuple[object, ...], ttl: float, now: float) -> None:
        """Cache positive ``records`` for ``ttl`` seconds (a TTL of 0 is not cached, RFC 1035 3.2.1)."""
        self._store((_key_name(name), rdtype), CacheEntry(now + ttl, tuple(records)), ttl)

    def put_negative(self, name: str, rdtype: str, kind: str, ttl: float, now: float) -> None:
        """Cache a negative answer: ``kind`` NEGATIVE_NXDOMAIN (for every type) or NEGATIVE_NOANSWER."""
        if kind == NEGATIVE_NXDOMAIN:
            rdtype = _ANY_TYPE
        elif kind != NEGATIVE_NOANSWER:
            raise ValueError(f"unknown negative kind {kind!r}")
        self._store((_key_name(name), rdtype), CacheEntry(now + ttl, (), kind), ttl)

    def purge(self, now: float) -> int:
        """Drop expired entries; returns how many."""
        dead = [key for key, entry in self._entries.items() if entry.expires <= now]
        for key in dead:
            del self._entries[key]
        return len(dead)

    def clear(self) -> None:
        """Forget everything."""
        self._entries.clear()

    def _store(self, key: tuple[str, str], entry: CacheEntry, ttl: float) -> None:
        if ttl <= 0 or self._max <= 0:
            return
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
            self.evictions += 1


def _key_name(name: str) -> str:
    # DNS names compare case-insensitively (RFC 4343); the trailing dot is optional in our keys
    return name.lower().rstrip(".")
