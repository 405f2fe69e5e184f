"""Bounds on untrusted input, enforced by the parser and the stream framer.

- ``MAX_MESSAGE_SIZE``: bytes in one message, head and body (beyond it: 413). A UDP datagram cannot carry
  more than 65535 bytes anyway; on a stream the framer refuses a message whose head or announced
  Content-Length would go past it.
- ``MAX_HEADERS``: header lines in one message, after unfolding (beyond it: 400).
- ``MAX_LINE_LENGTH``: characters in one header line or the start line, after unfolding (beyond it: 400,
  or 414 for a Request-Line, RFC 3261 21.4.12).
- ``MAX_HEAD_SIZE``: bytes a stream may send before the blank line that ends the head (beyond it: 413).
"""

from __future__ import annotations

__all__ = ["MAX_HEADERS", "MAX_HEAD_SIZE", "MAX_LINE_LENGTH", "MAX_MESSAGE_SIZE"]

MAX_MESSAGE_SIZE = 65535
MAX_HEADERS = 128
MAX_LINE_LENGTH = 8192
MAX_HEAD_SIZE = 32768
