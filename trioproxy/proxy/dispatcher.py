"""The dispatcher: the one owner of the transaction table and of the timer task.

Theory of operation
-------------------
``Dispatcher.run`` reads what the transports received, feeds it to the sans-IO ``TransactionTable`` and
carries out the actions the table returns (receive -> table -> actions); its timer task sleeps until the
table's next deadline and calls ``expire``. Everything that touches the table goes through here: answering
through a server transaction (``respond``), starting and abandoning client transactions. Actions that send are
carried out by the task that caused them: the dispatcher for retransmissions it absorbs, the timer task for
timer retransmissions, a request or branch for its own messages.

What the table hands up goes to the transaction user (``TransactionHandler``, the ``Proxy``): a new request,
an ACK for a 2xx or without a transaction, a CANCEL. Responses, timeouts and transport errors of a client
transaction go to its owner (``txn.user.deliver``: a branch, or a client of the proxy's own) without a task.

Overload: with ``overload`` set (a ``trioproxy.flood.OverloadDetector``), a probe task measures the loop's
lag every ``overload_probe_interval`` and the dispatcher refuses the share of new out-of-dialog requests the
detector says (503 with Retry-After through their server transaction, or no answer) before any task or route
runs for them; in-dialog requests, ACK, CANCEL, responses and retransmissions (absorbed by the table) pass.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from trioproxy.faults import call_id_of, contain
from trioproxy.flood.overload import OverloadDetector
from trioproxy.proxy.forward import make_branch_id
from trioproxy.proxy.interfaces import BranchEvent, TransactionUser
from trioproxy.sip import Address, Request, Response, SIPError, make_response
from trioproxy.transaction import (
    AckReceived,
    CancelReceived,
    ClientTransaction,
    RequestReceived,
    ResponseReceived,
    SendRequest,
    SendResponse,
    ServerTransaction,
    StrayResponse,
    Timeout,
    Timers,
    TransactionTable,
    TransportFailed,
)
from trioproxy.transport import TransportError, stamp_via

__all__ = ["Dispatcher", "MessageTracer", "ProxyStats", "TransactionHandler"]

log = logging.getLogger("trioproxy.proxy")


# Transaction timers fire on a grid of TIMER_TICK seconds: the deadlines due in one tick expire in one wakeup
# of the timer task (at a few hundred calls per second there are thousands of deadlines a second; RFC 3261's
# timers are no finer than T1/2).
TIMER_TICK = 0.005


# The lag probe sleeps this many probe intervals while the last lag was small and nothing is shed.
_CALM_PROBES = 4


def _tick(deadline: float) -> float:
    # Never before the deadline (a product that rounds down would wake the task early, to find nothing due).
    return max(deadline, math.ceil(deadline / TIMER_TICK) * TIMER_TICK)

# After a fault in the timer task, the pause before the next expiry (a deadline that raised may still be due).
_FAULT_PAUSE = 0.01

_CLASSES = ("0xx", "1xx", "2xx", "3xx", "4xx", "5xx", "6xx", "7xx", "8xx", "9xx")


class MessageTracer(Protocol):
    """Logs whole messages of the calls or users being traced (set by the shell; cheap when inactive)."""

    @property
    def active(self) -> bool: ...

    def message(self, direction: str, msg: Request | Response, peer: object) -> None: ...


class TransactionHandler(Protocol):
    """What the dispatcher hands up (``Proxy`` implements it)."""

    def new_request(self, txn: ServerTransaction, request: Request) -> None:
        """A new server transaction (never blocks: the request gets a task of its own)."""

    def stateless_request(self, request: Request) -> None:
        """An ACK for a 2xx, or any ACK without a transaction: routed as a request of its own (RFC 6026)."""

    async def cancel(self, action: CancelReceived) -> None:
        """A CANCEL (16.10), with the INVITE's server transaction if one matched."""


@dataclass
class ProxyStats:
    requests: dict[str, int] = field(default_factory=dict)
    responses: dict[str, int] = field(default_factory=dict)
    responses_sent: dict[str, int] = field(default_factory=dict)
    stray_responses: int = 0
    malformed: int = 0
    transactions_handled: int = 0
    branches: int = 0
    route_errors: int = 0
    unanswerable: int = 0  # bad requests dropped: their Via cannot route a response


class Dispatcher:
    """Receive -> transaction table -> actions; the timer task; the overload probe."""

    def __init__(self, transports: Any, timers: Timers, stats: ProxyStats) -> None:
        self.transports = transports
        self.table = TransactionTable(timers)
        self.stats = stats
        self.tracer: MessageTracer | None = None
        self._timer_wakeup = trio.Event()
        self._timer_deadline = math.inf
        # Overload shedding (docs/LIMITS.md, "Overload"); None: off.
        self.overload: OverloadDetector | None = None
        self.overload_action = "503"  # or "drop"
        self.overload_retry_after = 2
        self.overload_probe_interval = 0.01

    async def run(self, handler: TransactionHandler, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled or the transports' channel closes: the dispatcher, its timer and probe tasks."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._timer_loop)
            if self.overload is not None:
                nursery.start_soon(self._lag_probe, self.overload)
            task_status.started()
            await self._dispatch_loop(handler)
            nursery.cancel_scope.cancel()

    # -- the timer task ----------------------------------------------------------------------------------

    async def _timer_loop(self) -> None:
        table = self.table
        while True:
            deadline = table.next_deadline()
            self._timer_deadline = math.inf if deadline is None else _tick(deadline)
            self._timer_wakeup = trio.Event()
            with trio.move_on_at(self._timer_deadline):
                await self._timer_wakeup.wait()
            try:
                await self.execute(table.expire(trio.current_time()))
            except Exception as exc:  # boundary: one expiry's fault, never the timer task
                contain("timer", exc)
                # The deadline that raised may still be due: do not spin on it.
                await trio.sleep(_FAULT_PAUSE)

    def _kick_timer(self) -> None:
        deadline = self.table.next_deadline()
        if deadline is not None and deadline < self._timer_deadline:
            self._timer_deadline = _tick(deadline)
            self._timer_wakeup.set()

    async def _lag_probe(self, detector: OverloadDetector) -> None:
        """Feed the overload detector the larger of two lags: how late a short sleep wakes up, and how long the
        first datagram of a UDP socket's last batch waited in the kernel queue; a queue half full counts as late."""
        busy = self.overload_probe_interval
        calm = busy * _CALM_PROBES  # an idle proxy need not wake up 100 times a second to learn it is idle
        incoming = self.transports.incoming
        backlog = getattr(self.transports, "receive_backlog", None)
        low = detector.config.lag_low
        while True:
            interval = busy if detector.level > 0.0 or detector.lag > low else calm
            asked = trio.current_time() + interval
            await trio.sleep(interval)
            now = trio.current_time()
            lag = now - asked
            if backlog is not None:
                lag = max(lag, backlog(now))
            st = incoming.statistics()
            if st.max_buffer_size and st.current_buffer_used * 2 >= st.max_buffer_size:
                lag = max(lag, detector.config.lag_high)
            detector.sample(lag, now)

    async def _shed(self, action: RequestReceived, detector: OverloadDetector) -> bool:
        """Refuse a new out-of-dialog request when the detector says so (True: it was refused)."""
        request = action.request
        if getattr(getattr(request.flow, "endpoint", None), "shedder", None) is not None:
            return False  # a UDP request: decided at the ingress already (trioproxy.flood.shed)
        if request.method in ("ACK", "CANCEL") or request.to.tag is not None or not detector.shed():
            return False
        if self.overload_action == "503":
            await self.answer(
                action.txn, request, 503, "Service Unavailable", (("Retry-After", str(self.overload_retry_after)),)
            )
        # "drop": no answer; the transaction absorbs retransmissions and ends by its timers.
        return True

    # -- receiving ---------------------------------------------------------------------------------------

    async def _dispatch_loop(self, handler: TransactionHandler) -> None:
        incoming = self.transports.incoming
        while True:
            # Drain what is queued without a scheduler round trip per message; park only when empty.
            try:
                msg = incoming.receive_nowait()
            except trio.WouldBlock:
                try:
                    msg = await incoming.receive()
                except trio.EndOfChannel:
                    return
            except trio.EndOfChannel:
                return
            try:
                await self._dispatch(msg, handler)
            except Exception as exc:  # boundary: one message's fault, never the dispatcher
                contain("dispatch", exc, call_id=call_id_of(msg))

    async def _dispatch(self, msg: Any, handler: TransactionHandler) -> None:
        if not isinstance(msg, (Request, Response)):
            self.stats.malformed += 1
            log.info("malformed message dropped: %s", getattr(msg, "error", msg))
            return
        tracer = self.tracer
        if tracer is not None and tracer.active:
            tracer.message("in", msg, msg.source)
        try:
            if isinstance(msg, Request):
                counts = self.stats.requests
                counts[msg.method] = counts.get(msg.method, 0) + 1
                if msg.source is not None:
                    stamp_via(msg, msg.source)  # RFC 3581 / 18.2.1: received and rport
            else:
                counts = self.stats.responses
                key = _CLASSES[msg.status // 100]
                counts[key] = counts.get(key, 0) + 1
            actions = self.table.receive(msg, msg.flow, trio.current_time())
        except SIPError as exc:
            self.stats.malformed += 1
            log.info("bad message from %s: %s %s", msg.source, exc.status, exc.reason)
            if isinstance(msg, Request) and msg.method != "ACK":
                await self.send_stateless(msg, exc.status, exc.reason)
            return
        except Exception as exc:
            # Nothing of this message was acted on yet: a request still gets its 500 (statelessly).
            contain("dispatch", exc, call_id=call_id_of(msg))
            if isinstance(msg, Request) and msg.method != "ACK":
                await self.send_stateless(msg, 500, "Server Internal Error")
            return
        if actions:
            await self.execute(actions, handler)
        self._kick_timer()

    # -- carrying out the table's actions ------------------------------------------------------------------

    async def execute(self, actions: Sequence[Any], handler: TransactionHandler | None = None) -> None:
        for action in actions:
            try:
                await self._execute_one(action, handler)
            except Exception as exc:  # boundary: one action's fault; the others still run
                msg = getattr(action, "msg", None) or getattr(action, "request", None)
                contain("action", exc, call_id=call_id_of(msg), detail=type(action).__name__)

    async def _execute_one(self, action: Any, handler: TransactionHandler | None) -> None:
        kind = type(action)
        if kind is SendRequest:
            tracer = self.tracer
            if tracer is not None and tracer.active:
                tracer.message("out", action.msg, action.dest)
            try:
                await self.transports.send_request(action.msg, action.dest)
            except (TransportError, OSError) as exc:
                log.info("sending %s to %s failed: %s", action.msg.method, action.dest, exc)
                await self.execute(self.table.transport_error(action.txn, trio.current_time()), handler)
        elif kind is SendResponse:
            msg = action.msg
            counts = self.stats.responses_sent
            key = _CLASSES[msg.status // 100]
            counts[key] = counts.get(key, 0) + 1
            tracer = self.tracer
            if tracer is not None and tracer.active:
                tracer.message("out", msg, getattr(action.flow, "remote", None))
            try:
                # KSR.set_reply_no_connect(): the request's responses only go over a connection that is open.
                user = action.txn.user if action.txn is not None else None
                if getattr(user, "reply_no_connect", False):
                    await self.transports.send_response(msg, action.flow, no_connect=True)
                else:
                    await self.transports.send_response(msg, action.flow)
            except (TransportError, OSError) as exc:
                log.info("sending a %s response failed: %s", msg.status, exc)
                if action.txn is not None:
                    await self.execute(self.table.transport_error(action.txn, trio.current_time()), handler)
        elif kind is ResponseReceived:
            self._deliver(action.txn, BranchEvent(response=action.response))
        elif kind is RequestReceived:
            if handler is None:
                return
            detector = self.overload
            if detector is not None and detector.level > 0.0 and await self._shed(action, detector):
                return
            handler.new_request(action.txn, action.request)
        elif kind is Timeout:
            self._deliver(action.txn, BranchEvent(timeout=True))
        elif kind is TransportFailed:
            self._deliver(action.txn, BranchEvent(transport_error=True))
        elif kind is AckReceived:
            if handler is not None:
                handler.stateless_request(action.request)
        elif kind is CancelReceived:
            if handler is not None:
                await handler.cancel(action)
        elif kind is StrayResponse:
            self.stats.stray_responses += 1  # RFC 6026: a transaction-stateful proxy drops them

    @staticmethod
    def _deliver(txn: ClientTransaction, event: BranchEvent) -> None:
        user = txn.user
        if isinstance(user, TransactionUser):
            user.deliver(event)

    # -- what the proxy, its requests and branches use -----------------------------------------------------

    async def respond(self, txn: ServerTransaction, response: Response) -> None:
        """Send a response upstream through a server transaction."""
        await self.execute(self.table.respond(txn, response, trio.current_time()))
        self._kick_timer()

    async def answer(
        self,
        txn: ServerTransaction,
        request: Request,
        status: int,
        reason: str,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Answer a request from the proxy through its server transaction (no route ran for it)."""
        resp = make_response(request, status, reason, to_tag=make_branch_id("0")[7:17])
        for name, value in headers:
            resp.append(name, value)
        await self.respond(txn, resp)

    async def send_stateless(self, msg: Request, status: int, reason: str) -> None:
        """Answer a request outside any transaction; a request whose Via cannot route it is dropped, counted."""
        try:
            resp = make_response(msg, status, reason)
            await self.transports.send_response(resp, msg.flow)
        except (TransportError, SIPError, OSError) as exc:
            self.stats.unanswerable += 1
            log.info("dropping a request that cannot be answered: %s", exc)

    async def start_client(self, request: Request, dest: Address, user: Any) -> ClientTransaction:
        """Start a client transaction and send its request; its events reach ``user.deliver``."""
        txn, actions = self.table.start_client(request, dest, trio.current_time(), user=user)
        self._kick_timer()
        await self.execute(actions)
        return txn

    def terminate(self, txn: ClientTransaction) -> None:
        """End a client transaction now (its owner gets nothing more from it)."""
        txn.user = None
        self.table.terminate(txn, trio.current_time())
