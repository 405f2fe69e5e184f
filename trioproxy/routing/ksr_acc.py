"""``KSR.acc``: accounting records from scripts (Kamailio's acc module, KEMI names).

- ``acc_log_request(comment)``: a record of the current request now, to the ``[acc] file`` (the log when
  there is none); ``acc_db_request(comment, table)``: the same to the ``--db`` table ``acc`` or
  ``missed_calls``. As in Kamailio, a comment starting with three digits gives the status and reason
  (``"404 Not Found"``); otherwise the status is the reply's in a reply or failure route, 0 in a request
  route, and the comment is kept in ``comment``. 1, or -1 (no database, unknown table, write failure).

Automatic records (flags, missed calls, CDRs when a managed dialog ends) are the proxy's: see
``trioproxy.acc.service``; ``record_transaction`` and ``extra_fields`` are the helpers it uses.
"""

from __future__ import annotations

import time
from typing import Any

from trioproxy.acc import current_acc, request_record
from trioproxy.sip import SIPError

from .ksr_core import _Mod
from .pv import get_pv
from .state import RequestState

__all__ = ["Acc", "extra_fields", "record_transaction"]


def extra_fields(state: RequestState) -> dict[str, str]:
    """The ``[acc] extra`` fields, read from the state's pseudo-variables (unset ones are "")."""
    out: dict[str, str] = {}
    for name, pv in current_acc().extra:
        try:
            value = get_pv(state, pv)
        except (SIPError, ValueError, KeyError):
            value = None
        out[name] = "" if value is None else str(value)
    return out


def _source(state: RequestState) -> str:
    src = state.req.source
    return str(src) if src is not None else ""


def _record(state: RequestState, comment: str, now: float) -> dict[str, Any]:
    text = str(comment or "")
    status, reason = 0, ""
    head = text[:3]
    if len(head) == 3 and head.isdigit():
        status, reason, text = int(head), text[3:].strip(), ""
    elif state.response is not None:
        status, reason = state.response.status, state.response.reason
    return request_record(
        "request",
        state.req,
        now,
        status=status,
        reason=reason,
        response=state.response,
        src=_source(state),
        dst=state.dst_uri or str(state.ruri),
        comment=text,
        extra=extra_fields(state),
    )


def record_transaction(state: RequestState, status: int, reason: str, now: float) -> int:
    """A transaction ended: the records its flags ask for (``[acc]`` flags); how many were made."""
    acc = current_acc()

    def make(kind: str) -> dict[str, Any]:
        return request_record(
            kind,
            state.req,
            now,
            status=status,
            reason=reason,
            response=state.response,
            src=_source(state),
            dst=state.dst_uri or str(state.ruri),
            extra=extra_fields(state),
        )

    return acc.on_transaction(state.flags, state.req.method, status, make)


class Acc(_Mod):
    """``KSR.acc``."""

    def acc_log_request(self, comment: str) -> int:
        try:
            record = _record(self._st, comment, time.time())
        except (SIPError, ValueError):
            return -1
        return 1 if current_acc().log(record) else -1

    def acc_db_request(self, comment: str, table: str) -> int:
        try:
            record = _record(self._st, comment, time.time())
        except (SIPError, ValueError):
            return -1
        return 1 if current_acc().db(record, str(table)) else -1
