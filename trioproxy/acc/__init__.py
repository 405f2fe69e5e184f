"""Accounting (``KSR.acc``): transaction records and CDRs as JSON lines in a file and rows in the ``--db``
database (``acc``, ``missed_calls``)."""

from __future__ import annotations

from .records import COLUMNS, cdr_record, request_record
from .service import AccFlags, AccService, current_acc, set_acc, use_acc
from .writer import JsonLinesWriter

__all__ = [
    "COLUMNS",
    "AccFlags",
    "AccService",
    "JsonLinesWriter",
    "cdr_record",
    "current_acc",
    "request_record",
    "set_acc",
    "use_acc",
]
