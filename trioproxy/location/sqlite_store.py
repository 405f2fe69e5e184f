"""Persistent location store in one sqlite file (embedded, survives restarts)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import trio

from .binding import Binding
from .store import Guard, Plan, after_change, guard_blocks

__all__ = ["SqliteStore"]

T = TypeVar("T")

_COLUMNS = (
    "aor, contact, expires_at, q, call_id, cseq, path, received, socket, instance, reg_id, "
    "user_agent, last_modified, flags"
)

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS bindings (
    aor TEXT NOT NULL,
    contact TEXT NOT NULL,
    expires_at REAL NOT NULL,
    q REAL NOT NULL,
    call_id TEXT NOT NULL,
    cseq INTEGER NOT NULL,
    path TEXT NOT NULL,
    received TEXT,
    socket TEXT,
    instance TEXT,
    reg_id INTEGER,
    user_agent TEXT,
    last_modified REAL NOT NULL,
    flags INTEGER NOT NULL,
    PRIMARY KEY (aor, contact)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS bindings_expires ON bindings (expires_at);
-- columns: {_COLUMNS}
"""

_INSERT = f"INSERT OR REPLACE INTO bindings ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)"


def _row(b: Binding) -> tuple[Any, ...]:
    return (
        b.aor, b.contact, b.expires_at, b.q, b.call_id, b.cseq, json.dumps(list(b.path)), b.received,
        b.socket, b.instance, b.reg_id, b.user_agent, b.last_modified, b.flags,
    )  # fmt: skip


def _binding(row: tuple[Any, ...]) -> Binding:
    return Binding(
        aor=row[0], contact=row[1], expires_at=row[2], q=row[3], call_id=row[4], cseq=row[5],
        path=tuple(json.loads(row[6])), received=row[7], socket=row[8], instance=row[9], reg_id=row[10],
        user_agent=row[11], last_modified=row[12], flags=row[13],
    )  # fmt: skip


class SqliteStore:
    """Bindings in a sqlite table; every write is committed before the call returns.

    The database runs in WAL mode. With `synchronous=NORMAL` (the default) a committed write survives
    the process being killed (it is in the WAL file); `synchronous=FULL` also survives power loss at the
    cost of an fsync per commit. One connection serves every call, one thread at a time
    (`trio.to_thread.run_sync` with a `CapacityLimiter(1)`); each call is one short transaction.
    Several processes may share the file: writes use `BEGIN IMMEDIATE`.
    """

    def __init__(self, path: str, *, synchronous: str = "NORMAL") -> None:
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"bad synchronous mode: {synchronous!r}")
        self.path = path
        self._limiter = trio.CapacityLimiter(1)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        self._db.executescript(_SCHEMA)

    @classmethod
    def from_url(cls, url: str) -> SqliteStore:
        """`sqlite:///abs/path.db` (as in file: URLs), `sqlite:relative.db`, `sqlite::memory:`.

        Option: `?synchronous=normal|full`.
        """
        parts = urlsplit(url)
        if parts.netloc:
            raise ValueError(f"sqlite URL takes no host: {url!r} (use sqlite:///path)")
        path = unquote(parts.path)
        if path.startswith("//"):
            path = "/" + path.lstrip("/")
        if path == "/:memory:":
            path = ":memory:"
        if not path:
            raise ValueError(f"sqlite URL has no path: {url!r}")
        options = parse_qs(parts.query)
        synchronous = options.get("synchronous", ["NORMAL"])[-1]
        return cls(path, synchronous=synchronous)

    async def _run(self, fn: Callable[[], T]) -> T:
        return await trio.to_thread.run_sync(fn, limiter=self._limiter)

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        # One IMMEDIATE transaction: takes the write lock up front, so the read-check-write inside fn is
        # atomic against other processes sharing the file too.
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            result = fn(db)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return result

    async def get(self, aor: str, now: float) -> list[Binding]:
        """Bindings of `aor` not expired at `now`."""

        def read() -> list[Binding]:
            cur = self._db.execute(
                f"SELECT {_COLUMNS} FROM bindings WHERE aor = ? AND expires_at > ?", (aor, now)
            )
            return [_binding(r) for r in cur.fetchall()]

        return await self._run(read)

    async def put(self, binding: Binding) -> None:
        """Insert or replace the binding with the same aor and contact (committed on return)."""
        await self._run(lambda: self._write(lambda db: db.execute(_INSERT, _row(binding))))

    async def update(
        self,
        aor: str,
        puts: Sequence[Binding],
        removes: Sequence[str] = (),
        *,
        guard: Guard | None = None,
    ) -> bool:
        """Apply puts and removals in one transaction, or nothing if `guard` blocks a touched binding."""
        touched = [b.contact for b in puts] + list(removes)

        def apply(db: sqlite3.Connection) -> bool:
            if guard is not None:
                for contact in touched:
                    row = db.execute(
                        "SELECT call_id, cseq FROM bindings WHERE aor = ? AND contact = ?", (aor, contact)
                    ).fetchone()
                    if row is not None and guard_blocks(row[0], row[1], guard):
                        return False
            db.executemany("DELETE FROM bindings WHERE aor = ? AND contact = ?", [(aor, c) for c in removes])
            db.executemany(_INSERT, [_row(b) for b in puts])
            return True

        return await self._run(lambda: self._write(apply))

    async def transact(
        self, aor: str, now: float, plan: Plan, *, guard: Guard | None = None
    ) -> list[Binding] | None:
        """Read, plan and write in one IMMEDIATE transaction in one worker-thread call.

        The write lock is held from the read on, so no other writer (thread or process) can slip in and
        the plan's own Call-ID/CSeq checks on the snapshot are final.
        """

        def apply(db: sqlite3.Connection) -> list[Binding]:
            cur = db.execute(f"SELECT {_COLUMNS} FROM bindings WHERE aor = ? AND expires_at > ?", (aor, now))
            snapshot = [_binding(r) for r in cur.fetchall()]
            puts, removes = plan(snapshot)
            db.executemany("DELETE FROM bindings WHERE aor = ? AND contact = ?", [(aor, c) for c in removes])
            db.executemany(_INSERT, [_row(b) for b in puts])
            return after_change(snapshot, puts, removes)

        return await self._run(lambda: self._write(apply))

    async def delete(self, aor: str, contact: str) -> bool:
        """Remove one binding; True if it existed."""

        def remove(db: sqlite3.Connection) -> bool:
            cur = db.execute("DELETE FROM bindings WHERE aor = ? AND contact = ?", (aor, contact))
            return cur.rowcount > 0

        return await self._run(lambda: self._write(remove))

    async def delete_aor(self, aor: str) -> int:
        """Remove every binding of `aor`; returns how many."""
        return await self._run(
            lambda: self._write(lambda db: db.execute("DELETE FROM bindings WHERE aor = ?", (aor,)).rowcount)
        )

    async def list_aors(self, offset: int = 0, limit: int = 100) -> list[str]:
        """AORs with stored bindings, sorted, one page."""

        def read() -> list[str]:
            cur = self._db.execute(
                "SELECT DISTINCT aor FROM bindings ORDER BY aor LIMIT ? OFFSET ?", (limit, offset)
            )
            return [r[0] for r in cur.fetchall()]

        return await self._run(read)

    async def counts(self, now: float | None = None) -> tuple[int, int]:
        """(AORs, contacts) stored; with `now`, only those not expired at `now`."""
        horizon = float("-inf") if now is None else now

        def read() -> tuple[int, int]:
            row = self._db.execute(
                "SELECT COUNT(DISTINCT aor), COUNT(*) FROM bindings WHERE expires_at > ?", (horizon,)
            ).fetchone()
            return int(row[0]), int(row[1])

        return await self._run(read)

    async def purge_expired(self, now: float) -> int:
        """Drop bindings expired at `now`; returns how many."""
        return await self._run(
            lambda: self._write(
                lambda db: db.execute("DELETE FROM bindings WHERE expires_at <= ?", (now,)).rowcount
            )
        )

    async def close(self) -> None:
        """Close the connection (waits for a call in flight)."""
        await self._run(self._db.close)
