"""``AccService``: where accounting records go (the JSON lines file, the ``--db`` tables) and when they are made.

Records come from three places:

- the script: ``KSR.acc.acc_log_request(comment)`` (to the file) and ``acc_db_request(comment, table)`` (to
  the database's ``acc`` or ``missed_calls`` table) make a record of the request at once (status 0 in a
  request route; the reply's status in a reply or failure route);
- the end of a transaction (its final answer sent): a request whose message flags hold ``[acc] log_flag``
  (file) or ``db_flag`` (database) is accounted when it succeeded, or failed with
  ``failed_transaction_flag`` also set; a failed INVITE with ``log_missed_flag`` / ``db_missed_flag`` is
  a missed call (type ``missed``; in the database, the ``missed_calls`` table);
- the end of a managed dialog (``[acc] cdr = true``): a CDR with start, answer and end time and duration,
  answered or not.

Flags are Kamailio's message flags (``KSR.setflag(n)``); -1 turns one off. Database rows are queued and
written by a background task in a worker thread, never on the call path; a full queue drops and counts.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import trio

from trioproxy.db import connect

from .records import COLUMNS
from .writer import JsonLinesWriter

__all__ = ["AccFlags", "AccService", "current_acc", "set_acc", "use_acc"]

log = logging.getLogger("trioproxy.acc")

TABLES = ("acc", "missed_calls")


@dataclass(frozen=True, slots=True)
class AccFlags:
    """The message flag numbers of ``[acc]`` (-1: off)."""

    log_flag: int = 1
    db_flag: int = 2
    log_missed_flag: int = 3
    db_missed_flag: int = 4
    failed_transaction_flag: int = 5

    @staticmethod
    def has(flags: int, number: int) -> bool:
        return 0 <= number < 64 and bool(flags & (1 << number))


@dataclass(eq=False)
class AccService:
    """Accounting of one proxy: ``file`` ("": no file) and ``db_url`` ("": no database rows)."""

    file: str = ""
    db_url: str = ""
    flags: AccFlags = field(default_factory=AccFlags)
    cdr: bool = True
    extra: tuple[tuple[str, str], ...] = ()  # (field name, pseudo-variable) pairs, e.g. ("ua", "$ua")
    max_queue: int = 10_000
    records: int = 0
    dropped: int = 0
    db_errors: int = 0
    writer: JsonLinesWriter | None = field(init=False, default=None)
    _queue: deque[tuple[str, dict[str, Any]]] = field(init=False, default_factory=deque)
    _wake: trio.Event = field(init=False, default_factory=trio.Event)
    _db: sqlite3.Connection | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.file:
            self.writer = JsonLinesWriter(self.file)

    # -- sinks --

    def log(self, record: dict[str, Any]) -> bool:
        """Write a record to the file (or, without one, to the log at info level)."""
        self.records += 1
        if self.writer is None:
            log.info("ACC: %s", json.dumps(record, separators=(",", ":"), default=str))
            return True
        return self.writer.write(record)

    def db(self, record: dict[str, Any], table: str = "acc") -> bool:
        """Queue a record for the database table ``acc`` or ``missed_calls``; False: no database, unknown
        table or full queue."""
        if not self.db_url or table not in TABLES:
            return False
        if len(self._queue) >= self.max_queue:
            self.dropped += 1
            return False
        self.records += 1
        self._queue.append((table, record))
        self._wake.set()
        return True

    def reopen(self) -> None:
        """After a rotation: the next record opens the file again."""
        if self.writer is not None:
            self.writer.reopen()

    # -- automatic records --

    def on_transaction(
        self, flags: int, method: str, status: int, make: Callable[[str], dict[str, Any]]
    ) -> int:
        """A transaction ended with ``status`` and message ``flags``; ``make(kind)`` builds its record.
        Returns the number of records made."""
        f, made = self.flags, 0
        failed = status >= 300 or status == 0
        if not failed or AccFlags.has(flags, f.failed_transaction_flag):
            if AccFlags.has(flags, f.log_flag):
                made += self.log(make("tx"))
            if AccFlags.has(flags, f.db_flag):
                made += self.db(make("tx"), "acc")
        if failed and method == "INVITE":
            if AccFlags.has(flags, f.log_missed_flag):
                made += self.log(make("missed"))
            if AccFlags.has(flags, f.db_missed_flag):
                made += self.db(make("missed"), "missed_calls")
        return made

    def on_cdr(self, record: dict[str, Any]) -> None:
        """A managed dialog ended: its CDR to the file and, with a database, to ``acc``."""
        if not self.cdr:
            return
        self.log(record)
        if self.db_url:
            self.db(record, "acc")

    # -- the database writer task --

    async def run(self) -> None:
        """Write queued rows, in batches, in a worker thread (until cancelled)."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), 500))]
                await trio.to_thread.run_sync(self._write_rows, batch)

    async def flush(self) -> None:
        """Write what is queued now (tests, shutdown)."""
        while self._queue:
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), 500))]
            await trio.to_thread.run_sync(self._write_rows, batch)

    def _write_rows(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        try:
            if self._db is None:
                self._db = connect(self.db_url)
            db = self._db
            db.execute("BEGIN")
            for table, record in batch:
                row = [record.get(c) for c in COLUMNS]
                extra = {k: v for k, v in record.items() if k not in COLUMNS}
                row = [("" if v is None and c in _TEXT else v) for c, v in zip(COLUMNS, row, strict=True)]
                names = ", ".join((*COLUMNS, "extra"))
                marks = ", ".join("?" * (len(COLUMNS) + 1))
                db.execute(f"INSERT INTO {table} ({names}) VALUES ({marks})", (*row, json.dumps(extra)))
            db.execute("COMMIT")
        except Exception as exc:  # a database fault loses these rows, never the proxy
            self.db_errors += 1
            log.error("accounting database %s: %s", self.db_url, exc)
            if self._db is not None:
                try:
                    self._db.close()
                except sqlite3.Error:
                    pass
                self._db = None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self._db is not None:
            self._db.close()
            self._db = None


_TEXT = frozenset(
    c for c in COLUMNS if c not in ("time", "sip_code", "start_time", "answer_time", "end_time", "duration")
)

_DEFAULT = AccService()
_CURRENT: ContextVar[AccService | None] = ContextVar("trioproxy_acc", default=None)


def current_acc() -> AccService:
    """The accounting of the running proxy (or a process-wide default: records to the log)."""
    return _CURRENT.get() or _DEFAULT


def set_acc(service: AccService) -> None:
    """Make ``service`` current for this task and the tasks it starts from now on."""
    _CURRENT.set(service)


@contextmanager
def use_acc(service: AccService) -> Iterator[AccService]:
    """Make ``service`` current within the block (route tests)."""
    token = _CURRENT.set(service)
    try:
        yield service
    finally:
        _CURRENT.reset(token)
