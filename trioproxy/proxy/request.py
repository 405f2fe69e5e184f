"""One proxied request: the API routers use, its stages of branches, and the best response (RFC 3261 16.7).

Theory of operation
-------------------
Every request that passes validation gets a ``RequestContext`` and one task in the proxy's request nursery
(``Proxy`` runs the route and applies its decision; see ``trioproxy.proxy.core``). What a router may do with a
request is this object's API: ``reply``/``send`` (an answer from the proxy), ``relay(targets, record_route=,
timers=, ...)`` (record a stage of targets; the core starts it when the route returns), ``drop()`` (no
answer at all), ``note`` (the per-call trace), and read-only views of the outcome (``final_sent``,
``best_response``, ``canceled``, ``stage_timeout``, ``stage_replied``). The working copy of the request that
branches are made from (``request``) is made on first use; until then the request as received is all there
is.

``run_stages`` runs the recorded stages: a stage with one target runs its branch in the request's own task
(inside the branch's cancel scope), a stage that forks runs one task per branch in a nursery the request
owns. After a stage that sent a branch and got no 2xx the router's failure hook runs (a Kamailio
``failure_route``), also after the caller's CANCEL or a 6xx, where a relay makes no new branch (16.10, 16.7
step 5); then the best response goes upstream (16.7 step 6).

Exactly one final response per request: whatever the router's hooks do (answer, relay again, raise, drop),
the request ends by sending the best response unless a final already went (a 2xx, the router's own reply);
the router's explicit drop in its request hook is the one way to send none. Every response goes upstream
with the Vias of the request as the caller sent it (the server transaction's request), never of a working
copy or of what a callee echoed. A branch's life is ``trioproxy.proxy.branch``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import trio

from trioproxy.proxy.branch import Branch
from trioproxy.proxy.forward import preprocess_routes
from trioproxy.proxy.interfaces import BranchEvent, Core, RelayTimers, TransactionUser
from trioproxy.proxy.response_context import Disposition, ResponseContext
from trioproxy.proxy.router import Target
from trioproxy.proxy.trace import RequestTrace
from trioproxy.sip import Address, Request, Response, make_response, parse_uri_untrusted, reason_phrase
from trioproxy.transaction import ServerTransaction

__all__ = ["LateForwarder", "RequestContext", "max_breadth_of"]

log = logging.getLogger("trioproxy.proxy")

_NO_TIMERS = RelayTimers()


class RequestContext:
    """The state of one request the proxy handles, and the operations a router may use."""

    __slots__ = (
        "_pending",
        "_vias",
        "_work",
        "branch_breadth",
        "branches",
        "branches_sent",
        "canceled",
        "core",
        "decrement_max_forwards",
        "dropped",
        "final_status",
        "forwarded_2xx_bodies",
        "in_dialog",
        "inbound",
        "loop_hash",
        "original",
        "rc",
        "record_route",
        "record_route_params",
        "relay_timers",
        "reply_no_connect",
        "route_params",
        "server_txn",
        "stage_branches",
        "stage_replied",
        "stage_sent",
        "stage_timeout",
        "stages_run",
        "started",
        "stateless",
        "to_tag",
        "trace",
        "trying_sent",
        "user_state",
    )

    def __init__(
        self,
        core: Core,
        original: Request,
        server_txn: ServerTransaction | None,
        loop_hash: str,
        inbound: Address,
        *,
        stateless: bool = False,
        trace: RequestTrace | None = None,
        to_tag: str = "",
    ) -> None:
        self.core = core
        self.original = original  # as received (the server transaction's request)
        self.server_txn = server_txn
        self.loop_hash = loop_hash
        self.inbound = inbound  # our listener the request came in on
        self.stateless = stateless
        self.trace = trace  # route decisions, for GET /trace/<call-id>
        self.to_tag = to_tag
        self.in_dialog = original.to.tag is not None
        self._work: Request | None = None
        # 16.4 route pre-processing, on the working copy only when there is something to remove.
        uri = original.uri
        self.route_params: str | None = None  # parameters of our own Route removed by 16.4 pre-processing
        if original.has("Route") or (uri.user is None and "lr" in uri.params):
            self.route_params = preprocess_routes(self.request, core.is_myself)
        self.record_route = False
        self.record_route_params = ""
        self.decrement_max_forwards = True
        self.relay_timers = _NO_TIMERS
        self.reply_no_connect = False  # Kamailio's set_reply_no_connect
        self.dropped = False
        self.canceled = False
        self.trying_sent = False
        self.user_state: Any = None  # free for the router (for example the next serial stage)
        self.rc = ResponseContext(is_invite=original.method == "INVITE")
        self.branches: list[Branch] = []
        self.stage_branches: list[Branch] = []
        self._pending: list[Target] | None = None
        self._vias: list[str] | None = None
        self.stage_timeout = False  # a branch of the last stage got no final answer in time
        self.stage_replied = False  # a branch of the last stage got a final answer from downstream
        self.stage_sent = 0  # branches of the last stage that passed the branch hook
        self.branches_sent = 0  # branches of every stage that passed the branch hook
        self.stages_run = 0
        self.branch_breadth: int | None = None  # RFC 5393: the Max-Breadth each branch of this stage carries
        self.final_status: int | None = None
        self.started = time.monotonic()
        # Bodies of the 2xx responses sent upstream, by To tag (retransmissions go up with the same body).
        self.forwarded_2xx_bodies: dict[str, tuple[bytes, str | None]] = {}

    @property
    def request(self) -> Request:
        """The working copy that branches are made from; routers edit it (copied on first use)."""
        work = self._work
        if work is None:
            work = self._work = self.original.copy()
        return work

    def note(self, kind: str, **data: object) -> None:
        """Record a route decision for the per-call trace (values kept raw, formatted only when read)."""
        trace = self.trace
        if trace is not None:
            trace.note(kind, time.monotonic(), data)

    # -- operations for routers ------------------------------------------------------------------------

    @property
    def final_sent(self) -> bool:
        """Whether a final response went upstream (or was given up, RFC 4320)."""
        return self.rc.final_sent

    @property
    def decided(self) -> bool:
        """Whether the route answered, relayed, dropped, or the caller cancelled."""
        return self.rc.final_sent or self._pending is not None or self.dropped or self.canceled

    def is_myself(self, uri: Any) -> bool:
        """Whether a URI names this proxy (a listener or a configured domain)."""
        return self.core.is_myself(uri)

    async def reply(
        self,
        status: int,
        reason: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
        *,
        no_connect: bool | None = None,
    ) -> bool:
        """Answer the request from the proxy itself (provisional or final). False if a final already went."""
        if no_connect is not None:
            self.reply_no_connect = no_connect
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
        await self._upstream(resp)
        return True

    async def send(self, response: Response, *, no_connect: bool | None = None) -> bool:
        """Send a response built elsewhere (for example by the registrar) as this request's answer."""
        if no_connect is not None:
            self.reply_no_connect = no_connect
        if self.stateless or (response.status >= 200 and self.rc.final_sent):
            return False
        if response.status >= 200:
            self.rc.final_sent = True
            self.final_status = response.status
            self.cancel_branches()
        await self._upstream(response)
        return True

    async def send_trying(self, *, no_connect: bool | None = None) -> None:
        """The automatic 100 Trying of an INVITE (RFC 3261 16.2, 17.2.1), at most once, never after a final.

        The proxy calls it before a router that does not defer it runs, and otherwise when the route first
        waits or ends, so that what the route did to the request (``force_rport`` stamping the top Via)
        decides where the 100 goes.
        """
        if no_connect is not None:
            self.reply_no_connect = no_connect
        if self.trying_sent or self.stateless or self.rc.final_sent or self.original.method != "INVITE":
            return
        self.trying_sent = True
        await self._upstream(make_response(self.original, 100, "Trying"))

    async def relay(
        self,
        targets: Sequence[Target] | None = None,
        *,
        record_route: bool | None = None,
        record_route_params: str | None = None,
        timers: RelayTimers | None = None,
        max_forwards: bool | None = None,
        no_connect: bool | None = None,
    ) -> int:
        """Fork to ``targets`` (default: the Request-URI). Kamailio-style result: 1 ok, negative refused.

        ``record_route`` adds our Record-Route (with ``record_route_params``) to the branches, ``timers``
        sets fr_timer / fr_inv_timer, ``max_forwards=False`` leaves Max-Forwards as it is (the script did
        it), ``no_connect`` sends responses only over a connection already open; each applies to this and
        later stages. The branches start when the route returns (a stage); a stateless request (an ACK for a
        2xx, a CANCEL with no transaction) is forwarded at once to the first target.
        """
        if record_route is not None:
            self.record_route = record_route
        if record_route_params is not None:
            self.record_route_params = record_route_params
        if timers is not None:
            self.relay_timers = RelayTimers(
                timers.fr if timers.fr is not None else self.relay_timers.fr,
                timers.fr_inv if timers.fr_inv is not None else self.relay_timers.fr_inv,
            )
        if max_forwards is not None:
            self.decrement_max_forwards = max_forwards
        if no_connect is not None:
            self.reply_no_connect = no_connect
        if targets is None:
            targets = [Target(self.request.uri.copy())]
        if not targets:
            return -1
        if self.trace is not None:
            shown = tuple(targets)
            self.note("relay", targets=lambda: [_target_text(t) for t in shown])
        if self.stateless:
            ok = await self.core.forward_stateless(
                self.request, self.original, targets[0], self.route_params, self.decrement_max_forwards
            )
            return 1 if ok else -1
        if not self.rc.may_branch or self.canceled:
            return -2  # RFC 3261 16.7 step 5: no new branches after a 6xx or a final
        if self._pending is None:
            self._pending = []
        self._pending.extend(targets)
        return 1

    def set_reply_no_connect(self, on: bool) -> None:
        """Kamailio's ``set_reply_no_connect``: this request's responses only go over an open connection."""
        self.reply_no_connect = on

    def drop(self) -> None:
        """Send no answer at all (the transaction layer's timers end the server transaction)."""
        self.dropped = True

    def discard_relay(self) -> None:
        """Forget the targets recorded by ``relay`` that have not started yet (a failed failure route)."""
        self._pending = None

    @property
    def pending_targets(self) -> list[Target] | None:
        """The targets ``relay`` recorded for the next stage (None: no relay)."""
        return self._pending

    @property
    def best_response(self) -> Response | None:
        """The response that would go upstream now (a 487 after the caller's CANCEL; None: none stored)."""
        return self.rc.best(canceled=self.canceled)

    def cancel_branches(self, *, except_branch: Branch | None = None) -> None:
        for b in self.stage_branches:
            if b is not except_branch:
                b.stop()

    def cancel(self) -> None:
        """The caller sent CANCEL (16.10): stop every pending branch; the 487s decide the answer."""
        self.canceled = True
        self.cancel_branches()

    # -- stages ------------------------------------------------------------------------------------------

    async def run_stages(self) -> None:
        """Run the stages the router asked for, then send the one final response (16.7 step 6).

        After a stage that sent a branch and got no 2xx the failure hook runs; it may reply (that is the
        final), relay again (a new stage, refused after a CANCEL or a 6xx), or return. A hook that raises
        is logged and its relay discarded; the best response still goes upstream.
        """
        while not self.rc.final_sent:
            targets, self._pending = self._pending, None
            if not targets:
                break
            await self._run_stage(targets)
            if self.rc.final_sent or not self.stage_sent:
                break  # a 2xx went up, or no branch left (all dropped, or cancelled before they started)
            await self._failure_hook()
        self._pending = None
        if not self.rc.final_sent:
            await self.send_best()

    async def _failure_hook(self) -> None:
        try:
            await self.core.router.on_failure(self)
        except Exception as exc:  # a router fault: its decisions are void, the best response goes up
            log.error("failure route error for %s %s: %r", self.original.method, self.original.uri, exc)
            self.note("failure_error", error=repr(exc)[:200])
            self._pending = None

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
            # RFC 4320: a stateful element never sends 408 to a non-INVITE; the client times out itself. The
            # table keeps the server transaction to absorb retransmissions and ends it by its guard timer.
            self.rc.final_sent = True
            self.final_status = 408
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
        await self._upstream(best)

    async def _run_stage(self, targets: Sequence[Target]) -> None:
        breadth = max_breadth_of(self.original, self.core.max_breadth)
        if breadth is not None:
            # RFC 5393 5.3: the stage's parallel branches share the breadth; more than it allows: 440.
            if len(targets) > breadth:
                self.note("max_breadth", targets=len(targets), breadth=breadth)
                await self.reply(440, "Max-Breadth Exceeded")
                return
            self.branch_breadth = breadth // len(targets)
        self.stages_run += 1
        self.stage_timeout = self.stage_replied = False
        self.stage_sent = 0
        if len(targets) == 1:
            # One target: its branch runs in this task, inside its own cancel scope (no nursery needed). One
            # scheduling round first, as a branch task would take: a request that arrived just before this
            # one (the ACK of a 2xx, routed statelessly, before the BYE that follows it) reaches the wire first.
            branch = Branch(self, len(self.branches), targets[0])
            self.branches.append(branch)
            self.stage_branches = [branch]
            await trio.lowlevel.checkpoint()
            await branch.run()
        else:
            self.stage_branches = []
            async with trio.open_nursery() as nursery:
                for target in targets:
                    if not self.rc.may_branch or self.canceled:
                        break
                    branch = Branch(self, len(self.branches), target)
                    self.branches.append(branch)
                    self.stage_branches.append(branch)
                    await nursery.start(branch.run)
        self.stage_branches = []

    # -- what branches report (trioproxy.proxy.branch.BranchOwner) ----------------------------------------

    async def branch_hook(self, branch: Branch) -> bool:
        """The router's branch hook on the branch's own request copy; False drops the branch."""
        if not await self.core.router.on_branch(self, branch):
            self.note("branch_dropped", index=branch.index)
            return False
        self.stage_sent += 1
        self.branches_sent += 1
        return True

    def branch_outcome(self, *, timeout: bool = False, replied: bool = False) -> None:
        if timeout:
            self.stage_timeout = True
        if replied:
            self.stage_replied = True

    def local_response(self, status: int, reason: str) -> Response:
        return make_response(self.original, status, reason, to_tag=self.to_tag or None)

    async def on_response(self, branch: Branch, response: Response, *, local: bool = False) -> None:
        """A branch got a response (16.7): forward, store, cancel the others, as the context decides."""
        status = response.status
        if status >= 200:
            branch.final = response
            self.note("response", index=branch.index, status=status, local=local)
        if not local:
            response.pop_first("Via")  # 16.7 step 3: remove the topmost Via, ours
            if not await self._reply_hook(branch, response):
                return
        disposition = self.rc.classify(response)
        if disposition is Disposition.DROP:
            return  # a 100, or a late non-2xx: nothing goes upstream (no need to fix its Vias)
        if not local:
            self._caller_vias(response)  # also for a stored final: it may go upstream as the best
            if 200 <= status < 300 and response.body:
                self._keep_2xx_body(response)
        if disposition is Disposition.FORWARD or disposition is Disposition.FORWARD_AND_CANCEL:
            if status >= 200:
                self.final_status = status
            await self._upstream(response)
        if disposition is Disposition.FORWARD_AND_CANCEL or disposition is Disposition.STORE_AND_CANCEL:
            self.cancel_branches(except_branch=branch)

    async def _reply_hook(self, branch: Branch, response: Response) -> bool:
        """The router's reply hook; False drops a provisional. A final is never dropped (as in Kamailio's
        transaction reply routes): the branch has ended and the request still owes its caller one answer."""
        try:
            keep = await self.core.router.on_response(self, branch, response)
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
        vias = self._vias
        if vias is None:
            vias = self._vias = self.original.get_all("Via")
        _give_vias(response, vias)

    def _keep_2xx_body(self, response: Response) -> None:
        # The body of a 2xx as it went upstream (a reply route may have rewritten it: rtpengine's SDP), by
        # To tag, so that the callee's retransmissions of that 2xx carry the same body to the caller.
        tag = response.to.tag
        if tag is not None:
            self.forwarded_2xx_bodies[tag] = (response.body, response.get("Content-Type"))

    def late_2xx(self, response: Response) -> None:
        """A 2xx for a branch that has ended: forwarded upstream by a task of its own."""
        self.core.spawn(self.forward_late_2xx, response)

    async def forward_late_2xx(self, response: Response) -> None:
        """A 2xx that arrived after its branch ended still goes upstream (16.7 step 5, RFC 6026).

        A retransmission of a 2xx already forwarded carries the body that went upstream the first time (its
        reply route no longer runs: the route state is released when the request ends)."""
        self.rc.classify(response)
        await self._late_forwarder().forward(response)

    def _late_forwarder(self) -> LateForwarder:
        vias = self._vias
        if vias is None:
            vias = self._vias = self.original.get_all("Via")
        return LateForwarder(
            self.core, self.server_txn, self.original.flow, vias, self.forwarded_2xx_bodies, self.reply_no_connect
        )

    async def _upstream(self, response: Response) -> None:
        await self.core.respond(self.server_txn, self.original.flow, response, no_connect=self.reply_no_connect)

    def release(self) -> None:
        """Drop what a finished request no longer needs.

        Its transactions linger (Timer D/K/L/M: 32 s) and keep the context reachable so that a late 2xx can
        still be forwarded; only the server transaction, the original request and the branches' slots are
        needed for that, not the copies, responses and route state.
        """
        if self.server_txn is not None and self.server_txn.user is self:
            self.server_txn.user = None  # a CANCEL now finds nothing to cancel (16.10: too late)
        self._work = None
        self.user_state = None
        self.rc.finals.clear()
        self._pending = None
        self.stage_branches = []
        # A client transaction that lingers (an INVITE's, RFC 6026 Accepted: 32 s) still passes up late 2xx
        # responses: to a forwarder that keeps only what that takes, not this context and its requests.
        forwarder: LateForwarder | None = None
        for b in self.branches:
            txn = b.txn
            if txn is not None and txn.user is b:
                if forwarder is None:
                    forwarder = self._late_forwarder()
                txn.user = forwarder
        # Break the reference cycles (context <-> branch <-> client transaction), so that all of it is freed
        # by reference counting when the last transaction ends, not by the cyclic garbage collector: under load
        # its full collections over that garbage pause the event loop for hundreds of milliseconds.
        for b in self.branches:
            b.request = None
            b.final = None
            b.target = _RELEASED_TARGET
            b.txn = None
        self.branches = []


class LateForwarder(TransactionUser):
    """What a finished request keeps for its lingering client transactions: a late 2xx (or a retransmission
    of the one forwarded) goes upstream with the caller's Vias and the body that went up first."""

    __slots__ = ("bodies", "core", "flow", "no_connect", "server_txn", "vias")

    def __init__(
        self,
        core: Core,
        server_txn: ServerTransaction | None,
        flow: Any,
        vias: list[str],
        bodies: dict[str, tuple[bytes, str | None]],
        no_connect: bool,
    ) -> None:
        self.core = core
        self.server_txn = server_txn
        self.flow = flow
        self.vias = vias
        self.bodies = bodies
        self.no_connect = no_connect

    def deliver(self, event: BranchEvent) -> None:
        response = event.response
        if response is not None and 200 <= response.status < 300:
            self.core.spawn(self.forward, response)

    async def forward(self, response: Response) -> None:
        response.pop_first("Via")  # ours
        _give_vias(response, self.vias)
        kept = self.bodies.get(response.to.tag or "")
        if kept is not None and response.body and kept[0] != response.body:
            response.set_body(kept[0], kept[1])
        await self.core.respond(self.server_txn, self.flow, response, no_connect=self.no_connect)


def _give_vias(response: Response, vias: list[str]) -> None:
    # The response goes upstream with exactly the caller's Vias (RFC 3261 16.7 step 3, 18.2.2).
    if response.get_all("Via") != vias:
        response.remove("Via")
        for value in reversed(vias):
            response.insert_top("Via", value)


def _target_text(target: Target) -> str:
    return str(target.uri) + (f" via {target.dst}" if target.dst else "")


def max_breadth_of(request: Request, default: int) -> int | None:
    """RFC 5393: the Max-Breadth a request allows (its header, else ``default``); None when neither is set
    (``default`` 0 turns the mechanism off for requests without the header)."""
    value = request.get("Max-Breadth")
    if value is not None and value.strip().isdigit() and len(value.strip()) <= 9:
        return int(value.strip())
    return default if default > 0 else None


_RELEASED_TARGET = Target(parse_uri_untrusted("sip:released.invalid"))
