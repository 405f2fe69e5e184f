"""Overload detection without I/O: the proxy's own lag in, a shedding level and per-request verdicts out.

Theory of operation
-------------------
The proxy feeds ``sample(lag, now)`` with how late it is: the event loop's delay (a probe task that sleeps a
short interval and measures how much later than asked it woke) and the fill of the incoming queue turned into
a lag. From the samples the detector keeps a *shedding level* between 0 (admit every new request) and 1
(refuse every new request):

- while the lag stays at or above ``lag_high`` for ``onset`` consecutive samples, the level rises by
  ``rise`` per second of such samples;
- while the lag is under ``lag_high`` it falls by ``fall`` per second, and four times as fast at or below
  ``lag_low`` (the load is gone: recover quickly).

Hysteresis: a single late sample (a collection pause, a script compile) starts nothing, a queue that stays
late does; the level rises faster than it falls, so it settles where the lag hovers just under ``lag_high``
(the share the proxy cannot carry is refused) instead of flapping between all and nothing.
``shed(now)`` answers for one new request: with level ``p`` it refuses ``p`` of them, evenly spread (a credit
counter, no randomness), so that the admitted share of a load twice the capacity settles near one half.
Time is an argument everywhere: the detector runs on virtual time in tests.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["OverloadConfig", "OverloadDetector", "OverloadStats"]


@dataclass(frozen=True, slots=True)
class OverloadConfig:
    lag_high: float = 0.4  # seconds of lag at or above which the proxy is overloaded
    lag_low: float = 0.1  # seconds of lag at or below which the shedding level falls fast
    onset: int = 3  # consecutive samples at or above lag_high before the level rises
    rise: float = 1.0  # level per second of overloaded samples
    fall: float = 0.25  # level per second of samples under lag_high (4x under lag_low)
    max_gap: float = 0.5  # a longer gap between two samples counts as this much (one late sample is bounded)

    def __post_init__(self) -> None:
        if self.lag_high < self.lag_low or self.lag_low < 0:
            raise ValueError("need 0 <= lag_low <= lag_high")
        if self.onset < 1 or self.rise <= 0 or self.fall <= 0 or self.max_gap <= 0:
            raise ValueError("onset, rise, fall and max_gap must be positive")


@dataclass(slots=True)
class OverloadStats:
    shed: int = 0  # new requests refused
    episodes: int = 0  # times the level left 0
    samples: int = 0
    peak_lag: float = 0.0  # seconds, since start


class OverloadDetector:
    """The shedding level from lag samples, with hysteresis; ``shed`` decides for each new request."""

    def __init__(self, config: OverloadConfig | None = None) -> None:
        self.config = config or OverloadConfig()
        self.level = 0.0
        self.lag = 0.0  # the last sample
        self.stats = OverloadStats()
        self._high_run = 0
        self._last: float | None = None
        self._credit = 0.0

    @property
    def overloaded(self) -> bool:
        return self.level > 0.0

    def sample(self, lag: float, now: float) -> None:
        """One measurement of how late the proxy is (seconds) at time ``now``."""
        cfg = self.config
        lag = max(lag, 0.0)
        dt = 0.0 if self._last is None else min(max(now - self._last, 0.0), cfg.max_gap)
        self._last = now
        self.lag = lag
        st = self.stats
        st.samples += 1
        if lag > st.peak_lag:
            st.peak_lag = lag
        if lag >= cfg.lag_high:
            self._high_run += 1
            if self._high_run >= cfg.onset:
                if self.level == 0.0:
                    st.episodes += 1
                self.level = min(1.0, self.level + cfg.rise * dt)
            return
        self._high_run = 0
        if self.level > 0.0:
            step = cfg.fall * dt * (4.0 if lag <= cfg.lag_low else 1.0)
            self.level = max(0.0, self.level - step)
            if self.level == 0.0:
                self._credit = 0.0

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
