"""Accounting records: one dict per transaction (Kamailio's acc) or per dialog (its CDRs), flat and JSON-ready.

Every record has ``type`` (``tx``: a transaction accounted by flag, ``missed``: a failed INVITE recorded as
a missed call, ``request``: ``acc_log_request``/``acc_db_request`` from the script, ``cdr``: a dialog that
ended), ``time`` (seconds since the epoch), ``method``, ``from_tag``, ``to_tag``, ``call_id``, ``sip_code``,
``sip_reason``, ``from_uri``, ``to_uri``, ``src`` and ``dst``; CDRs add ``start_time``, ``answer_time``
(null when never answered), ``end_time``, ``duration`` (seconds from answer to end) and ``end_reason``.
Extra fields (``[acc] extra``) are added by name.
"""

from __future__ import annotations

from typing import Any

from trioproxy.dialog import Dialog
from trioproxy.sip import Request, Response

__all__ = ["COLUMNS", "cdr_record", "request_record"]

# The columns of the database tables (docs/DB.md), in order; extra fields go to ``extra`` as JSON.
COLUMNS = (
    "type", "time", "method", "from_tag", "to_tag", "call_id", "sip_code", "sip_reason", "from_uri", "to_uri",
    "src", "dst", "start_time", "answer_time", "end_time", "duration", "end_reason", "comment",
)  # fmt: skip


def request_record(
    kind: str,
    request: Request,
    now: float,
    *,
    status: int,
    reason: str,
    response: Response | None = None,
    src: str = "",
    dst: str = "",
    comment: str = "",
    extra: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The record of one request and its final answer (``status`` 0: none yet, as in a request route)."""
    to_tag = (response.to.tag if response is not None else None) or request.to.tag or ""
    record: dict[str, Any] = {
        "type": kind,
        "time": round(now, 3),
        "method": request.method,
        "from_tag": request.from_.tag or "",
        "to_tag": to_tag,
        "call_id": request.call_id,
        "sip_code": status,
        "sip_reason": reason,
        "from_uri": str(request.from_.uri),
        "to_uri": str(request.to.uri),
        "src": src,
        "dst": dst,
        "comment": comment,
    }
    record.update(extra or {})
    return record


def cdr_record(dialog: Dialog) -> dict[str, Any]:
    """The CDR of a dialog that ended."""
    end = dialog.end if dialog.end is not None else dialog.start
    record: dict[str, Any] = {
        "type": "cdr",
        "time": round(end, 3),
        "method": "INVITE",
        "from_tag": dialog.from_tag,
        "to_tag": dialog.to_tag or "",
        "call_id": dialog.call_id,
        "sip_code": dialog.status,
        "sip_reason": dialog.reason,
        "from_uri": dialog.from_uri,
        "to_uri": dialog.to_uri,
        "src": dialog.source,
        "dst": dialog.destination,
        "start_time": round(dialog.start, 3),
        "answer_time": None if dialog.answer is None else round(dialog.answer, 3),
        "end_time": round(end, 3),
        "duration": round(dialog.duration, 3),
        "end_reason": dialog.end_reason.value if dialog.end_reason is not None else "",
    }
    record.update(dialog.extra)
    return record
