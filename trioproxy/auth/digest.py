"""SIP digest authentication, sans-IO (RFC 3261 22.4, RFC 7616, RFC 8760): HA1 values, challenges,
credential parsing and response verification.

Only the ``MD5`` and ``SHA-256`` algorithms with ``qop=auth`` are offered; the ``-sess`` variants and
``auth-int`` are not. Parameter lists are split with the SIP layer's list splitter (commas outside quoted
strings, RFC 3261 7.3.1); each ``auth-param`` is ``token = token / quoted-string`` (RFC 3261 25.1).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass

from trioproxy.sip import SIPError
from trioproxy.sip.headers import split_values

__all__ = [
    "ALGORITHMS",
    "Credentials",
    "build_challenge",
    "digest_params",
    "digest_response",
    "ha1",
    "parse_credentials",
    "quote",
    "verify_response",
]

# Algorithm name -> hash function; SHA-256 first: the order challenges are offered in (RFC 7616 3.7).
ALGORITHMS: dict[str, Callable[[bytes], str]] = {
    "SHA-256": lambda b: hashlib.sha256(b).hexdigest(),
    "MD5": lambda b: hashlib.md5(b, usedforsecurity=False).hexdigest(),
}

_MAX_HEADER = 4096  # longer credentials are refused unparsed
_AUTH_PARAM = re.compile(r'([A-Za-z0-9\-.!%*_+`\'~]+)[ \t]*=[ \t]*(?:([^\s",]+)|"((?:[^"\\]|\\.)*)")', re.S)
_UNESCAPE = re.compile(r"\\(.)", re.S)


def ha1(algorithm: str, username: str, realm: str, password: str) -> str:
    """``H(username:realm:password)`` for ``algorithm`` (``MD5`` or ``SHA-256``)."""
    return ALGORITHMS[algorithm.upper()](f"{username}:{realm}:{password}".encode())


def quote(value: str) -> str:
    """``value`` as a quoted-string (backslash and double quote escaped)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def build_challenge(realm: str, nonce: str, algorithm: str, *, stale: bool = False, opaque: str = "") -> str:
    """One ``WWW-Authenticate`` / ``Proxy-Authenticate`` value: ``Digest realm=...,nonce=...,qop="auth"``."""
    parts = [f"realm={quote(realm)}", f"nonce={quote(nonce)}"]
    if opaque:
        parts.append(f"opaque={quote(opaque)}")
    parts += [f"algorithm={algorithm}", 'qop="auth"']
    if stale:
        parts.append("stale=true")
    return "Digest " + ", ".join(parts)


@dataclass(frozen=True, slots=True)
class Credentials:
    """One parsed ``Authorization`` / ``Proxy-Authorization`` header (digest scheme)."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str = "MD5"
    qop: str | None = None
    nc: str | None = None
    cnonce: str | None = None
    opaque: str | None = None

    @property
    def nc_value(self) -> int | None:
        """The nonce-count as a number (None when absent or not 8 hex digits)."""
        nc = self.nc
        if nc is None or len(nc) != 8:
            return None
        try:
            return int(nc, 16)
        except ValueError:
            return None


def digest_params(value: str) -> dict[str, str] | None:
    """The parameters of a ``Digest ...`` challenge or credentials value (names lowercased, quoted strings
    unescaped); None when it is not digest, too long or malformed."""
    if len(value) > _MAX_HEADER:
        return None
    scheme, _sep, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        return None
    params: dict[str, str] = {}
    try:
        items = split_values(rest)
    except SIPError:
        return None
    for item in items:
        m = _AUTH_PARAM.fullmatch(item)
        if m is None:
            return None
        quoted = m.group(3)
        params[m.group(1).lower()] = _UNESCAPE.sub(r"\1", quoted) if quoted is not None else m.group(2)
    return params


def parse_credentials(value: str) -> Credentials | None:
    """A ``Digest ...`` credentials value; None when it is not digest or lacks a required parameter."""
    params = digest_params(value)
    if params is None:
        return None
    try:
        return Credentials(
            username=params["username"],
            realm=params["realm"],
            nonce=params["nonce"],
            uri=params["uri"],
            response=params["response"].lower(),
            algorithm=params.get("algorithm", "MD5").upper(),
            qop=params.get("qop"),
            nc=params.get("nc"),
            cnonce=params.get("cnonce"),
            opaque=params.get("opaque"),
        )
    except KeyError:
        return None


def digest_response(
    algorithm: str,
    ha1_value: str,
    method: str,
    uri: str,
    nonce: str,
    *,
    qop: str | None = None,
    nc: str | None = None,
    cnonce: str | None = None,
) -> str:
    """The expected ``response`` (RFC 7616 3.4.1; without qop the RFC 2069 form)."""
    h = ALGORITHMS[algorithm.upper()]
    ha2 = h(f"{method}:{uri}".encode())
    if qop:
        return h(f"{ha1_value}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}".encode())
    return h(f"{ha1_value}:{nonce}:{ha2}".encode())


def verify_response(creds: Credentials, ha1_value: str, method: str) -> bool:
    """Whether ``creds.response`` is right for ``ha1_value`` (constant-time comparison).

    Only ``qop=auth`` responses are accepted: they carry the nonce-count that replay checks need.
    """
    if creds.algorithm not in ALGORITHMS or creds.qop != "auth" or not creds.cnonce or creds.nc_value is None:
        return False
    expected = digest_response(
        creds.algorithm,
        ha1_value,
        method,
        creds.uri,
        creds.nonce,
        qop="auth",
        nc=creds.nc,
        cnonce=creds.cnonce,
    )
    return hmac.compare_digest(expected, creds.response)
