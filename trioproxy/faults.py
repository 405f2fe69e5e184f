"""Exception boundaries: where an unexpected exception stops, is logged once and counted.

Every unit of work the proxy does (a datagram, a TCP message, a request task, a branch task, a timer
expiry, one action of the transaction table, a management request) runs inside a boundary. An exception that
reaches a boundary is a bug or an input nobody thought of: ``contain`` logs it once, with the Call-ID when one
can be read without raising and the traceback, and counts it by ``where``; the unit then ends (answered 500
when a server transaction can still answer) and the rest of the proxy goes on. ``trio.Cancelled`` is a
``BaseException`` and boundaries catch ``Exception`` only, so cancellation always passes through.

The counts are process-wide (``INTERNAL_ERRORS``) and exposed on ``/metrics`` as
``trioproxy_internal_errors_total{where=...}``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

__all__ = ["INTERNAL_ERRORS", "InternalErrors", "call_id_of", "contain"]

log = logging.getLogger("trioproxy.faults")


class InternalErrors:
    """Unexpected exceptions stopped at a boundary, counted by boundary name."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def add(self, where: str) -> None:
        self._counts[where] = self._counts.get(where, 0) + 1

    def get(self, where: str) -> int:
        return self._counts.get(where, 0)

    def snapshot(self) -> Mapping[str, int]:
        return dict(self._counts)

    def total(self) -> int:
        return sum(self._counts.values())


INTERNAL_ERRORS = InternalErrors()


def call_id_of(msg: object) -> str | None:
    """The Call-ID of a message as written, or None; never raises (the message may be the cause)."""
    try:
        get = getattr(msg, "get", None)
        if get is None:
            return None
        value = get("Call-ID")
        return value if isinstance(value, str) else None
    except Exception:
        return None


def contain(where: str, exc: BaseException, *, call_id: str | None = None, detail: str = "") -> None:
    """Log ``exc`` (with its traceback) and count it under ``where``. Never raises."""
    INTERNAL_ERRORS.add(where)
    try:
        log.error(
            "internal error in %s%s%s: %s: %s",
            where,
            f" call-id={call_id}" if call_id else "",
            f" ({detail})" if detail else "",
            type(exc).__name__,
            exc,
            exc_info=exc,
        )
    except Exception:  # a broken __str__ or handler must not turn the boundary into a new fault
        pass
