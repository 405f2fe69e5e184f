"""The router used without a script: a registrar and location service in front of static forwarding.

REGISTER requests for this proxy's domains go to the registrar (RFC 3261 10.3). A request whose
Request-URI names this proxy and has a user part is sent to that user's registered contacts: contacts of
equal q are rung in parallel, lower q in later stages (serial forking, like Kamailio's ``t_load_contacts`` /
``t_next_contacts``). Everything else is forwarded as ``StaticRouter`` does.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from trioproxy.location import Binding, Registrar, aor_key, parse_source, stages
from trioproxy.proxy.router import StaticRouter, Target
from trioproxy.sip import URI, Address, parse_uri_untrusted

if TYPE_CHECKING:
    from trioproxy.proxy.request import RequestContext

__all__ = ["LocationRouter", "binding_target"]


def binding_target(binding: Binding) -> Target:
    """The branch target for one registered contact: its URI, its Path, the address it registered from."""
    received: Address | None = None
    if binding.received:
        transport, host, port = parse_source(binding.received)
        received = Address(transport, host, port)
    return Target(parse_uri_untrusted(binding.contact), q=binding.q, path=list(binding.path), received=received)


def _behind_nat(contact: URI, source: Address | None) -> bool:
    # Kamailio's nat_uac_test in spirit: the Contact does not name the address the REGISTER came from.
    if source is None:
        return False
    return contact.host != source.host or (contact.port or 5060) != source.port


class LocationRouter(StaticRouter):
    """Registrar plus lookup, then static forwarding."""

    def __init__(
        self,
        registrar: Registrar,
        *,
        next_hop: URI | None = None,
        stages: Sequence[Sequence[Target]] = (),
        record_route: bool = True,
    ) -> None:
        super().__init__(next_hop=next_hop, stages=stages, record_route=record_route)
        self.registrar = registrar

    async def on_request(self, ctx: RequestContext) -> None:
        req = ctx.request
        mine = ctx.is_myself(req.uri)
        if req.method == "REGISTER" and mine and not ctx.stateless:
            contacts = [c for c in req.contacts if not c.is_star]
            received = req.source if contacts and _behind_nat(contacts[0].uri, req.source) else None
            await ctx.send(await self.registrar.save(ctx.original, now=time.time(), received=received))
            return
        if mine and req.uri.user and not ctx.in_dialog and not ctx.stateless and req.method != "ACK":
            bindings = await self.registrar.lookup(aor_key(req.uri.user, req.uri.host), time.time())
            if not bindings:
                await ctx.reply(404, "Not Found")
                return
            plan = [[binding_target(b) for b in stage] for stage in stages(bindings)]
            rr = self.record_route and req.method in ("INVITE", "SUBSCRIBE", "REFER")
            ctx.user_state = plan[1:]
            await ctx.relay(plan[0], record_route=rr or None)
            return
        await super().on_request(ctx)

    async def on_failure(self, ctx: RequestContext) -> None:
        plan = ctx.user_state
        if isinstance(plan, list) and plan and isinstance(plan[0], list):
            ctx.user_state = plan[1:]
            await ctx.relay(plan[0])
            return
        await super().on_failure(ctx)
