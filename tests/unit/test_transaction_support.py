"""Helpers for the transaction tests: message builders, fake flows, and a fake link between two tables.

This module holds no tests; the test_transaction_*.py modules import it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from trioproxy.sip import Address, Request, Response, make_response, parse_message_untrusted
from trioproxy.transaction import (
    Action,
    ClientTransaction,
    RequestReceived,
    SendRequest,
    SendResponse,
    ServerTransaction,
    Timers,
    TransactionTable,
)

UDP_DEST = Address("udp", "192.0.2.20", 5060)
TCP_DEST = Address("tcp", "192.0.2.20", 5060)
BRANCH = "z9hG4bK-test-1"


@dataclass(eq=False)
class FakeFlow:
    """What the transport hands the table: an opaque object with ``reliable``."""

    reliable: bool = False
    name: str = "udp"


UDP = FakeFlow(False, "udp")
TCP = FakeFlow(True, "tcp")


def request(
    method: str = "INVITE",
    branch: str | None = BRANCH,
    *,
    uri: str = "sip:bob@example.com",
    cseq: int = 1,
    cseq_method: str | None = None,
    to_tag: str | None = None,
    from_tag: str = "from-1",
    call_id: str = "call-1@example.com",
    via: str = "192.0.2.10:5060",
    transport: str = "UDP",
) -> Request:
    """A request parsed from wire text, as the transport would deliver it."""
    branch_param = f";branch={branch}" if branch else ""
    to = "<sip:bob@example.com>" + (f";tag={to_tag}" if to_tag else "")
    text = (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} {via}{branch_param}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:alice@example.com>;tag={from_tag}\r\n"
        f"To: {to}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} {cseq_method or method}\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    msg = parse_message_untrusted(text.encode())
    assert isinstance(msg, Request)
    return msg


def response(req: Request, status: int, to_tag: str | None = "to-1") -> Response:
    """A response to ``req`` as it comes back over the wire."""
    return wire(make_response(req, status, to_tag=to_tag))


def wire(msg: Request | Response) -> Request | Response:
    """Serialize and parse again: what the other side of a link receives."""
    return parse_message_untrusted(msg.to_bytes())


def sends(actions: Iterable[Action]) -> list[Action]:
    """Only the Send* actions."""
    return [a for a in actions if isinstance(a, SendRequest | SendResponse)]


def on_wire(actions: Iterable[Action]) -> list[tuple[object, ...]]:
    """Actions with every Send* as (kind, bytes sent, destination or flow, transaction): a lingering
    transaction resends from the bytes it kept, so a retransmission is the same on the wire, not the same
    object."""
    out: list[tuple[object, ...]] = []
    for a in actions:
        if isinstance(a, SendRequest):
            out.append(("SendRequest", a.msg.to_bytes(), a.dest, a.txn))
        elif isinstance(a, SendResponse):
            out.append(("SendResponse", a.msg.to_bytes(), a.flow, a.txn))
        else:
            out.append((a,))
    return out


def kinds(actions: Iterable[Action]) -> list[str]:
    """Action class names, for compact assertions."""
    return [type(a).__name__ for a in actions]


def first_line(msg: Request | Response) -> str:
    """``INVITE`` / ``ACK`` for requests, the status as text for responses."""
    return msg.method if isinstance(msg, Request) else str(msg.status)


@dataclass
class Link:
    """A client table ``a`` and a server table ``b`` joined by a fake network.

    Every Send* action is serialized, optionally dropped (``drop`` sees the message and returns True to
    lose it), parsed again and fed to the other table at the same virtual time. ``wire_log`` records
    ``(now, "a->b" | "b->a", first line, dropped)``; every other action lands in ``events`` with its
    time and side; ``uas``, when set, answers each RequestReceived at ``b`` at once.
    """

    reliable: bool = False
    timers: Timers = field(default_factory=Timers)
    drop: Callable[[Request | Response], bool] = lambda msg: False
    # A UAS that answers every new request at once (None: the test answers by hand).
    uas: Callable[[Request], Response | None] | None = None
    a: TransactionTable = field(init=False)
    b: TransactionTable = field(init=False)
    wire_log: list[tuple[float, str, str, bool]] = field(default_factory=list)
    events: list[tuple[float, str, Action]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.a = TransactionTable(self.timers)
        self.b = TransactionTable(self.timers)
        self.flow = TCP if self.reliable else UDP
        self.dest = TCP_DEST if self.reliable else UDP_DEST

    def start(self, req: Request, now: float) -> ClientTransaction:
        txn, actions = self.a.start_client(req, self.dest, now)
        self.deliver("a", actions, now)
        return txn

    def respond(self, txn: ServerTransaction, resp: Response, now: float) -> None:
        self.deliver("b", self.b.respond(txn, resp, now), now)

    def deliver(self, side: str, actions: list[Action], now: float) -> None:
        queue = [(side, a) for a in actions]
        while queue:
            side, action = queue.pop(0)
            if isinstance(action, SendRequest):
                lost = self.drop(action.msg)
                self.wire_log.append((now, "a->b", first_line(action.msg), lost))
                if not lost:
                    queue += [("b", x) for x in self.b.receive(wire(action.msg), self.flow, now)]
            elif isinstance(action, SendResponse):
                lost = self.drop(action.msg)
                self.wire_log.append((now, "b->a", first_line(action.msg), lost))
                if not lost:
                    queue += [("a", x) for x in self.a.receive(wire(action.msg), None, now)]
            else:
                self.events.append((now, side, action))
                if side == "b" and self.uas is not None and isinstance(action, RequestReceived):
                    answer = self.uas(action.request)
                    if answer is not None:
                        queue += [("b", x) for x in self.b.respond(action.txn, answer, now)]

    def run_until(self, end: float) -> None:
        """Fire every timer of both tables due up to ``end``, in time order."""
        for _ in range(100_000):
            deadlines = [d for d in (self.a.next_deadline(), self.b.next_deadline()) if d is not None]
            if not deadlines or min(deadlines) > end:
                return
            now = min(deadlines)
            self.deliver("a", self.a.expire(now), now)
            self.deliver("b", self.b.expire(now), now)
        raise AssertionError("timers never settle")

    def sent(self, direction: str, line: str) -> list[float]:
        """Times at which ``line`` was put on the wire in ``direction`` (dropped or not)."""
        return [t for t, d, first, _ in self.wire_log if d == direction and first == line]

    def event_kinds(self, side: str) -> list[str]:
        return [type(a).__name__ for _, s, a in self.events if s == side]

    def server_txn(self) -> ServerTransaction:
        """The server transaction of the last RequestReceived at ``b``."""
        for _, side, action in reversed(self.events):
            txn = getattr(action, "txn", None)
            if side == "b" and isinstance(txn, ServerTransaction):
                return txn
        raise AssertionError("no server transaction")
