"""Turning received bytes into what ``Transports.incoming`` carries: a message, a Malformed, or nothing."""

from __future__ import annotations

import logging

from trioproxy.sip import Request, SIPError, Via, make_response, parse_message_untrusted

__all__ = ["answerable_request", "flood_reply", "is_blank"]

log = logging.getLogger("trioproxy.transport")

# Only this much of a bad message is scanned for its start line and Via.
_SCAN_LIMIT = 8192
_VIA_NAMES = (b"via", b"v")


def is_blank(data: bytes) -> bool:
    """A datagram of only CR/LF/blanks: an RFC 5626 4.4.1 style keepalive over UDP, not a message."""
    return not data.strip(b"\r\n \t\0")


def answerable_request(data: bytes) -> bool:
    """True when ``data`` starts with a request line and has a readable top Via, so that a 4xx/5xx can be
    routed back (RFC 3261 18.2.2 needs the Via); responses and unreadable junk are dropped instead."""
    head = data[:_SCAN_LIMIT]
    end = head.find(b"\n")
    if end < 0:
        return False
    parts = head[:end].rstrip(b"\r").split(b" ")
    # Request-Line = Method SP Request-URI SP SIP-Version (RFC 3261 7.1); a status line starts "SIP/".
    if len(parts) != 3 or not parts[0].isalpha() or not parts[2].upper().startswith(b"SIP/"):
        return False
    for line in head[end + 1 :].split(b"\n"):
        line = line.rstrip(b"\r")
        if not line:
            break
        name, colon, value = line.partition(b":")
        if not colon or name.strip().lower() not in _VIA_NAMES:
            continue
        first = value.decode("utf-8", "replace").split(",", 1)[0].strip()
        try:
            Via.parse_untrusted(first)
        except SIPError:
            return False
        except Exception:  # the parser promises SIPError only; a bug there must not stop a listener
            log.exception("Via parser raised an unexpected error")
            return False
        return True
    return False


def flood_reply(data: bytes | bytearray, retry_after: int) -> bytes | None:
    """The 503 (with Retry-After) for a request of a blocked source, or None when it cannot be answered (a
    response, an ACK, unparsable bytes). Built without a transaction; the caller sends it to the source."""
    if data.startswith((b"SIP/", b"ACK ")):
        return None
    try:
        msg = parse_message_untrusted(bytes(data))
        if not isinstance(msg, Request):
            return None
        resp = make_response(msg, 503, "Service Unavailable")
    except SIPError:
        return None
    resp.append("Retry-After", str(retry_after))
    return resp.to_bytes()
