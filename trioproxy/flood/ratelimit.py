"""Named rate-limit pipes (Kamailio's pipelimit ``pl_check``), without I/O.

A pipe admits ``limit`` requests per ``interval`` seconds, estimated over a sliding window (the current
window's count plus the previous window's, weighted by its overlap with the last ``interval`` seconds).
Over the limit a request is refused (the script answers 503, as Kamailio's examples do). A script creates
pipes as it names them (``pl_check(name, "TAILDROP", limit)``); at most ``max_pipes`` pipes exist, the
least recently used dropped first. Time is an input (``now``, seconds).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["RateLimiter"]


@dataclass(slots=True)
class _Pipe:
    limit: int
    window_start: float
    count: int = 0
    previous: int = 0
    refused: int = 0


class RateLimiter:
    """Pipes by name; ``check`` counts one request and says whether it fits."""

    def __init__(self, interval: float = 10.0, max_pipes: int = 10_000) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.interval = interval
        self.max_pipes = max_pipes
        self._pipes: OrderedDict[str, _Pipe] = OrderedDict()
        self.refused = 0

    def __len__(self) -> int:
        return len(self._pipes)

    def define(self, name: str, limit: int, now: float) -> None:
        """Create pipe ``name`` (or change its limit)."""
        pipe = self._pipes.get(name)
        if pipe is None:
            self._pipes[name] = _Pipe(limit, now)
            while len(self._pipes) > self.max_pipes:
                self._pipes.popitem(last=False)
        else:
            pipe.limit = limit

    def has(self, name: str) -> bool:
        return name in self._pipes

    def check(self, name: str, now: float) -> bool | None:
        """Count one request in pipe ``name``: True admitted, False over the limit, None no such pipe."""
        pipe = self._pipes.get(name)
        if pipe is None:
            return None
        self._pipes.move_to_end(name)
        unit = self.interval
        elapsed = now - pipe.window_start
        if elapsed >= unit:
            windows = int(elapsed // unit)
            pipe.previous = pipe.count if windows == 1 else 0
            pipe.count = 0
            pipe.window_start += windows * unit
            elapsed = now - pipe.window_start
        estimate = pipe.previous * (1.0 - elapsed / unit) + pipe.count + 1
        if estimate > pipe.limit:
            pipe.refused += 1
            self.refused += 1
            return False
        pipe.count += 1
        return True

    def snapshot(self) -> dict[str, dict[str, int]]:
        """Every pipe's limit, count in the current window and refusals."""
        return {n: {"limit": p.limit, "count": p.count, "refused": p.refused} for n, p in self._pipes.items()}
