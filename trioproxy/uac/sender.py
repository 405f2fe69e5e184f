"""One trunk registration's REGISTERs on trio: sent as client transactions of the running proxy (so Via
and Contact name the proxy's own listener, and the registrar's answers come back through the proxy's
transports and transaction table), outcomes fed to the sans-IO ``Registration``.
"""

from __future__ import annotations

import logging

import trio

from trioproxy.proxy import BranchEvent, Proxy
from trioproxy.proxy.core import TransactionUser
from trioproxy.proxy.forward import via_value
from trioproxy.sip import Address, Request, Response, SIPError, new_branch, parse_uri_untrusted

from .registration import Registration, RegState

__all__ = ["TrunkClient"]

log = logging.getLogger("trioproxy.uac")

_LOCATE_RETRY = 5.0  # seconds a registration whose registrar cannot be located waits (before back-off)


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

    async def unregister(self) -> None:
        """Send the REGISTER with Expires: 0 (answering a challenge) and wait for its outcome (callers bound
        the wait)."""
        request = self.reg.unregister(trio.current_time())
        while request is not None:
            response = await self._transaction(request)
            now = trio.current_time()
            if response is None:
                self.reg.on_timeout(now)
                return
            request = self.reg.on_response(response, now)
        if self.reg.state is RegState.UNREGISTERED:
            log.info("trunk %s unregistered", self.reg.trunk.l_uuid)

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
