"""Bounds on untrusted input, enforced by the parser and the stream framer.

- ``MAX_MESSAGE_SIZE``: bytes in one message, head and body (beyond it: 413). A UDP datagram cannot carry
  more than 65535 bytes anyway; on a stream the framer refuses a message whose head or announced
  Content-Length would go past it.
- ``MAX_HEADERS``: header lines in one message, after unfolding (beyond it: 400).
- ``MAX_LINE_LENGTH``: characters in one header line or the start line, after unfolding (beyond it: 400,
  or 414 for a Request-Line, RFC 3261 21.4.12).
- ``MAX_HEAD_SIZE``: bytes a stream may send before the blank line that ends the head (beyond it: 413).

``set_parser_limits`` changes the header count and line length the parser enforces, process-wide (the
``[limits]`` section of the configuration, applied once at start).
"""

from __future__ import annotations

__all__ = ["MAX_HEADERS", "MAX_HEAD_SIZE", "MAX_LINE_LENGTH", "MAX_MESSAGE_SIZE", "set_parser_limits"]

MAX_MESSAGE_SIZE = 65535
MAX_HEADERS = 128
MAX_LINE_LENGTH = 8192
MAX_HEAD_SIZE = 32768


def set_parser_limits(*, max_headers: int = MAX_HEADERS, max_line_length: int = MAX_LINE_LENGTH) -> None:
    """Set the parser's header-count and line-length bounds for this process (both at least 1)."""
    from . import parser  # the parser reads its module globals on every message

    if max_headers < 1 or max_line_length < 1:
        raise ValueError("limits must be positive")
    parser.MAX_HEADERS = max_headers  # type: ignore[attr-defined]
    parser.MAX_LINE_LENGTH = max_line_length  # type: ignore[attr-defined]
