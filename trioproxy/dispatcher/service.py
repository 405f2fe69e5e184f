"""``Dispatcher``: the destination sets of a running proxy, where they come from, their health probes.

The sets come from a ``dispatcher.list`` file (``[dispatcher] list_file``, ``--dispatcher-list``) or, without
one, from the operator database's ``dispatcher`` table (``--db``); ``reload`` reads the source again and
swaps the sets in at once (destinations still listed keep their state). A bad list is refused and the old
sets stay.

Probing (``ping_interval`` > 0) runs in a task of its own (``run``): every interval an OPTIONS (``ping_method``)
from ``ping_from`` goes to every destination (``probing_mode`` 1) or to those in the probing or inactive
state (0); any 2xx, or a status of ``ping_reply_codes``, marks a destination active, anything else (an error
reply, no answer within ``ping_timeout``, a send failure) inactive. Selection only reads the states, so a
call never waits for a probe.

The running proxy makes its dispatcher current for its tasks (a context variable, as the dialog service);
without one every ``KSR.dispatcher`` call answers -1.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from .model import (
    DS_DISABLED,
    DS_INACTIVE,
    DS_PROBING,
    DS_TRYING,
    Destination,
    DispatcherError,
    DispatcherSets,
    parse_list,
)

__all__ = ["Dispatcher", "current_dispatcher", "set_dispatcher", "use_dispatcher"]

log = logging.getLogger("trioproxy.dispatcher")

Loader = Callable[[], list[Destination]]


@dataclass(eq=False)
class Dispatcher:
    """Destination sets, their source and the probe settings."""

    sets: DispatcherSets = field(default_factory=DispatcherSets)
    loader: Loader | None = None  # reads the source again (reload)
    source: str = ""  # shown by the management API: the file or "db"
    ping_interval: float = 0.0
    probing_mode: int = 0
    ping_timeout: float = 1.0
    ping_from: str = "sip:dispatcher@localhost"
    ping_method: str = "OPTIONS"
    ping_reply_codes: tuple[int, ...] = ()
    clock: Callable[[], float] = time.time
    probes_sent: int = 0
    probes_ok: int = 0
    probes_failed: int = 0
    reloads: int = 0
    reloads_failed: int = 0

    @classmethod
    def from_file(cls, path: str | Path, **settings: Any) -> Dispatcher:
        """Sets read from a list file (``DispatcherError`` or ``OSError`` when it cannot be used)."""
        p = Path(path)

        def load() -> list[Destination]:
            return parse_list(p.read_text(encoding="utf-8"))

        return cls(DispatcherSets.build(load()), loader=load, source=str(p), **settings)

    def reload(self) -> dict[str, Any]:
        """Read the source again: ``{"ok", "destinations", "error"}``; the old sets stay on an error."""
        if self.loader is None:
            return {
                "ok": False,
                "destinations": len(self.sets.destinations()),
                "error": "no dispatcher source",
            }
        try:
            fresh = DispatcherSets.build(self.loader())
        except (DispatcherError, OSError, UnicodeDecodeError, ValueError) as exc:
            self.reloads_failed += 1
            log.warning("dispatcher reload from %s refused: %s", self.source, exc)
            return {"ok": False, "destinations": len(self.sets.destinations()), "error": str(exc)}
        fresh.keep_states(self.sets)
        self.sets = fresh
        self.reloads += 1
        count = len(fresh.destinations())
        log.info("dispatcher: %d destinations in %d sets from %s", count, len(fresh.sets), self.source)
        return {"ok": True, "destinations": count, "error": None}

    # -- states --

    def set_state(self, dest: Destination, set_bits: int, clear_bits: int, why: str) -> None:
        before = dest.active
        dest.state = (dest.state & ~clear_bits) | set_bits
        if dest.active != before:
            dest.last_change = self.clock()
            log.warning(
                "dispatcher: %s (set %d) is now %s (%s)",
                dest.uri, dest.setid, "active" if dest.active else "inactive", why,
            )  # fmt: skip

    def to_probe(self) -> list[Destination]:
        """The destinations a probe round sends to."""
        out = []
        for d in self.sets.destinations():
            if d.state & DS_DISABLED:  # never probed
                continue
            if self.probing_mode == 1 or d.state & (DS_PROBING | DS_INACTIVE):
                out.append(d)
        return out

    def probe_result(self, dest: Destination, status: int) -> None:
        """Record one probe's outcome (the answer's status; 408 no answer, 503 not sent)."""
        dest.last_probe_status = status
        if 200 <= status < 300 or status in self.ping_reply_codes:
            self.probes_ok += 1
            dest.probes_ok += 1
            self.set_state(dest, 0, DS_INACTIVE | DS_TRYING, f"probe answered {status}")
        else:
            self.probes_failed += 1
            dest.probes_failed += 1
            self.set_state(dest, DS_INACTIVE | DS_PROBING, DS_TRYING, f"probe failed with {status}")

    # -- the management API --

    def snapshot(self) -> dict[str, Any]:
        probing_all = self.probing_mode == 1 and self.ping_interval > 0
        return {
            "source": self.source,
            "ping_interval": self.ping_interval,
            "probing_mode": self.probing_mode,
            "sets": {
                str(sid): [d.as_dict(probing_all) for d in members] for sid, members in self.sets.sets.items()
            },
            "probes": {"sent": self.probes_sent, "ok": self.probes_ok, "failed": self.probes_failed},
            "reloads": {"ok": self.reloads, "failed": self.reloads_failed},
        }

    # -- probing --

    async def run(self, send_probe: Callable[[Destination], Any]) -> None:
        """Probe every ``ping_interval`` seconds until cancelled; ``send_probe(dest)`` is awaited for the
        status of one probe (``trioproxy.dispatcher.prober.Prober.probe``)."""
        if self.ping_interval <= 0:
            return
        deadline = trio.current_time()
        while True:
            deadline += self.ping_interval
            await self.probe_round(send_probe)
            now = trio.current_time()
            deadline = max(deadline, now)  # a round longer than the interval: the next starts at once
            await trio.sleep_until(deadline)

    async def probe_round(self, send_probe: Callable[[Destination], Any]) -> None:
        """One probe to each destination to probe, all at once, each bounded by ``ping_timeout``."""

        async def one(dest: Destination) -> None:
            status = 408
            self.probes_sent += 1
            try:
                with trio.move_on_after(self.ping_timeout):
                    status = int(await send_probe(dest))
            except Exception as exc:  # a probe that cannot go marks the destination down, nothing more
                log.debug("dispatcher probe to %s: %r", dest.uri, exc)
                status = 503
            self.probe_result(dest, status)

        targets: Sequence[Destination] = self.to_probe()
        async with trio.open_nursery() as nursery:
            for dest in targets:
                nursery.start_soon(one, dest)


_CURRENT: ContextVar[Dispatcher | None] = ContextVar("trioproxy_dispatcher", default=None)


def current_dispatcher() -> Dispatcher | None:
    """The dispatcher of the running proxy (None when it has no sets configured)."""
    return _CURRENT.get()


def set_dispatcher(dispatcher: Dispatcher | None) -> None:
    """Make ``dispatcher`` current for this task and the tasks it starts from now on."""
    _CURRENT.set(dispatcher)


@contextmanager
def use_dispatcher(dispatcher: Dispatcher) -> Iterator[Dispatcher]:
    """Make ``dispatcher`` current within the block (route tests)."""
    token = _CURRENT.set(dispatcher)
    try:
        yield dispatcher
    finally:
        _CURRENT.reset(token)
