"""``OperatorTables``: the operator tables of a running proxy, held in memory and refreshed on change.

Requests only read ``tables.snapshot`` (dict and list lookups, no query). A background task asks sqlite
at most once per ``interval`` whether another connection committed (``PRAGMA data_version``, a cheap
read of a counter) and only then re-reads the tables, in a worker thread (``trio.to_thread.run_sync``
with a ``CapacityLimiter(1)``), swapping the snapshot in one assignment. So ``trioproxy user add`` on a
running proxy takes effect within about a second, without a restart.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from typing import TypeVar

import trio

from .schema import connect
from .tables import Snapshot, load_snapshot

__all__ = ["OperatorTables"]

log = logging.getLogger("trioproxy.db")
T = TypeVar("T")


class OperatorTables:
    """The subscriber and address tables of ``url``, as an in-memory ``Snapshot``."""

    def __init__(self, db: sqlite3.Connection, url: str) -> None:
        # Use OperatorTables.open.
        self.url = url
        self.snapshot = Snapshot()
        self.reloads = 0
        self._db: sqlite3.Connection | None = db
        self._limiter = trio.CapacityLimiter(1)
        self._data_version: int | None = None

    @classmethod
    def open_sync(cls, url: str) -> OperatorTables:
        """Open (creating and migrating as needed) and read the tables, blocking (at startup, in tests)."""
        tables = cls(connect(url), url)
        tables._reload_sync()
        return tables

    @classmethod
    async def open(cls, url: str) -> OperatorTables:
        """``open_sync`` in a worker thread."""
        return await trio.to_thread.run_sync(cls.open_sync, url)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("operator tables closed")
        return self._db

    def _reload_sync(self) -> bool:
        db = self._conn()
        version = int(db.execute("PRAGMA data_version").fetchone()[0])
        if version == self._data_version:
            return False
        db.execute("BEGIN")
        try:
            snapshot = load_snapshot(db)
        finally:
            db.execute("COMMIT")
        self.snapshot, self._data_version = snapshot, version
        self.reloads += 1
        return True

    async def _run(self, fn: Callable[[], T]) -> T:
        return await trio.to_thread.run_sync(fn, limiter=self._limiter)

    async def refresh(self) -> bool:
        """Re-read the tables if another connection changed them; whether it did."""
        changed = await self._run(self._reload_sync)
        if changed:
            snap = self.snapshot
            log.info(
                "operator tables reloaded: %d subscribers, %d address entries",
                len(snap.subscribers),
                len(snap.addresses),
            )
        return changed

    async def watch(self, interval: float = 1.0) -> None:
        """Forever: ``refresh`` every ``interval`` seconds; a failing read is logged and retried."""
        while True:
            await trio.sleep(interval)
            try:
                await self.refresh()
            except (sqlite3.Error, RuntimeError) as exc:
                log.warning("operator tables: cannot read %s: %s", self.url, exc)

    def close(self) -> None:
        """Close the connection."""
        if self._db is not None:
            self._db.close()
            self._db = None
