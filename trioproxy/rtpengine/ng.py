"""rtpengine's ng control protocol, sans I/O: the datagram codec and commands built from Kamailio flag strings.

A datagram is ``COOKIE SPACE BENCODED-DICTIONARY``; the reply repeats the cookie. ``encode_message`` and
``decode_message`` convert between bencoding (``bencode.py``) and the ``str``/``int``/``list``/``dict`` values
trioproxy works with (text as UTF-8 with ``surrogateescape``, so an SDP body crosses unchanged).

``parse_flags`` reads a flag string as Kamailio's rtpengine module does (space-separated words):

- ``trust-address``, ``SIP-source-address``, ``port-latching``... (bare words) go to the ``flags`` list;
- ``replace-origin replace-session-connection`` -> ``replace: [origin, session-connection]``; likewise
  the prefixes ``SDES-``, ``rtcp-mux-``, ``OSRTP-``, ``T38-``/``T.38-`` (lists of their own);
- ``codec-strip-PCMA``, ``codec-offer-opus``, ``codec-mask-...``... -> ``codec: {strip: [PCMA], ...}``;
- ``RTP/AVP``, ``RTP/SAVPF``... -> ``transport-protocol``;
- ``direction=internal`` (repeatable) -> the ``direction`` list;
- ``key=value`` -> ``key: value`` (``ICE=force``, ``DTLS=passive``, ``address-family=IP6``...), digits as
  integers for the numeric keys;
- ``call-id=``, ``from-tag=``, ``to-tag=`` override what the message says (not sent as such).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from .bencode import BencodeError, bdecode, bencode

__all__ = [
    "NgError",
    "ParsedFlags",
    "decode_message",
    "encode_message",
    "new_cookie",
    "parse_flags",
]

_LIST_PREFIXES = ("replace-", "SDES-", "rtcp-mux-", "OSRTP-", "T38-", "T.38-")
_CODEC_VERBS = ("strip", "offer", "transcode", "mask", "set", "except", "accept", "consume", "ignore")
_TRANSPORTS = frozenset(
    {"RTP/AVP", "RTP/SAVP", "RTP/AVPF", "RTP/SAVPF", "UDP/TLS/RTP/SAVP", "UDP/TLS/RTP/SAVPF"}
)
_INT_KEYS = frozenset({"delete-delay", "TOS", "ptime", "ptime-reverse", "repeat-times", "db-id", "volume"})
_OVERRIDES = ("call-id", "from-tag", "to-tag")
MAX_DATAGRAM = 65535


class NgError(ValueError):
    """A datagram or flag string that cannot be used."""


def new_cookie() -> str:
    """A fresh cookie: unique per command (retransmissions of one command keep theirs)."""
    return secrets.token_hex(8)


def _to_wire(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    if isinstance(value, bytes | int):
        return value
    if isinstance(value, list | tuple):
        return [_to_wire(v) for v in value]
    if isinstance(value, dict):
        return {str(k).encode("utf-8", "surrogateescape"): _to_wire(v) for k, v in value.items()}
    raise NgError(f"cannot bencode {type(value).__name__}")


def _from_wire(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    if isinstance(value, list | tuple):
        return [_from_wire(v) for v in value]
    if isinstance(value, dict):
        return {_from_wire(k): _from_wire(v) for k, v in value.items()}
    return value


def encode_message(cookie: str, command: dict[str, Any]) -> bytes:
    """One ng datagram: ``cookie`` (no spaces) and the bencoded ``command``."""
    if not cookie or " " in cookie:
        raise NgError("a cookie is a non-empty word")
    return cookie.encode("ascii") + b" " + bencode(_to_wire(command))


def decode_message(data: bytes) -> tuple[str, dict[str, Any]]:
    """The cookie and dictionary of an ng datagram; ``NgError`` when it is not one."""
    cookie, sep, payload = data.partition(b" ")
    if not sep or not cookie:
        raise NgError("no cookie")
    try:
        value = bdecode(payload)
    except BencodeError as exc:
        raise NgError(f"bad bencoding: {exc}") from None
    if not isinstance(value, dict):
        raise NgError("not a dictionary")
    return cookie.decode("ascii", "replace"), _from_wire(value)


@dataclass(slots=True)
class ParsedFlags:
    """A Kamailio flag string read into ng keys (``ng``) and the message overrides it carries."""

    ng: dict[str, Any] = field(default_factory=dict)
    call_id: str | None = None
    from_tag: str | None = None
    to_tag: str | None = None

    def _append(self, key: str, item: str) -> None:
        items = self.ng.setdefault(key, [])
        if item not in items:
            items.append(item)


def _value(key: str, value: str) -> str | int:
    return int(value) if key in _INT_KEYS and value.isdigit() else value


def parse_flags(text: str) -> ParsedFlags:
    """Kamailio's rtpengine flag string as ng keys (see the module docstring)."""
    out = ParsedFlags()
    for word in str(text or "").split():
        key, eq, value = word.partition("=")
        if eq:
            if not key:
                raise NgError(f"flag {word!r} has no name")
            if key in _OVERRIDES:
                setattr(out, key.replace("-", "_"), value)
            elif key == "direction":
                out.ng.setdefault("direction", []).append(value)
            elif key in ("replace", "SDES", "rtcp-mux", "OSRTP"):
                out._append(key, value)
            else:
                out.ng[key] = _value(key, value)
            continue
        if word in _TRANSPORTS:
            out.ng["transport-protocol"] = word
            continue
        if word.startswith("codec-"):
            verb, dash, codec = word[len("codec-") :].partition("-")
            if verb in _CODEC_VERBS and dash and codec:
                codecs = out.ng.setdefault("codec", {})
                if codec not in codecs.setdefault(verb, []):
                    codecs[verb].append(codec)
                continue
        prefix = next((p for p in _LIST_PREFIXES if word.startswith(p) and len(word) > len(p)), None)
        if prefix is not None:
            name = "T.38" if prefix in ("T38-", "T.38-") else prefix[:-1]
            out._append(name, word[len(prefix) :])
            continue
        out._append("flags", word)
    return out
