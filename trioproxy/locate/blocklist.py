"""The destination blocklist: targets that failed recently are skipped for a while.

Pure: every call takes ``now`` (seconds on the same monotonic clock the caller uses everywhere).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from trioproxy.sip import Address

__all__ = ["BlockEntry", "Blocklist"]


@dataclass(frozen=True, slots=True)
class BlockEntry:
    """One blocked destination, as the management API shows it."""

    address: Address
    reason: str
    added: float
    expires: float


class Blocklist:
    """Destinations blocked for ``duration`` seconds after a failure; at most ``max_entries`` kept."""

    def __init__(self, duration: float = 60.0, max_entries: int = 10000) -> None:
        if duration <= 0:
            raise ValueError("duration must be positive")
        self.duration = duration
        self._max = max_entries
        self._entries: OrderedDict[Address, BlockEntry] = OrderedDict()
        self._added = 0
        self._hits = 0
        self._expired = 0
        self._evicted = 0

    def add(self, address: Address, reason: str, now: float, duration: float | None = None) -> None:
        """Block ``address`` from ``now`` for ``duration`` (default: the list's) seconds; re-adding extends."""
        span = self.duration if duration is None else duration
        self._entries.pop(address, None)
        self._entries[address] = BlockEntry(address, reason, now, now + span)
        self._added += 1
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
            self._evicted += 1

    def remove(self, address: Address) -> bool:
        """Unblock ``address`` now; True if it was listed."""
        return self._entries.pop(address, None) is not None

    def is_blocked(self, address: Address, now: float) -> bool:
        """True while ``address`` is blocked at ``now``."""
        entry = self._entries.get(address)
        if entry is None:
            return False
        if entry.expires <= now:
            del self._entries[address]
            self._expired += 1
            return False
        self._hits += 1
        return True

    def filter(self, targets: Iterable[Address], now: float) -> list[Address]:
        """``targets`` without the blocked ones, order kept."""
        return [t for t in targets if not self.is_blocked(t, now)]

    def blocked_last(self, targets: Iterable[Address], now: float) -> list[Address]:
        """``targets`` with the blocked ones moved to the end, each group in its original order."""
        ok: list[Address] = []
        blocked: list[Address] = []
        for target in targets:
            (blocked if self.is_blocked(target, now) else ok).append(target)
        return ok + blocked

    def entries(self, now: float) -> list[BlockEntry]:
        """The live entries, oldest first (expired ones are dropped)."""
        self._purge(now)
        return list(self._entries.values())

    def clear(self) -> None:
        """Unblock everything."""
        self._entries.clear()

    def statistics(self) -> dict[str, int]:
        """Counters for metrics: entries, added, hits (blocked answers), expired, evicted."""
        return {
            "entries": len(self._entries),
            "added": self._added,
            "hits": self._hits,
            "expired": self._expired,
            "evicted": self._evicted,
        }

    def _purge(self, now: float) -> None:
        dead = [a for a, e in self._entries.items() if e.expires <= now]
        for address in dead:
            del self._entries[address]
        self._expired += len(dead)
