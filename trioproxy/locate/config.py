"""Resolver configuration and building the dnspython resolver."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import dns.asyncresolver
import dns.nameserver
import dns.resolver

from .records import TRANSPORT_PREFERENCE

__all__ = ["ResolverConfig", "build_resolver"]


@dataclass(frozen=True, slots=True)
class ResolverConfig:
    """How the locator talks to DNS.

    ``nameservers``: ``(address, port)`` pairs, or None to read /etc/resolv.conf. ``timeout``: seconds for one
    try at one nameserver. ``lifetime``: seconds for a whole ``locate()`` (every query it makes).
    ``cache_size``: entries in the shared cache (LRU). ``negative_ttl``: seconds a negative answer is cached
    when the response carries no SOA. ``use_ipv6``: query AAAA at all; ``prefer_ipv6``: IPv6 addresses
    before IPv4 ones for the same host. ``transports``: the transports the proxy can send on.
    """

    nameservers: Sequence[tuple[str, int]] | None = None
    timeout: float = 1.0
    lifetime: float = 2.0
    cache_size: int = 4096
    negative_ttl: float = 30.0
    prefer_ipv6: bool = False
    use_ipv6: bool = True
    transports: frozenset[str] = field(default_factory=lambda: frozenset({"udp", "tcp"}))

    def __post_init__(self) -> None:
        transports = frozenset(t.lower() for t in self._as_iterable(self.transports))
        unknown = transports - frozenset(TRANSPORT_PREFERENCE)
        if unknown:
            raise ValueError(f"unknown transports: {', '.join(sorted(unknown))}")
        object.__setattr__(self, "transports", transports)
        if self.nameservers is not None:
            object.__setattr__(self, "nameservers", tuple((str(h), int(p)) for h, p in self.nameservers))
        if self.timeout <= 0 or self.lifetime <= 0:
            raise ValueError("timeout and lifetime must be positive")
        if self.cache_size < 0 or self.negative_ttl < 0:
            raise ValueError("cache_size and negative_ttl must not be negative")

    @staticmethod
    def _as_iterable(value: Iterable[str]) -> Iterable[str]:
        # a lone string would be split into letters
        return (value,) if isinstance(value, str) else value


def build_resolver(config: ResolverConfig) -> dns.asyncresolver.Resolver:
    """The dnspython resolver for ``config``, built once; caching is the locator's, not dnspython's."""
    if config.nameservers is None:
        try:
            resolver = dns.asyncresolver.Resolver()
        except dns.resolver.NoResolverConfiguration as exc:
            raise ValueError("no nameservers configured and /etc/resolv.conf has none") from exc
    else:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [
            dns.nameserver.Do53Nameserver(host, port) for host, port in config.nameservers
        ]
    resolver.timeout = config.timeout
    resolver.lifetime = config.lifetime
    resolver.cache = None
    # SERVFAIL from every server -> NoNameservers at once (RFC 3263 callers answer 503 quickly)
    resolver.retry_servfail = False
    return resolver
