"""Logging for the service: text or JSON lines on stderr, and a per-call SIP message trace switched at run time.

``setup_logging(level, fmt)`` installs one handler on the root logger. The JSON format writes one object per
line: ``ts`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger``, ``msg``, then every field passed
with ``extra=`` (``log.info("relayed", extra={"call_id": cid})``) and ``exc`` for a traceback. The text
format writes ``TIME LEVEL LOGGER: MESSAGE`` followed by the extra fields as ``key=value``.

The message trace: ``trace_filter`` holds the Call-IDs and users being traced (the management API's
``POST /trace`` changes it); the transport calls ``trace_message(direction, msg, peer)`` for each message
it receives or sends, which costs one attribute test while nothing is traced. A traced message is logged in
full at INFO on ``trioproxy.sip.trace`` and kept (a bounded number per call) for ``GET /trace/<call-id>``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import OrderedDict, deque
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from trioproxy.sip import Message

__all__ = [
    "JsonFormatter",
    "TextFormatter",
    "TraceFilter",
    "setup_logging",
    "trace_filter",
    "trace_message",
]

TRACE_LOGGER = "trioproxy.sip.trace"
_trace_log = logging.getLogger(TRACE_LOGGER)

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "taskName"}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, the ``extra=`` fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        data: dict[str, Any] = {"ts": ts, "level": record.levelname.lower(), "logger": record.name}
        data["msg"] = record.getMessage()
        for key, value in _extras(record).items():
            data.setdefault(key, value)
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            data["stack"] = self.formatStack(record.stack_info)
        # json.dumps escapes newlines, so a multi-line message (a SIP trace) stays on one line.
        return json.dumps(data, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``TIME LEVEL LOGGER: MESSAGE key=value ...``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record)
        extras = _extras(record)
        if extras:
            text += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return text


_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_LEVELS["critical"] = logging.CRITICAL


def setup_logging(level: str, fmt: str = "text", stream: TextIO | None = None) -> logging.Handler:
    """Log to ``stream`` (default stderr) at ``level`` in ``fmt`` ("text" or "json"); returns the handler.

    Calling it again replaces the handler it installed before (the other handlers of the root are kept).
    """
    if level.lower() not in _LEVELS:
        raise ValueError(f"unknown log level {level!r}")
    if fmt not in ("text", "json"):
        raise ValueError(f"unknown log format {fmt!r} (text or json)")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler._trioproxy = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_trioproxy", False):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_LEVELS[level.lower()])
    return handler


# -- the per-call message trace ----------------------------------------------------------------------------


class TraceFilter:
    """The Call-IDs and users whose SIP messages are traced, and the messages traced so far (bounded).

    A user is matched against the user part of the From and To URIs; written ``user@host`` it must match
    the host too (a ``sip:``/``sips:`` prefix is ignored). User parts compare case-sensitively and hosts
    case-insensitively (RFC 3261 19.1.4).
    """

    def __init__(self, max_calls: int = 100, max_messages: int = 50) -> None:
        self.call_ids: set[str] = set()
        self.users: set[str] = set()
        self.active = False  # the one test made per message while nothing is traced
        self.max_calls, self.max_messages = max_calls, max_messages
        self._captured: OrderedDict[str, deque[dict[str, Any]]] = OrderedDict()

    def set(self, *, call_id: str | None = None, user: str | None = None, on: bool = True) -> dict[str, Any]:
        """Start (``on``) or stop tracing a Call-ID and/or a user; returns ``snapshot()``."""
        for target, value in ((self.call_ids, call_id), (self.users, _normal_user(user))):
            if value:
                if on:
                    target.add(value)
                else:
                    target.discard(value)
        self.active = bool(self.call_ids or self.users)
        return self.snapshot()

    def clear(self) -> None:
        """Trace nothing (what was captured is kept)."""
        self.call_ids.clear()
        self.users.clear()
        self.active = False

    def snapshot(self) -> dict[str, Any]:
        """What is traced: ``{"call_ids": [...], "users": [...]}`` (sorted)."""
        return {"call_ids": sorted(self.call_ids), "users": sorted(self.users)}

    def matches(self, msg: Message) -> bool:
        """Whether ``msg`` belongs to a traced call or user (a malformed header never matches)."""
        if not self.active:
            return False
        try:
            if msg.call_id in self.call_ids:
                return True
        except ValueError:
            pass
        if not self.users:
            return False
        for header in ("from_", "to"):
            try:
                uri = msg.from_.uri if header == "from_" else msg.to.uri
            except ValueError:
                continue
            if uri.user is not None and (uri.user in self.users or f"{uri.user}@{uri.host.lower()}" in self.users):
                return True
        return False

    def capture(self, call_id: str, entry: dict[str, Any]) -> None:
        """Keep one traced message of ``call_id`` (the oldest calls and messages go first)."""
        messages = self._captured.get(call_id)
        if messages is None:
            messages = self._captured[call_id] = deque(maxlen=self.max_messages)
            while len(self._captured) > self.max_calls:
                self._captured.popitem(last=False)
        else:
            self._captured.move_to_end(call_id)
        messages.append(entry)

    def captured(self, call_id: str) -> list[dict[str, Any]] | None:
        """The messages traced for ``call_id``, oldest first; None when none were."""
        messages = self._captured.get(call_id)
        return list(messages) if messages is not None else None


def _normal_user(user: str | None) -> str | None:
    if not user:
        return None
    for scheme in ("sip:", "sips:"):
        if user[: len(scheme)].lower() == scheme:
            user = user[len(scheme) :]
    name, sep, host = user.partition("@")
    return f"{name}@{host.lower()}" if sep else name


trace_filter = TraceFilter()


def trace_message(direction: str, msg: Message, peer: object, *, filter: TraceFilter | None = None) -> None:
    """Log ``msg`` in full at INFO on ``trioproxy.sip.trace`` when its call or user is traced.

    ``direction`` is "in" or "out"; ``peer`` is where it came from or goes to (printed with ``str``).
    """
    tf = trace_filter if filter is None else filter
    if not tf.active or not tf.matches(msg):
        return
    try:
        call_id = msg.call_id
    except ValueError:
        call_id = ""
    text = msg.to_bytes().decode("utf-8", "replace")
    first_line = text.split("\r\n", 1)[0]
    tf.capture(call_id, {"ts": time.time(), "direction": direction, "peer": str(peer), "message": text})
    _trace_log.info(
        "%s %s %s\n%s",
        "<<" if direction == "in" else ">>",
        peer,
        first_line,
        text,
        extra={"call_id": call_id, "direction": direction, "peer": str(peer)},
    )
