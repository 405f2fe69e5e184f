"""The proxy core on trio: the dispatcher, the timer task, and the glue between transactions and requests.

Theory of operation
-------------------
``Proxy.run`` owns three things in one nursery: the dispatcher (reads messages the transports received,
feeds them to the sans-IO ``TransactionTable`` and carries out the actions it returns), the timer task (sleeps
until the table's next deadline and calls ``expire``), and the request nursery, where each new request gets
one task (``RequestContext``: validation, routing, stages of branches, the best response).

Overload: with ``overload`` set (a ``trioproxy.flood.OverloadDetector``), a probe task measures the loop's
lag every ``overload_probe_interval`` and the dispatcher refuses the share of new out-of-dialog requests the
detector says (503 with Retry-After through their server transaction, or no answer) before any task or route
runs for them; in-dialog requests, ACK, CANCEL, responses and retransmissions (absorbed by the table) pass.

Actions that send are carried out by the task that caused them: the dispatcher for retransmissions it
absorbs, the timer task for timer retransmissions, a branch task for its own request. Responses for a client
transaction reach the branch that owns it through the transaction's ``user`` slot.
"""

from __future__ import annotations

import hashlib
import logging
import math
import socket
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from trioproxy.faults import call_id_of, contain
from trioproxy.flood.overload import OverloadDetector
from trioproxy.proxy.context import Branch, BranchEvent, RequestContext
from trioproxy.proxy.forward import (
    make_branch_id,
    prepare_branch,
    preprocess_routes,
    via_value,
    ws_destinations,
)
from trioproxy.proxy.router import Router, Target
from trioproxy.proxy.validate import check_request, loop_hash
from trioproxy.sip import (
    URI,
    Address,
    Request,
    Response,
    SIPError,
    make_response,
    validate_request_untrusted,
)
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

__all__ = ["MessageTracer", "Proxy", "ProxyStats", "TransactionUser", "TransportLike"]

log = logging.getLogger("trioproxy.proxy")

# After a fault in the timer task, the pause before the next expiry (a deadline that raised may still be due).
_FAULT_PAUSE = 0.01

_CLASSES = ("0xx", "1xx", "2xx", "3xx", "4xx", "5xx", "6xx", "7xx", "8xx", "9xx")

Locate = Callable[[URI], Awaitable[list[Address]]]


class MessageTracer(Protocol):
    """Logs whole messages of the calls or users being traced (set by the shell; cheap when inactive)."""

    @property
    def active(self) -> bool: ...

    def message(self, direction: str, msg: Request | Response, peer: object) -> None: ...


class TransportLike(Protocol):
    """What the proxy needs of the transport layer (``trioproxy.transport.Transports`` or a test fake)."""

    incoming: trio.MemoryReceiveChannel[Any]

    async def send_request(self, msg: Request, dest: Address) -> None: ...

    async def send_response(self, msg: Response, flow: Any) -> None:
        """Also takes ``no_connect=True`` (passed only when set): never open a connection for it."""

    def local_address(self, transport: str, family: socket.AddressFamily = socket.AF_INET) -> Address: ...

    def listen_addresses(self) -> list[Address]: ...


class TransactionUser:
    """The owner of a client transaction the proxy sends on its own behalf (``Proxy.start_client``)."""

    def deliver(self, event: BranchEvent) -> None:
        """Called by the dispatcher or the timer task (never blocks)."""
        raise NotImplementedError


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


def _default_port(uri: URI) -> int:
    return 5061 if uri.scheme == "sips" else 5060


async def simple_locate(uri: URI) -> list[Address]:
    """Locate a next hop without DNS service records: numeric hosts, or A/AAAA through the system resolver."""
    transport = uri.transport or ("tls" if uri.scheme == "sips" else "udp")
    port = uri.port or _default_port(uri)
    host = uri.host
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_DGRAM)
    except OSError:
        return []
    seen: list[Address] = []
    for info in infos:
        addr = Address(transport, str(info[4][0]), port)
        if addr not in seen:
            seen.append(addr)
    return seen


class Proxy:
    """A transaction-stateful forking SIP proxy (RFC 3261 16) driven by a ``Router``."""

    def __init__(
        self,
        transports: TransportLike,
        router: Router,
        *,
        timers: Timers | None = None,
        locate: Locate | None = None,
        domains: Iterable[str] = (),
        blocklist: Any = None,
    ) -> None:
        self.transports = transports
        self.router = router
        self.timers = timers or Timers()
        self.table = TransactionTable(self.timers)
        self._locate = locate or simple_locate
        self.blocklist = blocklist
        self.domains = {d.lower() for d in domains}
        self.stats = ProxyStats()
        self._nursery: trio.Nursery | None = None
        self._timer_wakeup = trio.Event()
        self._timer_deadline = math.inf
        self.draining = False
        self.tracer: MessageTracer | None = None
        # The route decisions of recent requests by Call-ID (GET /trace/<call-id>), oldest dropped first.
        self.traces: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        self.max_traces = 1000
        self.last_accepted = -math.inf
        self.active: set[RequestContext] = set()
        # Limits (docs/LIMITS.md; 0: none): requests handled at once, in total and per source IP, answered
        # 503 with Retry-After beyond; RFC 5393 Max-Breadth given to requests that carry none.
        self.max_transactions = 0
        self.max_transactions_per_source = 0
        self.retry_after = 5
        self.max_breadth = 0
        self.active_by_source: dict[str, int] = {}
        self.limited = 0  # new requests answered 503 for a limit above
        # Overload shedding (docs/LIMITS.md, "Overload"); None: off.
        self.overload: OverloadDetector | None = None
        self.overload_action = "503"  # or "drop"
        self.overload_retry_after = 2
        self.overload_probe_interval = 0.01

    # -- addresses ---------------------------------------------------------------------------------------

    def local_address(self, dest: Address) -> Address:
        """Our listener that sends to ``dest`` (same transport and address family): its Via, its Record-Route."""
        family = socket.AF_INET6 if ":" in dest.host else socket.AF_INET
        return self.transports.local_address(dest.transport, family)

    def own_sent_by(self) -> set[tuple[str, int]]:
        return {(a.host.lower(), a.port) for a in self.transports.listen_addresses()}

    def is_myself(self, uri: URI) -> bool:
        """Whether a URI names this proxy: one of its listeners, or one of its configured domains."""
        host = uri.host.lower()
        if host in self.domains and uri.port is None:
            return True
        port = uri.port or _default_port(uri)
        return (host, port) in self._own

    async def drain(self, drain_time: float, quiet: float = 1.0) -> bool:
        """Stop taking new requests and wait until those in flight end (at most ``drain_time``).

        Done when no request is being handled and none was accepted for ``quiet`` seconds (so that the BYE of
        a call that just got its 200 still passes). Returns True when drained in time.
        """
        self.draining = True
        with trio.move_on_after(drain_time):
            # A poll: one of the two conditions is the passing of time since the last accepted request.
            while self.active or trio.current_time() - self.last_accepted < quiet:  # noqa: ASYNC110
                await trio.sleep(0.05)
            return True
        return False

    # -- running -----------------------------------------------------------------------------------------

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Start a task in the request nursery, inside a boundary (a fault never reaches the nursery)."""
        assert self._nursery is not None
        self._nursery.start_soon(self._guarded, fn, *args, name=getattr(fn, "__qualname__", None))

    @staticmethod
    async def _guarded(fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        try:
            await fn(*args)
        except Exception as exc:
            contain("task", exc, call_id=call_id_of(next((a for a in args if isinstance(a, Request)), None)))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled: dispatcher, timer task and the requests' tasks."""
        self._own = self.own_sent_by()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._timer_loop)
            if self.overload is not None:
                nursery.start_soon(self._lag_probe, self.overload)
            task_status.started()
            await self._dispatch_loop()

    async def _timer_loop(self) -> None:
        while True:
            deadline = self.table.next_deadline()
            self._timer_deadline = math.inf if deadline is None else deadline
            self._timer_wakeup = trio.Event()
            with trio.move_on_at(self._timer_deadline):
                await self._timer_wakeup.wait()
            try:
                await self.execute(self.table.expire(trio.current_time()))
            except Exception as exc:  # boundary: one expiry's fault, never the timer task
                contain("timer", exc)
                # The deadline that raised may still be due: do not spin on it.
                await trio.sleep(_FAULT_PAUSE)

    async def _lag_probe(self, detector: OverloadDetector) -> None:
        """Feed the overload detector the larger of two lags: how late a short sleep wakes up, and how long the
        first datagram of a UDP socket's last batch waited in the kernel queue; a queue half full counts as late."""
        interval = self.overload_probe_interval
        incoming = self.transports.incoming
        backlog = getattr(self.transports, "receive_backlog", None)
        while True:
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
        if request.method in ("ACK", "CANCEL") or request.to.tag is not None or not detector.shed():
            return False
        if self.overload_action == "503":
            await self._answer(
                action.txn, request, 503, "Service Unavailable", (("Retry-After", str(self.overload_retry_after)),)
            )
        # "drop": no answer; the transaction absorbs retransmissions and ends by its timers.
        return True

    def _kick_timer(self) -> None:
        deadline = self.table.next_deadline()
        if deadline is not None and deadline < self._timer_deadline:
            self._timer_deadline = deadline
            self._timer_wakeup.set()

    async def _dispatch_loop(self) -> None:
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
                await self._dispatch(msg)
            except Exception as exc:  # boundary: one message's fault, never the dispatcher
                contain("dispatch", exc, call_id=call_id_of(msg))

    async def _dispatch(self, msg: Any) -> None:
        if not isinstance(msg, (Request, Response)):
            await self._malformed(msg)
            return
        tracer = self.tracer
        if tracer is not None and tracer.active:
            tracer.message("in", msg, msg.source)
        try:
            if isinstance(msg, Request):
                self.stats.requests[msg.method] = self.stats.requests.get(msg.method, 0) + 1
                if msg.source is not None:
                    stamp_via(msg, msg.source)  # RFC 3581 / 18.2.1: received and rport
            else:
                key = _CLASSES[msg.status // 100]
                self.stats.responses[key] = self.stats.responses.get(key, 0) + 1
            actions = self.table.receive(msg, msg.flow, trio.current_time())
        except SIPError as exc:
            await self._reject_unparsable(msg, exc)
            return
        except Exception as exc:
            # Nothing of this message was acted on yet: a request still gets its 500 (statelessly).
            contain("dispatch", exc, call_id=call_id_of(msg))
            if isinstance(msg, Request) and msg.method != "ACK":
                await self._send_stateless(msg, 500, "Server Internal Error")
            return
        await self.execute(actions)
        self._kick_timer()

    async def _malformed(self, item: Any) -> None:
        self.stats.malformed += 1
        log.info("malformed message dropped: %s", getattr(item, "error", item))

    async def _reject_unparsable(self, msg: Request | Response, exc: SIPError) -> None:
        self.stats.malformed += 1
        log.info("bad message from %s: %s %s", msg.source, exc.status, exc.reason)
        if isinstance(msg, Request) and msg.method != "ACK":
            await self._send_stateless(msg, exc.status, exc.reason)

    async def _send_stateless(self, msg: Request, status: int, reason: str) -> None:
        """Answer a request outside any transaction; a request whose Via cannot route it is dropped, counted."""
        try:
            resp = make_response(msg, status, reason)
            await self.transports.send_response(resp, msg.flow)
        except (TransportError, SIPError, OSError) as exc:
            self.stats.unanswerable += 1
            log.info("dropping a request that cannot be answered: %s", exc)

    # -- executing the table's actions ---------------------------------------------------------------------

    async def execute(self, actions: Sequence[Any]) -> None:
        for action in actions:
            try:
                await self._execute_one(action)
            except Exception as exc:  # boundary: one action's fault; the others still run
                msg = getattr(action, "msg", None) or getattr(action, "request", None)
                contain("action", exc, call_id=call_id_of(msg), detail=type(action).__name__)

    async def _execute_one(self, action: Any) -> None:
        if isinstance(action, SendRequest):
            tracer = self.tracer
            if tracer is not None and tracer.active:
                tracer.message("out", action.msg, action.dest)
            try:
                await self.transports.send_request(action.msg, action.dest)
            except (TransportError, OSError) as exc:
                log.info("sending %s to %s failed: %s", action.msg.method, action.dest, exc)
                await self.execute(self.table.transport_error(action.txn, trio.current_time()))
        elif isinstance(action, SendResponse):
            key = _CLASSES[action.msg.status // 100]
            self.stats.responses_sent[key] = self.stats.responses_sent.get(key, 0) + 1
            tracer = self.tracer
            if tracer is not None and tracer.active:
                tracer.message("out", action.msg, getattr(action.flow, "remote", None))
            try:
                await self._send_response(action.msg, action.flow, action.txn)
            except (TransportError, OSError) as exc:
                log.info("sending a %s response failed: %s", action.msg.status, exc)
                if action.txn is not None:
                    await self.execute(self.table.transport_error(action.txn, trio.current_time()))
        elif isinstance(action, RequestReceived):
            detector = self.overload
            if detector is not None and detector.level > 0.0 and await self._shed(action, detector):
                return
            self.spawn(self._handle_request, action.txn, action.request)
        elif isinstance(action, ResponseReceived):
            self._to_branch(action.txn, BranchEvent(response=action.response))
        elif isinstance(action, Timeout):
            self._to_branch(action.txn, BranchEvent(timeout=True))
        elif isinstance(action, TransportFailed):
            self._to_branch(action.txn, BranchEvent(transport_error=True))
        elif isinstance(action, AckReceived):
            self.spawn(self._handle_stateless, action.request)
        elif isinstance(action, CancelReceived):
            await self._handle_cancel(action)
        elif isinstance(action, StrayResponse):
            self.stats.stray_responses += 1  # RFC 6026: a transaction-stateful proxy drops them

    async def _send_response(self, msg: Response, flow: Any, txn: ServerTransaction | None) -> None:
        # KSR.set_reply_no_connect(): the request's responses only go over a connection that is open.
        ctx = txn.user if txn is not None else None
        if isinstance(ctx, RequestContext) and ctx.reply_no_connect:
            await self.transports.send_response(msg, flow, no_connect=True)  # type: ignore[call-arg]
        else:
            await self.transports.send_response(msg, flow)

    def _to_branch(self, txn: ClientTransaction, event: BranchEvent) -> None:
        branch = txn.user
        if isinstance(branch, (Branch, TransactionUser)):
            branch.deliver(event)

    # -- the operations contexts and branches use ------------------------------------------------------

    async def respond(self, ctx: RequestContext, response: Response) -> None:
        """Send a response upstream through the request's server transaction."""
        if ctx.server_txn is None:
            if ctx.reply_no_connect:
                await self.transports.send_response(response, ctx.original.flow, no_connect=True)  # type: ignore[call-arg]
            else:
                await self.transports.send_response(response, ctx.original.flow)
            return
        await self.execute(self.table.respond(ctx.server_txn, response, trio.current_time()))
        self._kick_timer()

    async def start_branch_transaction(self, branch: Branch, request: Request, dest: Address) -> None:
        """Start a client transaction for a branch and send its request (a failure comes as an event)."""
        self.stats.branches += 1
        txn, actions = self.table.start_client(request, dest, trio.current_time(), user=branch)
        branch.txn = txn
        self._kick_timer()
        await self.execute(actions)

    async def start_client(self, request: Request, dest: Address, user: TransactionUser) -> ClientTransaction:
        """Start a client transaction of the proxy's own (a trunk REGISTER): its responses, timeout or
        transport failure reach ``user.deliver``. The request's top Via names one of our listeners."""
        txn, actions = self.table.start_client(request, dest, trio.current_time(), user=user)
        self._kick_timer()
        await self.execute(actions)
        return txn

    async def send_cancel(self, branch: Branch, cancel: Request) -> None:
        assert branch.dest is not None
        _txn, actions = self.table.start_client(cancel, branch.dest, trio.current_time(), user=None)
        self._kick_timer()
        await self.execute(actions)

    def abandon_client(self, branch: Branch) -> None:
        """Stop a branch's client transaction after fr_timer with no answer: it sends nothing more."""
        if branch.txn is not None:
            self.detach(branch.txn)
            self.table.terminate(branch.txn, trio.current_time())

    def detach(self, txn: ClientTransaction) -> None:
        txn.user = None

    def abandon(self, ctx: RequestContext) -> None:
        """A server transaction that gets no response (RFC 4320: no 408 to a non-INVITE).

        Nothing to do: the table keeps it to absorb the caller's retransmissions and ends it by its guard
        timer (64*T1).
        """
        del ctx

    async def branch_failed(self, ctx: RequestContext, branch: Branch, exc: Exception) -> None:
        """The boundary of a branch task: the fault is logged and counted, the branch ends with a local 500
        (so the request still gets its best response, 16.7 step 6)."""
        contain("branch", exc, call_id=call_id_of(ctx.original))
        if branch.final is not None:
            return
        try:
            await ctx.on_response(branch, ctx.local_response(500, "Server Internal Error"), local=True)
        except Exception as again:  # the request's boundary answers
            contain("branch", again, call_id=call_id_of(ctx.original), detail="ending the branch")

    async def locate(self, uri: URI) -> list[Address]:
        dests = await self._locate(uri)
        note = getattr(self.transports, "note_server_name", None)
        if note is not None:
            # A TLS next hop located by name is verified against that name (RFC 5922), not its address.
            name = (uri.params.get("maddr") or uri.host).strip("[]")
            for dest in dests:
                if dest.transport == "tls":
                    note(dest, name)
        return dests

    def filter_blocked(self, dests: list[Address]) -> list[Address]:
        if self.blocklist is None:
            return dests
        now = time.monotonic()
        kept = [d for d in dests if not self.blocklist.is_blocked(d, now)]
        return kept or dests

    def block(self, dest: Address, status: int) -> None:
        if self.blocklist is not None:
            self.blocklist.add(dest, f"{status}", time.monotonic())

    # -- requests ------------------------------------------------------------------------------------------

    async def _handle_request(self, txn: ServerTransaction, request: Request) -> None:
        """The request task; its boundary: a fault (a branch's too) is logged, counted and answered 500."""
        holder: list[RequestContext] = []
        try:
            await self._route_request(txn, request, holder)
        except Exception as exc:  # an ExceptionGroup of a branch fault from the stage nursery lands here too
            contain("request", exc, call_id=call_id_of(request))
            ctx = holder[0] if holder else None
            if ctx is not None and ctx.rc.final_sent:
                return
            try:
                if ctx is not None:
                    ctx.rc.final_sent = True
                    ctx.final_status = 500
                await self._answer(txn, request, 500, "Server Internal Error")
            except Exception as again:  # even the 500 failed: the request is dropped
                contain("request", again, call_id=call_id_of(request), detail="answering 500")

    async def _route_request(self, txn: ServerTransaction, request: Request, holder: list[RequestContext]) -> None:
        started = time.monotonic()
        inbound = self._inbound_address(request)
        ctx: RequestContext | None = None
        try:
            try:
                validate_request_untrusted(request)
                rejection = check_request(request, own_sent_by=self._own)
                lh = loop_hash(request)
            except SIPError as exc:
                await self._answer(txn, request, exc.status, exc.reason)
                return
            if rejection is not None:
                await self._answer(txn, request, rejection.status, rejection.reason, rejection.headers)
                return
            if self.draining and request.to.tag is None:
                # Shutting down: no new dialogs or out-of-dialog requests; in-dialog ones (a BYE for a call
                # in progress) still go through so calls that started can end.
                await self._answer(txn, request, 503, "Service Unavailable", (("Retry-After", "5"),))
                return
            source = request.source.host if request.source is not None else ""
            if request.to.tag is None and self._over_limit(source):
                # A new request over a limit; retransmissions are absorbed by its transaction, in-dialog
                # requests (a BYE) always pass so calls in progress can end.
                self.limited += 1
                await self._answer(txn, request, 503, "Service Unavailable", (("Retry-After", str(self.retry_after)),))
                return
            self.last_accepted = trio.current_time()
            work = request.copy()
            popped = preprocess_routes(work, self.is_myself)
            ctx = RequestContext(self, work, request, txn, lh, inbound)
            holder.append(ctx)
            ctx.route_params = popped
            self._keep_trace(ctx)
            ctx.in_dialog = request.to.tag is not None
            ctx.to_tag = make_branch_id(lh)[7:17]
            txn.user = ctx
            self.active.add(ctx)
            self.active_by_source[source] = self.active_by_source.get(source, 0) + 1
            self.stats.transactions_handled += 1
            if not self.router.defers_trying:
                await ctx.send_trying()
            try:
                await self.router.on_request(ctx)
            except Exception as exc:  # boundary of the route call: a router fault is contained to its request
                self.stats.route_errors += 1
                contain("route", exc, call_id=call_id_of(request))
                if not ctx.rc.final_sent:
                    await ctx.reply(500, "Server Internal Error")
                return
            if ctx.rc.final_sent:
                return
            if ctx.dropped:
                return  # no answer; the table's timers end the server transaction
            if ctx.pending_stage is None and not ctx.canceled:
                # The route neither answered nor relayed: Kamailio drops such a request silently; an INVITE
                # would then ring forever upstream, so answer 500.
                await ctx.reply(500, "Server Internal Error", (("Warning", '399 trioproxy "no route decision"'),))
                return
            await ctx.send_trying()  # the route's script had its chance (force_rport): now the 100 goes
            await ctx.run_stages()
        finally:
            if ctx is not None:
                if ctx in self.active:
                    self.active.discard(ctx)
                    left = self.active_by_source.get(source, 1) - 1
                    if left > 0:
                        self.active_by_source[source] = left
                    else:
                        self.active_by_source.pop(source, None)
                ctx.note("end", status=ctx.final_status)
                try:
                    self.router.on_end(ctx)  # accounting, dialog tracking: the request's final status
                except Exception as exc:  # boundary of the router's end hook
                    contain("route", exc, call_id=call_id_of(request))
                log.debug(
                    "%s %s branches=%d status=%s %.1fms",
                    request.method,
                    request.uri,
                    len(ctx.branches),
                    ctx.final_status,
                    (time.monotonic() - started) * 1000,
                )
                ctx.release()

    def _over_limit(self, source: str) -> bool:
        if self.max_transactions and len(self.active) >= self.max_transactions:
            return True
        per_source = self.max_transactions_per_source
        return bool(per_source) and self.active_by_source.get(source, 0) >= per_source

    def _keep_trace(self, ctx: RequestContext) -> None:
        req = ctx.original
        entry = {
            "method": req.method,
            "ruri": str(req.uri),
            "cseq": req.cseq.seq,
            "source": str(req.source) if req.source else None,
            "events": ctx.events,
        }
        call_id = req.call_id
        traces = self.traces
        if call_id in traces:
            traces.move_to_end(call_id)
            if len(traces[call_id]) < 50:
                traces[call_id].append(entry)
        else:
            traces[call_id] = [entry]
            if len(traces) > self.max_traces:
                traces.popitem(last=False)

    async def _answer(
        self,
        txn: ServerTransaction,
        request: Request,
        status: int,
        reason: str,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        resp = make_response(request, status, reason, to_tag=make_branch_id("0")[7:17])
        for name, value in headers:
            resp.append(name, value)
        await self.execute(self.table.respond(txn, resp, trio.current_time()))
        self._kick_timer()

    def _inbound_address(self, msg: Request | Response) -> Address:
        flow = msg.flow
        local = getattr(flow, "local", None)
        if isinstance(local, Address):
            return local
        return self.transports.local_address("udp")

    async def _handle_stateless(self, request: Request) -> None:
        """An ACK for a 2xx (or any ACK without a transaction): routed as a request of its own (RFC 6026)."""
        try:
            validate_request_untrusted(request)
            if check_request(request, own_sent_by=self._own) is not None:
                return
            work = request.copy()
            popped = preprocess_routes(work, self.is_myself)
            ctx = RequestContext(self, work, request, None, loop_hash(request), self._inbound_address(request))
            ctx.route_params = popped
            ctx.stateless = True
            ctx.in_dialog = request.to.tag is not None
            self._keep_trace(ctx)
            try:
                await self.router.on_request(ctx)
            finally:
                ctx.release()
        except SIPError as exc:
            log.info("dropping a bad %s: %s", request.method, exc.reason)
        except Exception as exc:  # boundary of a stateless request's task (nothing to answer: an ACK)
            self.stats.route_errors += 1
            contain("stateless", exc, call_id=call_id_of(request))

    async def forward_stateless(self, ctx: RequestContext, target: Target) -> bool:
        """Forward without a transaction (an ACK for a 2xx, a CANCEL matching nothing; 16.10, 16.11)."""
        req, hop = prepare_branch(
            ctx.request, target.uri.copy(), path=target.path, max_forwards=ctx.decrement_max_forwards
        )
        if target.dst is not None:
            hop = target.dst
        if target.received is not None:
            dests = [target.received]
        else:
            ws_dests = ws_destinations(hop, ctx.route_params, explicit=target.dst is not None)
            dests = ws_dests if ws_dests is not None else await self.locate(hop)
        if not dests:
            return False
        dest = dests[0]
        # 16.11: a stateless branch is a function of the incoming one, so retransmissions map alike.
        try:
            incoming = ctx.original.top_via.branch or ""
        except SIPError:
            incoming = ""
        branch = "z9hG4bK" + hashlib.blake2s(incoming.encode(), digest_size=8).hexdigest() + ".s"
        req.insert_top("Via", via_value(self.local_address(dest), branch))
        try:
            await self.transports.send_request(req, dest)
        except (TransportError, OSError):
            return False
        return True

    async def _handle_cancel(self, action: CancelReceived) -> None:
        """CANCEL (16.10): 200 to the CANCEL, CANCEL on every pending branch; no match: forward statelessly."""
        cancel = action.cancel
        if action.cancel_txn is not None:
            await self.execute(
                self.table.respond(action.cancel_txn, make_response(cancel, 200, "OK"), trio.current_time())
            )
        server = action.server_txn
        ctx = server.user if server is not None else None
        if isinstance(ctx, RequestContext):
            ctx.cancel()
            return
        if server is not None:
            return  # the INVITE is known but not routed yet (or done): its own task sees no branches
        self.spawn(self._cancel_stateless, cancel)

    async def _cancel_stateless(self, cancel: Request) -> None:
        try:
            work = cancel.copy()
            preprocess_routes(work, self.is_myself)
            ctx = RequestContext(self, work, cancel, None, loop_hash(cancel), self._inbound_address(cancel))
            ctx.stateless = True
            await self.forward_stateless(ctx, Target(work.uri.copy()))
        except SIPError:
            return
        except Exception as exc:  # boundary of a stateless CANCEL's task (its 200 was already sent)
            contain("stateless", exc, call_id=call_id_of(cancel))
