"""Per-source request rates with blocking, as Kamailio's pike module does it, without I/O.

Theory of operation. Each source IP has a sliding-window counter over ``sampling_time_unit`` seconds: the
count of the current window plus the previous window's count weighted by how much of it still overlaps
the last ``sampling_time_unit`` seconds. When that estimate goes past ``reqs_density_per_unit`` the source
is flooding: it is blocked for ``block_time`` seconds (requests of a blocked source are not counted, so
the block lifts on time even while the source keeps sending). Failed digest authentications feed the same
table: ``auth_failures`` of them within ``auth_window`` seconds block a source as well.

Memory is bounded: at most ``max_sources`` sources are tracked, the least recently seen evicted first, and
a source not seen for ``remove_latency`` seconds is forgotten (Kamailio's parameter of the same name).
Time is an input: every method takes ``now`` (seconds, monotonic), so tests run on virtual time.
"""

from __future__ import annotations

import ipaddress
import logging
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["PikeConfig", "PikeStats", "PikeTracker", "Trusted"]

log = logging.getLogger("trioproxy.flood")

_TRUST_CACHE_MAX = 4096


@dataclass(frozen=True, slots=True)
class PikeConfig:
    """The tracker's parameters (Kamailio's names where pike has them); times in seconds."""

    sampling_time_unit: float = 2.0
    reqs_density_per_unit: int = 30
    remove_latency: float = 120.0
    block_time: float = 300.0
    max_sources: int = 10_000
    auth_failures: int = 0  # failed digest attempts within auth_window that block a source (0: off)
    auth_window: float = 60.0


@dataclass(slots=True)
class PikeStats:
    """Counters of the tracker and of the gate that enforces its blocks."""

    blocks: int = 0  # blocks started (one per block, whatever its length)
    auth_blocks: int = 0  # of which started by failed authentications
    dropped: int = 0  # messages of blocked sources dropped
    rejected: int = 0  # requests of blocked sources answered 503
    evicted: int = 0  # sources forgotten to stay within max_sources


@dataclass(slots=True)
class _Source:
    window_start: float
    count: int = 0
    previous: int = 0
    last_seen: float = 0.0
    blocked_until: float = 0.0
    reason: str = ""
    auth_start: float = 0.0
    auth_count: int = 0
    hits_blocked: int = 0


class Trusted:
    """Networks that are never counted or blocked (``[pike] trusted``), with a bounded per-IP cache."""

    def __init__(self, cidrs: Iterable[str] = ()) -> None:
        self.networks = [ipaddress.ip_network(c, strict=False) for c in cidrs]
        self._cache: dict[str, bool] = {}

    def __contains__(self, ip: str) -> bool:
        if not self.networks:
            return False
        found = self._cache.get(ip)
        if found is None:
            try:
                addr = ipaddress.ip_address(ip.strip("[]"))
            except ValueError:
                found = False
            else:
                found = any(addr in net for net in self.networks)
            if len(self._cache) >= _TRUST_CACHE_MAX:
                self._cache.clear()
            self._cache[ip] = found
        return found


@dataclass(eq=False)
class PikeTracker:
    """Request rates and blocks per source IP (see the module docstring)."""

    config: PikeConfig = field(default_factory=PikeConfig)
    trusted: Trusted = field(default_factory=Trusted)
    stats: PikeStats = field(default_factory=PikeStats)

    def __post_init__(self) -> None:
        self._sources: OrderedDict[str, _Source] = OrderedDict()
        # Sources blocked now (a subset of _sources): the ingress gate's fast path is one dict lookup.
        self.blocked: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._sources)

    def _entry(self, ip: str, now: float) -> _Source:
        sources = self._sources
        src = sources.get(ip)
        if src is None or (now - src.last_seen > self.config.remove_latency and src.blocked_until <= now):
            src = _Source(window_start=now, last_seen=now)
            sources[ip] = src
            while len(sources) > self.config.max_sources:
                old_ip, _old = sources.popitem(last=False)
                self.blocked.pop(old_ip, None)
                self.stats.evicted += 1
        else:
            sources.move_to_end(ip)
            src.last_seen = now
        return src

    def is_blocked(self, ip: str, now: float) -> bool:
        """Whether ``ip`` is blocked at ``now`` (a block that ran out is lifted here)."""
        until = self.blocked.get(ip)
        if until is None:
            return False
        if now < until:
            return True
        self._lift(ip)
        return False

    def _lift(self, ip: str) -> None:
        self.blocked.pop(ip, None)
        src = self._sources.get(ip)
        if src is not None:
            log.info("pike: block of %s lifted (%d messages dropped while blocked)", ip, src.hits_blocked)
            src.blocked_until = 0.0
            src.hits_blocked = 0
            src.count = src.previous = 0

    def check(self, ip: str, now: float) -> bool:
        """Count one request from ``ip``; False when it floods (or is blocked). Kamailio's pike_check_ip."""
        if ip in self.trusted:
            return True
        if self.is_blocked(ip, now):
            src = self._sources.get(ip)
            if src is not None:
                src.hits_blocked += 1
                self._sources.move_to_end(ip)
                src.last_seen = now
            return False
        src = self._entry(ip, now)
        unit = self.config.sampling_time_unit
        elapsed = now - src.window_start
        if elapsed >= unit:
            windows = int(elapsed // unit)
            src.previous = src.count if windows == 1 else 0
            src.count = 0
            src.window_start += windows * unit
            elapsed = now - src.window_start
        src.count += 1
        estimate = src.previous * (1.0 - elapsed / unit) + src.count
        if estimate > self.config.reqs_density_per_unit:
            self._block(
                ip,
                src,
                now,
                f"{src.count} requests in {elapsed:.2f} s after {src.previous} in the last window",
            )
            return False
        return True

    def auth_failed(self, ip: str, now: float) -> bool:
        """Count one failed digest authentication from ``ip``; True when this starts a block."""
        limit = self.config.auth_failures
        if limit <= 0 or not ip or ip in self.trusted or self.is_blocked(ip, now):
            return False
        src = self._entry(ip, now)
        if now - src.auth_start >= self.config.auth_window or src.auth_count == 0:
            src.auth_start, src.auth_count = now, 0
        src.auth_count += 1
        if src.auth_count >= limit:
            self.stats.auth_blocks += 1
            self._block(ip, src, now, f"{src.auth_count} failed authentications")
            src.auth_count = 0
            return True
        return False

    def block(
        self, ip: str, now: float, reason: str = "blocked by the script", seconds: float | None = None
    ) -> None:
        """Block ``ip`` from ``now`` (for ``block_time`` unless ``seconds`` is given)."""
        if ip in self.trusted:
            return
        src = self._entry(ip, now)
        if ip in self.blocked and now < self.blocked[ip]:
            return
        self._block(ip, src, now, reason, seconds)

    def unblock(self, ip: str) -> bool:
        """Lift a block at once; whether there was one."""
        if ip not in self.blocked:
            return False
        self._lift(ip)
        return True

    def _block(self, ip: str, src: _Source, now: float, reason: str, seconds: float | None = None) -> None:
        until = now + (self.config.block_time if seconds is None else seconds)
        src.blocked_until = until
        src.reason = reason
        src.hits_blocked = 0
        self.blocked[ip] = until
        self.stats.blocks += 1
        # Once per block: the packets that follow are counted, not logged.
        log.warning("pike: blocking %s for %.0f s: %s", ip, until - now, reason)

    def entries(self, now: float) -> list[dict[str, object]]:
        """The blocked sources now, for the management API (lifts the blocks that ran out)."""
        out: list[dict[str, object]] = []
        for ip in list(self.blocked):
            if not self.is_blocked(ip, now):
                continue
            src = self._sources[ip]
            out.append(
                {
                    "source": ip,
                    "expires_in": round(src.blocked_until - now, 1),
                    "reason": src.reason,
                    "dropped": src.hits_blocked,
                }
            )
        return out
