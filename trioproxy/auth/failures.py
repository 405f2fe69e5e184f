"""Counts of failed authentication attempts, per source address and per user, in bounded memory.

Only the most recently failing ``capacity`` sources (and users) keep their own counter; the totals by
reason are exact. The management API exports them as Prometheus counters. ``listeners`` are called with the
source of each failure (flood protection blocks a source after ``[pike] auth_failures`` of them).
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable

__all__ = ["FailureCounts"]


class FailureCounts:
    """Failed attempts by reason, by source IP and by ``user@realm``."""

    def __init__(self, capacity: int = 1000) -> None:
        self.capacity = capacity
        self.by_reason: Counter[str] = Counter()
        self.by_source: OrderedDict[str, int] = OrderedDict()
        self.by_user: OrderedDict[str, int] = OrderedDict()
        self.listeners: list[Callable[[str | None], object]] = []

    def _bump(self, table: OrderedDict[str, int], key: str) -> None:
        table[key] = table.pop(key, 0) + 1
        while len(table) > self.capacity:
            table.popitem(last=False)

    def record(self, reason: str, source: str | None, user: str | None) -> None:
        """One failed attempt (``reason``: invalid_password, unknown_user, nonce_reused, ...)."""
        self.by_reason[reason] += 1
        if source:
            self._bump(self.by_source, source)
        if user:
            self._bump(self.by_user, user)
        for listener in self.listeners:
            listener(source)

    @property
    def total(self) -> int:
        """All failed attempts counted."""
        return sum(self.by_reason.values())
