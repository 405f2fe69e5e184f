"""In-process hash tables for scripts (``KSR.htable.*``), with per-table expiry.

Tables are declared up front (``HtableStore(tables={"blocked": 3600})``, or ``[htable.NAME] autoexpire``
in the configuration) or created on first use with ``default_expire`` seconds. An entry's expiry is reset
each time it is written, unless the table has ``update_expire=False`` (Kamailio's ``updateexpire=0``): then
a counter kept with ``sht_inc`` expires ``expire`` seconds after it was created, which makes a fixed-window
rate limit. A table holds at most ``size`` entries; past it the oldest entry is dropped. ``now`` comes from the
clock callable so tests can pass virtual time. The store outlives script reloads: the holder hands the same
store to every script version.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .saferegex import compile_regex

__all__ = ["Htable", "HtableStore"]

Value = str | int


@dataclass(slots=True)
class _Entry:
    value: Value
    expires_at: float | None


class Htable:
    """One named table; ``expire`` seconds after the last write (0: never)."""

    def __init__(
        self,
        name: str,
        expire: float,
        clock: Callable[[], float],
        *,
        update_expire: bool = True,
        size: int = 100_000,
    ) -> None:
        self.name = name
        self.expire = expire
        self.update_expire = update_expire
        self.size = size
        self._clock = clock
        self._items: dict[str, _Entry] = {}

    def _live(self, key: str) -> _Entry | None:
        e = self._items.get(key)
        if e is not None and e.expires_at is not None and e.expires_at <= self._clock():
            del self._items[key]
            return None
        return e

    def get(self, key: str) -> Value | None:
        """The value of ``key``, None when absent or expired."""
        e = self._live(key)
        return None if e is None else e.value

    def set(self, key: str, value: Value) -> None:
        """Store ``value`` under ``key`` (resetting its expiry)."""
        items = self._items
        if not self.update_expire:
            old = self._live(key)
            if old is not None:
                old.value = value
                return
        exp = self._clock() + self.expire if self.expire > 0 else None
        if key not in items and len(items) >= self.size:
            del items[next(iter(items))]  # bounded memory: the oldest entry goes
        items[key] = _Entry(value, exp)

    def inc(self, key: str, delta: int = 1) -> int:
        """Add ``delta`` to an integer entry (absent counts as 0) and return the new value."""
        cur = self.get(key)
        base = cur if isinstance(cur, int) else 0
        self.set(key, base + delta)
        return base + delta

    def remove(self, key: str) -> bool:
        """Delete ``key``; whether it was there."""
        return self._items.pop(key, None) is not None

    def keys(self) -> list[str]:
        """The live keys."""
        return [k for k in list(self._items) if self._live(k) is not None]

    def match_name(self, op: str, pattern: str) -> bool:
        """Whether a live key matches: ``op`` is ``eq``, ``ne``, ``sw`` (starts with) or ``re``."""
        keys = self.keys()
        if op in ("eq", "=="):
            return pattern in keys
        if op in ("ne", "!="):
            return any(k != pattern for k in keys)
        if op == "sw":
            return any(k.startswith(pattern) for k in keys)
        if op in ("re", "=~"):
            rx = compile_regex(pattern)
            return any(rx.search(k) for k in keys)
        raise ValueError(f"unknown htable match operator {op!r}")

    def expire_now(self) -> int:
        """Drop every expired entry; how many were dropped."""
        before = len(self._items)
        for k in list(self._items):
            self._live(k)
        return before - len(self._items)

    def __len__(self) -> int:
        return len(self.keys())


class HtableStore:
    """The named tables of one proxy process."""

    def __init__(
        self,
        tables: Mapping[str, float] | None = None,
        *,
        default_expire: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.default_expire = default_expire
        self.clock = clock
        self._tables: dict[str, Htable] = {}
        for name, expire in (tables or {}).items():
            self.declare(name, expire)

    def declare(self, name: str, expire: float, *, update_expire: bool = True, size: int = 100_000) -> Htable:
        """Create (or re-declare the expiry of) table ``name``."""
        t = self._tables.get(name)
        if t is None:
            t = self._tables[name] = Htable(name, expire, self.clock, update_expire=update_expire, size=size)
        else:
            t.expire, t.update_expire, t.size = expire, update_expire, size
        return t

    def table(self, name: str) -> Htable:
        """Table ``name``, created with the default expiry on first use."""
        t = self._tables.get(name)
        if t is None:
            t = self.declare(name, self.default_expire)
        return t

    def names(self) -> list[str]:
        """Names of the known tables."""
        return list(self._tables)
