"""The client side of SIP digest authentication (RFC 3261 22.2, RFC 7616 3.4): read a challenge,
compute the ``Authorization`` / ``Proxy-Authorization`` value.

Hashing reuses ``trioproxy.auth.digest``; ``MD5`` and ``SHA-256`` with ``qop=auth`` or without qop
(RFC 2069 form) are answered, other algorithms and ``auth-int``-only challenges are not.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from trioproxy.auth.digest import ALGORITHMS, digest_response, ha1
from trioproxy.sip import SIPError
from trioproxy.sip.headers import split_values

__all__ = ["Challenge", "answer_challenge", "parse_challenge"]

_MAX_HEADER = 4096
_AUTH_PARAM = re.compile(r'([A-Za-z0-9\-.!%*_+`\'~]+)[ \t]*=[ \t]*(?:([^\s",]+)|"((?:[^"\\]|\\.)*)")', re.S)
_UNESCAPE = re.compile(r"\\(.)", re.S)


@dataclass(frozen=True, slots=True)
class Challenge:
    """One parsed ``WWW-Authenticate`` / ``Proxy-Authenticate`` digest challenge."""

    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()
    opaque: str | None = None
    stale: bool = False


def parse_challenge(value: str) -> Challenge | None:
    """A ``Digest ...`` challenge; None when not digest, malformed, or without realm and nonce."""
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
        m = _AUTH_PARAM.fullmatch(item.strip())
        if m is None:
            return None
        quoted = m.group(3)
        params[m.group(1).lower()] = _UNESCAPE.sub(r"\1", quoted) if quoted is not None else m.group(2)
    if "realm" not in params or "nonce" not in params:
        return None
    qop = tuple(q.strip().lower() for q in params.get("qop", "").split(",") if q.strip())
    return Challenge(
        realm=params["realm"],
        nonce=params["nonce"],
        algorithm=params.get("algorithm", "MD5").upper(),
        qop=qop,
        opaque=params.get("opaque"),
        stale=params.get("stale", "").lower() == "true",
    )


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def answer_challenge(
    challenge: Challenge,
    username: str,
    password: str,
    method: str,
    uri: str,
    *,
    nc: int = 1,
    cnonce: str | None = None,
) -> str | None:
    """The credentials value answering ``challenge`` (None when its algorithm or qop is not supported)."""
    algorithm = challenge.algorithm
    if algorithm not in ALGORITHMS:
        return None
    if challenge.qop and "auth" not in challenge.qop:
        return None
    secret = ha1(algorithm, username, challenge.realm, password)
    parts = [
        f"username={_quote(username)}",
        f"realm={_quote(challenge.realm)}",
        f"nonce={_quote(challenge.nonce)}",
        f"uri={_quote(uri)}",
    ]
    if challenge.qop:
        cnonce = cnonce or os.urandom(8).hex()
        nc_text = f"{nc:08x}"
        response = digest_response(
            algorithm, secret, method, uri, challenge.nonce, qop="auth", nc=nc_text, cnonce=cnonce
        )
        parts += [f"response={_quote(response)}", "qop=auth", f"nc={nc_text}", f"cnonce={_quote(cnonce)}"]
    else:
        response = digest_response(algorithm, secret, method, uri, challenge.nonce)
        parts.append(f"response={_quote(response)}")
    parts.append(f"algorithm={algorithm}")
    if challenge.opaque is not None:
        parts.append(f"opaque={_quote(challenge.opaque)}")
    return "Digest " + ", ".join(parts)
