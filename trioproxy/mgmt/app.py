"""What the management API asks of the proxy: the ``MgmtApp`` provider interface and the metric types.

The management package never imports the proxy core. The shell (``server.py``) implements ``MgmtApp`` with
callbacks that read live values, and hands it to ``MgmtServer``; every value is read when a request (or a
Prometheus scrape) arrives, so nothing is copied or kept up to date in the background.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

__all__ = ["JSONDict", "MetricFamily", "MetricType", "MgmtApp", "Sample"]

JSONDict = dict[str, Any]
MetricType = Literal["counter", "gauge", "untyped"]


@dataclass(frozen=True, slots=True)
class Sample:
    """One value of a metric family, with its labels (``{"method": "INVITE"}``)."""

    value: float
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MetricFamily:
    """A metric family read at scrape time.

    ``name`` is the full Prometheus name (``trioproxy_transactions``); a counter is exposed as ``name_total``
    (a trailing ``_total`` in ``name`` is accepted and not doubled). Every sample of a family should carry
    the same label names.
    """

    name: str
    type: MetricType
    help: str
    samples: Sequence[Sample] = ()

    @classmethod
    def single(cls, name: str, type: MetricType, help: str, value: float) -> MetricFamily:
        """A family of one unlabelled sample."""
        return cls(name, type, help, (Sample(value),))


@runtime_checkable
class MgmtApp(Protocol):
    """The callbacks the management API calls; the shell implements them over the running proxy.

    Plain methods must return quickly (they run on the trio thread); those that touch storage are async.
    Every ``dict`` is sent as the JSON body, so it must hold JSON values only (str, int, float, bool, None,
    lists and dicts of them).
    """

    def health(self) -> JSONDict:
        """Liveness and readiness: ``{"status": "ok", ...}``; any other ``status`` answers 503."""
        ...

    def stats(self) -> JSONDict:
        """Counters and gauges of each layer (transactions, transports, location, routing) as nested dicts."""
        ...

    def metrics(self) -> Iterable[MetricFamily]:
        """The metric families of a Prometheus scrape, with their current values."""
        ...

    async def reload(self) -> JSONDict:
        """Reload the routing script: ``{"ok": bool, "file": str, "line": int | None, "error": str | None}``."""
        ...

    async def registrations(self, aor: str | None, offset: int, limit: int) -> JSONDict:
        """One AOR's bindings (``aor`` given) or a page of AORs with their bindings.

        Suggested shapes: ``{"aor": aor, "bindings": [{"contact", "expires", "q", ...}]}`` and
        ``{"total": n, "offset": offset, "aors": {aor: [binding, ...]}}``.
        """
        ...

    async def unregister(self, aor: str, contact: str | None) -> JSONDict:
        """Remove one binding (``contact``) or every binding of ``aor``: ``{"removed": n}``."""
        ...

    def script(self) -> JSONDict:
        """The loaded script: ``{"path", "sha256", "loaded_at", "last_reload": {...}}``."""
        ...

    def trace(self, call_id: str) -> JSONDict | None:
        """What is known of one call (its traced messages, transactions), or None when nothing is."""
        ...

    def set_trace(self, *, call_id: str | None, user: str | None, on: bool) -> JSONDict:
        """Start (``on``) or stop tracing one Call-ID or one user; returns what is traced now."""
        ...
