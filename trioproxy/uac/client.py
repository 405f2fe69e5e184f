"""Trunk registrations on trio: the registry the routing layer (``KSR.uac``) and the management API read,
and the tasks that keep each trunk registered (``sender.TrunkClient``).

Trunks come from ``[[uac.registrations]]`` (fixed for the process) and from the ``--db`` ``uacreg`` table
(``apply_rows``, called at start and whenever the table changes): a new row is registered, a changed one
unregistered (Expires: 0) and registered again as it is now, a deleted one unregistered. Rows that are
disabled (``flags`` 1) or have ``expires`` 0 serve ``uac_auth`` and ``uac_reg_lookup`` only.
``unregister_all`` (the proxy stopping) removes every binding in force, within a bounded wait.

The running proxy makes its registry current for its tasks (a context variable, as the rtpengine client).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import trio

from trioproxy.proxy import Proxy

from .registration import Registration, RegState, Trunk
from .sender import TrunkClient
from .table import TrunkRow

__all__ = ["TrunkClient", "TrunkRegistry", "current_uac", "set_uac", "use_uac"]

log = logging.getLogger("trioproxy.uac")

_CURRENT: ContextVar[TrunkRegistry | None] = ContextVar("trioproxy_uac", default=None)

UNREGISTER_WAIT = 5.0  # seconds an unregistration (row removed or changed) may take


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
        self.retry_interval, self.retry_max = retry_interval, retry_max
        self.registrations: dict[str, Registration] = {}
        self.rows: dict[str, TrunkRow] = {}  # by l_uuid: the row (config entries: flags 0, no delay)
        self.sources: dict[str, str] = {}  # by l_uuid: "config" or "db"
        for t in trunks:
            self._put(TrunkRow(t), "config")
        self._proxy: Proxy | None = None
        self._nursery: trio.Nursery | None = None
        self._scopes: dict[str, trio.CancelScope] = {}
        self._stopping = False
        self._retired: dict[str, Registration] = {}  # removed or changed, their Expires: 0 not yet done

    def _put(self, row: TrunkRow, source: str) -> Registration:
        reg = Registration(row.trunk, "", retry_interval=self.retry_interval, retry_max=self.retry_max)
        self.registrations[row.trunk.l_uuid] = reg
        self.rows[row.trunk.l_uuid] = row
        self.sources[row.trunk.l_uuid] = source
        return reg

    # -- the operator table ----------------------------------------------------------------------------

    def apply_rows(self, rows: Sequence[TrunkRow]) -> tuple[int, int, int]:
        """Make the ``db`` trunks those of ``rows``; (added, changed, removed). An ``l_uuid`` of the
        configuration keeps its configuration entry."""
        if self._stopping:
            return 0, 0, 0
        wanted: dict[str, TrunkRow] = {}
        for row in rows:
            uuid = row.trunk.l_uuid
            if self.sources.get(uuid) == "config":
                log.warning("uacreg row %s ignored: [[uac.registrations]] has that l_uuid", uuid)
            else:
                wanted[uuid] = row
        ours = [u for u, src in self.sources.items() if src == "db"]
        removed = [u for u in ours if u not in wanted]
        changed = [u for u in ours if u in wanted and wanted[u] != self.rows[u]]
        added = [u for u in wanted if u not in self.sources]
        for uuid in removed + changed:
            self._drop(uuid)
        for uuid in changed + added:
            previous = self._retired.pop(uuid, None)
            reg = self._put(wanted[uuid], "db")
            self._start(reg, previous)
        if removed or changed or added:
            log.info("uacreg: %d added, %d changed, %d removed", len(added), len(changed), len(removed))
        return len(added), len(changed), len(removed)

    def _drop(self, uuid: str) -> None:
        """Stop a registration's task and unregister it (in the background)."""
        reg = self.registrations.pop(uuid)
        self.rows.pop(uuid, None)
        self.sources.pop(uuid, None)
        scope = self._scopes.pop(uuid, None)
        if scope is not None:
            scope.cancel()
        self._retired[uuid] = reg
        if self._nursery is not None:
            self._nursery.start_soon(self._unregister_retired, uuid, reg, name=f"uac-unregister:{uuid}")

    async def _unregister_retired(self, uuid: str, reg: Registration) -> None:
        await self._unregister(reg, UNREGISTER_WAIT)
        if self._retired.get(uuid) is reg:
            del self._retired[uuid]

    async def _unregister(self, reg: Registration, wait: float) -> None:
        if self._proxy is None:
            return
        with trio.move_on_after(wait):
            await TrunkClient(self._proxy, reg).unregister()

    def _start(self, reg: Registration, previous: Registration | None = None) -> None:
        row = self.rows[reg.trunk.l_uuid]
        if self._nursery is None or not row.registers:
            return
        scope = trio.CancelScope()
        self._scopes[reg.trunk.l_uuid] = scope
        self._nursery.start_soon(self._client, reg, scope, previous, row.reg_delay, name=f"uac:{reg.trunk.l_uuid}")

    async def _client(
        self, reg: Registration, scope: trio.CancelScope, previous: Registration | None, delay: float
    ) -> None:
        assert self._proxy is not None
        with scope:
            if previous is not None:  # its Expires: 0 must not remove the binding registered now
                await self._unregister(previous, UNREGISTER_WAIT)
            reg.deadline = trio.current_time() + delay
            await TrunkClient(self._proxy, reg).run()

    # -- reads -----------------------------------------------------------------------------------------

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
        """The registrations as the management API shows them (passwords never). ``state`` is one of
        ``registered``, ``registering``, ``failed`` (``retry_at``: the back-off's end), ``idle`` (the first
        REGISTER not sent yet), ``disabled`` (flags 1 or expires 0: never registered), ``unregistering``,
        ``unregistered``; ``expires_at`` / ``retry_at`` are Unix times."""
        wall = time.time() - now
        out: list[dict[str, Any]] = []
        for uuid, reg in self.registrations.items():
            t, row = reg.trunk, self.rows[uuid]
            state = reg.state.value if row.registers else "disabled"
            failed = reg.state is RegState.FAILED and not reg.removing
            out.append({
                "l_uuid": t.l_uuid, "source": self.sources[uuid], "l_uri": f"sip:{t.l_username}@{t.l_domain}",
                "r_uri": f"sip:{t.r_username}@{t.r_domain}", "registrar": t.auth_proxy or f"sip:{t.r_domain}",
                "state": state, "registered": reg.is_registered(now),
                "expires_at": None if reg.expires_at is None else round(wall + reg.expires_at, 3),
                "expires_in": None if reg.expires_at is None else round(max(0.0, reg.expires_at - now), 1),
                "retry_at": round(wall + reg.deadline, 3) if failed else None,
                "next_in": None if reg.next_deadline() is None else round(max(0.0, reg.deadline - now), 1),
                "last_status": reg.last_status, "last_reason": reg.last_reason, "contact": reg.contact,
                "registered_count": reg.registered_count, "failed_count": reg.failed_count,
                "failures_in_a_row": reg.failures, "flags": row.flags, "expires": t.expires,
            })  # fmt: skip
        return out

    # -- running ---------------------------------------------------------------------------------------

    async def run(self, proxy: Proxy) -> None:
        """Run every registration (and those ``apply_rows`` adds later) until cancelled."""
        self._proxy = proxy
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for reg in list(self.registrations.values()):
                    self._start(reg)
                await trio.sleep_forever()
        finally:
            self._nursery = None

    async def unregister_all(self, wait: float) -> int:
        """The proxy stops: end every registration task and send Expires: 0 for each binding in force, all
        at once, waiting at most ``wait`` seconds; how many the registrars confirmed."""
        self._stopping = True
        for scope in self._scopes.values():
            scope.cancel()
        self._scopes.clear()
        regs = list(self.registrations.values()) + list(self._retired.values())
        if self._proxy is None:
            return 0
        async with trio.open_nursery() as nursery:
            for reg in regs:
                nursery.start_soon(self._unregister, reg, wait)
        return sum(1 for r in regs if r.state is RegState.UNREGISTERED)
