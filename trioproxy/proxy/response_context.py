"""The response context of one proxied request (RFC 3261 16.7), as a pure object.

Theory of operation: every branch of a request reports its responses here. The context answers one question
per response: what must the proxy do with it now?

- ``FORWARD``: send it upstream at once (a provisional other than 100 before any final, RFC 3261 16.7 step 5;
  every 2xx to an INVITE, even after another final went up, step 5 and RFC 6026).
- ``FORWARD_AND_CANCEL``: forward, then cancel every other pending branch (the first 2xx, step 10).
- ``STORE``: keep it as a candidate for the best response (3xx-5xx, step 6 "store").
- ``STORE_AND_CANCEL``: a 6xx: keep it, cancel pending branches, create no new branch (steps 5 and 6).
- ``DROP``: nothing to do (a 100, or a late non-2xx after a final was sent).

When no branch is pending and no new branch will be made, :meth:`best` chooses the final response to send
(16.7 step 6): a 6xx if any, else the lowest class, 4xx preferring 401, 407, 415, 420, 484; a 503 is turned
into a 500 (16.7 step 6: the 503 concerns the hop, not the target); no response at all gives 408. A chosen
401/407 carries every WWW-Authenticate and Proxy-Authenticate of all 401/407 responses (16.7 step 7).
After the caller's CANCEL (16.10) the answer is the 487 of a cancelled branch (a 6xx still wins): a 486 of an
earlier serial stage is not what a caller who gave up expects; with no 487 stored the proxy makes one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from trioproxy.sip import Response

__all__ = ["Disposition", "ResponseContext"]

# RFC 3261 16.7 step 6: within 4xx these are preferred, since they ask the caller to do something.
_PREFERRED_4XX = (401, 407, 415, 420, 484)


class Disposition(enum.Enum):
    FORWARD = "forward"
    FORWARD_AND_CANCEL = "forward_and_cancel"
    STORE = "store"
    STORE_AND_CANCEL = "store_and_cancel"
    DROP = "drop"


@dataclass(slots=True)
class ResponseContext:
    """What a request's branches answered, and what to do with each new answer."""

    is_invite: bool
    final_sent: bool = False
    got_6xx: bool = False
    got_2xx: bool = False
    finals: list[Response] = field(default_factory=list)

    def classify(self, response: Response) -> Disposition:
        """Decide what to do with one response from one branch (16.7 steps 4-5, 10)."""
        status = response.status
        if status < 200:
            if status == 100 or self.final_sent:
                return Disposition.DROP
            return Disposition.FORWARD
        if status < 300:
            if self.final_sent and not self.is_invite:
                return Disposition.DROP
            first = not self.got_2xx
            self.got_2xx = True
            self.final_sent = True
            return Disposition.FORWARD_AND_CANCEL if first else Disposition.FORWARD
        if self.final_sent:
            return Disposition.DROP
        self.finals.append(response)
        if status >= 600:
            first = not self.got_6xx
            self.got_6xx = True
            return Disposition.STORE_AND_CANCEL if first else Disposition.STORE
        return Disposition.STORE

    @property
    def may_branch(self) -> bool:
        """Whether new branches may still be created (not after a 2xx, a 6xx, or a final sent)."""
        return not (self.final_sent or self.got_6xx)

    def best(self, *, canceled: bool = False) -> Response | None:
        """The best stored final response, or None when nothing answered (the proxy then makes a 408).

        ``canceled``: the caller sent CANCEL; the best is a 6xx or a 487, else None (the proxy makes a 487).
        """
        if not self.finals:
            return None
        sixes = [r for r in self.finals if r.status >= 600]
        if sixes:
            return sixes[0]
        if canceled:
            return next((r for r in self.finals if r.status == 487), None)
        lowest = min(r.status // 100 for r in self.finals)
        candidates = [r for r in self.finals if r.status // 100 == lowest]
        if lowest == 4:
            for preferred in _PREFERRED_4XX:
                for r in candidates:
                    if r.status == preferred:
                        return r
        return candidates[0]

    def challenges(self) -> list[tuple[str, str]]:
        """Every WWW-Authenticate / Proxy-Authenticate value of all stored 401/407 responses (16.7 step 7)."""
        out: list[tuple[str, str]] = []
        for r in self.finals:
            if r.status in (401, 407):
                for name in ("WWW-Authenticate", "Proxy-Authenticate"):
                    for value in r.get_all(name):
                        out.append((name, value))
        return out
