"""The route decisions of recent requests, for the management API's ``GET /trace/<call-id>``.

Recording is cheap because it happens for every request: a request appends ``(kind, monotonic time, data)``
tuples to its own ``RequestTrace`` (at most ``MAX_EVENTS``), with the values as they are (URIs, addresses,
the script's KSR call tuples); the ring keeps the last ``size`` requests. Nothing is formatted until someone
asks: ``TraceRing.get`` turns a call's requests into the JSON-ready dicts the API shows.
"""

from __future__ import annotations

from collections import deque
from typing import Any

__all__ = ["MAX_EVENTS", "RequestTrace", "TraceRing"]

MAX_EVENTS = 300

Event = tuple[str, float, dict[str, Any]]


class RequestTrace:
    """One request's route decisions, recorded as they happen and formatted only when read."""

    __slots__ = ("call_id", "cseq", "events", "method", "ruri", "source", "started")

    def __init__(self, call_id: str, method: str, ruri: object, cseq: int, source: object, started: float) -> None:
        self.call_id = call_id
        self.method = method
        self.ruri = ruri
        self.cseq = cseq
        self.source = source
        self.started = started
        self.events: list[Event] = []

    def note(self, kind: str, now: float, data: dict[str, Any]) -> None:
        if len(self.events) < MAX_EVENTS:
            self.events.append((kind, now, data))

    def as_dict(self) -> dict[str, Any]:
        events: list[dict[str, Any]] = []
        for kind, at, data in self.events:
            shown = {key: _shown(value) for key, value in data.items()}
            shown["kind"] = kind
            shown["ms"] = round((at - self.started) * 1000, 3)
            events.append(shown)
        return {
            "method": self.method,
            "ruri": str(self.ruri),
            "cseq": self.cseq,
            "source": None if self.source is None else str(self.source),
            "events": events,
        }


def _shown(value: Any) -> Any:
    """A recorded value as JSON shows it (values are kept raw; this runs only when a trace is read)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [_shown(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _shown(v) for k, v in value.items()}
    if callable(value):  # a deferred rendering (the script's KSR calls)
        return _shown(value())
    return str(value)


class TraceRing:
    """The last ``size`` requests' traces; ``get(call_id)`` returns that call's requests, oldest first."""

    def __init__(self, size: int = 1000, per_call: int = 50) -> None:
        self._ring: deque[RequestTrace] = deque(maxlen=size)
        self.per_call = per_call

    @property
    def size(self) -> int:
        return self._ring.maxlen or 0

    def add(self, trace: RequestTrace) -> None:
        self._ring.append(trace)

    def __len__(self) -> int:
        return len(self._ring)

    def __contains__(self, call_id: object) -> bool:
        return any(t.call_id == call_id for t in self._ring)

    def get(self, call_id: str) -> list[dict[str, Any]] | None:
        found = [t.as_dict() for t in self._ring if t.call_id == call_id][: self.per_call]
        return found or None
