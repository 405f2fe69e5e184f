"""Digest authentication without I/O: HA1 values, challenges, credentials, verification, signed nonces
with nonce-count replay checks, and failure counts (RFC 3261 22, RFC 7616, RFC 8760)."""

from __future__ import annotations

from .digest import (
    ALGORITHMS,
    Credentials,
    build_challenge,
    digest_response,
    ha1,
    parse_credentials,
    verify_response,
)
from .failures import FailureCounts
from .nonce import NonceCounts, Nonces, NonceState

__all__ = [
    "ALGORITHMS",
    "Credentials",
    "FailureCounts",
    "NonceCounts",
    "NonceState",
    "Nonces",
    "build_challenge",
    "digest_response",
    "ha1",
    "parse_credentials",
    "verify_response",
]
