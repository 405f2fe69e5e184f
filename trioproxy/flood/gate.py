"""The ingress gate: what the transports ask of each received message before they parse it.

``FloodGate.admit(ip, data, now)`` runs on the first bytes of a datagram (or of a framed stream message),
before the parser, the transaction layer and Lua. A source blocked by the pike tracker (through the
automatic check, a script's ``KSR.pike.pike_check_req``, or failed authentications) gets ``DROP`` or
``REJECT`` (answer 503 with Retry-After, ``[pike] action = "503"``); with ``[pike] enabled`` every request
(a message not starting with ``SIP/2.0 ``) is counted and may start a block. Responses are never counted
but are dropped too while their source is blocked.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .pike import PikeTracker
from .shed import IngressShedder

__all__ = ["FloodGate", "Verdict"]

_STATUS_LINE = b"SIP/2.0 "


class Verdict(enum.Enum):
    PASS = 0
    DROP = 1
    REJECT = 2  # answer 503 with Retry-After


@dataclass(eq=False)
class FloodGate:
    """Pike at the ingress: ``enabled`` counts every request; blocks are enforced either way."""

    tracker: PikeTracker
    enabled: bool = False
    action: str = "drop"  # or "503"
    # Overload shedding on raw datagrams (trioproxy.flood.shed), consulted by UDP after the pike verdict.
    shedder: IngressShedder | None = None

    @property
    def retry_after(self) -> int:
        """The Retry-After of a 503 (the block time, in whole seconds)."""
        return max(1, int(self.tracker.config.block_time))

    def admit(self, ip: str, data: bytes | bytearray, now: float) -> Verdict:
        tracker = self.tracker
        if tracker.blocked and ip in tracker.blocked:
            if tracker.is_blocked(ip, now):
                return self._refuse(tracker, ip, data, now)
        if not self.enabled or data.startswith(_STATUS_LINE) or not data.strip(b"\r\n \t\0"):
            return Verdict.PASS
        if tracker.check(ip, now):
            return Verdict.PASS
        return self._refuse(tracker, ip, data, now, counted=True)

    def admit_connection(self, ip: str, now: float) -> bool:
        """A stream connection from ``ip``: refused while it is blocked (accepted with ``action = "503"``, so
        that its requests can be answered); with ``enabled`` each accepted connection counts as a request
        (a connection flood blocks its source)."""
        tracker = self.tracker
        if tracker.blocked and tracker.is_blocked(ip, now):
            if self.action == "503":
                return True  # its requests are answered 503 one by one, on this connection
            tracker.stats.dropped += 1
            return False
        if not self.enabled:
            return True
        return tracker.check(ip, now)

    def _refuse(
        self, tracker: PikeTracker, ip: str, data: bytes | bytearray, now: float, *, counted: bool = False
    ) -> Verdict:
        if not counted and not data.startswith(_STATUS_LINE):
            tracker.check(ip, now)  # a blocked source's request: counted against its block, not its rate
        if self.action == "503" and not data.startswith(_STATUS_LINE) and not data.startswith(b"ACK "):
            tracker.stats.rejected += 1
            return Verdict.REJECT
        tracker.stats.dropped += 1
        return Verdict.DROP
