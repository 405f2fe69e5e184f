"""Overload detection without I/O: the proxy's own lag in, a shedding level and per-request verdicts out.

Theory of operation
-------------------
The proxy feeds ``sample(lag, now)`` with how late it is: the event loop's delay (a probe task that sleeps a
short interval and measures how much later than asked it woke) and how long the first datagram of the last
batch read from a UDP socket waited in the kernel's queue. From the samples the detector keeps a *shedding
level* between 0 (admit every new request) and 1 (refuse every new request), a proportional-integral
controller that holds the lag near ``lag_high``:

- the integral part grows by ``rise`` per second for each second of lag above ``lag_high`` (and shrinks
  alike below it), once the lag stayed at or above ``lag_high`` for ``onset`` consecutive samples; at or
  below ``lag_low`` (the load is gone) it shrinks, and at or above ``lag_high`` it grows, by at least ``fall``
  per second;
- the level is the integral plus ``proportional`` times the lag's distance from ``lag_high``: a queue that
  grows raises it at once, a queue that drains lowers it at once, which damps the swing that an integral
  alone would keep (all, then nothing, then all).

Hysteresis: a single late sample (a collection pause, a script compile) starts nothing, a queue that stays
late does. With a load twice the capacity the level settles near one half and the queue's delay near
``lag_high``, well under SIP's T1 (0.5 s) so that the calls admitted are not retransmitted; when the load
falls the level goes back to 0 by itself. ``shed()`` answers for one new request: with level ``p`` it
refuses ``p`` of them, evenly spread (a credit counter, no randomness). Time is an argument everywhere: the
detector runs on virtual time in tests.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["OverloadConfig", "OverloadDetector", "OverloadStats"]


@dataclass(frozen=True, slots=True)
class OverloadConfig:
    lag_high: float = 0.1  # seconds of lag the controller holds the proxy at (at or above: overloaded)
    lag_low: float = 0.03  # seconds of lag at or below which the level falls at least ``fall`` per second
    onset: int = 3  # consecutive samples at or above lag_high before shedding starts
    rise: float = 8.0  # integral gain: level per second, per second of lag above (below) lag_high
    proportional: float = 4.0  # level per second of lag above (below) lag_high, added at once
    fall: float = 1.0  # level per second the integral changes at least: up at or above lag_high, down at or below lag_low
    max_gap: float = 0.5  # a longer gap between two samples counts as this much (one late sample is bounded)

    def __post_init__(self) -> None:
        if self.lag_high < self.lag_low or self.lag_low < 0:
            raise ValueError("need 0 <= lag_low <= lag_high")
        if self.onset < 1 or self.rise <= 0 or self.fall <= 0 or self.max_gap <= 0 or self.proportional < 0:
            raise ValueError("onset, rise, fall and max_gap must be positive, proportional not negative")


@dataclass(slots=True)
class OverloadStats:
    shed: int = 0  # new requests refused
    absorbed: int = 0  # retransmissions of refused requests and ACKs of their 503s, absorbed at the ingress
    episodes: int = 0  # times the level left 0
    samples: int = 0
    peak_lag: float = 0.0  # seconds, since start


class OverloadDetector:
    """The shedding level from lag samples, with hysteresis; ``shed`` decides for each new request."""

    def __init__(self, config: OverloadConfig | None = None) -> None:
        self.config = config or OverloadConfig()
        self.level = 0.0
        self.lag = 0.0  # the last sample
        self.now = 0.0  # the time of the last sample
        self.stats = OverloadStats()
        self._high_run = 0
        self._last: float | None = None
        self._credit = 0.0
        self._integral = 0.0

    @property
    def overloaded(self) -> bool:
        return self.level > 0.0

    def sample(self, lag: float, now: float) -> None:
        """One measurement of how late the proxy is (seconds) at time ``now``."""
        cfg = self.config
        lag = max(lag, 0.0)
        dt = 0.0 if self._last is None else min(max(now - self._last, 0.0), cfg.max_gap)
        self._last = now
        self.now = now
        self.lag = lag
        st = self.stats
        st.samples += 1
        if lag > st.peak_lag:
            st.peak_lag = lag
        error = lag - cfg.lag_high
        if error >= 0.0:
            self._high_run += 1
            if self._high_run < cfg.onset and self.level == 0.0:
                return  # one late sample starts nothing
        else:
            self._high_run = 0
            if self.level == 0.0 and self._integral == 0.0:
                return
        step = cfg.rise * error * dt
        if error >= 0.0:
            step = max(step, cfg.fall * dt)
        elif lag <= cfg.lag_low:
            step = min(step, -cfg.fall * dt)
        integral = min(1.0, max(0.0, self._integral + step))
        self._integral = integral
        level = min(1.0, max(0.0, integral + cfg.proportional * error))
        if level > 0.0 and self.level == 0.0:
            st.episodes += 1
        elif level == 0.0:
            self._credit = 0.0
        self.level = level

    def shed(self) -> bool:
        """Whether to refuse one new request now (``level`` of them, evenly spread)."""
        level = self.level
        if level <= 0.0:
            return False
        self._credit += level
        if self._credit >= 1.0:
            self._credit -= 1.0
            self.stats.shed += 1
            return True
        return False
