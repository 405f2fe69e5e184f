"""Stateless digest nonces: a timestamp and random bytes signed with HMAC-SHA-256, plus a bounded memory of
the nonce-counts seen (replay protection).

A nonce is ``base64url(timestamp(8) | random(8) | mac(16))`` where the MAC covers the timestamp, the random
bytes and the realm, so a nonce minted for one realm fails in another, and nothing is stored until a nonce
is used. ``NonceCounts`` remembers, per nonce, the highest nonce-count accepted; a request must use a higher
one. The memory is bounded: when it is full, the oldest entry is dropped and every nonce at least as old as
the dropped one counts as stale, so the client is challenged again rather than a replay let through.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from enum import Enum

__all__ = ["NonceCounts", "NonceState", "Nonces"]

_TS = struct.Struct(">d")


class NonceState(Enum):
    """What ``Nonces.check`` found."""

    VALID = "valid"
    STALE = "stale"  # ours, correctly signed, but expired (answer with stale=true)
    INVALID = "invalid"  # not a nonce we minted (or for another realm)


class Nonces:
    """Mints and checks signed nonces; ``clock`` is wall-clock seconds (a fake one in tests)."""

    def __init__(
        self, secret: bytes | None = None, *, expires: float = 300.0, clock: Callable[[], float] = time.time
    ):
        self.secret = secret or os.urandom(32)
        self.expires = expires
        self.clock = clock

    def _mac(self, head: bytes, realm: str) -> bytes:
        return hmac.new(self.secret, head + realm.encode(), hashlib.sha256).digest()[:16]

    def mint(self, realm: str) -> str:
        """A fresh nonce for ``realm``."""
        head = _TS.pack(self.clock()) + os.urandom(8)
        return base64.urlsafe_b64encode(head + self._mac(head, realm)).decode().rstrip("=")

    def timestamp(self, nonce: str) -> float | None:
        """When ``nonce`` was minted (None when it is not shaped like ours)."""
        raw = _decode(nonce)
        return None if raw is None else float(_TS.unpack(raw[:8])[0])

    def check(self, nonce: str, realm: str) -> NonceState:
        """Whether ``nonce`` is ours for ``realm`` and still fresh."""
        raw = _decode(nonce)
        if raw is None or not hmac.compare_digest(self._mac(raw[:16], realm), raw[16:]):
            return NonceState.INVALID
        age = self.clock() - _TS.unpack(raw[:8])[0]
        if age < -5.0 or age > self.expires:  # a little clock skew is tolerated
            return NonceState.STALE
        return NonceState.VALID


def _decode(nonce: str) -> bytes | None:
    if len(nonce) != 43:
        return None
    try:
        raw = base64.urlsafe_b64decode(nonce + "=")
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == 32 else None


class NonceCounts:
    """The highest nonce-count accepted per nonce, at most ``capacity`` nonces."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self.horizon = float("-inf")  # nonces minted at or before this may have been forgotten

    def __len__(self) -> int:
        return len(self._seen)

    def use(self, nonce: str, minted: float, nc: int) -> NonceState:
        """Record the use of ``nonce`` with count ``nc``.

        VALID when ``nc`` is above every count seen for it; INVALID for a reused count (a replay); STALE when
        the nonce is older than what the memory still covers.
        """
        entry = self._seen.get(nonce)
        if entry is None:
            if minted <= self.horizon:
                return NonceState.STALE
            while len(self._seen) >= self.capacity:
                _old, (_nc, old_minted) = self._seen.popitem(last=False)
                self.horizon = max(self.horizon, old_minted)
            self._seen[nonce] = (nc, minted)
            return NonceState.VALID
        if nc <= entry[0]:
            return NonceState.INVALID
        self._seen[nonce] = (nc, entry[1])
        return NonceState.VALID

    def forget_older_than(self, cutoff: float) -> None:
        """Drop the entries of nonces minted before ``cutoff`` (expired ones: they fail anyway)."""
        while self._seen:
            nonce, (_nc, minted) = next(iter(self._seen.items()))
            if minted >= cutoff:
                break
            del self._seen[nonce]
