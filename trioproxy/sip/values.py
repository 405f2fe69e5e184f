"""Typed header values: Via, NameAddr (From, To, Contact, Route, Record-Route, Path) and CSeq."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar

from .errors import SIPError
from .headers import PARAM_FINDALL, PARAM_NC, format_params, parse_params
from .uri import URI, parse_uri_untrusted, remember_parsed, valid_ipv6

__all__ = ["CSeq", "NameAddr", "Via"]

_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
# RFC 3261 20.42: sent-protocol = protocol-name SLASH protocol-version SLASH transport; SLASH = SWS "/" SWS
_VIA_RE = re.compile(
    rf"[ \t]*+({_TOKEN})[ \t]*+/[ \t]*+({_TOKEN})[ \t]*+/[ \t]*+({_TOKEN})[ \t]++"
    r"(\[[0-9A-Fa-f:.]++\]|[A-Za-z0-9\-.]++)(?:[ \t]*+:[ \t]*+([0-9]{1,5}))?+"
    rf"((?:{PARAM_NC})*+)[ \t]*+",
    re.S,
)
# The everyday shape, one regex pass: SIP/2.0, no blanks inside, the branch as the first parameter, token
# parameter values. It accepts a subset of _VIA_RE and splits it into the same groups; the rest goes there.
_VIA_COMMON_RE = re.compile(
    r"[ \t]*+SIP/2\.0/([A-Z]++)[ \t]++([A-Za-z0-9\-.]++)(?::([0-9]{1,5}))?+"
    r"(;branch=([A-Za-z0-9\-.!%*_+`'~:\[\]]++)(?:;[A-Za-z0-9\-.!%*_+`'~]++(?:=[A-Za-z0-9\-.!%*_+`'~:\[\]]++)?+)*+)"
    r"[ \t]*+"
)
_VIA_LINE_RE = re.compile("[^:]*+:" + _VIA_COMMON_RE.pattern)
# Methods seen every day skip the token regex.
COMMON_METHODS = frozenset(
    ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "SUBSCRIBE", "NOTIFY", "PUBLISH", "MESSAGE",
     "INFO", "PRACK", "UPDATE", "REFER")
)  # fmt: skip
_TOKEN_RE = re.compile(_TOKEN)
_DISPLAY_TOKENS_RE = re.compile(rf"{_TOKEN}(?:[ \t]+{_TOKEN})*")
_QUOTED_RE = re.compile(r'"((?:[^"\\]|\\.)*)"', re.S)


# Typed values built by their parsers skip __init__ (every slot is set there).
_new = object.__new__


class Via:
    """One Via value (RFC 3261 20.42). ``transport`` uppercase (``UDP``); host without IPv6 brackets.

    ``params`` (names lowercased, ``None`` for a flag) is parsed from the text when first read: the
    transaction key only needs ``branch``, which is found without building the dict.
    """

    __slots__ = ("_branch", "_params", "_ptext", "host", "port", "transport")

    transport: str
    host: str
    port: int | None
    _params: dict[str, str | None] | None
    _ptext: str
    _branch: str | None  # found by the parser in _ptext; meaningful while _params is None

    def __init__(
        self, transport: str, host: str, port: int | None = None, params: dict[str, str | None] | None = None
    ) -> None:
        self.transport = transport
        self.host = host
        self.port = port
        self._params = params if params is not None else {}
        self._ptext = ""
        self._branch = None

    @classmethod
    def parse_untrusted(cls, value: str) -> Via:
        """Parse one Via value; SIPError 400 when malformed."""
        return cls._parse_from(value, 0)

    @classmethod
    def _parse_from(cls, value: str, pos: int) -> Via:
        # The value starts at ``pos``; ``pos`` -1: ``value`` is a whole header line holding one Via value,
        # parsed in place (its name never holds a colon).
        m = _VIA_COMMON_RE.fullmatch(value, pos) if pos >= 0 else _VIA_LINE_RE.fullmatch(value)
        if m is not None:
            transport, host, port, params, branch = m.groups()
            via = _new(cls)
            via.transport = transport
            via.host = host
            if port is None:
                via.port = None
            else:
                p = int(port)
                if p > 65535:
                    raise SIPError(400, "Bad Via Port")
                via.port = p
            via._params = None
            via._ptext = params
            via._branch = branch
            return via
        if pos < 0:
            pos = value.index(":") + 1
        m = _VIA_RE.fullmatch(value, pos)
        if m is None:
            raise SIPError(400, "Bad Via")
        name, version, transport, host, port, params = m.groups()
        if version != "2.0" or (name != "SIP" and name.upper() != "SIP"):
            raise SIPError(400, "Bad Via Protocol")
        via = _new(cls)
        if host[0] == "[":
            host = host[1:-1]
            if not valid_ipv6(host):
                raise SIPError(400, "Bad Via Host")
        via.host = host
        via.transport = transport if transport.isupper() else transport.upper()
        if port is None:
            via.port = None
        else:
            p = int(port)
            if p > 65535:
                raise SIPError(400, "Bad Via Port")
            via.port = p
        via._params = None
        via._ptext = params  # validated by the regex; parsed on first read
        via._branch = None
        return via

    @property
    def params(self) -> dict[str, str | None]:
        """The Via parameters, names lowercased, order kept (a flag such as ``rport`` maps to None)."""
        params = self._params
        if params is None:
            params = self._params = {}
            text = self._ptext
            if '"' in text or " " in text or "\t" in text:
                for k, v in PARAM_FINDALL(text):
                    params[k.lower()] = v or None
            elif text:
                for part in text[1:].split(";"):
                    k, eq, v = part.partition("=")
                    params[k if k.islower() else k.lower()] = v if eq else None
        return params

    @params.setter
    def params(self, value: dict[str, str | None]) -> None:
        self._params = value

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = "" if self.port is None else f":{self.port}"
        tail = self._ptext.strip(" \t") if self._params is None else format_params(self._params)
        return f"SIP/2.0/{self.transport} {host}{port}{tail}"

    def __repr__(self) -> str:
        return f"Via({self.transport!r}, {self.host!r}, {self.port!r}, {self.params!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Via):
            return NotImplemented
        return (self.transport, self.host, self.port, self.params) == (
            other.transport, other.host, other.port, other.params,
        )  # fmt: skip

    __hash__ = None  # type: ignore[assignment]

    def copy(self) -> Via:
        """An independent copy (parameters still unparsed stay so)."""
        via = _new(Via)
        via.transport = self.transport
        via.host = self.host
        via.port = self.port
        params = self._params
        via._params = None if params is None else dict(params)
        via._ptext = self._ptext
        via._branch = self._branch
        return via

    @property
    def branch(self) -> str | None:
        """The branch parameter."""
        if self._params is None:
            branch = self._branch
            if branch is not None:
                return branch
            text = self._ptext
            i = text.find(";branch=")
            if i >= 0 and '"' not in text and " " not in text and "\t" not in text:
                j = text.find(";", i + 8)
                return text[i + 8 : j if j >= 0 else len(text)] or None
        return self.params.get("branch")

    @property
    def received(self) -> str | None:
        """The received parameter (RFC 3261 18.2.1)."""
        return self.params.get("received")

    @property
    def rport(self) -> int | bool | None:
        """RFC 3581 rport: the port if valued, True for a bare flag, None when absent."""
        params = self.params
        if "rport" not in params:
            return None
        v = params["rport"]
        if v is None:
            return True
        if not v.isdigit() or not v.isascii() or int(v) > 65535:
            raise SIPError(400, "Bad rport")
        return int(v)

    @property
    def maddr(self) -> str | None:
        """The maddr parameter."""
        return self.params.get("maddr")

    @property
    def ttl(self) -> int | None:
        """The ttl parameter (0-255)."""
        v = self.params.get("ttl")
        if v is None:
            return None
        if not v.isdigit() or not v.isascii() or int(v) > 255:
            raise SIPError(400, "Bad ttl")
        return int(v)

    @property
    def sent_by(self) -> tuple[str, int | None]:
        """(host, port) as written; the port is None when absent."""
        return (self.host, self.port)


# Recently parsed name-addr values by text (the From of a call is read in each of its messages, a Route
# in every in-dialog request): as for URIs (``uri.PARSE_CACHE_SIZE``), a hit costs a copy.
_NAME_ADDRS: dict[str, NameAddr] = {}


@dataclass(slots=True)
class NameAddr:
    """A name-addr or addr-spec with header parameters (From, To, Contact, Route...).

    ``display`` is the display name without its quotes (escapes kept); ``Contact: *`` parses to a value
    whose ``is_star`` is True.
    """

    display: str | None
    uri: URI
    params: dict[str, str | None] = field(default_factory=dict)
    is_star: bool = False

    STAR: ClassVar[str] = "*"

    @classmethod
    def parse_untrusted(cls, value: str) -> NameAddr:
        """Parse one name-addr / addr-spec value; SIPError 400 when malformed (416 never: any scheme)."""
        cached = _NAME_ADDRS.get(value)
        if cached is not None and type(cached) is cls:
            return cached.copy()
        parsed = cls._parse(value)
        remember_parsed(_NAME_ADDRS, value, parsed)
        return parsed

    @classmethod
    def _parse(cls, value: str) -> NameAddr:
        v = value.strip()
        if v == "*":
            return cls(None, URI("*", opaque=""), {}, True)
        display: str | None = None
        if v.startswith('"'):
            m = _QUOTED_RE.match(v)
            if m is None:
                raise SIPError(400, "Unterminated Quoted String")
            display = m.group(1)
            v = v[m.end() :].lstrip(" \t")
            if not v.startswith("<"):
                raise SIPError(400, "Bad name-addr")
        lt = v.find("<")
        if lt >= 0:
            if lt > 0:
                text = v[:lt].strip(" \t")
                if text and not _DISPLAY_TOKENS_RE.fullmatch(text):
                    raise SIPError(400, "Bad Display Name")
                display = text or None
            gt = v.find(">", lt)
            if gt < 0:
                raise SIPError(400, "Unterminated <")
            inner = v[lt + 1 : gt]
            # RFC 3261 20.10: no LWS inside the angle brackets (RFC 4475 3.1.2.14).
            if not inner or " " in inner or "\t" in inner:
                raise SIPError(400, "Bad URI in name-addr")
            uri = parse_uri_untrusted(inner)
            rest = v[gt + 1 :].strip(" \t")
        else:
            # addr-spec: the URI ends at the first ';' (the rest are header parameters) and may not hold
            # a '?' or ',' (RFC 3261 20.10; RFC 4475 3.1.2.13).
            text, semi, params_text = v.partition(";")
            text = text.strip(" \t")
            if not text or any(ch in text for ch in ' \t?,<>"'):
                raise SIPError(400, "Bad addr-spec")
            uri = parse_uri_untrusted(text)
            rest = ";" + params_text if semi else ""
        if rest:
            if not rest.startswith(";"):
                raise SIPError(400, "Bad name-addr")
            params = parse_params(rest, "Header Parameter")
        else:
            params = {}
        return cls(display, uri, params)

    def __str__(self) -> str:
        if self.is_star:
            return "*"
        head = f'"{self.display}" ' if self.display is not None else ""
        return f"{head}<{self.uri}>{format_params(self.params)}"

    def copy(self) -> NameAddr:
        """An independent copy."""
        return NameAddr(self.display, self.uri.copy(), dict(self.params), self.is_star)

    @property
    def tag(self) -> str | None:
        """The tag parameter (From, To)."""
        return self.params.get("tag")

    @property
    def q(self) -> float:
        """The q parameter of a Contact (0 to 1), 1.0 when absent."""
        v = self.params.get("q")
        if v is None:
            return 1.0
        try:
            q = float(v)
        except ValueError:
            raise SIPError(400, "Bad q") from None
        if not 0.0 <= q <= 1.0:
            raise SIPError(400, "Bad q")
        return q

    @property
    def expires(self) -> int | None:
        """The expires parameter of a Contact, capped at 2**32-1 (RFC 3261 20.19)."""
        v = self.params.get("expires")
        if v is None:
            return None
        if not v.isdigit() or not v.isascii():
            raise SIPError(400, "Bad expires")
        return min(int(v), 2**32 - 1)


@dataclass(slots=True)
class CSeq:
    """CSeq (RFC 3261 20.16): a sequence number below 2**31 and a method."""

    seq: int
    method: str

    @classmethod
    def parse_untrusted(cls, value: str) -> CSeq:
        """Parse a CSeq value; SIPError 400 when malformed."""
        try:
            seq_text, method = value.split()
        except ValueError:
            raise SIPError(400, "Bad CSeq") from None
        # RFC 3261 20.16: the sequence number is below 2**31 (at most 10 digits).
        if not seq_text.isdigit() or len(seq_text) > 10 or not seq_text.isascii():
            raise SIPError(400, "Bad CSeq")
        seq = int(seq_text)
        if seq >= 2147483648:
            raise SIPError(400, "Bad CSeq")
        if method not in COMMON_METHODS and not _TOKEN_RE.fullmatch(method):
            raise SIPError(400, "Bad CSeq Method")
        cseq = _new(cls)
        cseq.seq = seq
        cseq.method = method
        return cseq

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"
