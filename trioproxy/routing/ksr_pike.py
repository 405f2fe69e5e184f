"""``KSR.pike`` and ``KSR.pipelimit``: flood detection per source and named rate-limit pipes for scripts.

``KSR.pike.pike_check_req()`` counts the request against its source IP (Kamailio's pike: 1 not flooding,
-1 flooding; the source is then blocked for ``[pike] block_time`` and its traffic refused at the ingress
gate, before parsing). ``KSR.pike.pike_check_ip(ip)`` does the same for any address. The table is the one
the ingress gate uses (``[pike] enabled`` counts every request there, without a script call).

``KSR.pipelimit.pl_check(pipe)`` counts one request in a pipe (1 admitted, -1 over its limit, -2 no such
pipe); ``pl_check_limit(pipe, algorithm, limit)`` creates the pipe (or sets its limit) first, as
Kamailio's pipelimit does. Pipes count over ``[limits] ratelimit_interval`` seconds. The key is the
script's choice: a method (``"$rm"``), a source (``"reg:" .. KSR.pv.get("$si")``), a user...

The running proxy makes its ``FloodService`` current for its tasks (a context variable, as the auth
service); code that sets none (route tests, ``trioproxy check``) shares one process-wide service.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import trio

from trioproxy.flood import PikeTracker, RateLimiter

from .ksr_core import _Mod
from .pv import get_pv

__all__ = [
    "FloodService",
    "Pike",
    "Pipelimit",
    "current_flood_service",
    "set_flood_service",
    "use_flood_service",
]


def _now() -> float:
    # The transports' clock (trio's), so that script blocks and gate checks agree; outside a run: monotonic.
    try:
        return trio.current_time()
    except RuntimeError:
        return time.monotonic()


@dataclass(eq=False)
class FloodService:
    """The pike tracker and the rate-limit pipes of one proxy."""

    tracker: PikeTracker = field(default_factory=PikeTracker)
    limiter: RateLimiter = field(default_factory=RateLimiter)
    clock: Callable[[], float] = _now
    # ``[pike] enabled``: the ingress gate already counted this request, so a script's check only reads the
    # verdict (counting again would halve the configured rate).
    gate_counts: bool = False


_DEFAULT = FloodService()
_CURRENT: ContextVar[FloodService | None] = ContextVar("trioproxy_flood_service", default=None)


def current_flood_service() -> FloodService:
    """The service of the running proxy (or the process-wide default)."""
    return _CURRENT.get() or _DEFAULT


def set_flood_service(service: FloodService) -> None:
    """Make ``service`` current for this task and the tasks it starts from now on."""
    _CURRENT.set(service)


@contextmanager
def use_flood_service(service: FloodService) -> Iterator[FloodService]:
    """Make ``service`` current for this task and the tasks it starts from now on (route tests)."""
    token = _CURRENT.set(service)
    try:
        yield service
    finally:
        _CURRENT.reset(token)


class Pike(_Mod):
    """``KSR.pike``."""

    def pike_check_req(self) -> int:
        """Count this request against its source IP: 1 fine, -1 flooding (the source is blocked)."""
        src = self._st.msg.source
        if src is None:
            return 1
        return self.pike_check_ip(src.host)

    def pike_check_ip(self, ip: str) -> int:
        """Count one request against ``ip`` (pseudo-variables allowed, ``"$si"``): 1 fine, -1 flooding."""
        text = str(ip)
        if text.startswith("$"):
            text = str(get_pv(self._st, text) or "")
        if not text:
            return -1
        service = current_flood_service()
        if service.gate_counts:
            return -1 if service.tracker.is_blocked(text, service.clock()) else 1
        return 1 if service.tracker.check(text, service.clock()) else -1


class Pipelimit(_Mod):
    """``KSR.pipelimit``."""

    def pl_check(self, pipe: str) -> int:
        """Count one request in ``pipe``: 1 admitted, -1 over the limit, -2 no such pipe."""
        service = current_flood_service()
        found = service.limiter.check(str(pipe), service.clock())
        return -2 if found is None else (1 if found else -1)

    def pl_check_limit(self, pipe: str, algorithm: str, limit: int) -> int:
        """Create ``pipe`` with ``limit`` requests per interval (or set its limit), then ``pl_check`` it.
        ``algorithm`` is accepted for Kamailio compatibility; every pipe drops what exceeds its rate."""
        del algorithm
        service = current_flood_service()
        service.limiter.define(str(pipe), int(limit), service.clock())
        return self.pl_check(pipe)
