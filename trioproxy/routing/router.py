"""``LuaRouter``: the proxy core's ``Router`` implemented by a Lua route script.

Each request takes the script version that is active when it arrives and keeps it: its failure, branch and
reply routes run on that version even if a reload swaps in another meanwhile (one ``ScriptHolder``
reference is read once per request). ``ProxyServices`` is the ``RouteServices`` the script's effects reach:
replies, relaying (one ``ctx.relay(targets, record_route=..., timers=...)`` call that records a stage of
branches with what the script decided for it), the registrar and location service, DNS and sleeping. The
router uses only the request's API (``trioproxy.proxy.request``); the script's own per-request state
(``RequestState``) stays on this side.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from trioproxy.location import Binding, Registrar
from trioproxy.proxy import Branch, RelayTimers, RequestContext, Router, Target
from trioproxy.sip import URI, Response, SIPError, parse_uri_untrusted, reason_phrase

from .holder import ScriptHolder
from .ksr_acc import record_transaction
from .ksr_dialog import request_done, response_seen, transaction_done
from .script import LuaScript, RouteError
from .services import ContactInfo
from .state import RequestState

if TYPE_CHECKING:
    from trioproxy.locate import Locator

__all__ = ["LuaRouter", "ProxyServices"]

log = logging.getLogger("trioproxy.routing")


@dataclass(eq=False, slots=True)
class _LuaRequest:
    """What a request keeps between its routes: the script version, the state, the services."""

    script: LuaScript
    state: RequestState
    services: ProxyServices
    traced: int = 0  # KSR calls of state.trace already copied into the request's events

    def flush_trace(self, ctx: RequestContext, route: str) -> None:
        trace = self.state.trace or []
        calls = trace[self.traced :]
        self.traced = len(trace)
        if ctx.trace is not None:  # the KSR calls are shown as text only when the trace is read
            ctx.note("route", name=route, ksr=lambda: [_call_text(name, args, result) for name, args, result in calls])


def _call_text(name: str, args: tuple[object, ...], result: object) -> str:
    shown = ", ".join(repr(a) for a in args)
    return f"{name}({shown}) = {result!r}"


def _received_uri(binding: Binding) -> str | None:
    if not binding.received:
        return None
    transport, _sep, rest = binding.received.partition(":")
    host, _sep, port = rest.rpartition(":")
    suffix = "" if transport == "udp" else f";transport={transport}"
    return f"sip:{host}:{port}{suffix}"


def _uri_or_none(text: str | None) -> URI | None:
    if not text:
        return None
    return parse_uri_untrusted(text)


class ProxyServices:
    """The proxy side of the Lua effect bridge for one request."""

    def __init__(self, ctx: RequestContext, router: LuaRouter) -> None:
        self.ctx = ctx
        self.router = router

    async def send_reply(
        self, state: RequestState, status: int, reason: str, headers: Sequence[tuple[str, str]]
    ) -> int:
        ok = await self.ctx.reply(status, reason, headers, no_connect=state.reply_no_connect)
        if ok and status >= 200:
            state.replied = (status, reason)
        return 1 if ok else -1

    async def trying(self, state: RequestState) -> None:
        await self.ctx.send_trying(no_connect=state.reply_no_connect)

    def _targets(self, state: RequestState) -> list[Target]:
        targets: list[Target] = []
        for i, b in enumerate(state.target_set()):
            target = Target(
                parse_uri_untrusted(b.uri),
                dst=_uri_or_none(b.dst_uri),
                q=1.0 if b.q is None else b.q,
                path=list(b.path),
                flags=b.bflags,
            )
            if i == 0 and state.forced_dest is not None:
                target.received = state.forced_dest
            targets.append(target)
        return targets

    async def relay(self, state: RequestState) -> int:
        ctx = self.ctx
        try:
            targets = self._targets(state)
        except SIPError as exc:
            log.warning("t_relay: bad target URI: %s", exc.reason)
            return -1
        record = state.record_route and not ctx.in_dialog
        rc = await ctx.relay(
            targets,
            record_route=True if record else None,
            record_route_params="".join(p if p.startswith(";") else f";{p}" for p in state.rr_params)
            if record
            else None,
            timers=RelayTimers(
                state.fr_timeout / 1000.0 if state.fr_timeout else None,
                state.fr_inv_timeout / 1000.0 if state.fr_inv_timeout else None,
            ),
            max_forwards=not state.maxfwd_processed,
            no_connect=state.reply_no_connect,
        )
        if rc > 0:
            state.relayed += 1
            # Branches made now are one stage; the script may add the next in its failure route.
            state.branches = []
        return rc

    async def check_trans(self, state: RequestState) -> int:
        # Retransmissions, ACKs for non-2xx and CANCELs that match a transaction are handled by the
        # transaction layer before any route runs; what reaches a script matches no transaction.
        return -1

    async def lookup(self, table: str, aor: str) -> Sequence[ContactInfo]:
        bindings = await self.router.registrar.lookup(aor, time.time())
        self.ctx.note("lookup", table=table, aor=aor, contacts=[b.contact for b in bindings])
        return [
            ContactInfo(uri=b.contact, q=b.q, received=_received_uri(b), path=tuple(b.path), flags=b.flags)
            for b in bindings
        ]

    async def save(self, table: str, state: RequestState, flags: int) -> int:
        ctx = self.ctx
        response = await self.router.registrar.save(
            ctx.original, now=time.time(), received=state.received_uri, flags=flags
        )
        await ctx.send(response, no_connect=state.reply_no_connect)
        ctx.note("save", table=table, status=response.status)
        state.replied = (response.status, response.reason)
        return 1 if 200 <= response.status < 300 else -1

    async def unregister(self, table: str, aor: str, ruid: str) -> int:
        removed = await self.router.registrar.unregister(aor, ruid or None)
        return 1 if removed else -1

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(max(0.0, min(seconds, 60.0)))

    async def resolve(self, host: str) -> Sequence[str]:
        locator = self.router.locator
        if locator is None:
            return []
        return await locator.resolve_host(host)

    def is_myself(self, host: str, port: int | None) -> bool:
        uri = URI("sip", None, None, host.strip("[]"), port, {}, {})
        return self.ctx.is_myself(uri)


class LuaRouter(Router):
    """Route every request through the active Lua script (Kamailio KEMI conventions)."""

    defers_trying = True  # the 100 goes when the script first waits or ends (after force_rport)

    def __init__(self, holder: ScriptHolder, registrar: Registrar, locator: Locator | None = None) -> None:
        self.holder = holder
        self.registrar = registrar
        self.locator = locator

    def _begin(self, ctx: RequestContext) -> _LuaRequest:
        state = RequestState(msg=ctx.request, local=ctx.inbound, original=ctx.original, trace=[])
        if ctx.route_params is not None:
            state.route_params = ctx.route_params
        lua = _LuaRequest(self.holder.current(), state, ProxyServices(ctx, self))
        ctx.user_state = lua
        ctx.note("script", path=lua.script.name, sha256=lua.script.sha256[:12])
        return lua

    async def _run(self, ctx: RequestContext, lua: _LuaRequest, what: str, name: str | None = None) -> int | None:
        try:
            if what == "request":
                return await lua.script.run_request_route(lua.state, lua.services)
            assert name is not None
            if what == "failure":
                return await lua.script.run_failure_route(name, lua.state, lua.services)
            raise ValueError(what)
        except RouteError as exc:
            log.error("%s:%s: %s route error (%s): %s", exc.file, exc.line, what, exc.kind, exc.cause)
            ctx.note("route_error", file=exc.file, line=exc.line, error=exc.kind, cause=exc.cause)
            if what == "failure":
                # As Kamailio: a failure route that fails ends; its relay (if any) is void and the best
                # response of the stages (a 487 after the caller's CANCEL) goes upstream.
                ctx.discard_relay()
            elif not ctx.final_sent:
                await ctx.reply(500, "Server Internal Error")
            return None
        finally:
            lua.flush_trace(ctx, name or "ksr_request_route")

    async def on_request(self, ctx: RequestContext) -> None:
        lua = self._begin(ctx)
        await self._run(ctx, lua, "request")
        request_done(lua.state)  # dialog tracking: in-dialog requests relayed, managed INVITEs' destination
        ctx.set_reply_no_connect(lua.state.reply_no_connect)
        if lua.state.dropped:
            ctx.drop()
        elif ctx.stateless or ctx.original.method == "ACK":
            ctx.drop()  # an ACK the script did not relay is absorbed
        elif ctx.pending_targets is None and not ctx.final_sent and lua.state.exited:
            # KSR.x.exit() with neither reply nor relay: Kamailio sends nothing; we do the same but let the
            # transaction layer end the transaction.
            ctx.drop()

    async def on_failure(self, ctx: RequestContext) -> None:
        """Run the failure route armed by ``t_on_failure``: after a stage with no 2xx, also after the caller's
        CANCEL (``t_is_canceled``) or a 6xx, where ``t_relay`` is refused (-2) and makes no branch."""
        lua = ctx.user_state
        if not isinstance(lua, _LuaRequest):
            return
        name = lua.state.on_failure
        if not name:
            return
        best = ctx.best_response
        lua.state.begin_failure_route(
            best, timeout=ctx.stage_timeout, canceled=ctx.canceled, replied=ctx.stage_replied
        )
        await self._run(ctx, lua, "failure", name)

    async def on_branch(self, ctx: RequestContext, branch: Branch) -> bool:
        lua = ctx.user_state
        if not isinstance(lua, _LuaRequest) or not lua.state.on_branch or branch.request is None:
            return True
        bstate = lua.state.for_branch(branch.request, branch.target.flags, branch.index)
        try:
            await lua.script.run_branch_route(lua.state.on_branch, bstate, lua.services)
        except RouteError as exc:
            log.error("%s:%s: branch route error (%s): %s", exc.file, exc.line, exc.kind, exc.cause)
            return False
        if bstate.dropped:
            return False
        if bstate.dst_uri:
            branch.target.dst = parse_uri_untrusted(bstate.dst_uri)
        return True

    async def on_response(self, ctx: RequestContext, branch: Branch, response: Response) -> bool:
        lua = ctx.user_state
        if not isinstance(lua, _LuaRequest):
            return True
        response_seen(response)  # dialog tracking: early, confirmed, failed
        script = lua.script
        has_global = script.has_route("ksr_reply_route")
        if not has_global and not lua.state.on_reply:
            return True
        rstate = lua.state.for_reply(response, branch.index)
        try:
            if has_global and await script.run_reply_route(rstate, lua.services) == 0:
                return not rstate.dropped
            if lua.state.on_reply and await script.run_onreply_route(lua.state.on_reply, rstate, lua.services) == 0:
                return not rstate.dropped
        except RouteError as exc:
            log.error("%s:%s: reply route error (%s): %s", exc.file, exc.line, exc.kind, exc.cause)
        return not rstate.dropped

    def on_end(self, ctx: RequestContext) -> None:
        """The request is done: its dialog fails unless confirmed; accounting by the script's flags."""
        transaction_done(ctx.original, ctx.final_status)
        lua = ctx.user_state
        if isinstance(lua, _LuaRequest) and ctx.final_status is not None:
            best, status = ctx.best_response, ctx.final_status
            reason = best.reason if best is not None and best.status == status else reason_phrase(status)
            record_transaction(lua.state, status, reason, time.time())
