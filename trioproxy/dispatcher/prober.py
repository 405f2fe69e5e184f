"""Health probes: one OPTIONS (``[dispatcher] ping_method``) to a destination as a client transaction of the
running proxy, so it leaves from the proxy's own listener (its Via), retransmits over UDP (Timer E) and its
answer comes back through the proxy's transports and transaction table. ``Prober.probe`` gives the status
of the final answer, 408 when the transaction timed out, 503 when the destination could not be located or
reached. The caller bounds the wait (``ping_timeout``); the transaction is dropped when it returns.
"""

from __future__ import annotations

import itertools
import logging

import trio

from trioproxy.proxy import BranchEvent, Proxy
from trioproxy.proxy.core import TransactionUser
from trioproxy.proxy.forward import via_value
from trioproxy.sip import Request, new_branch, new_tag

from .model import Destination

__all__ = ["Prober"]

log = logging.getLogger("trioproxy.dispatcher")


class _ProbeUser(TransactionUser):
    def __init__(self) -> None:
        self.send, self.recv = trio.open_memory_channel[BranchEvent](8)

    def deliver(self, event: BranchEvent) -> None:
        try:
            self.send.send_nowait(event)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            pass


class Prober:
    """Sends the probes of one proxy."""

    def __init__(
        self, proxy: Proxy, ping_from: str = "sip:dispatcher@localhost", method: str = "OPTIONS"
    ) -> None:
        self.proxy = proxy
        self.ping_from = ping_from
        self.method = method.upper()
        self._seq = itertools.count(1)

    def build(self, dest: Destination) -> Request:
        """The probe request (without its Via, which names the listener it leaves from)."""
        call_id = f"ds-{new_tag()}-{next(self._seq)}"
        headers = [
            ("Max-Forwards", "70"),
            ("From", f"<{self.ping_from}>;tag={new_tag()}"),
            ("To", f"<{dest.uri}>"),
            ("Call-ID", call_id),
            ("CSeq", f"1 {self.method}"),
            ("User-Agent", "trioproxy dispatcher"),
        ]
        return Request.build(self.method, dest.uri, headers)

    async def probe(self, dest: Destination) -> int:
        """Send one probe to ``dest`` and wait for its outcome (the status)."""
        dests = await self.proxy.locate(dest.parsed)
        if not dests:
            return 503
        address = dests[0]
        request = self.build(dest)
        request.insert_top("Via", via_value(self.proxy.local_address(address), new_branch()) + ";rport")
        user = _ProbeUser()
        txn = await self.proxy.start_client(request, address, user)
        try:
            while True:
                event = await user.recv.receive()
                if event.response is not None:
                    if event.response.status >= 200:
                        return event.response.status
                    continue
                return 503 if event.transport_error else 408
        finally:
            self.proxy.detach(txn)
            if not txn.terminated:
                self.proxy.table.terminate(txn, trio.current_time())
