"""The proxy core on trio: ``Proxy``, the public entry point, and the life of a request up to its route.

Theory of operation
-------------------
``Proxy.run`` runs the dispatcher (``trioproxy.proxy.dispatcher``: the transaction table, the timer task,
overload shedding) inside the request nursery. The dispatcher hands each new server transaction to
``Proxy.new_request``, which starts one task for it (``_handle_request``, the request's boundary): validation
(RFC 3261 16.3), draining and limits, then a ``RequestContext`` (``trioproxy.proxy.request``) on which the
router's request hook runs. The route records its decision through the context's API (reply, relay with
targets and timers, drop); the core applies it: nothing decided is a 500, a relay runs the stages of
branches (``trioproxy.proxy.branch``), and the request's end hook runs once with the final status.

An ACK for a 2xx (or any ACK without a transaction) is routed as a stateless request; a CANCEL gets its 200
and cancels the INVITE's request (16.10), or is forwarded statelessly when it matches nothing.

``Proxy`` implements ``trioproxy.proxy.interfaces.Core``, the narrow interface requests and branches use.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import trio

from trioproxy.faults import call_id_of, contain
from trioproxy.flood.overload import OverloadDetector
from trioproxy.proxy.dispatcher import Dispatcher, MessageTracer, ProxyStats
from trioproxy.proxy.forward import make_branch_id, prepare_branch, via_value, ws_destinations
from trioproxy.proxy.interfaces import (
    BranchEvent,
    TransactionUser,
    TransportLike,
    default_port,
    simple_locate,
)
from trioproxy.proxy.request import RequestContext
from trioproxy.proxy.router import Router, Target
from trioproxy.proxy.trace import RequestTrace, TraceRing
from trioproxy.proxy.validate import check_request, loop_hash
from trioproxy.sip import URI, Address, Request, Response, SIPError, make_response, validate_request_untrusted
from trioproxy.transaction import (
    CancelReceived,
    ClientTransaction,
    ServerTransaction,
    Timers,
    TransactionTable,
)
from trioproxy.transport import TransportError
from trioproxy.transport.types import WS_TRANSPORTS

__all__ = [
    "BranchEvent",
    "MessageTracer",
    "Proxy",
    "ProxyStats",
    "TransactionUser",
    "TransportLike",
    "simple_locate",
]

log = logging.getLogger("trioproxy.proxy")

Locate = Callable[[URI], Awaitable[list[Address]]]


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
        self.stats = ProxyStats()
        self.dispatcher = Dispatcher(transports, self.timers, self.stats)
        self._locate = locate or simple_locate
        self.blocklist = blocklist
        self.domains = {d.lower() for d in domains}
        self._own: set[tuple[str, int]] = set()
        self._nursery: trio.Nursery | None = None
        self.draining = False
        # The route decisions of recent requests (GET /trace/<call-id>): the last ``traces.size`` requests.
        self.traces = TraceRing()
        self.last_accepted = -float("inf")
        self.active: set[RequestContext] = set()
        # Limits (docs/LIMITS.md; 0: none): requests handled at once, in total and per source IP, answered
        # 503 with Retry-After beyond; RFC 5393 Max-Breadth given to requests that carry none.
        self.max_transactions = 0
        self.max_transactions_per_source = 0
        self.retry_after = 5
        self.max_breadth = 0
        self.active_by_source: dict[str, int] = {}
        self.limited = 0  # new requests answered 503 for a limit above

    # -- settings the dispatcher applies (set by the shell before ``run``) ------------------------------

    @property
    def table(self) -> TransactionTable:
        return self.dispatcher.table

    @property
    def tracer(self) -> MessageTracer | None:
        return self.dispatcher.tracer

    @tracer.setter
    def tracer(self, value: MessageTracer | None) -> None:
        self.dispatcher.tracer = value

    @property
    def overload(self) -> OverloadDetector | None:
        return self.dispatcher.overload

    @overload.setter
    def overload(self, value: OverloadDetector | None) -> None:
        self.dispatcher.overload = value

    @property
    def overload_action(self) -> str:
        return self.dispatcher.overload_action

    @overload_action.setter
    def overload_action(self, value: str) -> None:
        self.dispatcher.overload_action = value

    @property
    def overload_retry_after(self) -> int:
        return self.dispatcher.overload_retry_after

    @overload_retry_after.setter
    def overload_retry_after(self, value: int) -> None:
        self.dispatcher.overload_retry_after = value

    @property
    def overload_probe_interval(self) -> float:
        return self.dispatcher.overload_probe_interval

    @overload_probe_interval.setter
    def overload_probe_interval(self, value: float) -> None:
        self.dispatcher.overload_probe_interval = value

    # -- addresses ---------------------------------------------------------------------------------------

    def local_address(self, dest: Address) -> Address:
        """Our listener that sends to ``dest`` (same transport and address family): its Via, its Record-Route."""
        family = socket.AF_INET6 if ":" in dest.host else socket.AF_INET
        return self.transports.local_address(dest.transport, family)

    def record_address(self, local: Address) -> Address:
        return self.transports.record_address(local)

    def own_sent_by(self) -> set[tuple[str, int]]:
        return {(a.host.lower(), a.port) for a in self.transports.listen_addresses()}

    def is_myself(self, uri: URI) -> bool:
        """Whether a URI names this proxy: one of its listeners, or one of its configured domains."""
        host = uri.host.lower()
        if host in self.domains and uri.port is None:
            return True
        port = uri.port or default_port(uri)
        return (host, port) in self._own

    def flow_open(self, dest: Address) -> bool:
        # Whether a message to dest can leave now: always for UDP/TCP/TLS (connections are opened on demand),
        # for WS/WSS only over the live connection the peer opened.
        if dest.transport not in WS_TRANSPORTS:
            return True
        connection = getattr(self.transports, "connection", None)
        return connection is not None and connection(dest) is not None

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
        """Serve until cancelled: the dispatcher (with its timer task) and the requests' tasks."""
        self._own = self.own_sent_by()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.dispatcher.run, self)
            task_status.started()

    # -- what requests and branches use (interfaces.Core) and the shell's clients ---------------------------

    async def respond(
        self, txn: ServerTransaction | None, flow: Any, response: Response, *, no_connect: bool = False
    ) -> None:
        """Send a response upstream: through the server transaction, or statelessly over ``flow``."""
        if txn is not None:
            await self.dispatcher.respond(txn, response)
        elif no_connect:
            await self.transports.send_response(response, flow, no_connect=True)  # type: ignore[call-arg]
        else:
            await self.transports.send_response(response, flow)

    async def start_branch(self, request: Request, dest: Address, user: TransactionUser) -> ClientTransaction:
        """Start a client transaction for a branch and send its request (a failure comes as an event)."""
        self.stats.branches += 1
        return await self.dispatcher.start_client(request, dest, user)

    async def start_client(self, request: Request, dest: Address, user: TransactionUser) -> ClientTransaction:
        """Start a client transaction of the proxy's own (a trunk REGISTER): its responses, timeout or
        transport failure reach ``user.deliver``. The request's top Via names one of our listeners."""
        return await self.dispatcher.start_client(request, dest, user)

    async def send_cancel(self, cancel: Request, dest: Address) -> None:
        await self.dispatcher.start_client(cancel, dest, None)

    def abandon_client(self, txn: ClientTransaction) -> None:
        """Stop a client transaction after fr_timer with no answer: it sends nothing more."""
        self.dispatcher.terminate(txn)

    def detach(self, txn: ClientTransaction) -> None:
        txn.user = None

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

    # -- requests (dispatcher.TransactionHandler) ----------------------------------------------------------

    def new_request(self, txn: ServerTransaction, request: Request) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(self._handle_request, txn, request)

    def stateless_request(self, request: Request) -> None:
        self.spawn(self._handle_stateless, request)

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
                await self.dispatcher.answer(txn, request, 500, "Server Internal Error")
            except Exception as again:  # even the 500 failed: the request is dropped
                contain("request", again, call_id=call_id_of(request), detail="answering 500")

    async def _route_request(self, txn: ServerTransaction, request: Request, holder: list[RequestContext]) -> None:
        answer = self.dispatcher.answer
        try:
            validate_request_untrusted(request)
            rejection = check_request(request, own_sent_by=self._own)
            lh = loop_hash(request)
        except SIPError as exc:
            await answer(txn, request, exc.status, exc.reason)
            return
        if rejection is not None:
            await answer(txn, request, rejection.status, rejection.reason, rejection.headers)
            return
        in_dialog = request.to.tag is not None
        if self.draining and not in_dialog:
            # Shutting down: no new dialogs or out-of-dialog requests; in-dialog ones (a BYE for a call in
            # progress) still go through so calls that started can end.
            await answer(txn, request, 503, "Service Unavailable", (("Retry-After", "5"),))
            return
        source = request.source.host if request.source is not None else ""
        if not in_dialog and self._over_limit(source):
            # A new request over a limit; retransmissions are absorbed by its transaction, in-dialog requests
            # (a BYE) always pass so calls in progress can end.
            self.limited += 1
            await answer(txn, request, 503, "Service Unavailable", (("Retry-After", str(self.retry_after)),))
            return
        self.last_accepted = trio.current_time()
        ctx = RequestContext(
            self, request, txn, lh, self._inbound_address(request), trace=self._trace(request),
            to_tag=make_branch_id(lh)[7:17],
        )  # fmt: skip
        holder.append(ctx)
        txn.user = ctx
        self.active.add(ctx)
        self.active_by_source[source] = self.active_by_source.get(source, 0) + 1
        self.stats.transactions_handled += 1
        try:
            await self._apply_route(ctx)
        finally:
            self._end(ctx, source)

    async def _apply_route(self, ctx: RequestContext) -> None:
        """Run the router's request hook and apply what it decided: an answer, a relay, a drop."""
        router = self.router
        if not router.defers_trying:
            await ctx.send_trying()
        try:
            await router.on_request(ctx)
        except Exception as exc:  # boundary of the route call: a router fault is contained to its request
            self.stats.route_errors += 1
            contain("route", exc, call_id=call_id_of(ctx.original))
            if not ctx.final_sent:
                await ctx.reply(500, "Server Internal Error")
            return
        if ctx.final_sent or ctx.dropped:
            return  # answered; or dropped: no answer, the table's timers end the server transaction
        if ctx.pending_targets is None and not ctx.canceled:
            # The route neither answered nor relayed: Kamailio drops such a request silently; an INVITE would
            # then ring forever upstream, so answer 500.
            await ctx.reply(500, "Server Internal Error", (("Warning", '399 trioproxy "no route decision"'),))
            return
        await ctx.send_trying()  # the route's script had its chance (force_rport): now the 100 goes
        await ctx.run_stages()

    def _end(self, ctx: RequestContext, source: str) -> None:
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
            contain("route", exc, call_id=call_id_of(ctx.original))
        if log.isEnabledFor(logging.DEBUG):
            request = ctx.original
            log.debug(
                "%s %s branches=%d status=%s %.1fms",
                request.method,
                request.uri,
                len(ctx.branches),
                ctx.final_status,
                (time.monotonic() - ctx.started) * 1000,
            )
        ctx.release()

    def _over_limit(self, source: str) -> bool:
        if self.max_transactions and len(self.active) >= self.max_transactions:
            return True
        per_source = self.max_transactions_per_source
        return bool(per_source) and self.active_by_source.get(source, 0) >= per_source

    def _trace(self, request: Request) -> RequestTrace:
        trace = RequestTrace(
            request.call_id, request.method, request.uri, request.cseq.seq, request.source, time.monotonic()
        )
        self.traces.add(trace)
        return trace

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
            ctx = RequestContext(
                self, request, None, loop_hash(request), self._inbound_address(request), stateless=True,
                trace=self._trace(request),
            )  # fmt: skip
            try:
                await self.router.on_request(ctx)
            finally:
                ctx.release()
        except SIPError as exc:
            log.info("dropping a bad %s: %s", request.method, exc.reason)
        except Exception as exc:  # boundary of a stateless request's task (nothing to answer: an ACK)
            self.stats.route_errors += 1
            contain("stateless", exc, call_id=call_id_of(request))

    async def forward_stateless(
        self, request: Request, original: Request, target: Target, route_params: str | None, max_forwards: bool
    ) -> bool:
        """Forward without a transaction (an ACK for a 2xx, a CANCEL matching nothing; 16.10, 16.11)."""
        req, hop = prepare_branch(request, target.uri.copy(), path=target.path, max_forwards=max_forwards)
        if target.dst is not None:
            hop = target.dst
        if target.received is not None:
            dests = [target.received]
        else:
            ws_dests = ws_destinations(hop, route_params, explicit=target.dst is not None)
            dests = ws_dests if ws_dests is not None else await self.locate(hop)
        if not dests:
            return False
        dest = dests[0]
        # 16.11: a stateless branch is a function of the incoming one, so retransmissions map alike.
        try:
            incoming = original.top_via.branch or ""
        except SIPError:
            incoming = ""
        branch = "z9hG4bK" + hashlib.blake2s(incoming.encode(), digest_size=8).hexdigest() + ".s"
        req.insert_top("Via", via_value(self.local_address(dest), branch))
        try:
            await self.transports.send_request(req, dest)
        except (TransportError, OSError):
            return False
        return True

    async def cancel(self, action: CancelReceived) -> None:
        """CANCEL (16.10): 200 to the CANCEL, CANCEL on every pending branch; no match: forward statelessly."""
        cancel = action.cancel
        if action.cancel_txn is not None:
            await self.dispatcher.respond(action.cancel_txn, make_response(cancel, 200, "OK"))
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
            ctx = RequestContext(
                self, cancel, None, loop_hash(cancel), self._inbound_address(cancel), stateless=True
            )
            await self.forward_stateless(ctx.request, cancel, Target(ctx.request.uri.copy()), ctx.route_params, True)
        except SIPError:
            return
        except Exception as exc:  # boundary of a stateless CANCEL's task (its 200 was already sent)
            contain("stateless", exc, call_id=call_id_of(cancel))
