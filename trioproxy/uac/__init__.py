"""Trunk registration (Kamailio's ``uac`` module): REGISTER to upstream providers with digest answers,
refresh before expiry, back off on failure; the digest client ``uac_auth`` answers challenges with.

``registration`` is the sans-IO state machine (time is an input), ``digest_client`` answers challenges,
``sender`` sends one registration's REGISTERs through the proxy's transactions, ``client`` keeps the
registry the routing layer and the management API read (and runs the senders), ``table`` is the ``--db``
``uacreg`` table and ``watch`` feeds its rows to the registry while the proxy runs.
"""

from __future__ import annotations

from .digest_client import Challenge, answer_challenge, parse_challenge
from .registration import Registration, RegState, Trunk, refresh_delay

__all__ = [
    "Challenge",
    "RegState",
    "Registration",
    "Trunk",
    "answer_challenge",
    "parse_challenge",
    "refresh_delay",
]
