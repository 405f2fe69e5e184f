"""Pure parts of server location: record types, transport tables, SRV and NAPTR ordering.

Nothing here does I/O or reads a clock; randomness comes in as a ``random.Random``.
"""

from __future__ import annotations

import functools
import ipaddress
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "NAPTR_SERVICES",
    "SRV_PREFIXES",
    "TRANSPORT_PREFERENCE",
    "NaptrRecord",
    "SrvRecord",
    "default_port",
    "default_transport",
    "is_ip_address",
    "order_srv",
    "select_naptr",
    "srv_transports",
    "uri_transport",
]

# Every transport trioproxy knows, in the order tried when nothing else says which (RFC 3263 4.1 leaves the
# order of the SRV queries to the client; UDP first as the RFC's own default for sip: URIs).
TRANSPORT_PREFERENCE: tuple[str, ...] = ("udp", "tcp", "tls", "ws", "wss")

# RFC 3263 4.1 / RFC 3263 9 (SIP+D2U, SIP+D2T, SIPS+D2T) and RFC 7118 5 (SIP+D2W, SIPS+D2W).
# SIP+D2S (SCTP) is not listed: trioproxy has no SCTP transport.
NAPTR_SERVICES: dict[str, str] = {
    "SIP+D2U": "udp",
    "SIP+D2T": "tcp",
    "SIPS+D2T": "tls",
    "SIP+D2W": "ws",
    "SIPS+D2W": "wss",
}

# RFC 3263 4.1: "_sip" for SIP URIs and "_sips" for SIPS URIs; TLS is "_sips._tcp". RFC 7118 5: "_sip._ws",
# "_sips._ws".
SRV_PREFIXES: dict[str, str] = {
    "udp": "_sip._udp",
    "tcp": "_sip._tcp",
    "tls": "_sips._tcp",
    "ws": "_sip._ws",
    "wss": "_sips._ws",
}

_SECURE = frozenset({"tls", "wss"})


@dataclass(frozen=True, slots=True)
class SrvRecord:
    """One SRV record (RFC 2782); ``target`` without the trailing dot, ``"."`` kept as is."""

    priority: int
    weight: int
    port: int
    target: str


@dataclass(frozen=True, slots=True)
class NaptrRecord:
    """One NAPTR record (RFC 3403); ``replacement`` without the trailing dot."""

    order: int
    preference: int
    flags: str
    service: str
    regexp: str
    replacement: str


@functools.lru_cache(maxsize=4096)
def is_ip_address(host: str) -> bool:
    """True for an IPv4 or IPv6 literal (no brackets)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def default_port(transport: str) -> int:
    """RFC 3263 4.2: 5060 for UDP, TCP (and WS here), 5061 for TLS (and WSS)."""
    return 5061 if transport in _SECURE else 5060


def uri_transport(secure: bool, param: str | None) -> str | None:
    """The transport named by a URI's ``transport=`` parameter, or None when the URI cannot use it.

    For a sips: URI, ``transport=tcp`` means TLS over TCP and ``ws`` means WSS (RFC 3261 19.1.2 / 26.2.2: sips
    only over TLS); UDP cannot carry sips. ``param`` must be given (lowercase).
    """
    name = (param or "").lower()
    if secure:
        return {"tcp": "tls", "tls": "tls", "ws": "wss", "wss": "wss"}.get(name)
    return name if name in SRV_PREFIXES else None


def default_transport(secure: bool, enabled: Iterable[str]) -> str | None:
    """RFC 3263 4.1: UDP for a sip: URI (TCP when UDP is disabled), TLS for sips:; None if not enabled."""
    enabled = frozenset(enabled)
    wanted = ("tls",) if secure else ("udp", "tcp")
    for transport in wanted:
        if transport in enabled:
            return transport
    return None


def order_srv(records: Sequence[SrvRecord], rng: random.Random) -> list[SrvRecord]:
    """RFC 2782 order: priority ascending; within a priority, weighted random selection without replacement.

    Per RFC 2782 ("Usage rules"): within one priority the remaining records are arranged with all weight-0
    records first, the running sum of weights is computed, a number is drawn uniformly in [0, sum] and the
    first record whose running sum is >= that number is taken; repeat until none remain. Weight-0 records thus
    have a very small chance of being picked first. The "any order" the RFC allows before that is a shuffle
    with ``rng``, so that equal-weight records share the load too.
    """
    by_priority: dict[int, list[SrvRecord]] = {}
    for record in records:
        by_priority.setdefault(record.priority, []).append(record)
    ordered: list[SrvRecord] = []
    for priority in sorted(by_priority):
        remaining = list(by_priority[priority])
        rng.shuffle(remaining)
        # stable partition: weight 0 at the beginning (RFC 2782)
        remaining.sort(key=lambda r: r.weight != 0)
        while remaining:
            total = sum(r.weight for r in remaining)
            draw = rng.randint(0, total)
            running = 0
            for index, record in enumerate(remaining):
                running += record.weight
                if running >= draw:
                    ordered.append(remaining.pop(index))
                    break
    return ordered


def select_naptr(
    records: Iterable[NaptrRecord], *, secure: bool, transports: Iterable[str]
) -> list[tuple[NaptrRecord, str]]:
    """The usable NAPTR records with their transport, sorted by order then preference (RFC 3263 4.1).

    Only terminal "s" records with a known service whose transport is enabled are kept. RFC 3263 4.1: a
    client resolving a SIPS URI MUST discard services that are not SIPS; one resolving a SIP URI keeps SIPS
    records when it supports TLS.
    """
    enabled = frozenset(transports)
    usable: list[tuple[NaptrRecord, str]] = []
    for record in records:
        if record.flags.lower() != "s":
            continue
        transport = NAPTR_SERVICES.get(record.service.upper())
        if transport is None or transport not in enabled:
            continue
        if secure and transport not in _SECURE:
            continue
        usable.append((record, transport))
    usable.sort(key=lambda item: (item[0].order, item[0].preference))
    return usable


def srv_transports(secure: bool, enabled: Iterable[str]) -> list[str]:
    """The transports to try SRV queries for when there is no NAPTR (RFC 3263 4.1), in preference order."""
    enabled = frozenset(enabled)
    return [t for t in TRANSPORT_PREFERENCE if t in enabled and (not secure or t in _SECURE)]
