"""The routing interface between the proxy core and whoever decides where requests go.

The core calls a ``Router`` for every request that passed validation (RFC 3261 16.3) and route
pre-processing (16.4). The router edits ``ctx.request`` (the copy that will be forwarded) and records a
decision through the request's API: answer (``await ctx.reply(...)`` / ``ctx.send(response)``), relay
(``await ctx.relay(targets, record_route=..., timers=...)``: the core starts one branch per target when the
hook returns), or drop (``ctx.drop()``: no answer at all); a hook that does none of these gets a 500. When every branch of a stage has
ended without a 2xx, the core calls ``on_failure``, where the router may relay again (serial forking, a
Kamailio ``failure_route``) or do nothing, in which case the best response goes upstream (16.7 step 6).

``StaticRouter`` is the small Python router used without a script: forward to the Request-URI (or a fixed
next hop), or fork to a configured list of stages (for tests and simple deployments).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from trioproxy.sip import URI, Address, Response

if TYPE_CHECKING:
    from trioproxy.proxy.branch import Branch
    from trioproxy.proxy.request import RequestContext

__all__ = ["Router", "StaticRouter", "Target"]


@dataclass(slots=True)
class Target:
    """One destination of a branch: the Request-URI to send, and optionally where to send it."""

    uri: URI
    dst: URI | None = None  # Kamailio's $du: the next hop, instead of Route / Request-URI
    q: float = 1.0
    path: list[str] = field(default_factory=list)  # route set (RFC 3327 Path) put in front of Route
    received: Address | None = None  # the address a NATed contact registered from
    flags: int = 0  # branch flags (Kamailio's bflags)


class Router:
    """Base router: subclasses override ``on_request`` and optionally the other hooks."""

    # False: the proxy sends an INVITE's 100 Trying before ``on_request``; True: the router calls
    # ``ctx.send_trying()`` itself once it may wait (the proxy sends it after ``on_request`` at the latest).
    defers_trying: bool = False

    async def on_request(self, ctx: RequestContext) -> None:
        raise NotImplementedError

    async def on_failure(self, ctx: RequestContext) -> None:
        """A stage ended with no 2xx (also after a 6xx or the caller's CANCEL, where ``ctx.relay`` is refused).
        Relay again to add a stage, reply, or return to send the best response."""
        return None

    async def on_branch(self, ctx: RequestContext, branch: Branch) -> bool:
        """Called with each branch's own copy of the request before it is sent; False drops the branch."""
        return True

    async def on_response(self, ctx: RequestContext, branch: Branch, response: Response) -> bool:
        """Called for each response a branch receives; False drops the response."""
        return True

    def on_end(self, ctx: RequestContext) -> None:
        """Called once when a request with a server transaction is done (``ctx.final_status`` is the answer
        sent upstream, None for none), before its state is released."""
        return None


class StaticRouter(Router):
    """Forward to the Request-URI, or to a fixed next hop, or fork to fixed stages of targets."""

    def __init__(
        self,
        *,
        next_hop: URI | None = None,
        stages: Sequence[Sequence[Target]] = (),
        record_route: bool = True,
    ) -> None:
        self.next_hop = next_hop
        self.stages = [list(s) for s in stages]
        self.record_route = record_route

    async def on_request(self, ctx: RequestContext) -> None:
        rr = self.record_route and ctx.original.method in ("INVITE", "SUBSCRIBE", "REFER") and not ctx.in_dialog
        if self.stages and not ctx.in_dialog:
            ctx.user_state = 0
            await ctx.relay(self.stages[0], record_route=rr or None)
            return
        await ctx.relay([Target(ctx.request.uri.copy(), dst=self.next_hop)], record_route=rr or None)

    async def on_failure(self, ctx: RequestContext) -> None:
        stage = ctx.user_state
        if isinstance(stage, int) and stage + 1 < len(self.stages):
            ctx.user_state = stage + 1
            await ctx.relay(self.stages[stage + 1])
