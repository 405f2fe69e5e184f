"""Trunk registrations on trio: each registration is one task sending its REGISTERs as client transactions
of the running proxy (so Via and Contact name the proxy's own listener, and the registrar's answers come
back through the proxy's transports and transaction table), and the registry the routing layer
(``KSR.uac``) and the management API read.

The running proxy makes its registry current for its tasks (a context variable, as the rtpengine client).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import trio

from trioproxy.proxy import BranchEvent, Proxy
from trioproxy.proxy.core import TransactionUser
from trioproxy.proxy.forward import via_value
from trioproxy.sip import Address, Request, Response, SIPError, new_branch, parse_uri_untrusted

from .registration import Registration, RegState, Trunk

__all__ = ["TrunkClient", "TrunkRegistry", "current_uac", "set_uac", "use_uac"]

log = logging.getLogger("trioproxy.uac")

_CURRENT: ContextVar[TrunkRegistry | None] = ContextVar("trioproxy_uac", default=None)

_LOCATE_RETRY = 5.0  # seconds a registration whose registrar cannot be located waits (before back-off)


def current_uac() -> TrunkRegistry | None:
    """The registry of the running proxy (None when it has no trunks)."""
    return _CURRENT.get()


def set_uac(registry: TrunkRegistry | None) -> None:
    """Make ``registry`` current for this task and the tasks it starts from now on."""
    _CURRENT.set(registry)


@contextmanager
def use_uac(registry: TrunkRegistry) -> Iterator[TrunkRegistry]:
    """Make ``registry`` current within the block (route tests)."""
    token = _CURRENT.set(registry)
    try:
        yield registry
    finally:
        _CURRENT.reset(token)


class TrunkRegistry:
    """Every trunk registration of the proxy, by ``l_uuid``."""

    def __init__(
        self, trunks: Sequence[Trunk], *, retry_interval: float = 60.0, retry_max: float = 600.0
    ) -> None:
        self.registrations: dict[str, Registration] = {
            t.l_uuid: Registration(t, "", retry_interval=retry_interval, retry_max=retry_max) for t in trunks
        }

    def credentials_for(self, realm: str, host: str = "") -> Trunk | None:
        """The trunk answering a challenge for ``realm`` (else the one whose domain is ``host``)."""
        regs = self.registrations.values()
        found = next((r.trunk for r in regs if r.trunk.matches_realm(realm)), None)
        if found is None and host:
            found = next((r.trunk for r in regs if r.trunk.r_domain.lower() == host.lower()), None)
        return found

    def lookup(self, l_uuid: str) -> Trunk | None:
        reg = self.registrations.get(l_uuid)
        return None if reg is None else reg.trunk

    def status(self, l_uuid: str, now: float) -> int:
        """Kamailio's ``uac_reg_status``: 1 registered, -1 not (or registering), -2 failed, -99 unknown."""
        reg = self.registrations.get(l_uuid)
        if reg is None:
            return -99
        if reg.is_registered(now):
            return 1
        return -2 if reg.state is RegState.FAILED else -1

    def snapshot(self, now: float) -> list[dict[str, Any]]:
        """The registrations as the management API shows them (passwords never)."""
        out: list[dict[str, Any]] = []
        for reg in self.registrations.values():
            t = reg.trunk
            out.append({
                "l_uuid": t.l_uuid, "l_uri": f"sip:{t.l_username}@{t.l_domain}",
                "r_uri": f"sip:{t.r_username}@{t.r_domain}", "registrar": t.auth_proxy or f"sip:{t.r_domain}",
                "state": reg.state.value, "registered": reg.is_registered(now),
                "expires_in": None if reg.expires_at is None else round(max(0.0, reg.expires_at - now), 1),
                "next_in": None if reg.next_deadline() is None else round(max(0.0, reg.deadline - now), 1),
                "last_status": reg.last_status, "last_reason": reg.last_reason, "contact": reg.contact,
                "registered_count": reg.registered_count, "failed_count": reg.failed_count,
                "failures_in_a_row": reg.failures,
            })  # fmt: skip
        return out

    async def run(self, proxy: Proxy) -> None:
        """Run every registration until cancelled."""
        async with trio.open_nursery() as nursery:
            for reg in self.registrations.values():
                nursery.start_soon(TrunkClient(proxy, reg).run, name=f"uac:{reg.trunk.l_uuid}")


class TrunkClient(TransactionUser):
    """Sends one registration's REGISTERs through the proxy and feeds it the outcomes."""

    def __init__(self, proxy: Proxy, registration: Registration) -> None:
        self.proxy = proxy
        self.reg = registration
        self._send, self._recv = trio.open_memory_channel[BranchEvent](16)
        t = registration.trunk
        self.next_hop = parse_uri_untrusted(t.auth_proxy or f"sip:{t.r_domain}")

    def deliver(self, event: BranchEvent) -> None:
        try:
            self._send.send_nowait(event)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def run(self) -> None:
        reg = self.reg
        while True:
            deadline = reg.next_deadline()
            if deadline is not None:
                await trio.sleep_until(deadline)
            request = reg.poll(trio.current_time())
            while request is not None:
                response = await self._transaction(request)
                now = trio.current_time()
                if response is None:
                    reg.on_timeout(now)
                    request = None
                else:
                    request = reg.on_response(response, now)
            if reg.state is RegState.REGISTERED:
                log.info("trunk %s registered for %d s", reg.trunk.l_uuid, reg.granted)
            elif reg.state is RegState.FAILED:
                log.warning(
                    "trunk %s registration failed (%s %s), retry in %.0f s",
                    reg.trunk.l_uuid, reg.last_status, reg.last_reason, reg.deadline - trio.current_time(),
                )  # fmt: skip

    async def _destination(self) -> Address | None:
        try:
            dests = await self.proxy.locate(self.next_hop)
        except (OSError, SIPError) as exc:
            log.warning("trunk %s: cannot locate %s: %s", self.reg.trunk.l_uuid, self.next_hop, exc)
            return None
        return dests[0] if dests else None

    async def _transaction(self, request: Request) -> Response | None:
        """Send ``request`` and wait for its final response (None: no answer, or not sendable)."""
        dest = await self._destination()
        if dest is None:
            await trio.sleep(_LOCATE_RETRY)
            return None
        local = self.proxy.local_address(dest)
        host = f"[{local.host}]" if ":" in local.host else local.host
        tp = "" if local.transport == "udp" else f";transport={local.transport}"
        contact = f"sip:{self.reg.trunk.l_uuid}@{host}:{local.port}{tp}"
        if self.reg.contact != contact:
            self.reg.contact = contact
        request.set("Contact", f"<{contact}>")
        request.insert_top("Via", via_value(local, new_branch()) + ";rport")
        while True:  # events of an earlier transaction are stale
            try:
                self._recv.receive_nowait()
            except trio.WouldBlock:
                break
        txn = await self.proxy.start_client(request, dest, self)
        try:
            # The transaction ends itself (Timer F); the bound only guards against a lost event.
            with trio.move_on_after(64 * self.proxy.timers.t1 + 5):
                while True:
                    event = await self._recv.receive()
                    if event.response is not None:
                        if event.response.status >= 200:
                            return event.response
                        continue
                    return None
            return None
        finally:
            self.proxy.detach(txn)
