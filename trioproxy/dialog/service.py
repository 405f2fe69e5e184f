"""``DialogService``: the dialog tracker of a running proxy, its lifetime checks and the BYEs it sends.

The proxy's routing layer feeds the tracker (``KSR.dialog.dlg_manage`` in the request route of an initial
INVITE; then every response to that INVITE, the final status at the transaction's end, and in-dialog
requests after their route relayed them). A task ends dialogs older than ``[dialog] max_lifetime``, and
``dlg_bye`` ends one from the script: both send a BYE to each side of a confirmed dialog, built from what
was recorded (the parties' Contacts, the Record-Route set without the proxy's own entries, each side's
next CSeq), in a client transaction of the proxy's own (retransmitted, answered or timed out there).

With ``[dialog] store = "redis://..."`` the service also has ``shared`` (``RedisProfiles``): profile
membership is written there and ``get_profile_size`` counts there, over every instance using that Redis;
its task (run by ``run``) writes the removals of the dialogs that end.

The running proxy makes its service current for its tasks (a context variable, as the flood service); code
that sets none (route tests, ``trioproxy check``) shares one process-wide service.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import trio

from trioproxy.proxy.core import TransactionUser
from trioproxy.proxy.forward import via_value
from trioproxy.sip import URI, Request, new_branch

from .fsm import Dialog, EndReason
from .redis_profiles import RedisProfiles
from .tracker import Byes, DialogStore, DialogTracker

__all__ = ["DialogService", "current_dialogs", "set_dialogs", "use_dialogs"]

log = logging.getLogger("trioproxy.dialog")


class _ByeUser(TransactionUser):
    """The owner of a BYE the proxy sends: the answer only counts."""

    def __init__(self, service: DialogService) -> None:
        self.service = service

    def deliver(self, event: Any) -> None:
        response = getattr(event, "response", None)
        if response is not None and response.status >= 200:
            self.service.bye_answers += 1


@dataclass(eq=False)
class DialogService:
    """The dialogs of one proxy; ``proxy`` (set by the server) sends the BYEs."""

    store: DialogStore = field(default_factory=DialogTracker)
    clock: Callable[[], float] = time.time
    check_interval: float = 1.0
    proxy: Any = None  # trioproxy.proxy.Proxy
    shared: RedisProfiles | None = None  # profiles shared through Redis
    byes_sent: int = 0
    bye_answers: int = 0
    bye_failures: int = 0

    def now(self) -> float:
        return self.clock()

    def is_myself(self) -> Callable[[URI], bool] | None:
        return self.proxy.is_myself if self.proxy is not None else None

    async def run(self) -> None:
        """End dialogs past their lifetime, every ``check_interval`` seconds, and write the shared profiles'
        removals (until cancelled)."""
        if self.shared is None:
            await self._expire_loop()
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.shared.run)
            await self._expire_loop()

    async def _expire_loop(self) -> None:
        while True:
            await trio.sleep(self.check_interval)
            for dialog, byes in self.store.expire(self.now(), self.is_myself()):
                log.info("dialog %s (Call-ID %s) reached its lifetime: ending it", dialog.id, dialog.call_id)
                await self.send_byes(byes)

    async def bye(self, dialog: Dialog, why: EndReason = EndReason.DLG_BYE) -> int:
        """End ``dialog`` now with a BYE to each side; the number of BYEs sent."""
        byes = self.store.end(dialog, self.now(), why, self.is_myself())
        return await self.send_byes(byes)

    async def send_byes(self, byes: Byes) -> int:
        sent = 0
        for side, request in byes:
            try:
                if await self._send(request):
                    sent += 1
                    continue
            except Exception as exc:  # one BYE that cannot go never stops the others or the proxy
                log.warning("BYE to the %s of %s: %r", side, request.call_id, exc)
            self.bye_failures += 1
        self.byes_sent += sent
        return sent

    async def _send(self, request: Request) -> bool:
        proxy = self.proxy
        if proxy is None:
            return False
        routes = request.routes
        hop = routes[0].uri if routes else request.uri
        dests = await proxy.locate(hop)
        if not dests:
            return False
        dest = dests[0]
        request.insert_top("Via", via_value(proxy.local_address(dest), new_branch()))
        await proxy.start_client(request, dest, _ByeUser(self))
        return True


_DEFAULT = DialogService()
_CURRENT: ContextVar[DialogService | None] = ContextVar("trioproxy_dialogs", default=None)


def current_dialogs() -> DialogService:
    """The service of the running proxy (or the process-wide default)."""
    return _CURRENT.get() or _DEFAULT


def set_dialogs(service: DialogService) -> None:
    """Make ``service`` current for this task and the tasks it starts from now on."""
    _CURRENT.set(service)


@contextmanager
def use_dialogs(service: DialogService) -> Iterator[DialogService]:
    """Make ``service`` current within the block (route tests)."""
    token = _CURRENT.set(service)
    try:
        yield service
    finally:
        _CURRENT.reset(token)
