"""The transaction table: matches messages to transactions, runs the state machines, keeps the timers."""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING, TypeVar

from trioproxy.sip import Request, Response, SIPError, make_ack, make_response, parse_message_untrusted

from .actions import (
    AckReceived,
    Action,
    CancelReceived,
    RequestReceived,
    ResponseReceived,
    SendRequest,
    SendResponse,
    StrayResponse,
    Terminated,
    Timeout,
    TransportFailed,
)
from .fsm import INVITE_CLIENT, INVITE_SERVER, NON_INVITE_CLIENT, NON_INVITE_SERVER, Machine, Step
from .keys import MAGIC_COOKIE, client_key, response_key, server_key
from .timers import RETRANSMIT_TIMERS, Timers
from .txn import LINGERING, ClientTransaction, ServerTransaction, State

if TYPE_CHECKING:
    from trioproxy.sip import Address

    from .txn import Key

__all__ = ["TransactionTable"]

Transaction = ClientTransaction | ServerTransaction
_M = TypeVar("_M", Request, Response)
_HeapEntry = tuple[float, int, str, Transaction]

# Rebuild the timer heap when this many cancelled entries wait in it and they are over half of it.
_COMPACT_MIN = 1024

_COUNTERS = (
    "client_invite", "client_non_invite", "server_invite", "server_non_invite", "clients_created",
    "servers_created", "retransmissions_sent", "retransmissions_received", "absorbed", "timeouts",
    "ack_timeouts", "transport_errors", "stray_responses", "acks_passed_up", "terminated", "suppressed",
)  # fmt: skip


class TransactionTable:
    """Every live transaction of one process, keyed for matching (17.1.3, 17.2.3), with one timer heap.

    Nothing here does I/O or reads a clock: the caller passes ``now`` (seconds, any monotonic origin),
    carries out the returned actions in order, and calls ``expire(now)`` at ``next_deadline()``.
    Timers use a heap with lazy deletion: arming, cancelling and firing are O(log n).

    Lingering transactions keep only what absorbing retransmissions needs (txn.py). A client transaction
    entering Completed passes its final response up in a ``ResponseReceived`` whose owner the caller finds
    in ``txn.user``: the table clears that slot at its next call, so carry out the actions a call returns
    before calling it again.
    """

    def __init__(self, timers: Timers | None = None) -> None:
        self.timers = timers if timers is not None else Timers()
        self._clients: dict[Key, ClientTransaction] = {}
        self._servers: dict[Key, ServerTransaction] = {}
        self._heap: list[_HeapEntry] = []
        self._seq = 0
        self._stale = 0  # heap entries whose timer was cancelled, replaced or whose transaction ended
        self._stats = dict.fromkeys(_COUNTERS, 0)
        # Client transactions that entered Completed: their user is cleared at the next call.
        self._unlink: list[ClientTransaction] = []

    def __len__(self) -> int:
        return len(self._clients) + len(self._servers)

    # -- inputs from the network -------------------------------------------------------------------

    def receive(self, msg: Request | Response, flow: object, now: float) -> list[Action]:
        """Feed a received message. Raises ``SIPError`` (400) for a request without Via/CSeq/From/Call-ID."""
        if self._unlink:
            self._release_users()
        out: list[Action] = []
        if isinstance(msg, Response):
            self._receive_response(msg, now, out)
        else:
            self._receive_request(msg, flow, now, out)
        return out

    def _receive_response(self, response: Response, now: float, out: list[Action]) -> None:
        try:
            key = response_key(response)
        except SIPError:
            key = None
        txn = self._clients.get(key) if key is not None else None
        status = response.status
        if txn is None or not 100 <= status <= 699:
            # RFC 6026 7.3 / 8.4: a response matching no transaction is not forwarded by a stateful proxy.
            self._stats["stray_responses"] += 1
            out.append(StrayResponse(response))
            return
        if status < 200:
            event = "1xx"
        elif not txn.invite:
            event = "200-699"
        else:
            event = "2xx" if status < 300 else "300-699"
        self._input(txn, event, now, response, None, out)

    def _receive_request(self, request: Request, flow: object, now: float, out: list[Action]) -> None:
        key = server_key(request)
        txn = self._servers.get(key)
        method = request.method
        if method == "ACK":
            # 17.2.3: an ACK matches the INVITE server transaction; RFC 2543 fallback also compares the To
            # tag with the one of the response sent. An ACK for a 2xx carries a new branch (RFC 3261
            # 13.2.2.4), so it matches nothing and the TU routes it like any end-to-end request.
            if txn is not None and (key[0] == "3261" or request.to.tag == txn.sent_to_tag()):
                self._input(txn, "ack", now, request, flow, out)
            else:
                self._stats["acks_passed_up"] += 1
                out.append(AckReceived(request, flow))
            return
        if txn is not None:
            self._stats["retransmissions_received"] += 1
            self._input(txn, "request", now, request, flow, out)
            return
        txn = ServerTransaction(key, request, flow, now)
        self._servers[key] = txn
        self._stats["servers_created"] += 1
        self._stats["server_invite" if txn.invite else "server_non_invite"] += 1
        if method == "CANCEL":
            # 9.2: the CANCEL matches the INVITE server transaction with the same key (method INVITE).
            target = self._servers.get(server_key(request, "INVITE"))
            if target is not None and target.key[0] == "2543" and request.to.tag != target.request_to_tag():
                target = None
            out.append(CancelReceived(request, flow, target, txn))
        else:
            out.append(RequestReceived(txn, request))
        self._apply(txn, _START_PLANS[(False, txn.invite)], now, None, None, out)

    # -- inputs from the TU ------------------------------------------------------------------------

    def start_client(
        self, request: Request, dest: Address, now: float, *, user: object = None
    ) -> tuple[ClientTransaction, list[Action]]:
        """Start a client transaction sending ``request`` (its top Via carries a fresh branch) to ``dest``.

        A CANCEL whose branch is the one of a pending INVITE client transaction also arms that
        transaction's 64*T1 limit (9.1). Raises ``ValueError`` for an ACK (not a transaction,
        17.1.1.3), a branch without the magic cookie, or a branch and method already in use.
        """
        if self._unlink:
            self._release_users()
        method = request.method
        if method == "ACK":
            raise ValueError("an ACK is not a transaction: send it without one")
        branch = request.top_via.branch
        if not branch or not branch.startswith(MAGIC_COOKIE):
            raise ValueError("a client transaction needs a top Via branch starting with z9hG4bK")
        key = client_key(branch, method)
        if key in self._clients:
            raise ValueError(f"client transaction {key!r} already exists")
        txn = ClientTransaction(key, request, dest, now, user)
        self._clients[key] = txn
        self._stats["clients_created"] += 1
        self._stats["client_invite" if txn.invite else "client_non_invite"] += 1
        out: list[Action] = [SendRequest(request, dest, txn)]
        self._apply(txn, _START_PLANS[(True, txn.invite)], now, None, None, out)
        if method == "CANCEL":
            invite = self._clients.get(client_key(branch, "INVITE"))
            if invite is not None:
                self._input(invite, "cancel_sent", now, None, None, out)
        return txn, out

    def respond(self, server_txn: ServerTransaction, response: Response, now: float) -> list[Action]:
        """Send ``response`` through ``server_txn``; ignored (no actions) when the state does not allow it.

        For a non-INVITE, RFC 4320 responses are suppressed too: a 408, a provisional other than 100,
        and a 100 over an unreliable transport before the client's Timer E reached T2.
        """
        if self._unlink:
            self._release_users()
        out: list[Action] = []
        if self._servers.get(server_txn.key) is not server_txn:
            return out
        status = response.status
        if not 100 <= status <= 699:
            raise ValueError(f"bad status {status}")
        if not server_txn.invite and self._rfc4320_forbids(server_txn, status, now):
            self._stats["suppressed"] += 1
            return out
        if status < 200:
            event = "tu_1xx"
        elif not server_txn.invite:
            event = "tu_200-699"
        else:
            event = "tu_2xx" if status < 300 else "tu_300-699"
        self._input(server_txn, event, now, response, None, out)
        return out

    def _rfc4320_forbids(self, txn: ServerTransaction, status: int, now: float) -> bool:
        # RFC 4320 4.2: "A transaction-stateful SIP element MUST NOT send a response with Status-Code of
        # 408 to a non-INVITE request"; 4.1: no provisional other than 100, and no 100 over an unreliable
        # transport before "the amount of time it takes a client transaction's Timer E to be reset to T2".
        if status == 408:
            return True
        if 100 < status < 200:
            return True
        return status == 100 and not txn.reliable and now - txn.created < self.timers.e_reaches_t2

    def transport_error(self, txn: Transaction, now: float) -> list[Action]:
        """The transport failed to send for ``txn`` (17.1.4, 17.2.4): it terminates.

        A client transaction still waiting for a final response reports ``TransportFailed`` first.
        """
        if self._unlink:
            self._release_users()
        out: list[Action] = []
        if self._owns(txn):
            self._stats["transport_errors"] += 1
            self._input(txn, "transport_err", now, None, None, out)
        return out

    def terminate(self, txn: Transaction, now: float) -> list[Action]:
        """Remove ``txn`` at once, whatever its state (the TU abandons it); returns ``[Terminated(txn)]``."""
        if self._unlink:
            self._release_users()
        out: list[Action] = []
        if self._owns(txn):
            txn.state = State.TERMINATED
            self._remove(txn, out)
        return out

    # -- time --------------------------------------------------------------------------------------

    def expire(self, now: float) -> list[Action]:
        """Fire every timer due at or before ``now``, in deadline order."""
        if self._unlink:
            self._release_users()
        out: list[Action] = []
        # self._heap is re-read on every turn: arming a timer may compact it into a new list.
        while self._heap and self._heap[0][0] <= now:
            entry = heapq.heappop(self._heap)
            if not _valid(entry):
                self._stale -= 1
                continue
            _, _, name, txn = entry
            del txn._timers[name]
            self._input(txn, name, now, None, None, out)
        return out

    def next_deadline(self) -> float | None:
        """The earliest time a timer is due, or None when none runs."""
        heap = self._heap
        while heap:
            if _valid(heap[0]):
                return heap[0][0]
            heapq.heappop(heap)
            self._stale -= 1
        return None

    def statistics(self) -> dict[str, int]:
        """Counters: live transactions by side and kind, totals of retransmissions, timeouts, strays..."""
        stats = dict(self._stats)
        stats["timers_pending"] = len(self._heap) - self._stale
        return stats

    # -- lookups -----------------------------------------------------------------------------------

    def client(self, branch: str, method: str) -> ClientTransaction | None:
        """The live client transaction for ``branch`` and ``method``, if any."""
        return self._clients.get(client_key(branch, method))

    def server(self, request: Request) -> ServerTransaction | None:
        """The live server transaction ``request`` belongs to (an ACK finds its INVITE), if any."""
        return self._servers.get(server_key(request))

    # -- the interpreter of fsm.py -----------------------------------------------------------------

    def _release_users(self) -> None:
        for txn in self._unlink:
            txn.user = None
        self._unlink.clear()

    def _owns(self, txn: Transaction) -> bool:
        if isinstance(txn, ClientTransaction):
            return self._clients.get(txn.key) is txn
        return self._servers.get(txn.key) is txn

    def _input(
        self, txn: Transaction, event: str, now: float, msg: Request | Response | None, flow: object,
        out: list[Action],
    ) -> None:  # fmt: skip
        plan = _PLANS[(type(txn) is ClientTransaction, txn.invite)].get((txn.state, event))
        if plan is None:
            self._stats["absorbed"] += 1
            return
        self._apply(txn, plan, now, msg, flow, out)

    def _apply(
        self, txn: Transaction, plan: _Plan, now: float, msg: Request | Response | None, flow: object,
        out: list[Action],
    ) -> None:  # fmt: skip
        state, allowed, ops = plan
        timers = txn._timers
        entered = state is not txn.state
        if entered:
            txn.state = state
            for name in [n for n in timers if n not in allowed]:
                del timers[name]
                self._stale += 1
        immediate: list[str] = []
        for op, arg in ops:
            if op == _START:
                if self._start(txn, arg, now):
                    immediate.append(arg)
            elif op == _BACKOFF:
                txn.interval = self.timers.backoff(arg, txn.interval, state is State.PROCEEDING)
                self._arm(txn, arg, now + txn.interval)
            else:
                self._effect(txn, arg, msg, flow, out)
        if state is State.TERMINATED:
            self._remove(txn, out)
            return
        if entered and state in LINGERING:
            # From here on the transaction only absorbs retransmissions: drop what that does not need.
            if isinstance(txn, ClientTransaction):
                txn.linger()
                if state is not State.ACCEPTED and txn.user is not None:
                    self._unlink.append(txn)  # Completed passes nothing up after this final response
            else:
                txn.linger(None)
        # Zero-length timers (D, I, J, K over reliable transports) fire at once (Table 4: "0s").
        for name in immediate:
            self._input(txn, name, now, None, None, out)

    def _effect(
        self, txn: Transaction, effect: str, msg: Request | Response | None, flow: object, out: list[Action]
    ) -> None:
        stats = self._stats
        if isinstance(txn, ClientTransaction):
            if effect == "pass_up":
                assert isinstance(msg, Response)
                out.append(ResponseReceived(txn, msg))
            elif effect == "retransmit":
                assert txn.request is not None  # retransmitting states do not linger
                stats["retransmissions_sent"] += 1
                out.append(SendRequest(txn.request, txn.dest, txn))
            elif effect == "send_ack":
                # 17.1.1.3: the ACK for a non-2xx goes to the same place, on the same branch.
                assert isinstance(msg, Response) and txn.request is not None
                ack = make_ack(txn.request, msg)
                txn.ack = ack.to_bytes()  # kept as bytes (Completed lingers); the transport reuses them
                out.append(SendRequest(ack, txn.dest, txn))
            elif effect == "resend_ack":
                if txn.ack is not None:
                    stats["retransmissions_sent"] += 1
                    out.append(SendRequest(_parse(txn.ack, Request), txn.dest, txn))
            elif effect == "timeout":
                stats["timeouts"] += 1
                out.append(Timeout(txn))
            elif effect == "transport_failed":
                out.append(TransportFailed(txn))
            else:
                raise AssertionError(effect)
            return
        if effect == "send":
            assert isinstance(msg, Response)
            if txn.state in LINGERING:
                txn.linger(msg)  # a final (or a further 2xx in Accepted): only its bytes stay, in Completed
            else:
                txn.last_response = msg
            out.append(SendResponse(msg, txn.flow, txn))
        elif effect == "resend":
            if txn.last_response is not None:
                stats["retransmissions_sent"] += 1
                out.append(SendResponse(txn.last_response, txn.flow, txn))
            elif txn.sent is not None:
                stats["retransmissions_sent"] += 1
                out.append(SendResponse(_parse(txn.sent, Response), txn.flow, txn))
            elif txn.invite and txn.request is not None:
                # 17.2.1: the INVITE was retransmitted before the TU said anything: answer 100 Trying.
                txn.last_response = make_response(txn.request, 100)
                out.append(SendResponse(txn.last_response, txn.flow, txn))
        elif effect == "pass_ack":
            assert isinstance(msg, Request)
            stats["acks_passed_up"] += 1
            out.append(AckReceived(msg, flow))
        elif effect == "ack_timeout":
            # 17.2.1: Timer H means the ACK never came; the proxy has nothing left to do for it.
            stats["ack_timeouts"] += 1
        else:
            raise AssertionError(effect)

    # -- timers ------------------------------------------------------------------------------------

    def _start(self, txn: Transaction, name: str, now: float) -> bool:
        # Returns True when the timer is zero-length and must fire now.
        if name in RETRANSMIT_TIMERS:
            if not txn.reliable:  # 17.1.1.2, 17.1.2.2, 17.2.1: retransmit over unreliable transports only
                txn.interval = self.timers.initial(name, False)
                self._arm(txn, name, now + txn.interval)
            return False
        if name in txn._timers:
            return False  # already running (a second CANCEL does not push timer_cancel back)
        duration = self.timers.initial(name, txn.reliable)
        if duration <= 0:
            return True
        self._arm(txn, name, now + duration)
        return False

    def _arm(self, txn: Transaction, name: str, when: float) -> None:
        if name in txn._timers:
            self._stale += 1
        self._seq += 1
        txn._timers[name] = (self._seq, when)
        heapq.heappush(self._heap, (when, self._seq, name, txn))
        if self._stale > _COMPACT_MIN and self._stale * 2 > len(self._heap):
            self._compact()

    def _compact(self) -> None:
        # Drop cancelled entries so the heap stays proportional to the running timers.
        live = [e for e in self._heap if _valid(e)]
        heapq.heapify(live)
        self._heap = live
        self._stale = 0

    def _remove(self, txn: Transaction, out: list[Action]) -> None:
        self._stale += len(txn._timers)
        txn._timers.clear()
        stats = self._stats
        if isinstance(txn, ClientTransaction):
            del self._clients[txn.key]
            stats["client_invite" if txn.invite else "client_non_invite"] -= 1
        else:
            del self._servers[txn.key]
            stats["server_invite" if txn.invite else "server_non_invite"] -= 1
        stats["terminated"] += 1
        out.append(Terminated(txn))


def _valid(entry: _HeapEntry) -> bool:
    # A heap entry is live while its transaction still runs that timer with that sequence number.
    _, seq, name, txn = entry
    running = txn._timers.get(name)
    return running is not None and running[0] == seq


# The tables of fsm.py compiled for the interpreter: (state, event) -> (next state, timers allowed in
# it, operations), where an operation is (_START, timer), (_BACKOFF, timer) or (_EFFECT, effect name).
_START, _BACKOFF, _EFFECT = 0, 1, 2
_Plan = tuple[State, frozenset[str], tuple[tuple[int, str], ...]]


def _compile(machine: Machine, step: Step) -> _Plan:
    ops: list[tuple[int, str]] = []
    for effect in step.effects:
        if effect.startswith("start_"):
            ops.append((_START, "timer_" + effect.removeprefix("start_")))
        elif effect.startswith("backoff_"):
            ops.append((_BACKOFF, "timer_" + effect.removeprefix("backoff_")))
        else:
            ops.append((_EFFECT, effect))
    return (step.state, machine.state_timers.get(step.state, frozenset()), tuple(ops))


# Keyed by (is client, is INVITE).
_MACHINES = {
    (True, True): INVITE_CLIENT,
    (True, False): NON_INVITE_CLIENT,
    (False, True): INVITE_SERVER,
    (False, False): NON_INVITE_SERVER,
}
_PLANS = {
    kind: {when: _compile(machine, step) for when, step in machine.table.items()}
    for kind, machine in _MACHINES.items()
}
_START_PLANS = {kind: _compile(machine, machine.start) for kind, machine in _MACHINES.items()}


def _parse(data: bytes, kind: type[_M]) -> _M:
    # A retransmission from the bytes a lingering transaction kept (its own output: it parses).
    msg = parse_message_untrusted(data)
    assert isinstance(msg, kind)
    return msg
