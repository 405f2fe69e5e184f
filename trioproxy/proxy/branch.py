"""One branch of a proxied request and its whole life (RFC 3261 16.6-16.10, RFC 3263 4.3).

Theory of operation
-------------------
A ``Branch`` is made by its request for one target of a stage and run by ``Branch.run``: in a task of the
stage's nursery when the stage forks, or directly in the request's task when the stage has one target (the
same code, the same cancel scope, no nursery). ``run`` builds the branch's request (16.6), lets the router's
branch hook see it, locates the next hop (inside the branch's cancel scope), starts the client transaction
and waits for the final response, applying ``fr_timer`` and Timer C / ``fr_inv_timer`` (16.6 step 11, 16.8).
The next hop's addresses are tried in order: a transport error, a timeout (Timer B/F) or a 503 moves to the
next one with a new Via branch; the request sees one final answer per branch.

Events reach the branch by a callback: the dispatcher calls ``deliver`` (never blocking), which queues the
event (bounded) and wakes the branch through a ``trio.lowlevel.ParkingLot``. After the branch has ended, a 2xx
delivered to it (a late 2xx, or a retransmission of the one that ended it) still goes upstream through its
request (16.7 step 5, RFC 6026 7.2).

Stopping a branch (first 2xx, a 6xx, the caller's CANCEL, Timer C) is cancelling its scope (``stop``). The
branch then runs its own shielded cleanup, bounded by 64*T1: it waits for a provisional if none came yet
(RFC 3261 9.1), sends a CANCEL, and absorbs the 487, still passing up a late 2xx.

What a branch needs of its request is ``BranchOwner``; of the proxy, ``trioproxy.proxy.interfaces.Core``.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from typing import TYPE_CHECKING, Protocol

import trio

from trioproxy.faults import call_id_of, contain
from trioproxy.locate import LocateError
from trioproxy.proxy.forward import (
    make_branch_id,
    prepare_branch,
    record_route_values,
    via_value,
    ws_destinations,
)
from trioproxy.proxy.interfaces import BranchEvent, Core, RelayTimers, TransactionUser
from trioproxy.sip import Address, Request, Response, make_cancel
from trioproxy.transaction import ClientTransaction
from trioproxy.transport import TransportError
from trioproxy.transport.types import WS_TRANSPORTS

if TYPE_CHECKING:
    from trioproxy.proxy.router import Target

__all__ = ["Branch", "BranchOwner"]

log = logging.getLogger("trioproxy.proxy")

# Events queued for a branch that has not taken them yet; beyond, the branch counts as flooded.
_MAX_QUEUED = 32


class BranchOwner(Protocol):
    """What a branch needs of the request it belongs to (``RequestContext`` implements it)."""

    core: Core
    original: Request
    loop_hash: str
    inbound: Address
    route_params: str | None
    record_route: bool
    record_route_params: str
    decrement_max_forwards: bool
    branch_breadth: int | None
    relay_timers: RelayTimers

    @property
    def request(self) -> Request: ...

    def note(self, kind: str, **data: object) -> None: ...

    async def branch_hook(self, branch: Branch) -> bool: ...

    async def on_response(self, branch: Branch, response: Response, *, local: bool = False) -> None: ...

    def local_response(self, status: int, reason: str) -> Response: ...

    def branch_outcome(self, *, timeout: bool = False, replied: bool = False) -> None: ...

    def late_2xx(self, response: Response) -> None: ...


class Branch(TransactionUser):
    """One branch of a request: a target, its request copy, its client transaction, its outcome."""

    __slots__ = (
        "_events",
        "_live",
        "_lot",
        "dest",
        "done",
        "final",
        "index",
        "owner",
        "provisional",
        "request",
        "scope",
        "target",
        "txn",
    )

    def __init__(self, owner: BranchOwner, index: int, target: Target) -> None:
        self.owner = owner
        self.index = index
        self.target = target
        self.request: Request | None = None
        self.txn: ClientTransaction | None = None
        self.dest: Address | None = None
        self.provisional = False
        self.final: Response | None = None
        self.done = False
        self.scope = trio.CancelScope()
        self._events: deque[BranchEvent] = deque()
        self._lot = trio.lowlevel.ParkingLot()
        self._live = False

    @property
    def ctx(self) -> BranchOwner:
        """The request this branch belongs to (the name routers use)."""
        return self.owner

    # -- events ------------------------------------------------------------------------------------------

    def deliver(self, event: BranchEvent) -> None:
        """Called by the dispatcher or the timer task (never blocks): queue an event for the branch."""
        if self._live and len(self._events) < _MAX_QUEUED:
            self._events.append(event)
            self._lot.unpark()
            return
        # The branch is gone or flooded; a late 2xx (such as a retransmission of the 2xx that ended the
        # branch) still has to reach the caller (RFC 6026 7.2).
        if event.response is not None and 200 <= event.response.status < 300:
            self.owner.late_2xx(event.response)

    async def _next(self) -> tuple[Response, bool]:
        """The next event as a response, and whether it is a local one (408 timeout, 503 transport error)."""
        events = self._events
        while not events:
            await self._lot.park()
        event = events.popleft()
        if event.response is not None:
            return event.response, False
        if event.timeout:
            return self.owner.local_response(408, "Request Timeout"), True
        return self.owner.local_response(503, "Service Unavailable"), True

    # -- life --------------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the branch (first 2xx elsewhere, a 6xx, the caller's CANCEL): it cancels itself downstream."""
        if not self.done:
            self.scope.cancel()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The branch's life, inside its own cancel scope; then the shielded, bounded CANCEL cleanup."""
        owner = self.owner
        scope = self.scope
        self._live = True
        task_status.started()
        timer_c_fired = False
        try:
            with scope:
                try:
                    timer_c_fired = await self._body()
                except Exception as exc:  # the branch's boundary: a local 500
                    await self._failed(exc)
            if timer_c_fired:
                owner.branch_outcome(timeout=True)
            if (scope.cancelled_caught or timer_c_fired) and self.final is None and self.txn is not None:
                # Cleanup I/O is shielded and bounded (RFC 3261 9.1: CANCEL after a provisional, absorb the 487).
                with trio.CancelScope(shield=True), trio.move_on_after(64 * owner.core.timers.t1):
                    await self._cancel()
        finally:
            self.done = True
            self._live = False
            self._events.clear()
            txn = self.txn
            if txn is not None and txn.user is self and self.final is None:
                txn.user = None

    async def _failed(self, exc: Exception) -> None:
        """The boundary of a branch: the fault is logged and counted, the branch ends with a local 500 (so the
        request still gets its best response, 16.7 step 6)."""
        owner = self.owner
        contain("branch", exc, call_id=call_id_of(owner.original))
        if self.final is not None:
            return
        try:
            await owner.on_response(self, owner.local_response(500, "Server Internal Error"), local=True)
        except Exception as again:  # the request's boundary answers
            contain("branch", again, call_id=call_id_of(owner.original), detail="ending the branch")

    async def _fail(self, status: int, reason: str) -> bool:
        await self.owner.on_response(self, self.owner.local_response(status, reason), local=True)
        return False

    async def _body(self) -> bool:
        """Send the branch and wait for its final response. True when Timer C fired after a provisional."""
        owner = self.owner
        core = owner.core
        target = self.target
        base_req, hop = prepare_branch(
            owner.request, target.uri.copy(), path=target.path, max_forwards=owner.decrement_max_forwards
        )
        if owner.branch_breadth is not None:
            base_req.set("Max-Breadth", str(owner.branch_breadth))
        self.request = base_req
        if not await owner.branch_hook(self):
            return False
        base_req = self.request
        if target.dst is not None:
            hop = target.dst
        ws_dests = ws_destinations(hop, owner.route_params, explicit=target.dst is not None)
        ws_hop = target.received is None and ws_dests is not None
        if target.received is not None:
            dests = [target.received]
        elif ws_dests is not None:
            # RFC 7118: a WebSocket peer is reached only over the connection it opened: never located (its
            # host is often ".invalid"), never connected to; in a dialog, over the flow our Route recorded.
            dests = ws_dests
        else:
            try:
                dests = await core.locate(hop)  # RFC 3263, inside this branch's cancel scope
            except LocateError as exc:
                log.info("cannot locate %s: %s", hop, exc)
                return await self._fail(exc.status, "DNS Failure")
        if (ws_hop or any(d.transport in WS_TRANSPORTS for d in dests)) and not any(core.flow_open(d) for d in dests):
            # The WebSocket client has gone away: fail at once rather than after a timer.
            return await self._fail(480, "Temporarily Unavailable")
        dests = core.filter_blocked(dests)
        if not dests:
            # No server for the name (RFC 3263 4.4 found nothing): the answer Kamailio users know.
            return await self._fail(478, "Unresolvable Destination")
        # Only addresses one of our listeners can send to (an IPv6 next hop needs an IPv6 listener of its
        # transport); none left is a transport error on this branch (RFC 3261 16.9: as if a 503).
        usable: list[tuple[Address, Address]] = []
        for dest in dests:
            try:
                usable.append((dest, core.local_address(dest)))
            except TransportError as exc:
                log.info("cannot send to %s: %s", dest, exc)
        if not usable:
            return await self._fail(503, "No Suitable Transport")
        last = len(usable) - 1
        for i, (dest, local) in enumerate(usable):
            req = base_req.copy() if i < last else base_req
            if owner.record_route:
                rr = record_route_values(
                    core.record_address(owner.inbound),
                    local,
                    owner.record_route_params,
                    source=owner.original.source,
                    dest=dest,
                )
                for value in reversed(rr):
                    req.insert_top("Record-Route", value)
            req.insert_top("Via", via_value(local, make_branch_id(owner.loop_hash)))
            self.request, self.dest, self.provisional = req, dest, False
            owner.note("branch", index=self.index, uri=req.uri, dest=dest)
            self.txn = await core.start_branch(req, dest, self)
            outcome = await self._wait_final()
            if outcome is None:
                return True  # Timer C
            response, is_local = outcome
            # RFC 3263 4.3 / RFC 3261 16.9: a transport error, a timeout or a 503 moves on to the next address.
            if is_local or response.status == 503:
                core.block(dest, response.status)
                if i < last:
                    continue
            if is_local and response.status == 408:
                owner.branch_outcome(timeout=True)
            elif not is_local:
                owner.branch_outcome(replied=True)
            await owner.on_response(self, response, local=is_local)
            return False
        return False

    async def _wait_final(self) -> tuple[Response, bool] | None:
        """Take this branch's responses until a final; apply Timer C / fr_inv_timer (16.6 step 11).

        None: Timer C fired after a provisional (the branch is then cancelled)."""
        owner = self.owner
        core = owner.core
        is_invite = owner.original.method == "INVITE"
        timers = owner.relay_timers
        ring = timers.fr_inv if timers.fr_inv is not None else core.timers.timer_c
        first = timers.fr if timers.fr is not None else math.inf
        deadline = trio.current_time() + (first if not is_invite else min(first, ring))
        while True:
            if self._events:
                resp, is_local = await self._next()  # no wait: no timer scope needed
            else:
                with trio.move_on_at(deadline) as timer:
                    resp, is_local = await self._next()
                if timer.cancelled_caught:
                    if self.provisional and is_invite:
                        return None  # 16.8: Timer C with a provisional: CANCEL the branch
                    if self.txn is not None:
                        self.txn.user = None
                        core.abandon_client(self.txn)
                    return owner.local_response(408, "Request Timeout"), True
            if resp.status < 200:
                if resp.status > 100 and is_invite:
                    deadline = trio.current_time() + ring  # Timer C restarts on 101-199
                self.provisional = True  # any provisional allows a CANCEL (RFC 3261 9.1)
                await owner.on_response(self, resp)
                continue
            return resp, is_local

    async def _cancel(self) -> None:
        """A stopped INVITE branch: wait for a provisional if none came (9.1), CANCEL, absorb the 487."""
        owner = self.owner
        if owner.original.method != "INVITE" or self.request is None or self.dest is None:
            return
        while not self.provisional:
            resp, is_local = await self._next()
            if resp.status >= 200:
                await owner.on_response(self, resp, local=is_local)
                return
            self.provisional = True
        await owner.core.send_cancel(make_cancel(self.request), self.dest)
        while True:
            resp, is_local = await self._next()
            if resp.status >= 200:
                await owner.on_response(self, resp, local=is_local)
                return
