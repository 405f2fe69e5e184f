"""Transaction objects: what the table tracks for each client and server transaction.

Lingering. Most of a transaction's life is spent after its final response, waiting for retransmissions to
absorb: INVITE server Completed/Confirmed/Accepted, INVITE client Completed/Accepted, non-INVITE
Completed on both sides (Timers D, I, J, K, L, M: up to 32 s). On entering one of those states
(``LINGERING``) the table calls ``linger()``, and the transaction keeps only what the rest of its life
needs:

- its matching key, state, timers, flow (server) or destination (client);
- a server transaction: the last response's bytes, and only where it may still be resent (Completed); the
  To tags an RFC 2543 ACK or CANCEL is matched with, and only for such keys;
- a client transaction: the bytes of the ACK of a non-2xx (INVITE Completed, to resend it), and its
  ``user`` only in Accepted, where a 2xx (a retransmission or another fork's) is still passed up (in
  Completed the table clears it at its next call, once the final response went up).

``request`` and ``last_response`` are None from then on: the parsed messages, their header caches and what
the TU attached to the client transaction are freed as soon as nothing else holds them. A server
transaction keeps its ``user``: the TU may still answer through it (a 2xx of another fork in Accepted), and
clears it when its request ends.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trioproxy.sip import Address, Request, Response

__all__ = ["LINGERING", "ClientTransaction", "Key", "ServerTransaction", "State"]

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


# States after the final response, where a transaction only absorbs retransmissions until a timer ends it.
LINGERING = frozenset({State.COMPLETED, State.CONFIRMED, State.ACCEPTED})


class _Transaction:
    """Fields shared by both sides. The table owns the state; the TU reads it and sets ``user``."""

    __slots__ = ("_timers", "created", "interval", "invite", "key", "reliable", "request", "state", "user")

    def __init__(self, key: Key, request: Request, state: State, reliable: bool, now: float, user: object):
        self.key = key
        # The request, until the transaction lingers (then None: see the module docstring).
        self.request: Request | None = request
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
    def method(self) -> str:
        """The request's method (kept in the key: client ``(branch, method)``, server see keys.py)."""
        key = self.key
        return str(key[4] if key[0] == "3261" else key[1])

    @property
    def terminated(self) -> bool:
        """True once the transaction left the table."""
        return self.state is State.TERMINATED

    def deadline(self, name: str) -> float | None:
        """When timer ``name`` fires, or None when it is not running."""
        entry = self._timers.get(name)
        return None if entry is None else entry[1]


class ClientTransaction(_Transaction):
    """A client transaction (17.1): ``request`` sent to ``dest``; ``ack``: the bytes of the ACK of a non-2xx."""

    __slots__ = ("ack", "dest")

    def __init__(self, key: Key, request: Request, dest: Address, now: float, user: object = None):
        state = State.CALLING if request.method == "INVITE" else State.TRYING
        super().__init__(key, request, state, dest.reliable, now, user)
        self.dest = dest
        self.ack: bytes | None = None

    def linger(self) -> None:
        """Keep only what absorbing retransmissions needs (the table calls it on entering ``LINGERING``).

        ``user`` stays: the final response that caused the change still goes to it; in Completed the table
        clears it at its next call (see ``TransactionTable``).
        """
        self.request = None

    def __repr__(self) -> str:
        return f"<ClientTransaction {self.method} {self.key[0]!s} {self.state.value} to {self.dest}>"


class ServerTransaction(_Transaction):
    """A server transaction (17.2) for ``request`` received on ``flow``.

    ``last_response`` is the last response sent while the transaction is not lingering; ``sent`` is the
    bytes of the last response kept for retransmissions in Completed.
    """

    __slots__ = ("flow", "last_response", "sent", "to_tags")

    def __init__(self, key: Key, request: Request, flow: object, now: float):
        state = State.PROCEEDING if request.method == "INVITE" else State.TRYING
        super().__init__(key, request, state, bool(getattr(flow, "reliable", False)), now, None)
        self.flow = flow
        self.last_response: Response | None = None
        self.sent: bytes | None = None
        # RFC 2543 keys only: (To tag of the request, To tag of the last response), for ACK/CANCEL matching.
        self.to_tags: tuple[str | None, str | None] | None = None

    def request_to_tag(self) -> str | None:
        """The To tag of the request (RFC 2543 matching of a CANCEL, 9.2)."""
        if self.request is not None:
            return self.request.to.tag
        return self.to_tags[0] if self.to_tags is not None else None

    def sent_to_tag(self) -> str | None:
        """The To tag an RFC 2543 ACK must carry: the one of the response sent, else the request's (17.2.3)."""
        if self.last_response is not None:
            return self.last_response.to.tag
        if self.to_tags is not None:
            return self.to_tags[1]
        return self.request_to_tag()

    def linger(self, response: Response | None) -> None:
        """Keep only what absorbing retransmissions needs (the table calls it on entering ``LINGERING``).

        ``response`` is the response being sent with the state change (None on an ACK or a timer).
        """
        if self.key[0] == "2543":
            if response is not None:
                self.to_tags = (self.request_to_tag(), response.to.tag)
            elif self.to_tags is None:
                self.to_tags = (self.request_to_tag(), self.sent_to_tag())
        if response is not None and self.state is State.COMPLETED:
            self.sent = response.to_bytes()  # the transport reuses these bytes: no second serialization
        elif self.state is not State.COMPLETED:
            self.sent = None  # Confirmed and Accepted never resend
        self.request = None
        self.last_response = None

    def __repr__(self) -> str:
        return f"<ServerTransaction {self.method} {self.key!r} {self.state.value}>"
