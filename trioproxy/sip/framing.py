"""Stream framing for TCP/TLS (RFC 3261 18.3) with the keepalives of RFC 5626 3.5.1."""

from __future__ import annotations

import enum

from .errors import SIPError
from .limits import MAX_HEAD_SIZE, MAX_MESSAGE_SIZE

__all__ = ["Keepalive", "StreamFramer"]


class Keepalive(enum.Enum):
    """RFC 5626 3.5.1: a client sends PING (CRLFCRLF); the server answers PONG (CRLF)."""

    PING = b"\r\n\r\n"
    PONG = b"\r\n"


def _content_length(head: bytes) -> int:
    # Find Content-Length (or its compact form "l") in a raw head; folded values are unfolded first.
    found: int | None = None
    for raw in head.replace(b"\r\n ", b" ").replace(b"\r\n\t", b" ").split(b"\r\n")[1:]:
        name, colon, value = raw.partition(b":")
        if not colon:
            continue
        name = name.strip(b" \t").lower()
        if name == b"content-length" or name == b"l":
            value = value.strip(b" \t")
            if not value.isdigit() or len(value) > 10:
                raise SIPError(400, "Bad Content-Length")
            n = int(value)
            if found is not None and found != n:
                raise SIPError(400, "Conflicting Content-Length")
            found = n
    if found is None:
        # RFC 3261 18.3: Content-Length MUST be used with stream transports.
        raise SIPError(400, "Missing Content-Length")
    return found


class StreamFramer:
    """Cut a byte stream into whole messages by Content-Length, and recognise RFC 5626 keepalives.

    ``feed(data)`` returns every complete item: message bytes (ready for ``parse_message_untrusted``) and
    ``Keepalive.PING`` / ``Keepalive.PONG``. A SIPError means the stream cannot be resynchronised: close
    the connection (after answering ``status`` if it makes sense).
    """

    __slots__ = ("_buf", "_error", "_need", "_scan", "max_message_size")

    def __init__(self, max_message_size: int = MAX_MESSAGE_SIZE) -> None:
        self.max_message_size = max_message_size
        self._buf = bytearray()
        self._need = -1  # total size of the message being read once its head is known, else -1
        self._scan = 0  # where to resume looking for the end of the head (keeps drip-feeding linear)
        self._error: SIPError | None = None  # raised by the next feed when messages came before it

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a message."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes | Keepalive]:
        """Add received bytes; return the complete messages and keepalives they finish, in order.

        When the bytes hold whole messages and then garbage, the messages are returned and the SIPError
        comes from the next call.
        """
        if self._error is not None:
            raise self._error
        buf = self._buf
        buf += data
        out: list[bytes | Keepalive] = []
        pos = 0  # consumed so far; the buffer is trimmed once at the end (linear in what one read brings)
        size = len(buf)
        limit = min(MAX_HEAD_SIZE, self.max_message_size)
        try:
            while pos < size:
                if self._need < 0:
                    # Between messages: CRLFCRLF is a ping, a lone CRLF a pong (RFC 5626 3.5.1).
                    if buf[pos] in (13, 10):
                        if buf.startswith(b"\r\n\r\n", pos):
                            pos += 4
                            out.append(Keepalive.PING)
                            continue
                        rest = bytes(buf[pos : pos + 4])
                        if len(rest) < 4 and b"\r\n\r\n".startswith(rest):
                            break  # maybe the start of a ping: wait for more
                        if buf.startswith(b"\r\n", pos):
                            pos += 2
                            out.append(Keepalive.PONG)
                            continue
                        raise SIPError(400, "Stray Line End")
                    end = buf.find(b"\r\n\r\n", max(pos, self._scan))
                    if end < 0:
                        if size - pos > limit:
                            raise SIPError(413, "Message Head Too Large")
                        self._scan = max(pos, size - 3)
                        break
                    self._scan = 0
                    if end - pos > limit:
                        raise SIPError(413, "Message Head Too Large")
                    need = end + 4 - pos + _content_length(bytes(buf[pos:end]))
                    if need > self.max_message_size:
                        raise SIPError(413, "Message Too Large")
                    self._need = need
                if size - pos < self._need:
                    break
                out.append(bytes(buf[pos : pos + self._need]))
                pos += self._need
                self._need = -1
        except SIPError as exc:
            if not out:
                raise
            self._error = exc
        finally:
            if pos:
                del buf[:pos]
                self._scan = max(0, self._scan - pos)
        return out
