"""Background purge and management helpers (dump registrations, remove a binding, counts)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import trio

from .binding import Binding
from .store import LocationStore

__all__ = ["binding_info", "list_bindings", "remove_binding", "run_purger", "store_counts"]

log = logging.getLogger(__name__)


async def run_purger(
    store: LocationStore,
    interval: float = 60.0,
    *,
    clock: Callable[[], float] = time.time,
) -> None:
    """Forever: every `interval` seconds drop the bindings expired at `clock()`.

    Start with `nursery.start_soon(run_purger, store, 60)`. Expired bindings are never returned by
    `get` anyway; this only reclaims their space. A failing purge is logged and retried next interval.
    """
    if interval <= 0:
        raise ValueError("purge interval must be positive")
    while True:
        await trio.sleep(interval)
        try:
            removed = await store.purge_expired(clock())
        except Exception:
            log.exception("location purge failed")
            continue
        if removed:
            log.debug("location purge removed %d expired bindings", removed)


def binding_info(binding: Binding, now: float) -> dict[str, Any]:
    """A JSON-ready view of a binding for management output, with `expires` (seconds left)."""
    info = binding.to_dict()
    info["expires"] = binding.expires_in(now)
    return info


async def list_bindings(
    store: LocationStore,
    now: float,
    aor: str | None = None,
    *,
    offset: int = 0,
    limit: int = 100,
) -> dict[str, list[dict[str, Any]]]:
    """Current bindings of one AOR, or of one page of all AORs (sorted by AOR), as JSON-ready dicts."""
    aors = [aor] if aor is not None else await store.list_aors(offset, limit)
    out: dict[str, list[dict[str, Any]]] = {}
    for name in aors:
        bindings = await store.get(name, now)
        if bindings:
            ordered = sorted(bindings, key=lambda b: (-b.q, -b.last_modified, b.contact))
            out[name] = [binding_info(b, now) for b in ordered]
    return out


async def remove_binding(store: LocationStore, aor: str, contact: str | None = None) -> int:
    """Remove one binding (exact contact as listed) or, without `contact`, the whole AOR; how many."""
    if contact is None:
        return await store.delete_aor(aor)
    return 1 if await store.delete(aor, contact) else 0


async def store_counts(store: LocationStore, now: float | None = None) -> dict[str, int]:
    """`{"aors": N, "contacts": M}` (live at `now` when given)."""
    aors, contacts = await store.counts(now)
    return {"aors": aors, "contacts": contacts}
