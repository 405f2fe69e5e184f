"""SDP helpers for media control: whether a SIP message carries SDP, and what its c=/m= lines say."""

from __future__ import annotations

from dataclasses import dataclass

from trioproxy.sip import Message

__all__ = ["Media", "SdpSummary", "has_sdp", "summarize"]


def has_sdp(msg: Message) -> bool:
    """Whether ``msg`` has a non-empty body of type ``application/sdp`` (RFC 3264 offer or answer).

    A body without Content-Type is taken as SDP when it starts like one (``v=``), as Kamailio does.
    """
    if not msg.body.strip():
        return False
    ctype = msg.get("Content-Type")
    if ctype is None:
        return msg.body.lstrip().startswith(b"v=")
    return ctype.split(";", 1)[0].strip().lower() == "application/sdp"


@dataclass(frozen=True, slots=True)
class Media:
    """One m= line: its type, port and protocol, and its own c= address if any."""

    kind: str
    port: int
    proto: str
    connection: str | None


@dataclass(frozen=True, slots=True)
class SdpSummary:
    """The session's o= and c= addresses and its media."""

    origin: str | None
    connection: str | None
    media: tuple[Media, ...]

    def media_address(self, index: int = 0) -> str | None:
        """Where media ``index`` is sent: its own c= address, else the session's."""
        m = self.media[index]
        return m.connection or self.connection


def _address(value: str) -> str | None:
    parts = value.split()
    return parts[2] if len(parts) >= 3 else None


def summarize(body: bytes | str) -> SdpSummary:
    """The addresses and media of an SDP body (lines that do not parse are skipped)."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    origin = connection = None
    media: list[Media] = []
    current: list[str] | None = None
    current_conn: str | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            if current is not None:
                media.append(_media(current, current_conn))
            current, current_conn = line[2:].split(), None
        elif line.startswith("c="):
            if current is None:
                connection = _address(line[2:])
            else:
                current_conn = _address(line[2:])
        elif line.startswith("o=") and current is None:
            fields = line[2:].split()
            origin = fields[5] if len(fields) >= 6 else None
    if current is not None:
        media.append(_media(current, current_conn))
    return SdpSummary(origin, connection, tuple(media))


def _media(fields: list[str], connection: str | None) -> Media:
    kind = fields[0] if fields else ""
    try:
        port = int(fields[1].split("/")[0]) if len(fields) > 1 else 0
    except ValueError:
        port = 0
    proto = fields[2] if len(fields) > 2 else ""
    return Media(kind, port, proto, connection)
