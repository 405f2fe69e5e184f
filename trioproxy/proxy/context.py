"""One proxied request: its context, its stages of branches, and each branch's life (RFC 3261 16.6-16.10).

Theory of operation
-------------------
Every request that passes validation gets a ``RequestContext`` and one task (``RequestContext.process``) in
the proxy's request nursery. The task calls the router; ``ctx.relay(targets)`` records a stage of targets.
Each stage runs in a nursery owned by the request task, one task per branch, each started with
``nursery.start`` so that the context holds exactly that branch's cancel scope. The nursery's exit is the end
of the stage: then the router's failure hook may add the next stage (serial forking), and finally the best
response goes upstream (16.7 step 6).

Exactly one final response per request: whatever the router's hooks do (answer, relay again, raise, drop),
the request task ends by sending the best response unless a final already went (a 2xx, the router's own
reply); the router's explicit drop in its request hook is the one way to send none. The failure hook runs
after every stage that sent a branch and got no 2xx, as Kamailio's failure_route does, also after the
caller's CANCEL or a 6xx, where a relay makes no new branch (16.10, 16.7 step 5). Every response goes
upstream with the Vias of the request as the caller sent it (the server transaction's request), never of a
working copy or of what a callee echoed.

Stopping a branch (first 2xx, a 6xx, the caller's CANCEL, Timer C) is cancelling its scope. The branch then
runs its own shielded, time-bounded cleanup: it waits for a provisional if none came yet (RFC 3261 9.1),
sends a CANCEL, and absorbs the 487, still passing up a late 2xx. Nothing of a request outlives its task.

Within a branch, the next hop's addresses (RFC 3263) are tried in order: a transport error, a timeout
(Timer B/F) or a 503 moves to the next address with a new Via branch (RFC 3263 4.3, RFC 3261 16.9); the
caller sees one final answer per branch.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from trioproxy.locate import LocateError
from trioproxy.proxy.forward import (
    make_branch_id,
    prepare_branch,
    record_route_values,
    via_value,
    ws_destinations,
)
from trioproxy.proxy.response_context import Disposition, ResponseContext
from trioproxy.proxy.router import Target
from trioproxy.sip import (
    Address,
    Request,
    Response,
    make_cancel,
    make_response,
    parse_uri_untrusted,
    reason_phrase,
)
from trioproxy.transaction import ClientTransaction, ServerTransaction
from trioproxy.transport import TransportError
from trioproxy.transport.types import WS_TRANSPORTS

if TYPE_CHECKING:
    from trioproxy.proxy.core import Proxy

__all__ = ["Branch", "BranchEvent", "RequestContext"]

log = logging.getLogger("trioproxy.proxy")


@dataclass(frozen=True, slots=True)
class BranchEvent:
    """What the dispatcher hands a branch: a response, or a local 408 (timeout) / 503 (transport error)."""

    response: Response | None = None
    timeout: bool = False
    transport_error: bool = False


@dataclass(eq=False, slots=True)
class Branch:
    """One branch of a request: a target, its request copy, its client transactions, its outcome."""

    ctx: RequestContext
    index: int
    target: Target
    request: Request | None = None
    txn: ClientTransaction | None = None
    dest: Address | None = None
    provisional: bool = False
    final: Response | None = None
    done: bool = False
    scope: trio.CancelScope | None = None
    send_channel: trio.MemorySendChannel[BranchEvent] | None = None
    recv_channel: trio.MemoryReceiveChannel[BranchEvent] | None = None

    def deliver(self, event: BranchEvent) -> None:
        """Called by the dispatcher (never blocks): queue an event for the branch task."""
        if self.send_channel is not None:
            try:
                self.send_channel.send_nowait(event)
                return
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        # The branch is gone or flooded; a late 2xx (such as a retransmission of the 2xx that ended the
        # branch) still has to reach the caller (RFC 6026 7.2).
        if event.response is not None and 200 <= event.response.status < 300:
            self.ctx.proxy.spawn(self.ctx.forward_late_2xx, event.response)


_RELEASED_TARGET = Target(parse_uri_untrusted("sip:released.invalid"))


@dataclass(eq=False)
class RequestContext:
    """The state of one request the proxy handles, and the operations a router may use."""

    proxy: Proxy
    request: Request  # the working copy that branches are made from; routers edit it
    original: Request  # as received (the server transaction's request)
    server_txn: ServerTransaction | None
    loop_hash: str
    inbound: Address  # our listener the request came in on
    record_route: bool = False
    record_route_params: str = ""
    route_params: str | None = None  # parameters of our own Route removed by 16.4 pre-processing
    decrement_max_forwards: bool = True
    dropped: bool = False  # the router decided to drop the request: no answer at all
    events: list[dict[str, Any]] = field(default_factory=list)  # route decisions, for GET /trace/<call-id>
    stage_timeout: bool = False  # a branch of the last stage got no final answer in time
    stage_replied: bool = False  # a branch of the last stage got a final answer from downstream
    in_dialog: bool = False
    stateless: bool = False
    user_state: Any = None  # free for the router (for example the next serial stage)
    fr_timeout: float | None = None  # Kamailio's fr_timer: wait for a first reply on a branch
    fr_inv_timeout: float | None = None  # Kamailio's fr_inv_timer: ring time after a provisional (Timer C)
    to_tag: str = ""
    canceled: bool = False
    trying_sent: bool = False  # the automatic 100 Trying of an INVITE went upstream
    reply_no_connect: bool = False  # Kamailio's set_reply_no_connect: responses only over an open connection
    rc: ResponseContext = field(init=False)
    branches: list[Branch] = field(default_factory=list)
    pending_stage: list[Target] | None = None
    stage_branches: list[Branch] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    final_status: int | None = None
    stages_run: int = 0
    stage_sent: int = 0  # branches of the last stage that passed the branch hook
    branches_sent: int = 0  # branches of every stage that passed the branch hook
    branch_breadth: int | None = None  # RFC 5393: the Max-Breadth each branch of this stage carries
    # Bodies of the 2xx responses sent upstream, by To tag (retransmissions go up with the same body).
    forwarded_2xx_bodies: dict[str, tuple[bytes, str | None]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rc = ResponseContext(is_invite=self.original.method == "INVITE")

    def note(self, kind: str, **data: Any) -> None:
        """Record a route decision (bounded) for the management API's per-call trace."""
        if len(self.events) < 300:
            data["kind"] = kind
            data["ms"] = round((time.monotonic() - self.started) * 1000, 3)
            self.events.append(data)

    # -- operations for routers ------------------------------------------------------------------------

    async def reply(
        self, status: int, reason: str | None = None, headers: Sequence[tuple[str, str]] = (), body: bytes = b""
    ) -> bool:
        """Answer the request from the proxy itself (provisional or final). False if a final already went."""
        if self.stateless or self.original.method == "ACK":
            return False
        if status >= 200 and self.rc.final_sent:
            return False
        resp = make_response(self.original, status, reason or reason_phrase(status), to_tag=self.to_tag or None)
        self.note("reply", status=status, reason=resp.reason)
        for name, value in headers:
            resp.append(name, value)
        if body:
            resp.set_body(body)
        if status >= 200:
            self.rc.final_sent = True
            self.final_status = status
            self.cancel_branches()  # the answer is given: stop what still rings
        await self.proxy.respond(self, resp)
        return True

    async def send(self, response: Response) -> bool:
        """Send a response built elsewhere (for example by the registrar) as this request's answer."""
        if self.stateless or (response.status >= 200 and self.rc.final_sent):
            return False
        if response.status >= 200:
            self.rc.final_sent = True
            self.final_status = response.status
            self.cancel_branches()
        await self.proxy.respond(self, response)
        return True

    async def send_trying(self) -> None:
        """The automatic 100 Trying of an INVITE (RFC 3261 16.2, 17.2.1), at most once, never after a final.

        The proxy calls it before a router that does not defer it runs, and otherwise when the route first
        waits or ends, so that what the route did to the request (``force_rport`` stamping the top Via)
        decides where the 100 goes.
        """
        if self.trying_sent or self.stateless or self.rc.final_sent or self.original.method != "INVITE":
            return
        self.trying_sent = True
        await self.proxy.respond(self, make_response(self.original, 100, "Trying"))

    async def relay(self, targets: Sequence[Target] | None = None) -> int:
        """Fork to ``targets`` (default: the Request-URI). Kamailio-style result: 1 ok, negative refused.

        The branches start when the route returns (a stage); a stateless request (an ACK for a 2xx, a CANCEL
        with no transaction) is forwarded at once to the first target.
        """
        if targets is None:
            targets = [Target(self.request.uri.copy())]
        if not targets:
            return -1
        self.note("relay", targets=[str(t.uri) + (f" via {t.dst}" if t.dst else "") for t in targets])
        if self.stateless:
            ok = await self.proxy.forward_stateless(self, targets[0])
            return 1 if ok else -1
        if not self.rc.may_branch or self.canceled:
            return -2  # RFC 3261 16.7 step 5: no new branches after a 6xx or a final
        if self.pending_stage is None:
            self.pending_stage = []
        self.pending_stage.extend(targets)
        return 1

    @property
    def best_response(self) -> Response | None:
        """The response that would go upstream now (a 487 after the caller's CANCEL; None: none stored)."""
        return self.rc.best(canceled=self.canceled)

    def cancel_branches(self, *, except_branch: Branch | None = None) -> None:
        for b in self.stage_branches:
            if b is not except_branch and not b.done and b.scope is not None:
                b.scope.cancel()

    def cancel(self) -> None:
        """The caller sent CANCEL (16.10): stop every pending branch; the 487s decide the answer."""
        self.canceled = True
        self.cancel_branches()

    # -- the request task --------------------------------------------------------------------------------

    async def run_stages(self) -> None:
        """Run the stages the router asked for, then send the one final response (16.7 step 6).

        After a stage that sent a branch and got no 2xx the failure hook runs; it may reply (that is the
        final), relay again (a new stage, refused after a CANCEL or a 6xx), or return. A hook that raises
        is logged and its relay discarded; the best response still goes upstream.
        """
        while not self.rc.final_sent:
            targets, self.pending_stage = self.pending_stage, None
            if not targets:
                break
            await self._run_stage(targets)
            if self.rc.final_sent or not self.stage_sent:
                break  # a 2xx went up, or no branch left (all dropped, or cancelled before they started)
            await self._failure_hook()
        self.pending_stage = None
        if not self.rc.final_sent:
            await self.send_best()

    async def _failure_hook(self) -> None:
        try:
            await self.proxy.router.on_failure(self)
        except Exception as exc:  # a router fault: its decisions are void, the best response goes up
            log.error("failure route error for %s %s: %r", self.original.method, self.original.uri, exc)
            self.note("failure_error", error=repr(exc)[:200])
            self.pending_stage = None

    async def send_best(self) -> None:
        best = self.rc.best(canceled=self.canceled)
        self.note("best", status=None if best is None else best.status)
        invite = self.original.method == "INVITE"
        if best is None and self.canceled:
            await self.reply(487, "Request Terminated")
            return
        if best is None and not self.branches_sent:
            # Every branch was dropped by the router's branch hook: nothing went downstream to time out.
            await self.reply(500, "Server Internal Error", (("Warning", '399 trioproxy "no branch was sent"'),))
            return
        if not invite and (best is None or best.status == 408):
            # RFC 4320: a stateful element never sends 408 to a non-INVITE; the client times out itself.
            self.rc.final_sent = True
            self.final_status = 408
            self.proxy.abandon(self)
            return
        if best is None:
            await self.reply(408, "Request Timeout")
            return
        if best.status == 503:
            # RFC 3261 16.7 step 6: a 503 concerns the next hop; the caller learns of a server error.
            await self.reply(500, "Server Internal Error")
            return
        if best.status in (401, 407):
            own = {(n.lower(), v) for n in ("WWW-Authenticate", "Proxy-Authenticate") for v in best.get_all(n)}
            for name, value in self.rc.challenges():
                if (name.lower(), value) not in own:
                    best.append(name, value)
                    own.add((name.lower(), value))
        self.rc.final_sent = True
        self.final_status = best.status
        await self.proxy.respond(self, best)

    async def _run_stage(self, targets: Sequence[Target]) -> None:
        breadth = max_breadth_of(self.original, getattr(self.proxy, "max_breadth", 0))
        if breadth is not None:
            # RFC 5393 5.3: the stage's parallel branches share the breadth; more than it allows: 440.
            if len(targets) > breadth:
                self.note("max_breadth", targets=len(targets), breadth=breadth)
                await self.reply(440, "Max-Breadth Exceeded")
                return
            self.branch_breadth = breadth // len(targets)
        self.stages_run += 1
        self.stage_branches = []
        self.stage_timeout = self.stage_replied = False
        self.stage_sent = 0
        async with trio.open_nursery() as nursery:
            for target in targets:
                if not self.rc.may_branch or self.canceled:
                    break
                branch = Branch(self, len(self.branches), target)
                self.branches.append(branch)
                self.stage_branches.append(branch)
                await nursery.start(self._run_branch, branch)
        self.stage_branches = []

    async def _run_branch(self, branch: Branch, task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        scope = trio.CancelScope()
        branch.scope = scope
        send, recv = trio.open_memory_channel[BranchEvent](32)
        branch.send_channel, branch.recv_channel = send, recv
        task_status.started(scope)
        timer_c_fired = False
        try:
            with scope:
                try:
                    timer_c_fired = await self._branch_body(branch)
                except Exception as exc:  # the branch task's boundary (Proxy.branch_failed): a local 500
                    await self.proxy.branch_failed(self, branch, exc)
            if timer_c_fired:
                self.stage_timeout = True
            if (scope.cancelled_caught or timer_c_fired) and branch.final is None and branch.txn is not None:
                # Cleanup I/O is shielded and bounded (RFC 3261 9.1: CANCEL after a provisional, absorb the 487).
                with trio.CancelScope(shield=True):
                    with trio.move_on_after(64 * self.proxy.timers.t1):
                        await self._cancel_branch(branch)
        finally:
            branch.done = True
            branch.send_channel = branch.recv_channel = None
            send.close()
            recv.close()
            if branch.txn is not None and branch.txn.user is branch and branch.final is None:
                self.proxy.detach(branch.txn)

    async def _branch_body(self, branch: Branch) -> bool:
        """Send the branch and wait for its final response. True when Timer C fired after a provisional."""
        proxy = self.proxy
        target = branch.target
        base_req, hop = prepare_branch(
            self.request, target.uri.copy(), path=target.path, max_forwards=self.decrement_max_forwards
        )
        if self.branch_breadth is not None:
            base_req.set("Max-Breadth", str(self.branch_breadth))
        branch.request = base_req
        if not await proxy.router.on_branch(self, branch):
            self.note("branch_dropped", index=branch.index)
            return False
        self.stage_sent += 1
        self.branches_sent += 1
        base_req = branch.request
        if target.dst is not None:
            hop = target.dst
        ws_dests = ws_destinations(hop, self.route_params, explicit=target.dst is not None)
        ws_hop = target.received is None and ws_dests is not None
        if target.received is not None:
            dests = [target.received]
        elif ws_dests is not None:
            # RFC 7118: a WebSocket peer is reached only over the connection it opened: never located (its
            # host is often ".invalid"), never connected to; in a dialog, over the flow our Route recorded.
            dests = ws_dests
        else:
            try:
                dests = await proxy.locate(hop)  # RFC 3263, inside this branch's cancel scope
            except LocateError as exc:
                log.info("cannot locate %s: %s", hop, exc)
                await self.on_response(branch, self.local_response(exc.status, "DNS Failure"), local=True)
                return False
        if (ws_hop or any(d.transport in WS_TRANSPORTS for d in dests)) and not any(
            flow_open(proxy, d) for d in dests
        ):
            # The WebSocket client has gone away: fail at once rather than after a timer.
            await self.on_response(branch, self.local_response(480, "Temporarily Unavailable"), local=True)
            return False
        dests = proxy.filter_blocked(dests)
        if not dests:
            # No server for the name (RFC 3263 4.4 found nothing): the answer Kamailio users know.
            await self.on_response(branch, self.local_response(478, "Unresolvable Destination"), local=True)
            return False
        # Only addresses one of our listeners can send to (an IPv6 next hop needs an IPv6 listener of its
        # transport); none left is a transport error on this branch (RFC 3261 16.9: as if a 503).
        usable: list[tuple[Address, Address]] = []
        for dest in dests:
            try:
                usable.append((dest, proxy.local_address(dest)))
            except TransportError as exc:
                log.info("cannot send to %s: %s", dest, exc)
        if not usable:
            await self.on_response(branch, self.local_response(503, "No Suitable Transport"), local=True)
            return False
        dests = [dest for dest, _local in usable]
        for i, (dest, local) in enumerate(usable):
            req = base_req.copy()
            if self.record_route:
                rr = record_route_values(
                    self.inbound, local, self.record_route_params, source=self.original.source, dest=dest
                )
                for value in reversed(rr):
                    req.insert_top("Record-Route", value)
            req.insert_top("Via", via_value(local, make_branch_id(self.loop_hash)))
            branch.request, branch.dest, branch.provisional = req, dest, False
            self.note("branch", index=branch.index, uri=str(req.uri), dest=str(dest))
            await proxy.start_branch_transaction(branch, req, dest)
            outcome = await self._wait_final(branch)
            if outcome == "timer_c":
                return True
            assert isinstance(outcome, tuple)
            response, is_local = outcome
            # RFC 3263 4.3 / RFC 3261 16.9: a transport error, a timeout or a 503 moves on to the next address.
            if is_local or response.status == 503:
                proxy.block(dest, response.status)
                if i + 1 < len(dests):
                    continue
            if is_local and response.status == 408:
                self.stage_timeout = True
            elif not is_local:
                self.stage_replied = True
            await self.on_response(branch, response, local=is_local)
            return False
        return False

    async def _wait_final(self, branch: Branch) -> tuple[Response, bool] | str:
        """Receive this branch's responses until a final; apply Timer C / fr_inv_timer (16.6 step 11)."""
        assert branch.recv_channel is not None
        proxy = self.proxy
        is_invite = self.original.method == "INVITE"
        ring = self.fr_inv_timeout if self.fr_inv_timeout is not None else proxy.timers.timer_c
        first = self.fr_timeout if self.fr_timeout is not None else math.inf
        deadline = trio.current_time() + (first if not is_invite else min(first, ring))
        while True:
            with trio.move_on_at(deadline) as timer:
                event = await branch.recv_channel.receive()
            if timer.cancelled_caught:
                if branch.provisional and is_invite:
                    return "timer_c"  # 16.8: Timer C with a provisional: CANCEL the branch
                proxy.abandon_client(branch)
                return self.local_response(408, "Request Timeout"), True
            resp, is_local = self._event_response(event)
            if resp.status < 200:
                if resp.status > 100 and is_invite:
                    deadline = trio.current_time() + ring  # Timer C restarts on 101-199
                branch.provisional = True  # any provisional allows a CANCEL (RFC 3261 9.1)
                await self.on_response(branch, resp)
                continue
            return resp, is_local

    async def _cancel_branch(self, branch: Branch) -> None:
        """A stopped INVITE branch: wait for a provisional if none came (9.1), CANCEL, absorb the 487."""
        assert branch.recv_channel is not None and branch.request is not None
        if self.original.method != "INVITE":
            return
        while not branch.provisional:
            resp, is_local = self._event_response(await branch.recv_channel.receive())
            if resp.status >= 200:
                await self.on_response(branch, resp, local=is_local)
                return
            branch.provisional = True
        await self.proxy.send_cancel(branch, make_cancel(branch.request))
        while True:
            resp, is_local = self._event_response(await branch.recv_channel.receive())
            if resp.status >= 200:
                await self.on_response(branch, resp, local=is_local)
                return

    def _event_response(self, event: BranchEvent) -> tuple[Response, bool]:
        if event.response is not None:
            return event.response, False
        if event.timeout:
            return self.local_response(408, "Request Timeout"), True
        return self.local_response(503, "Service Unavailable"), True

    def local_response(self, status: int, reason: str) -> Response:
        return make_response(self.original, status, reason, to_tag=self.to_tag or None)

    # -- responses ----------------------------------------------------------------------------------------

    async def on_response(self, branch: Branch, response: Response, *, local: bool = False) -> None:
        """A branch got a response (16.7): forward, store, cancel the others, as the context decides."""
        if response.status >= 200:
            branch.final = response
            self.note("response", index=branch.index, status=response.status, local=local)
        if not local:
            response.pop_first("Via")  # 16.7 step 3: remove the topmost Via, ours
            if not await self._reply_hook(branch, response):
                return
            self._caller_vias(response)
            if 200 <= response.status < 300 and response.body:
                self._keep_2xx_body(response)
        disposition = self.rc.classify(response)
        if disposition in (Disposition.FORWARD, Disposition.FORWARD_AND_CANCEL):
            if response.status >= 200:
                self.final_status = response.status
            await self.proxy.respond(self, response)
        if disposition in (Disposition.FORWARD_AND_CANCEL, Disposition.STORE_AND_CANCEL):
            self.cancel_branches(except_branch=branch)

    async def _reply_hook(self, branch: Branch, response: Response) -> bool:
        """The router's reply hook; False drops a provisional. A final is never dropped (as in Kamailio's
        transaction reply routes): the branch has ended and the request still owes its caller one answer."""
        try:
            keep = await self.proxy.router.on_response(self, branch, response)
        except Exception as exc:  # a router fault: the response goes on as if the hook had not run
            log.error("reply route error for %s %s: %r", self.original.method, self.original.uri, exc)
            self.note("reply_error", status=response.status, error=repr(exc)[:200])
            return True
        if not keep and response.status >= 200:
            log.info("a reply route dropped a final %d: ignored (one final answer is owed)", response.status)
            return True
        return keep

    def _caller_vias(self, response: Response) -> None:
        """Give a response going upstream the Vias of the request as the caller sent it (RFC 3261 16.7 step 3,
        18.2.2): a callee that dropped or rewrote one cannot misroute it."""
        vias = self.original.get_all("Via")
        if response.get_all("Via") != vias:
            response.remove("Via")
            for value in reversed(vias):
                response.insert_top("Via", value)

    def release(self) -> None:
        """Drop what a finished request no longer needs.

        Its transactions linger (Timer D/K/L/M: 32 s) and keep the context reachable so that a late 2xx can
        still be forwarded; only the server transaction, the original request and the branches' slots are
        needed for that, not the copies, responses and route state.
        """
        if self.server_txn is not None and self.server_txn.user is self:
            self.server_txn.user = None  # a CANCEL now finds nothing to cancel (16.10: too late)
        self.request = self.original
        self.user_state = None
        self.rc.finals.clear()
        self.pending_stage = None
        self.stage_branches = []
        # Break the reference cycles (context <-> branch <-> client transaction), so that all of it is freed
        # by reference counting when the last transaction ends, not by the cyclic garbage collector: under load
        # its full collections over that garbage pause the event loop for hundreds of milliseconds.
        for b in self.branches:
            b.request = None
            b.final = None
            b.target = _RELEASED_TARGET
            b.txn = None
            b.scope = None
        self.branches = []

    def _keep_2xx_body(self, response: Response) -> None:
        # The body of a 2xx as it went upstream (a reply route may have rewritten it: rtpengine's SDP), by
        # To tag, so that the callee's retransmissions of that 2xx carry the same body to the caller.
        tag = response.to.tag
        if tag is not None:
            self.forwarded_2xx_bodies[tag] = (response.body, response.get("Content-Type"))

    async def forward_late_2xx(self, response: Response) -> None:
        """A 2xx that arrived after its branch ended still goes upstream (16.7 step 5, RFC 6026).

        A retransmission of a 2xx already forwarded carries the body that went upstream the first time (its
        reply route no longer runs: the route state is released when the request ends)."""
        response.pop_first("Via")
        self._caller_vias(response)
        kept = self.forwarded_2xx_bodies.get(response.to.tag or "")
        if kept is not None and response.body and kept[0] != response.body:
            response.set_body(kept[0], kept[1])
        self.rc.classify(response)
        await self.proxy.respond(self, response)


def max_breadth_of(request: Request, default: int) -> int | None:
    """RFC 5393: the Max-Breadth a request allows (its header, else ``default``); None when neither is set
    (``default`` 0 turns the mechanism off for requests without the header)."""
    value = request.get("Max-Breadth")
    if value is not None and value.strip().isdigit() and len(value.strip()) <= 9:
        return int(value.strip())
    return default if default > 0 else None


def flow_open(proxy: Any, dest: Address) -> bool:
    # Whether a message to dest can leave now: always for UDP/TCP/TLS (connections are opened on demand),
    # for WS/WSS only over the live connection the peer opened.
    if dest.transport not in WS_TRANSPORTS:
        return True
    connection = getattr(proxy.transports, "connection", None)
    return connection is not None and connection(dest) is not None
