"""``AuthService``: what the auth and permissions KSR modules share in one proxy process.

It holds the operator tables' in-memory snapshot (when the proxy runs with ``--db``), the nonce signer,
the nonce-count memory and the failure counts. The running proxy sets it for its tasks with
``set_auth_service`` (a context variable, inherited by every task the proxy starts); code that sets none
(``trioproxy check``, route tests) gets one process-wide service without tables, so challenges and
``pv_auth_check`` still work and table lookups find nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Protocol

from trioproxy.auth import ALGORITHMS, FailureCounts, NonceCounts, Nonces
from trioproxy.db import Snapshot

__all__ = ["AuthService", "TablesSource", "current_auth_service", "set_auth_service", "use_auth_service"]


class TablesSource(Protocol):
    """Anything with a current ``snapshot`` (``trioproxy.db.OperatorTables``)."""

    @property
    def snapshot(self) -> Snapshot: ...


_EMPTY = Snapshot()


@dataclass(eq=False)
class AuthService:
    """Operator tables, nonces and failure counts of one proxy."""

    tables: TablesSource | None = None
    nonces: Nonces = field(default_factory=Nonces)
    counts: NonceCounts = field(default_factory=NonceCounts)
    failures: FailureCounts = field(default_factory=FailureCounts)
    algorithms: tuple[str, ...] = tuple(ALGORITHMS)  # offered in this order and accepted

    @property
    def snapshot(self) -> Snapshot:
        """The operator tables now (empty without a database)."""
        return self.tables.snapshot if self.tables is not None else _EMPTY


_DEFAULT = AuthService()
_CURRENT: ContextVar[AuthService | None] = ContextVar("trioproxy_auth_service", default=None)


def current_auth_service() -> AuthService:
    """The service of the running proxy (or the process-wide one without tables)."""
    return _CURRENT.get() or _DEFAULT


def set_auth_service(service: AuthService) -> None:
    """Make ``service`` current for the rest of this task and the tasks it starts from now on."""
    _CURRENT.set(service)


@contextmanager
def use_auth_service(service: AuthService) -> Iterator[AuthService]:
    """Make ``service`` current for this task and the tasks it starts from now on."""
    token = _CURRENT.set(service)
    try:
        yield service
    finally:
        _CURRENT.reset(token)
