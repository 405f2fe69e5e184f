"""The client side of SIP digest authentication (RFC 3261 22.2, RFC 7616 3.4): read a challenge,
compute the ``Authorization`` / ``Proxy-Authorization`` value.

Parameter parsing, quoting and hashing reuse ``trioproxy.auth.digest``; ``MD5`` and ``SHA-256`` with
``qop=auth`` or without qop (RFC 2069 form) are answered, other algorithms and ``auth-int``-only challenges
are not.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from trioproxy.auth.digest import ALGORITHMS, digest_params, digest_response, ha1, quote

__all__ = ["Challenge", "answer_challenge", "parse_challenge"]


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
    params = digest_params(value)
    if params is None or "realm" not in params or "nonce" not in params:
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
        f"username={quote(username)}",
        f"realm={quote(challenge.realm)}",
        f"nonce={quote(challenge.nonce)}",
        f"uri={quote(uri)}",
    ]
    if challenge.qop:
        cnonce = cnonce or os.urandom(8).hex()
        nc_text = f"{nc:08x}"
        response = digest_response(
            algorithm, secret, method, uri, challenge.nonce, qop="auth", nc=nc_text, cnonce=cnonce
        )
        parts += [f"response={quote(response)}", "qop=auth", f"nc={nc_text}", f"cnonce={quote(cnonce)}"]
    else:
        response = digest_response(algorithm, secret, method, uri, challenge.nonce)
        parts.append(f"response={quote(response)}")
    parts.append(f"algorithm={algorithm}")
    if challenge.opaque is not None:
        parts.append(f"opaque={quote(challenge.opaque)}")
    return "Digest " + ", ".join(parts)
