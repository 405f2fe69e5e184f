"""Transaction objects: what the table tracks for each client and server transaction."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trioproxy.sip import Address, Request, Response

__all__ = ["ClientTransaction", "Key", "ServerTransaction", "State"]

# A matching key (see keys.py): a tuple of strings and ints, hashable.
Key = tuple[object, ...]


class State(enum.Enum):
    """Transaction states, named after RFC 3261 17 and RFC 6026 (Accepted)."""

    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    ACCEPTED = "Accepted"
    CONFIRMED = "Confirmed"
    TERMINATED = "Terminated"


class _Transaction:
    """Fields shared by both sides. The table owns the state; the TU reads it and sets ``user``."""

    __slots__ = ("_timers", "created", "interval", "invite", "key", "reliable", "request", "state", "user")

    def __init__(self, key: Key, request: Request, state: State, reliable: bool, now: float, user: object):
        self.key = key
        self.request = request
        self.state = state
        self.reliable = reliable
        self.created = now
        # An opaque slot for the TU (the proxy keeps its branch or response context here).
        self.user = user
        self.invite = request.method == "INVITE"
        # Current interval of the running retransmission timer (A, E or G).
        self.interval = 0.0
        # Running timers: name -> (heap sequence number, deadline); see table.py (lazy deletion).
        self._timers: dict[str, tuple[int, float]] = {}

    @property
    def terminated(self) -> bool:
        """True once the transaction left the table."""
        return self.state is State.TERMINATED

    def deadline(self, name: str) -> float | None:
        """When timer ``name`` fires, or None when it is not running."""
        entry = self._timers.get(name)
        return None if entry is None else entry[1]


class ClientTransaction(_Transaction):
    """A client transaction (17.1): ``request`` sent to ``dest``; ``ack`` is the ACK built for a non-2xx."""

    __slots__ = ("ack", "dest")

    def __init__(self, key: Key, request: Request, dest: Address, now: float, user: object = None):
        state = State.CALLING if request.method == "INVITE" else State.TRYING
        super().__init__(key, request, state, dest.reliable, now, user)
        self.dest = dest
        self.ack: Request | None = None

    def __repr__(self) -> str:
        return f"<ClientTransaction {self.request.method} {self.key[0]!s} {self.state.value} to {self.dest}>"


class ServerTransaction(_Transaction):
    """A server transaction (17.2) for ``request`` received on ``flow``; ``last_response`` as sent."""

    __slots__ = ("flow", "last_response")

    def __init__(self, key: Key, request: Request, flow: object, now: float):
        state = State.PROCEEDING if request.method == "INVITE" else State.TRYING
        super().__init__(key, request, state, bool(getattr(flow, "reliable", False)), now, None)
        self.flow = flow
        self.last_response: Response | None = None

    def __repr__(self) -> str:
        return f"<ServerTransaction {self.request.method} {self.key!r} {self.state.value}>"
