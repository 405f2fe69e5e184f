"""The ``uacreg`` rows of a running proxy: read at start, read again whenever the table changes.

As the other operator tables (``trioproxy.db.cache``): a task asks sqlite at most once per interval
whether another connection committed (``PRAGMA data_version``) and only then re-reads the rows, in a
worker thread; the registry (``TrunkRegistry.apply_rows``) registers new rows, re-registers changed ones
and unregisters deleted ones. So ``trioproxy trunk add|del`` on a running proxy takes effect within about
``db.refresh_interval`` seconds, without a restart.
"""

from __future__ import annotations

import logging
import sqlite3

import trio

from trioproxy.db.schema import connect

from .client import TrunkRegistry
from .table import TrunkRow, list_trunks

__all__ = ["TrunkTable"]

log = logging.getLogger("trioproxy.uac")


class TrunkTable:
    """The ``uacreg`` table of ``url``, feeding ``registry``."""

    def __init__(self, url: str, registry: TrunkRegistry) -> None:
        self.url = url
        self.registry = registry
        self.reloads = 0
        self._db: sqlite3.Connection | None = connect(url)
        self._data_version: int | None = None
        self._limiter = trio.CapacityLimiter(1)

    def read_sync(self) -> list[TrunkRow] | None:
        """The rows, or None when nothing was committed since the last read."""
        if self._db is None:
            return None
        version = int(self._db.execute("PRAGMA data_version").fetchone()[0])
        if version == self._data_version:
            return None
        rows = list_trunks(self._db)
        self._data_version = version
        return rows

    def load_sync(self) -> None:
        """Read the rows into the registry now (at start)."""
        rows = self.read_sync()
        if rows is not None:
            self.registry.apply_rows(rows)
            self.reloads += 1

    async def watch(self, interval: float = 1.0) -> None:
        """Forever: look for a change every ``interval`` seconds; a failing read is logged and retried."""
        while True:
            await trio.sleep(interval)
            try:
                rows = await trio.to_thread.run_sync(self.read_sync, limiter=self._limiter)
            except sqlite3.Error as exc:
                log.warning("uacreg: cannot read %s: %s", self.url, exc)
                continue
            if rows is not None:
                self.registry.apply_rows(rows)
                self.reloads += 1

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
