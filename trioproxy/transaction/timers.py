"""Timer values (RFC 3261 17 and Table 4, RFC 6026) as pure functions of T1, T2, T4 and reliability."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RETRANSMIT_TIMERS", "TIMER_NAMES", "Timers"]

# Every timer the state machines use. timer_cancel is the RFC 3261 9.1 rule ("if there is no final
# response for the original request in 64*T1 seconds [after sending CANCEL] ... destroy the client
# transaction"); timer_guard ends a non-INVITE server transaction the TU never answered (RFC 4320 4.2:
# no 408 is sent, and after 64*T1 the client's Timer F has fired, so no answer can be useful).
TIMER_NAMES = (
    "timer_a", "timer_b", "timer_d", "timer_e", "timer_f", "timer_g", "timer_h", "timer_i", "timer_j",
    "timer_k", "timer_l", "timer_m", "timer_cancel", "timer_guard",
)  # fmt: skip

# Retransmission timers run only over unreliable transports (17.1.1.2, 17.1.2.2, 17.2.1).
RETRANSMIT_TIMERS = frozenset({"timer_a", "timer_e", "timer_g"})


@dataclass(frozen=True, slots=True)
class Timers:
    """Transaction timer configuration in seconds (RFC 3261 Table 4 defaults).

    ``timer_c`` belongs to the proxy core (16.6 step 11) and is only carried here. ``timer_d`` is the
    Completed wait of an INVITE client transaction over an unreliable transport (used as
    ``max(timer_d, 64*T1)``, so that it outlasts the server's retransmissions of the final response).
    """

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    timer_c: float = 180.0
    timer_d: float = 32.0

    def __post_init__(self) -> None:
        if not (self.t1 > 0 and self.t2 >= self.t1 and self.t4 > 0):
            raise ValueError("timers need 0 < T1 <= T2 and T4 > 0")
        if self.timer_c <= 0 or self.timer_d < 0:
            raise ValueError("timer_c must be positive and timer_d not negative")

    def initial(self, name: str, reliable: bool) -> float:
        """The first duration of timer ``name``; 0 means "fire at once" (Table 4, RFC 6026 Table 1)."""
        t1 = self.t1
        if name in ("timer_a", "timer_e", "timer_g"):
            return t1
        if name in ("timer_b", "timer_f", "timer_h", "timer_l", "timer_m", "timer_cancel", "timer_guard"):
            return 64 * t1
        if name == "timer_d":
            # At least 32 s (Table 4), and as long as the server's Timer G/H may resend the final.
            return 0.0 if reliable else max(self.timer_d, 64 * t1)
        if name in ("timer_i", "timer_k"):
            return 0.0 if reliable else self.t4
        if name == "timer_j":
            return 0.0 if reliable else 64 * t1
        raise KeyError(name)

    @property
    def e_reaches_t2(self) -> float:
        """Seconds from the first send until a client's Timer E is reset to T2 (RFC 4320 4.1): 3.5 s."""
        at, interval = 0.0, self.t1
        while interval < self.t2:
            at += interval
            interval = min(2 * interval, self.t2)
        return at

    def backoff(self, name: str, interval: float, proceeding: bool = False) -> float:
        """The next interval of retransmission timer ``name`` after one of ``interval`` fired.

        Timer A doubles without a cap (17.1.1.2); Timer E doubles up to T2, and is T2 once a provisional
        response arrived (17.1.2.2); Timer G doubles up to T2 (17.2.1).
        """
        if name == "timer_a":
            return 2 * interval
        if name == "timer_e":
            return self.t2 if proceeding else min(2 * interval, self.t2)
        if name == "timer_g":
            return min(2 * interval, self.t2)
        raise KeyError(name)

    def schedule(self, name: str, until: float, proceeding: bool = False) -> list[float]:
        """Times (from 0) at which retransmission timer ``name`` fires before ``until`` (for tests, docs)."""
        out: list[float] = []
        interval = self.initial(name, False)
        at = interval
        while at < until:
            out.append(at)
            interval = self.backoff(name, interval, proceeding)
            at += interval
        return out
