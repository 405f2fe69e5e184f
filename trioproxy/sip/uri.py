"""SIP, SIPS and tel URIs (RFC 3261 19.1, RFC 3966), with the comparison rules of RFC 3261 19.1.4."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from .errors import SIPError

__all__ = ["URI", "parse_uri_untrusted"]

_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
# RFC 3261 25.1 hostname / IPv4address; IPv6 checked separately.
_HOST_RE = re.compile(r"[A-Za-z0-9\-.]+")
_IPV6_RE = re.compile(r"[0-9A-Fa-f:.]+")
# user = 1*( unreserved / escaped / user-unreserved ); password adds & = + $ , and no ;?/
_USER_RE = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()&=+$,;?/]|%[0-9A-Fa-f]{2})+")
_PASSWORD_RE = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()&=+$,]|%[0-9A-Fa-f]{2})*")
# paramchar = param-unreserved / unreserved / escaped
_PCHARS_RE = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()\[\]/:&+$]|%[0-9A-Fa-f]{2})+")
# hname / hvalue chars: hnv-unreserved / unreserved / escaped
_HCHARS_RE = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()\[\]/?:+$]|%[0-9A-Fa-f]{2})*")
_OPAQUE_RE = re.compile(r"[!-~]+")
_TEL_RE = re.compile(r"(?:[0-9A-Fa-f*#+\-.()pwPW]|%[0-9A-Fa-f]{2})+")

# RFC 3261 19.1.4: these parameters, when present in either URI, must match for equivalence.
_MUST_MATCH = ("user", "ttl", "method", "maddr", "transport")


@dataclass(slots=True)
class URI:
    """A parsed URI. ``host`` has no brackets; ``params`` keep their order, names lowercased.

    Schemes other than sip/sips/tel are kept whole in ``opaque`` (``str()`` gives them back unchanged).
    """

    scheme: str
    user: str | None = None
    password: str | None = None
    host: str = ""
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    opaque: str | None = None

    def __str__(self) -> str:
        if self.opaque is not None:
            return f"{self.scheme}:{self.opaque}"
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out.append(":")
                out.append(self.password)
            if self.scheme != "tel":
                out.append("@")
        if self.scheme != "tel":
            out.append(self.host_port)
        for k, v in self.params.items():
            out.append(f";{k}" if v is None else f";{k}={v}")
        if self.headers:
            out.append("?")
            out.append("&".join(f"{k}={v}" for k, v in self.headers.items()))
        return "".join(out)

    def copy(self) -> URI:
        """An independent copy."""
        return URI(
            self.scheme, self.user, self.password, self.host, self.port, dict(self.params),
            dict(self.headers), self.opaque,
        )  # fmt: skip

    @property
    def transport(self) -> str | None:
        """The ``transport`` parameter lowercased, or None."""
        t = self.params.get("transport")
        return t.lower() if t else None

    @property
    def host_port(self) -> str:
        """``host`` or ``host:port``, brackets around an IPv6 literal."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"

    @property
    def is_sip(self) -> bool:
        """True for sip: and sips: URIs."""
        return self.scheme in ("sip", "sips")

    def equivalent(self, other: URI) -> bool:
        """RFC 3261 19.1.4 URI comparison (RFC 3966 for tel)."""
        if self.scheme != other.scheme:
            return False
        if self.opaque is not None or other.opaque is not None:
            return self.opaque == other.opaque
        if self.scheme == "tel":
            return _tel_norm(self.user) == _tel_norm(other.user) and _lower_params(
                self.params
            ) == _lower_params(other.params)
        # userinfo is case-sensitive; escapes compare equal to the characters they stand for.
        if _unesc(self.user) != _unesc(other.user) or _unesc(self.password) != _unesc(other.password):
            return False
        if self.host.lower() != other.host.lower() or self.port != other.port:
            return False
        a = _lower_params(self.params)
        b = _lower_params(other.params)
        for name in _MUST_MATCH:
            if (name in a or name in b) and a.get(name, "") != b.get(name, ""):
                return False
        for name, value in a.items():
            if name in b and b[name] != value:
                return False
        ha = {k.lower(): _unesc(v) for k, v in self.headers.items()}
        hb = {k.lower(): _unesc(v) for k, v in other.headers.items()}
        return ha == hb


def valid_ipv6(text: str) -> bool:
    """Whether ``text`` is an IPv6 address (RFC 4291 2.2; RFC 5118 4.10 rejects three colons)."""
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _unesc(text: str | None) -> str | None:
    if text is None or "%" not in text:
        return text
    return unquote(text, errors="surrogateescape")


def _lower_params(params: dict[str, str | None]) -> dict[str, str | None]:
    return {k: (_unesc(v.lower()) if v is not None else None) for k, v in params.items()}


def _tel_norm(number: str | None) -> str:
    # RFC 3966 4: visual separators are ignored in comparisons.
    return "".join(ch for ch in (number or "") if ch not in "-.()").lower()


def _parse_uri_params(text: str, uri: URI) -> None:
    for part in text.split(";"):
        name, eq, value = part.partition("=")
        if not _PCHARS_RE.fullmatch(name):
            raise SIPError(400, "Bad URI Parameter")
        if eq:
            if not _PCHARS_RE.fullmatch(value):
                raise SIPError(400, "Bad URI Parameter Value")
            uri.params[name.lower()] = value
        else:
            uri.params[name.lower()] = None


def _parse_host_port(text: str, uri: URI) -> None:
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise SIPError(400, "Bad IPv6 Reference")
        host = text[1:end]
        if not _IPV6_RE.fullmatch(host) or not valid_ipv6(host):
            raise SIPError(400, "Bad IPv6 Reference")
        rest = text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise SIPError(400, "Bad Host")
        port = rest[1:] if rest else None
    else:
        host, colon, port_text = text.partition(":")
        port = port_text if colon else None
        if not _HOST_RE.fullmatch(host):
            raise SIPError(400, "Bad Host")
    if port is not None:
        if not port.isdigit() or not port.isascii() or len(port) > 5 or int(port) > 65535:
            raise SIPError(400, "Bad Port")
        uri.port = int(port)
    uri.host = host


# Recently parsed URIs by text (a proxy sees the same few next hops and Record-Routes again and again):
# a hit costs a copy instead of a parse. Bounded, oldest entry out first; long texts are not kept.
_PARSED: dict[str, URI] = {}
PARSE_CACHE_SIZE = 2048
CACHEABLE_LENGTH = 256


def parse_uri_untrusted(text: str) -> URI:
    """Parse a URI; raises SIPError 400 when malformed. Schemes other than sip/sips/tel are kept opaque."""
    cached = _PARSED.get(text)
    if cached is not None:
        return cached.copy()
    uri = _parse_uri(text)
    remember_parsed(_PARSED, text, uri)
    return uri


def remember_parsed(cache: dict[str, Any], text: str, value: Any) -> None:
    """Keep a copy of ``value`` parsed from ``text`` in a parse cache (bounded: the oldest entry goes first)."""
    if len(text) <= CACHEABLE_LENGTH:
        if len(cache) >= PARSE_CACHE_SIZE:
            del cache[next(iter(cache))]
        cache[text] = value.copy()


def _parse_uri(text: str) -> URI:
    if len(text) > 8192:
        raise SIPError(414, "Request-URI Too Long")
    scheme, colon, rest = text.partition(":")
    if not colon or not _SCHEME_RE.fullmatch(scheme):
        raise SIPError(400, "Bad URI")
    scheme = scheme.lower()
    if scheme == "tel":
        return _parse_tel(rest)
    if scheme not in ("sip", "sips"):
        # RFC 3261 19.1: any absolute URI may appear; the proxy decides (416 for a Request-URI).
        if not _OPAQUE_RE.fullmatch(rest):
            raise SIPError(400, "Bad URI")
        return URI(scheme, opaque=rest)
    uri = URI(scheme)
    at = rest.find("@")
    if at >= 0:
        userinfo = rest[:at]
        rest = rest[at + 1 :]
        user, pcolon, password = userinfo.partition(":")
        if not _USER_RE.fullmatch(user) or not _PASSWORD_RE.fullmatch(password):
            raise SIPError(400, "Bad URI User")
        uri.user = user
        uri.password = password if pcolon else None
    rest, q, headers = rest.partition("?")
    hostport, semi, params = rest.partition(";")
    _parse_host_port(hostport, uri)
    if semi:
        _parse_uri_params(params, uri)
    if q:
        for part in headers.split("&"):
            name, eq, value = part.partition("=")
            if not eq or not name or not _HCHARS_RE.fullmatch(name) or not _HCHARS_RE.fullmatch(value):
                raise SIPError(400, "Bad URI Header")
            uri.headers[name] = value
    return uri


def _parse_tel(rest: str) -> URI:
    number, semi, params = rest.partition(";")
    if not _TEL_RE.fullmatch(number):
        raise SIPError(400, "Bad tel URI")
    uri = URI("tel", user=number)
    if semi:
        _parse_uri_params(params, uri)
    return uri
